"""The SQS poller: ECR push events in, one chain per new event out, bad input quarantined."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as AWSConnectionError
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from . import metrics
from .accounts import accepted
from .clients import queue_endpoint_mismatch
from .config import Settings
from .ecr import DENIED, THROTTLING, error_code
from .errors import ConfigError, IdentityUnavailable, IgnoredEvent, InvalidEvent
from .events import FindingChanged, ImagePushed, ImageScanned, parse
from .explain import redis_full, redis_full_line
from .freshness import LastSeen, Refreshes
from .health import STEP_BOUND_SECONDS, Heartbeat
from .idempotency import Records
from .indexes import Claims
from .inventory import Inventory
from .records import MAX_BODY_CHARS, Journal
from .scanwait import ScanWaits, scan_done

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

MISSING_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
# SQS does not answer: refused, timed out, connection closed (retried, never a configuration error).
UNREACHABLE = (AWSConnectionError, HTTPClientError)


# What a failing poll is expected to raise (anything else is logged with its traceback: a bug).
EXPECTED = (RedisError, BotoCoreError, ClientError, OperationalError, OSError, ConfigError, IdentityUnavailable)
BACKOFF_MAX = 30.0  # the longest pause between two attempts of a failing queue (an outage)
CONFIG_BACKOFF_MAX = 300.0  # ... of a queue refused or gone while other queues work (an operator fixes it)
HANDLING_GRACE = 20.0  # at SIGTERM, how long batches in hand may take to finish (within STOP_GRACE_SECONDS)


class _Stop(BaseException):
    """SIGTERM arrived while waiting on SQS: nothing is in hand, leave now."""


@dataclass
class Ingest:
    """Polls the queue and hands the new, valid pushes of each batch to `start` (which returns their chains)."""

    settings: Settings
    sqs: SQSClient
    records: Records
    quarantine: Journal
    start: Callable[[list[ImagePushed]], list[Any]]
    queue: str | None = None  # the queue polled (default: NINKIK_SQS_QUEUE_URL)
    account: str = ""  # the account whose identity polls it (its metrics' label)
    inventory: Inventory | None = None  # where accepted pushes' repositories are remembered for sweeps
    scan_waits: ScanWaits | None = None  # the images waiting for their scan (a scan-complete event ends a wait)
    heartbeat: Heartbeat | None = None  # this loop's liveness and readiness files (docs/health.md)
    refreshes: Refreshes | None = None  # "Inspector2 Finding" events -> refresh chains, one per image per window
    counts: Counter[str] = field(default_factory=Counter)
    deleting: bool = True
    _delete_retry_at: float = 0.0
    healthy: bool = False  # the last attempt worked
    last_poll: float = 0.0  # when it last did (Unix time)
    _stopping: bool = False
    _waiting: bool = False  # waiting on SQS or pausing: nothing in hand
    _step_began: float | None = None  # monotonic start of the step under way
    _stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        s = self.settings
        if self.inventory is None:
            self.inventory = Inventory(self.records.r, s.redis_namespace)
        if self.scan_waits is None:
            self.scan_waits = ScanWaits(self.records.r, s.redis_namespace, s.scan_poll_seconds, s.ecr_calls_per_second)
        if self.heartbeat is None:
            self.heartbeat = Heartbeat(s.health_dir, "ingest", s.health_max_age_seconds)
        if self.refreshes is None:
            self.refreshes = Refreshes(self.records.r, s.redis_namespace, s.finding_refresh_seconds)

    @property
    def queue_url(self) -> str:
        """The queue being polled."""
        url = self.queue or self.settings.sqs_queue_url
        assert url
        return url

    def check_queue(self) -> dict[str, str]:
        """The queue's retention and visibility; ConfigError with one clear line if it cannot be used.

        An outage (no answer, a refused connection, 5xx, throttling) is raised as it is, for `run` to retry.
        """
        try:
            answer = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["MessageRetentionPeriod", "VisibilityTimeout"]
            )
        except ClientError as exc:
            if _outage(exc):
                raise
            raise ConfigError(_explain(exc, "sqs:GetQueueAttributes", self.queue_url)) from None
        except NoCredentialsError:
            raise ConfigError(
                "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "for the ninkik IAM user of the setup guide"
            ) from None
        except UNREACHABLE:
            raise
        except BotoCoreError as exc:
            raise ConfigError(f"cannot use SQS at {self.queue_url}: {exc}") from None
        return {str(k): v for k, v in answer.get("Attributes", {}).items()}

    def run(self) -> None:
        """Poll this queue alone until SIGTERM/SIGINT (poll_all with one queue)."""
        poll_all([self])

    def poll_forever(self, alone: bool) -> None:
        """This queue's loop (a thread of poll_all's), until the process stops.

        Until the queue answers, and whenever a poll fails, it retries with backoff: one log line when an
        outage begins, one when it ends (each attempt at DEBUG). A queue that cannot be used (refused, gone) is
        a ConfigError: it stops the process when it is the only queue, else that queue alone is retried.
        """
        started = False
        failures, outage_began = 0, 0.0
        what = f"queue {self.queue_url} of account {self.account or '?'}"
        while not self._stopping:
            try:
                self._step_began = time.monotonic()
                if not started:
                    self._start()
                    started = True
                else:
                    self.poll_once()
                if failures:
                    self._write_probe()  # a full Redis still answers reads: over only once a write succeeds
                self._polled()
                if failures:
                    log.warning(
                        "%s: SQS, Redis and the broker answer again: %d failed attempts over %.0fs",
                        what,
                        failures,
                        time.monotonic() - outage_began,
                    )
                failures = 0
            except _Stop:
                break
            except Exception as exc:
                if isinstance(exc, ConfigError) and alone:
                    raise
                # Redis, the broker or SQS is down (or something nobody classified): nothing was deleted, SQS
                # redelivers; wait and go on. One line per outage at ERROR, each retry at DEBUG, one when over.
                self.healthy = False
                failures += 1
                outage_began = outage_began if failures > 1 else time.monotonic()
                metrics.POLL_ERRORS.inc()
                metrics.QUEUE_UP.labels(self.account, self.queue_url).set(0)
                cap = CONFIG_BACKOFF_MAX if isinstance(exc, ConfigError) else BACKOFF_MAX
                pause = min(cap, 0.5 * 2**failures)
                known = isinstance(exc, EXPECTED)
                doing = "poll" if started else "reaching it"  # "poll failed (...": the runbook's line
                reason = redis_full_line() if redis_full(exc) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                log.log(
                    logging.ERROR if failures == 1 else logging.DEBUG,
                    "%s: %s failed (%s); retrying in %.1fs%s",
                    what,
                    doing,
                    reason,
                    pause,
                    f", with backoff up to {cap:.0f} s, until it works (one line then)" if failures == 1 else "",
                    exc_info=not known and failures == 1,
                )
                self._sleep(pause)
            finally:
                self._step_began = None
        log.debug("stopped %s: %s", what, dict(self.counts))

    def _polled(self) -> None:
        self.healthy = True
        self.last_poll = time.time()
        metrics.QUEUE_UP.labels(self.account, self.queue_url).set(1)
        metrics.QUEUE_LAST_POLL.labels(self.account, self.queue_url).set(self.last_poll)

    def _start(self) -> None:
        endpoint = self.sqs.meta.endpoint_url
        mismatch = queue_endpoint_mismatch(self.queue_url, endpoint)
        if mismatch:
            # Every call would go where the queue is not: an emulator's queue on AWS is never reached (retried for
            # ever as an outage), AWS's queue on an emulator does not exist there. `check`'s line, exit 2.
            raise ConfigError(mismatch)
        self._waiting = True
        try:
            if self._stopping:
                raise _Stop()
            attributes = self.check_queue()
        finally:
            self._waiting = False
        log.info(
            "polling %s through %s (account %s, retention %ss, visibility timeout %ss)",
            self.queue_url,
            endpoint,
            self.account or "?",
            attributes.get("MessageRetentionPeriod", "?"),
            attributes.get("VisibilityTimeout", "?"),
        )

    def _write_probe(self) -> None:
        """One short-lived write to the records' Redis (raises as the failed poll did if it still fails)."""
        self.records.r.set(f"{self.settings.redis_namespace}:ingest:write-probe", "1", px=10_000)

    def stop(self) -> None:
        """Leave at the next step: a wait on SQS is left unanswered (SQS redelivers), a batch in hand is finished."""
        self._stopping = True
        self._stopped.set()

    def _sleep(self, seconds: float) -> None:
        self._waiting = True
        try:
            self._stopped.wait(seconds)
        finally:
            self._waiting = False

    def receive(self) -> list[MessageTypeDef]:
        """One long poll: up to 10 messages, waiting up to NINKIK_SQS_WAIT_SECONDS (SIGTERM abandons it)."""
        self._waiting = True
        try:
            if self._stopping:
                raise _Stop()
            with metrics.POLL_SECONDS.time():
                answer = self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=self.settings.sqs_wait_seconds,
                    MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                )
        except ClientError as exc:
            if error_code(exc) in MISSING_QUEUE or error_code(exc) in DENIED:
                raise ConfigError(_explain(exc, "sqs:ReceiveMessage", self.queue_url)) from None
            raise
        finally:
            self._waiting = False
        if self._stopping:
            raise _Stop()  # answered after SIGTERM: left unhandled, SQS gives the messages again
        return list(answer.get("Messages", []))

    def poll_once(self) -> int:
        """Receive one batch, handle it, delete what was handled; returns the number of messages."""
        messages = self.receive()
        if not messages:
            return 0
        self.counts["received"] += len(messages)
        metrics.RECEIVED.inc(len(messages))
        handled = self.handle(messages)
        # The batch is handled: a SIGTERM during the delete may cut it short (SQS redelivers, dedupe drops).
        self._waiting = True
        try:
            if not self._stopping:
                self.delete(handled)
        finally:
            self._waiting = False
        return len(messages)

    def handle(self, messages: list[MessageTypeDef]) -> list[MessageTypeDef]:
        """Start chains for new valid events, quarantine bad ones; returns the messages now handled."""
        s = self.settings
        accounts, regions = accepted(s)
        valid: list[tuple[MessageTypeDef, ImagePushed]] = []
        handled: list[MessageTypeDef] = []
        scans: list[tuple[MessageTypeDef, ImageScanned]] = []
        findings: list[FindingChanged] = []
        for message in messages:
            body = message.get("Body", "")
            try:
                valid.append((message, parse(body, accounts=accounts, regions=regions, max_bytes=s.max_message_bytes)))
            except IgnoredEvent as exc:
                self._ignore(message, exc)
                if isinstance(exc.event, ImageScanned):
                    scans.append((message, exc.event))
                else:
                    handled.append(message)
                    findings += [exc.event] if isinstance(exc.event, FindingChanged) else []
            except InvalidEvent as exc:
                self._quarantine(message, body, exc)
                handled.append(message)
        metrics.ACCEPTED.inc(len(valid))
        if valid and self.inventory is not None:
            # Sweeps name these when the registry cannot be listed (the guide's policy): see backfill.py.
            self.inventory.remember((p.account, p.region, p.repository) for _, p in valid)
        LastSeen(self.records.r, s.redis_namespace).record([*(p for _, p in valid), *(e for _, e in scans), *findings])
        assert self.refreshes is not None and self.scan_waits is not None
        claims = Claims(self.records.r, s.redis_namespace)
        for message, event in scans:  # scan-complete events (scanwait.scan_done): chains now, or handled
            pushed = scan_done(self.scan_waits, claims, event, s.scan_wait_seconds + 3600)
            if pushed is None:
                handled.append(message)
            else:
                valid.append((message, pushed))
        seen = self.records.seen_events([pushed.event_id for _, pushed in valid])
        new = list({p.event_id: p for _, p in valid if p.event_id not in seen}.values())
        duplicates = len(valid) - len(new)
        handled += [message for message, _ in valid]
        for pushed, result in zip(new, self.start(new) if new else [], strict=True):
            self.counts["chains_started"] += 1
            metrics.CHAINS.inc()
            log.info(
                "accepted event=%s repository=%s digest=%s tag=%s chain=%s",
                pushed.event_id,
                pushed.repository,
                pushed.digest,
                pushed.tag,
                getattr(result, "id", None),
            )
        started = [p.event_id for p in new]
        started += self.refreshes.start(
            findings, self.records, claims, self.scan_waits, lambda p: self.start([p])[0], self.counts
        )
        # Marked only once the chains are queued: a crash before this line redoes them, loses none.
        self.records.mark_events(started, s.event_dedupe_seconds)
        if duplicates:
            self.counts["duplicates"] += duplicates
            metrics.DUPLICATES.inc(duplicates)
            log.info("dropped %d duplicate event(s) (%d so far)", duplicates, self.counts["duplicates"])
        return handled

    def _ignore(self, message: MessageTypeDef, exc: IgnoredEvent) -> None:
        """Count and drop a well-formed AWS event that is not a push (the quarantine is for what operators fix)."""
        first = self.counts[f"ignored:{exc.reason}"] == 0
        self.counts[f"ignored:{exc.reason}"] += 1
        metrics.IGNORED.labels(exc.reason).inc()
        log.log(
            logging.INFO if first else logging.DEBUG,
            "ignored message %s (%s): %s%s",
            message.get("MessageId", ""),
            exc.reason,
            exc,
            "; further ones are counted in ninkik_ingest_ignored_total" if first else "",
        )

    def _quarantine(self, message: MessageTypeDef, body: str, exc: InvalidEvent) -> None:
        self.counts[f"rejected:{exc.reason}"] += 1
        metrics.REJECTED.labels(exc.reason).inc()
        message_id = message.get("MessageId", "")
        if not self.records.claim_message(message_id, self.settings.event_dedupe_seconds):
            return  # a redelivery of a message already quarantined
        entry = self.quarantine.add(
            reason=exc.reason,
            error=str(exc),
            message_id=message_id,
            body=body[:MAX_BODY_CHARS],
            body_bytes=len(body.encode("utf-8", "surrogatepass")),
        )
        self.counts["quarantined"] += 1
        metrics.QUARANTINED.inc()
        log.warning("quarantined message %s as %s (%s): %s", message_id, entry, exc.reason, exc)

    def delete(self, messages: list[MessageTypeDef]) -> None:
        """DeleteMessageBatch, unless the policy does not grant it (then SQS redelivers; dedupe drops them)."""
        if not messages or (not self.deleting and time.monotonic() < self._delete_retry_at):
            return
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        try:
            answer = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]
        except ClientError as exc:
            if error_code(exc) not in DENIED:
                raise
            self._delete_retry_at = time.monotonic() + self.settings.delete_retry_seconds
            if self.deleting:
                log.warning(
                    "sqs:DeleteMessage is not granted on %s: messages stay in the queue until they expire and "
                    "their redeliveries are dropped as duplicates; add sqs:DeleteMessage to the policy to cut "
                    "SQS traffic",
                    self.queue_url,
                )
            self.deleting = False
            metrics.DELETING.set(0)
            return
        if not self.deleting:
            log.info("sqs:DeleteMessage is granted now: deleting handled messages again")
        self.deleting = True
        metrics.DELETING.set(1)
        self.counts["deleted"] += len(answer.get("Successful", []))
        metrics.DELETED.inc(len(answer.get("Successful", [])))
        for failed in answer.get("Failed", []):
            log.warning("could not delete a message: %s %s", failed.get("Code"), failed.get("Message"))


