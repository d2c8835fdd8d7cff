"""Liveness and readiness files that each process's own loop keeps fresh, and the probe's reading of them.

No Celery, pydantic or Redis here: `ninkik-tasks health` imports this module alone, once per probe.

A process of kind K (worker, ingest, beat) on host H with pid P keeps two files in the health directory:
`K-H-P.alive`, whose modification time is the last time its loop ran, and `K-H-P.ready`, present while it
does its job (a worker consumes, ingest's last poll worked, beat holds the schedule's lock). The probe looks
at the files of its own host whose process is still running: in a container that is the process itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KINDS = ("worker", "ingest", "beat")
DEFAULT_DIR = "/tmp/ninkik-health"
# A loop older than this is stuck: 12 missed beats at the default pace, so a CPU-starved or swapping container
# is not restarted for a slow second, while a frozen one is restarted about a minute and a half after it froze
# (this, plus the orchestrator's period x failure threshold: 10 s x 3 in docs/health.md).
DEFAULT_MAX_AGE_SECONDS = 60.0
BEAT_SECONDS = 5.0  # how often a loop touches its file at most (a quarter of the max age when that is shorter)
# The longest a loop may legitimately spend in one call while a dependency is away: kombu's publish retry
# (celery_app: 60 tries with 116 s of pauses, each try's connect up to 4 s more when the broker's host does not
# answer at all: about 6 minutes), RedBeat's Redis retry (60 s), an SQS long poll (25 s), Redis's timeouts.
# While a loop is inside such a call the file is kept fresh for it, up to this bound; past it the loop is stuck.
STEP_BOUND_SECONDS = 600.0
# Seconds an orchestrator must give each process to stop after SIGTERM before it kills it (compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds): docs/health.md says where each comes from.
# A worker (warm shutdown) finishes the chain steps it runs: the longest is one ECR call through botocore's
# four attempts of 5 s connect + 30 s read (140 s); sweeps stop at their next image and are queued again.
# Ingest finishes the batch in hand (its SQS waits are cut short by SIGTERM); beat releases its lock at once.
STOP_GRACE_SECONDS = {"worker": 150, "ingest": 30, "beat": 15, "flower": 10}


def beat_seconds(max_age: float) -> float:
    """How often a loop touches its file, for a given max age."""
    return min(BEAT_SECONDS, max_age / 4)


def _host() -> str:
    return socket.gethostname().replace("/", "_")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


class Heartbeat:
    """The files of one process: touched by its loop, and by a helper thread while the loop waits on a dependency."""

    def __init__(self, directory: Path | str | None, kind: str, max_age: float = DEFAULT_MAX_AGE_SECONDS) -> None:
        """`directory` None: a heartbeat that does nothing (tests, tools)."""
        assert kind in KINDS, kind
        self.directory = Path(directory) if directory is not None else None
        self.kind = kind
        self.every = beat_seconds(max_age)
        self.last = 0.0  # wall-clock time of the last beat: the file's mtime and the metric's value
        self._last_touch = 0.0
        self._until = 0.0  # monotonic time up to which the helper thread keeps the file fresh
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        name = f"{kind}-{_host()}-{os.getpid()}"
        self.alive_path = self.directory / f"{name}.alive" if self.directory else None
        self.ready_path = self.directory / f"{name}.ready" if self.directory else None

    def start(self) -> Heartbeat:
        """Create the directory and the alive file, remove this host's dead processes' files, start the helper."""
        if self.directory is None or self._thread is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob(f"{self.kind}-{_host()}-*.*"):
            pid = _pid(path)
            if pid is not None and pid != os.getpid() and not _running(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
        self.ready(False)  # one left by an earlier process with this pid (a container restarted in place)
        self.beat(force=True)
        self._thread = threading.Thread(target=self._run, name=f"ninkik-{self.kind}-heartbeat", daemon=True)
        self._thread.start()
        return self

    def beat(self, force: bool = False) -> None:
        """The loop ran: touch the alive file (at most once a second)."""
        now = time.monotonic()
        if (
            self.alive_path is None
            or self._stop.is_set()
            or (not force and now - self._last_touch < min(1.0, self.every))
        ):
            return
        self._last_touch = now
        self.last = time.time()
        try:
            self.alive_path.touch()
            os.utime(self.alive_path, (self.last, self.last))
        except OSError:  # a full or read-only disk: the probe says so by the file's age
            pass

    @contextlib.contextmanager
    def waiting(self, seconds: float | None = STEP_BOUND_SECONDS) -> Iterator[None]:
        """The loop enters a call that may wait on a dependency for up to `seconds` (None: no bound)."""
        self.beat()
        self._until = time.monotonic() + (math.inf if seconds is None else seconds)
        try:
            yield
        finally:
            self._until = 0.0
            self.beat()

    def keep_fresh(self, seconds: float | None) -> None:
        """Keep the file fresh for `seconds` from now whatever the loop does (a shutdown in progress)."""
        self._until = time.monotonic() + (math.inf if seconds is None else seconds)

    def ready(self, ready: bool) -> None:
        """Create or remove the ready file."""
        if self.ready_path is None:
            return
        with contextlib.suppress(OSError):
            if ready:
                self.ready_path.touch()
            else:
                self.ready_path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the helper and remove both files (the process is leaving)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        for path in (self.alive_path, self.ready_path):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every / 2):
            if time.monotonic() < self._until:
                self.beat(force=True)


def _pid(path: Path) -> int | None:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Verdict:
    """What the probe found: healthy or not, and one line saying why."""

    ok: bool
    line: str


def check(kind: str, directory: Path, max_age: float, ready: bool = False, now: float | None = None) -> Verdict:
    """Liveness (and with `ready`, readiness) of this host's running `kind` processes, from their files alone."""
    now = time.time() if now is None else now
    found: list[tuple[int, float, bool]] = []
    try:
        paths = sorted(directory.glob(f"{kind}-{_host()}-*.alive"))
    except OSError as exc:
        return Verdict(False, f"{kind}: cannot read {directory}: {exc}")
    for path in paths:
        pid = _pid(path)
        if pid is None or not _running(pid):
            continue  # left by a process that is gone
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue  # it left just now
        found.append((pid, age, path.with_suffix(".ready").exists()))
    if not found:
        return Verdict(False, f"{kind}: no running {kind} process has a heartbeat in {directory} (not started yet?)")
    for pid, age, is_ready in found:
        if age > max_age:
            return Verdict(False, f"{kind} pid {pid}: its loop last ran {age:.0f} s ago (max {max_age:g} s): stuck")
        if ready and not is_ready:
            return Verdict(False, f"{kind} pid {pid}: alive (loop {age:.1f} s ago) but not ready: {NOT_READY[kind]}")
    pid, age, is_ready = max(found, key=lambda f: f[1])
    state = "ready" if is_ready else f"not ready ({NOT_READY[kind]})"
    more = f" ({len(found)} processes)" if len(found) > 1 else ""
    return Verdict(True, f"ok: {kind} pid {pid}: loop ran {age:.1f} s ago, {state}{more}")


NOT_READY = {
    "worker": "its consumer is not consuming (starting, reconnecting to the broker, or stopping)",
    "ingest": "its last poll failed (SQS, Redis or the broker away), or it is starting or stopping",
    "beat": "it does not hold the schedule's lock (a standby, or starting)",
}
