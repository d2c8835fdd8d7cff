"""Logging, configured once per process: text by default, JSON lines with NINKIK_LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

from .config import Settings

# Control characters (newlines above all) in what a log line quotes from an event would let a message
# forge log lines of its own: they are written escaped.
_CONTROL = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)}


class TextFormatter(logging.Formatter):
    """The usual one-line text format, with control characters in the message escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without any traceback (which stays multi-line)."""
        return super().formatMessage(record).translate(_CONTROL)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the fields passed in `extra`."""

    RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in self.RESERVED})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(settings: Settings, quiet_tasks: Collection[str] = ()) -> None:
    """Send logs to stderr in the configured format and level; Celery's lines for each of `quiet_tasks` received,
    retried and succeeded only at DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A role session that cannot be renewed: botocore warns with a traceback at every attempt; ninkik-tasks says it
    # once per outage, with the account and the fix (clients.RoleCredentials, ingest, the chain's failures).
    logging.getLogger("botocore.credentials").setLevel(logging.ERROR)
    # Four tasks per image, each received and succeeded: eight lines that say less than the chain's own (accepted,
    # retried, notified or ended), and writing them cost a quarter of the worker's CPU per image (bench/RESULTS.md).
    quiet = QuietTasks(quiet_tasks)
    for name in ("celery.app.trace", "celery.worker.strategy"):
        celery_logger = logging.getLogger(name)
        celery_logger.filters[:] = [f for f in celery_logger.filters if not isinstance(f, QuietTasks)]
        if quiet.names and root.level > logging.DEBUG:
            celery_logger.addFilter(quiet)
            celery_logger.__class__ = QuietLogger  # drops them before making their records (see QuietLogger)


class QuietTasks(logging.Filter):
    """Drops Celery's INFO lines (received, retry, succeeded) about the named tasks; warnings and errors pass."""

    def __init__(self, names: Collection[str]) -> None:
        super().__init__()
        self.names = frozenset(names)

    def drops(self, level: int, args: object) -> bool:
        """True for an INFO line whose arguments name one of the tasks (Celery passes them as one dict)."""
        return level <= logging.INFO and isinstance(args, dict) and args.get("name") in self.names

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the lines `drops`."""
        return not self.drops(record.levelno, record.args)


class QuietLogger(logging.Logger):
    """A Celery logger whose QuietTasks lines are dropped before their LogRecord is made. Celery writes its received
    and succeeded lines whenever INFO is on, and a filter runs only after findCaller and the record are made: 0.26 ms
    of the worker's CPU per image for eight lines nobody sees (bench/RESULTS.md, issue 31)."""

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        if len(args) == 1 and any(isinstance(f, QuietTasks) and f.drops(level, args[0]) for f in self.filters):
            return
        super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel)


class Outage:
    """One WARNING when a dependency stops answering and one when it answers again, per process: an outage
    is one line in the log, however many tasks meet it (each retry stays at DEBUG)."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.log = logger
        self._since: float | None = None
        self._failures = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> bool:
        """Count a failure; True for the first one of an outage (which is logged)."""
        with self._lock:
            self._failures += 1
            if self._since is not None:
                return False
            self._since = time.monotonic()
        self.log.warning(
            "%s does not answer (%s: %s): the tasks that need it retry until it does (one line then)",
            self.what,
            type(exc).__name__,
            " ".join(str(exc).split())[:200],
        )
        return True

    def ok(self) -> None:
        """A call that needed it worked: log the end of an outage, if there was one."""
        if self._since is None:
            return
        with self._lock:
            since, failures, self._since, self._failures = self._since, self._failures, None, 0
        if since is not None:
            elapsed = time.monotonic() - since
            self.log.warning("%s answers again: %d failed steps over %.0fs", self.what, failures, elapsed)