def poll_all(pollers: list[Ingest], heartbeat: Heartbeat | None = None) -> None:
    """Poll every queue, each in a thread of its own (an idle queue's long poll never delays another), until
    SIGTERM/SIGINT; the batches in hand are finished before leaving, waits on SQS are abandoned (nothing in hand).

    The process's liveness: this loop, and no queue's step running past STEP_BOUND_SECONDS (stuck). Ready while
    any queue's last poll worked: one failing queue among many does not take ingest out of service.
    """
    beat = heartbeat or pollers[0].heartbeat or Heartbeat(None, "ingest")
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        beat.ready(False)
        for poller in pollers:
            poller.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    beat.start()
    metrics.LAST_LOOP.set_function(lambda: beat.last)
    fatal: list[BaseException] = []
    alone = len(pollers) == 1

    def poll(poller: Ingest) -> None:
        try:
            poller.poll_forever(alone)
        except BaseException as exc:  # a ConfigError of the only queue, or a bug: the process stops, saying it
            fatal.append(exc)
            stopping.set()

    threads = [threading.Thread(target=poll, args=(p,), name=f"ingest-{i}", daemon=True) for i, p in enumerate(pollers)]
    for thread in threads:
        thread.start()
    try:
        while not stopping.wait(0.5):
            now = time.monotonic()
            stuck = [p for p in pollers if p._step_began is not None and now - p._step_began > STEP_BOUND_SECONDS]
            if not stuck:
                beat.beat()
            beat.ready(any(p.healthy for p in pollers))
        for poller in pollers:
            poller.stop()
        # Batches in hand are finished (and deleted); threads waiting on SQS are left to the process's exit.
        deadline = time.monotonic() + HANDLING_GRACE
        for poller, thread in zip(pollers, threads, strict=True):
            while thread.is_alive() and not poller._waiting and time.monotonic() < deadline:
                beat.keep_fresh(HANDLING_GRACE)
                thread.join(0.1)
    finally:
        beat.stop()
    if fatal:
        raise fatal[0]
    log.info("stopped: %s", dict(sum((p.counts for p in pollers), Counter[str]())))


def _outage(exc: ClientError) -> bool:
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return status >= 500 or status == 429 or error_code(exc) in THROTTLING or "Throttl" in error_code(exc)


def _explain(exc: ClientError, action: str, queue_url: str) -> str:
    code = error_code(exc)
    if code in MISSING_QUEUE:
        return (
            f"queue {queue_url} does not exist: set NINKIK_SQS_QUEUE_URL to the URL that "
            "`aws sqs get-queue-url --queue-name ecr-docker-push` prints"
        )
    if code in DENIED:
        return f"{action} is not granted on {queue_url}: attach the SQS policy of the setup guide to this IAM user"
    return f"{action} on {queue_url} failed: {code}: {exc.response.get('Error', {}).get('Message', '')}"
