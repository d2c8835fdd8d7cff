"""The Celery tasks of the chain, and `start(event)` that queues one chain per pushed image (`start_all`: several)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task, chain
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from celery.result import AsyncResult
from celery.signals import setup_logging
from celery.worker import state as worker_state
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import backfill as sweeps
from . import brokers, gathering, logs
from .accounts import accepted
from .artifacts import IN_INDEX, SKIP_REASONS
from .celery_app import AWS_QUEUE, CHAIN_TASKS, CONTROL_QUEUE, NINKIK_QUEUE, app
from .config import Settings, get_settings
from .errors import (
    IDENTITY_UNAVAILABLE,
    IdentityUnavailable,
    PermanentError,
    ScanNotReady,
    SweepStopped,
    TransientError,
)
from .events import ImagePushed
from .filters import validate
from .gathering import DescriptionPending
from .lifecycle import remove_step, retagged
from .lifecycle import sweep as lifecycle_sweep
from .listing import Progress
from .ratelimit import RateLimited
from .scans import scan_step
from .stages import (
    Described,
    Matched,
    Scanned,
    Services,
    describe,
    describe_step,
    notify_step,
    services,
)
from .stages import (
    match_tenant as match_step,
)

log = logging.getLogger(__name__)
# Redis (records, results, the limiter) or the broker not answering: one line per outage per process.
STORES_OUTAGE = logs.Outage("Redis or the broker", log)
T = TypeVar("T")

# Outcomes that are not faults of the system: the chain ends quietly (recorded, task SUCCESS).
# Artifacts that are not images, and manifests reported inside their index: artifacts.SKIP_REASONS.
SKIPS = {"repository_format", "unknown_tenant", "unknown_product", "image_gone", *SKIP_REASONS}


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    logs.configure(get_settings(), quiet_tasks=CHAIN_TASKS)  # the chain's own lines say what happened


def _svc() -> Services:
    return services(get_settings())


def backoff(retries: int, cap: float) -> float:
    """Exponential backoff with jitter: 1, 2, 4 ... seconds, at most `cap`."""
    ceiling = min(cap, 2.0**retries)
    return random.uniform(ceiling / 2, ceiling)


def _run(task: Task, stage: str, pushed: ImagePushed, match: Any, step: Callable[[], T], first_try: float | None) -> T:
    """Run one stage: TransientError -> retry with backoff within a budget; PermanentError -> record, end."""
    try:
        return _attempt(task, stage, pushed, match, step, first_try)
    except (SoftTimeLimitExceeded, Reject) as exc:
        # The retry could not be published: Celery's `task.retry` turns any error of its publish (the broker
        # or Redis slow or gone; the Redis broker's soft time limit met inside it) into Reject(requeue=False),
        # which drops the message, and a soft time limit met while recording would fail and acknowledge it.
        # Either way the chain would end with nothing recorded: the message goes back to the broker as it came.
        if isinstance(exc, Reject) and exc.requeue:
            raise
        cause = exc.reason if isinstance(exc, Reject) else exc
        log.warning("%s could not be retried (%r): requeued: %s", stage, cause, describe(pushed, match))
        raise Reject(f"could not be retried: {cause!r}", requeue=True) from None


def _attempt(
    task: Task, stage: str, pushed: ImagePushed, match: Any, step: Callable[[], T], first_try: float | None
) -> T:
    s = get_settings()
    first_try = first_try or time.time()
    quiet = False
    try:
        try:
            out = step()
            STORES_OUTAGE.ok()
            return out
        except (RedisConnectionError, RedisTimeoutError, OperationalError) as exc:
            # Redis restarting or unreachable: the records, the broker and results come back; so does this step.
            quiet = not STORES_OUTAGE.failed(exc)
            raise TransientError(f"Redis unavailable ({type(exc).__name__})") from None
        except SoftTimeLimitExceeded:
            # The Redis broker's run limit (brokers/redis.py): give the task back as a retry.
            raise TransientError("the step ran past its soft time limit") from None
        except IdentityUnavailable as exc:
            # The account's role refused (trust policy, ExternalId, role gone): no retry helps until an operator
            # fixes it, and its images are not to hold workers meanwhile; reconcile finds them once it works again.
            if exc.permanent:
                raise PermanentError(IDENTITY_UNAVAILABLE, str(exc)) from None
            raise
        except PermanentError as exc:
            if exc.reason == "access_denied" and pushed.account not in str(exc):
                raise PermanentError(exc.reason, f"account {pushed.account}: {exc}") from None
            raise
    except DescriptionPending as exc:
        # Another worker's DescribeImages holds this image: its description is in Redis a moment later.
        countdown = max(exc.retry_after or 1.0, brokers.for_url(s.broker_url).countdown_floor(s))
        log.debug("%s waits %.1fs for its description: %s", stage, countdown, describe(pushed, match))
        raise task.retry(countdown=countdown * random.uniform(1.0, 1.2), kwargs={"first_try": first_try}) from None
    except TransientError as exc:
        budget = s.notify_give_up_seconds if stage == "notify" else s.aws_give_up_seconds
        if time.time() - first_try > budget and not isinstance(exc, ScanNotReady):
            reason = IDENTITY_UNAVAILABLE if isinstance(exc, IdentityUnavailable) else "gave_up"
            failure = PermanentError(reason, f"still failing after {budget}s: {exc}")
            _record(task, stage, pushed, match, failure)
            raise failure from None
        broker = brokers.for_url(s.broker_url)
        cap = broker.countdown_cap(s)
        countdown = backoff(task.request.retries, cap)
        if isinstance(exc, ScanNotReady) and exc.next_read is not None:
            # A scan is waited for at a steady pace, not a growing one: its findings reach ninkik at most
            # one read after it finishes (ScanWaits spreads the reads over the ECR budget).
            countdown = min(exc.next_read, cap)
        if isinstance(exc, ScanNotReady) and exc.remaining is not None:
            countdown = max(0.5, min(countdown, exc.remaining + 0.5))
        elif isinstance(exc, RateLimited):
            countdown = min((exc.retry_after or 1.0) * random.uniform(0.9, 1.1), cap)  # the queue drained by then
        elif exc.retry_after is not None:
            countdown = min(max(exc.retry_after, countdown), cap)
        countdown = max(countdown, broker.countdown_floor(s))
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s will retry in %.1fs (%s): %s task=%s",
            stage,
            countdown,
            exc,
            describe(pushed, match),
            task.request.id,
        )
        _svc().stats.incr("retry", stage)
        raise task.retry(countdown=countdown, kwargs={"first_try": first_try}) from None
    except PermanentError as exc:
        _record(task, stage, pushed, match, exc)
        if exc.reason in SKIPS:
            task.request.chain = None  # end the chain here, without marking the task failed
            return {"outcome": "skipped", "reason": exc.reason}  # type: ignore[return-value]
        raise
    except Exception as exc:
        # A bug or an error nobody classified: recorded for operators, then Celery marks the task failed.
        _record(task, stage, pushed, match, PermanentError("unexpected", f"{type(exc).__name__}: {exc}"))
        raise


def _record(task: Task, stage: str, pushed: ImagePushed, match: Any, exc: PermanentError) -> None:
    _svc().stats.incr("failure", stage, exc.reason)
    if exc.reason in SKIP_REASONS:
        _svc().stats.incr("skipped", exc.reason)
    level = logging.INFO if exc.reason in SKIPS else logging.ERROR
    log.log(
        level,
        "%s ended the chain (%s: %s): %s task=%s",
        stage,
        exc.reason,
        exc,
        describe(pushed, match),
        task.request.id,
    )
    if exc.reason == IN_INDEX:
        return  # reported in its index's report: nothing for an operator to look at (logged and counted only)
    _svc().failures.add(
        stage=stage,
        reason=exc.reason,
        message=str(exc),
        source=pushed.source,
        change=pushed.change,
        event_id=pushed.event_id,
        account=pushed.account,
        region=pushed.region,
        repository=pushed.repository,
        digest=pushed.digest,
        tenant=getattr(match, "tenant", None),
        product=getattr(match, "product", None),
        task_id=task.request.id,
    )


# The three first steps store no result and return the next step's message, whose repr Celery computes for the
# task-succeeded event (Flower's result column) at every step: its first 256 characters name the event, account,
# region and repository (the arguments name the image), where the whole repr cost 0.15-0.2 ms per step.
FIRST_STEPS: dict[str, Any] = {"bind": True, "ignore_result": True, "max_retries": None, "resultrepr_maxsize": 256}


@app.task(name="ninkik.match_tenant", queue=NINKIK_QUEUE, **FIRST_STEPS)
def match_tenant(self: Task, event: dict[str, Any], first_try: float | None = None) -> dict[str, Any]:
    """Repository name -> tenant and product."""
    pushed = ImagePushed.model_validate(event)
    out = _run(self, "match_tenant", pushed, None, lambda: match_step(_svc(), pushed), first_try)
    return out.model_dump(mode="json") if isinstance(out, Matched) else out


@app.task(name="ninkik.describe_image", queue=AWS_QUEUE, **FIRST_STEPS)
def describe_image(self: Task, msg: dict[str, Any], first_try: float | None = None) -> dict[str, Any]:
    """ecr:DescribeImages for the pushed digest."""
    m = Matched.model_validate(msg)
    out = _run(self, "describe_image", m.event, m.match, lambda: describe_step(_svc(), m), first_try)
    return out.model_dump(mode="json") if isinstance(out, Described) else out


@app.task(name="ninkik.fetch_scan_findings", queue=AWS_QUEUE, **FIRST_STEPS)
def fetch_scan_findings(self: Task, msg: dict[str, Any], first_try: float | None = None) -> dict[str, Any]:
    """Every page of ecr:DescribeImageScanFindings, waiting for the scan to finish."""
    m = Described.model_validate(msg)
    out = _run(self, "fetch_scan_findings", m.event, m.match, lambda: scan_step(_svc(), m), first_try)
    return out.model_dump(mode="json") if isinstance(out, Scanned) else out


@app.task(name="ninkik.notify", bind=True, queue=NINKIK_QUEUE, max_retries=None)
def notify(self: Task, msg: dict[str, Any], first_try: float | None = None) -> dict[str, Any]:
    """POST the report to ninkik, once (or DELETE the image that is gone)."""
    m = Scanned.model_validate(msg)
    svc, task_id = _svc(), self.request.id
    moved: list[str]
    if m.gone:
        outcome, moved = _run(self, "notify", m.event, m.match, lambda: remove_step(svc, m, task_id), first_try), []
    else:
        outcome, moved = _run(self, "notify", m.event, m.match, lambda: notify_step(svc, m, task_id), first_try)
    log.info("%s (%s, scan %s): %s task=%s", outcome, m.key[:12], m.status, describe(m.event, m.match), task_id)
    change = m.event.change or m.event.source
    if outcome == "notified":
        # The event's time is the push's; sweeps find images pushed long ago.
        latency = time.time() - m.event.time.timestamp() if m.event.source == "push" else None
        svc.stats.soon("notified", m.status, latency=latency)
        if m.event.source == "lifecycle":
            svc.stats.soon("lifecycle", "rereported", change)
    elif outcome in ("removed", "superseded"):
        svc.stats.incr("lifecycle", outcome, change)
    else:
        svc.stats.incr("already_sent", str(outcome))  # rare: a report sent before
    # This image took their tags: ninkik hears of them again, with the tags they keep. Not from a chain that
    # reports such an image itself: were DescribeImages to show one tag on two images for a while, the two would
    # take it from each other for ever (the lifecycle sweep sets what is left right).
    if moved and m.event.change != "retagged":
        log.info("tag moved to %s from %d other images: reported again", m.event.digest, len(moved))
        start_all(retagged(m, moved))
    return {"outcome": outcome, "key": m.key, "scan_status": m.status}


def start(pushed: ImagePushed) -> AsyncResult:
    """Queue the chain for one pushed image."""
    return start_all([pushed])[0]


def start_all(pushes: list[ImagePushed]) -> list[AsyncResult]:
    """Queue the chains for several pushed images (a batch of ingest's), in order; their images begin to wait to be
    described with their repositories' others in one Redis round trip."""
    s = get_settings()
    gathering.register(_svc().gathering, pushes)  # from now on each waits to be described with its repository's
    return [_chain(s, pushed).apply_async(add_to_parent=False) for pushed in pushes]  # no growing child list


def _chain(s: Settings, pushed: ImagePushed) -> chain:
    # What Flower, the task events and Celery's log lines show as each step's arguments: the image, not a repr
    # of its message that Celery would compute at every publish (0.05-0.15 ms each, four per image).
    shown = {"argsrepr": describe(pushed), "kwargsrepr": "{}"}
    describing = describe_image.s().set(**shown)
    if pushed.source == "push" and s.scan_first_read_seconds > 0 and not pushed.scan_finished:
        # A scan started by the push is not done a few milliseconds later: the first read would only spend
        # the ECR budget. The image is described just before it, with the other pushes to its repository
        # accepted meanwhile, in one call (gathering.py). Sweeps read at once: their images were pushed long ago.
        describing = describing.set(countdown=s.scan_first_read_seconds)
    match = match_tenant.s(pushed.model_dump(mode="json")).set(**shown)
    if pushed.finding_refresh:
        match = match.set(countdown=s.finding_refresh_seconds)  # the burst's later events: read by this chain
    return chain(match, describing, fetch_scan_findings.s().set(**shown), notify.s().set(**shown))


# Sweeps over the registries (domain in backfill.py), acknowledged once done on RabbitMQ (on the Redis broker,
# on receipt: brokers/redis.py). A warm shutdown stops a sweep at its next image and queues it again under
# the same id, its chains started so far recorded (a backfill's by its id, reconcile's by event id), so
# the copy goes on where it stopped, on another worker. A worker killed outright (SIGKILL past the grace
# period) has its sweep redelivered by RabbitMQ, and the copy skips what was recorded (docs/health.md).
PROGRESS_EVERY = 100  # images between two PROGRESS updates of a backfill (what Flower shows)


def _stopping() -> bool:
    """The worker is shutting down (warm or cold): sweeps stop at their next image."""
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


def _again(task: Task) -> Ignore:
    """Queue this sweep again under its id (a backfill's progress and result keep their id); drop this one."""
    task.apply_async(args=task.request.args, kwargs=task.request.kwargs, task_id=task.request.id)
    log.warning("%s %s stopped by the worker's shutdown: queued again to go on elsewhere", task.name, task.request.id)
    return Ignore()


@app.task(name="ninkik.backfill", bind=True, queue=CONTROL_QUEUE, track_started=True)
def backfill(
    self: Task,
    tenant: str | None = None,
    repository: str | list[str] | None = None,
    since: str | None = None,
    account: str | None = None,
) -> dict[str, Any]:
    """Start the chain for every image in the registries (or the account's), or the tenant's, the repositories',
    pushed since."""
    svc = _svc()
    filters = validate(
        tenant,
        repository,
        since,
        tenant_known=lambda t: svc.directory().tenant(t) is not None,
        account=account,
        accounts=accepted(svc.settings)[0],
    )

    def progress(p: Progress) -> None:
        self.update_state(state="PROGRESS", meta=p.as_dict())

    try:
        return sweeps.backfill(
            svc,
            filters,
            start,
            on_progress=progress,
            progress_every=PROGRESS_EVERY,
            run_id=self.request.id,
            stop=_stopping,
        )
    except SweepStopped:
        raise _again(self) from None


@app.task(name="ninkik.reconcile", bind=True, queue=CONTROL_QUEUE)
def reconcile(self: Task) -> dict[str, Any]:
    """Start chains for images pushed since the last watermark whose push events never arrived."""
    try:
        return sweeps.reconcile(_svc(), start, stop=_stopping)
    except SweepStopped:
        raise _again(self) from None


@app.task(name="ninkik.rescan", bind=True, queue=CONTROL_QUEUE)
def rescan(self: Task) -> dict[str, Any]:
    """Read recent images' findings again; ninkik hears only of reports that changed."""
    try:
        return sweeps.rescan(_svc(), start, stop=_stopping)
    except SweepStopped:
        raise _again(self) from None


@app.task(name="ninkik.lifecycle", bind=True, queue=CONTROL_QUEUE)
def lifecycle(self: Task, account: str | None = None, repositories: list[str] | None = None) -> dict[str, Any]:
    """Compare the images ninkik has with the registries: the gone removed, the changed reported again."""
    svc = _svc()
    with sweeps.exclusive(svc, "lifecycle", ttl=max(3600, svc.settings.lifecycle_interval_seconds)) as mine:
        if not mine:
            return {"skipped": "another lifecycle sweep is running"}
        pace = sweeps.rescan_pace(svc.settings)
        return lifecycle_sweep(svc, start_all, pace, account, repositories).as_dict()
@app.task(name="ninkik.coverage", queue=CONTROL_QUEUE)
def coverage() -> dict[str, Any]:
    """Count the images ninkik holds by scan state, for the gauge ninkik_coverage_images (no AWS call)."""
    from .coverage.gauge import recount

    svc = _svc()
    return recount(svc.redis, svc.settings)
