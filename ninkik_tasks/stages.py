"""The four stages of the chain as plain functions over small messages; no Celery here."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import redis
from pydantic import BaseModel, ConfigDict

from . import clients
from .config import Settings
from .ecr import describe_image, not_scanned, scan_findings
from .errors import PermanentError, ScanNotReady, TransientError
from .events import ImagePushed
from .findings import Image, Report
from .idempotency import Records
from .metrics import PipelineStats
from .notify import idempotency_key, images_url, render, send
from .ratelimit import RateLimited, RateLimiter
from .records import Journal, failures
from .scanwait import ScanWaits
from .tenants import Directory, Match

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

log = logging.getLogger(__name__)
# The longest a call waits for its slot in the region's ECR budget (RateLimited beyond: retried when the queue
# will have drained); a scan still running, read again, waits at most a second and else reads at its next turn.
FIRST_MAX_WAIT = 10.0
REREAD_MAX_WAIT = 1.0


@dataclass
class Services:
    """What the stages need, made once per process."""

    settings: Settings
    redis: redis.Redis
    http: httpx.Client

    @property
    def records(self) -> Records:
        """Idempotency records."""
        return Records(self.redis, self.settings.redis_namespace)

    @property
    def stats(self) -> PipelineStats:
        """Cluster-wide outcome counters (exported by ingest's /metrics)."""
        return PipelineStats(self.redis, self.settings.redis_namespace)

    @property
    def scan_waits(self) -> ScanWaits:
        """The images waiting for their scan, and how often each may be read."""
        s = self.settings
        return ScanWaits(self.redis, s.redis_namespace, s.scan_poll_seconds, s.ecr_calls_per_second)

    @property
    def failures(self) -> Journal:
        """Where chains that ended without a notification are recorded."""
        return failures(self.redis, self.settings.redis_namespace)

    def ecr(self, region: str, rereading: bool = False) -> ECRClient:
        """The ECR client for a region, its calls limited across all workers by NINKIK_ECR_CALLS_PER_SECOND.

        `rereading`: for a scan still running, read again. Such a call waits at most REREAD_MAX_WAIT for its
        slot (RateLimited otherwise: read at its next turn), so a burst of new pushes' first reads and
        DescribeImages never queues behind the waits, which take at most half of the budget anyway.
        """
        s = self.settings
        limiter = None
        if s.ecr_calls_per_second > 0:
            key = f"{s.redis_namespace}:ratelimit:ecr:{region}"
            max_wait = REREAD_MAX_WAIT if rereading else FIRST_MAX_WAIT
            limiter = RateLimiter(self.redis, key, s.ecr_calls_per_second, max_wait=max_wait)
        return clients.ecr(region, limiter, lane="reread" if rereading else "")

    def directory(self) -> Directory:
        """The tenant directory (API or file)."""
        s = self.settings
        s.require_tenant_directory()
        return Directory(
            self.redis,
            s.redis_namespace,
            http=self.http,
            api_url=s.api_url,
            token=s.api_token.get_secret_value() if s.api_token else None,
            tenants_file=s.tenants_file,
            cache_seconds=s.tenant_cache_seconds,
        )


def services(settings: Settings) -> Services:
    """This process's services."""
    return Services(settings, clients.redis_client(settings), clients.http(settings))


class Matched(BaseModel):
    """After match_tenant."""

    model_config = ConfigDict(frozen=True)
    event: ImagePushed
    match: Match


class Described(Matched):
    """After describe_image."""

    image: Image


class Scanned(Matched):
    """After fetch_scan_findings: the report itself waits in Redis under `key`."""

    key: str
    status: str


def describe(pushed: ImagePushed, match: Match | None = None) -> str:
    """The fields every log line about an image carries."""
    tenant = f" tenant={match.tenant} product={match.product}" if match else ""
    return f"repository={pushed.repository} digest={pushed.digest}{tenant} event={pushed.event_id}"


def match_tenant(svc: Services, pushed: ImagePushed) -> Matched:
    """Find the tenant and product the repository reports to."""
    return Matched(event=pushed, match=svc.directory().match(pushed.repository))


def describe_step(svc: Services, msg: Matched) -> Described:
    """DescribeImages in the event's registry and region."""
    e = msg.event
    image = describe_image(svc.ecr(e.region), e.account, e.region, e.repository, e.digest)
    # DescribeImages leaves out what it does not know (moto: the artifact type); the push event may say it.
    fallback = {"manifest_media_type": e.manifest_media_type, "artifact_media_type": e.artifact_media_type}
    missing = {k: v for k, v in fallback.items() if v and getattr(image, k) is None}
    if missing:
        image = image.model_copy(update=missing)
    return Described(event=e, match=msg.match, image=image)


def pushed_at(msg: Described) -> datetime:
    """When the image was pushed (DescribeImages, else the event's time), as an aware datetime."""
    when = msg.image.pushed_at or msg.event.time
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def scan_deadline(svc: Services, msg: Described) -> datetime:
    """When to stop waiting for the scan: the configured wait after the push."""
    return pushed_at(msg) + timedelta(seconds=svc.settings.scan_wait_seconds)


def settle_deadline(svc: Services, msg: Described) -> datetime:
    """Until when an enhanced scan that is ACTIVE with no findings is not taken as final."""
    s = svc.settings
    return pushed_at(msg) + timedelta(seconds=min(s.enhanced_settle_seconds, s.scan_wait_seconds))


def scan_step(svc: Services, msg: Described, now: datetime | None = None) -> Scanned:
    """Read the scan's findings; ScanNotReady until done or the wait ran out (then NOT_SCANNED)."""
    now = now or datetime.now(UTC)
    region, waiting_as = msg.event.region, f"{msg.image.registry_id}/{msg.image.repository}@{msg.image.digest}"
    remaining = (scan_deadline(svc, msg) - now).total_seconds()
    finished = msg.event.scan_finished or svc.scan_waits.finished(region, waiting_as)
    due = None if finished else svc.scan_waits.due_in(region, waiting_as)
    if due and remaining > 0:
        raise ScanNotReady("not this image's turn to be read yet", remaining=remaining, next_read=due)
    rereading = due is not None  # a scan still running, read again: it gives way to first reads
    try:
        scan = scan_findings(svc.ecr(region, rereading=rereading), msg.image)
        if scan.status == "ACTIVE" and not scan.findings and not finished and now < settle_deadline(svc, msg):
            # ACTIVE says continuous scanning is on, not that Inspector's first scan is done (aws/aws-cli#6759).
            raise ScanNotReady("enhanced scan ACTIVE with no findings yet: Inspector's first scan may be running")
    except RateLimited:
        if not rereading or remaining <= 0:
            raise
        next_read = svc.scan_waits.next_read(region, waiting_as)
        raise ScanNotReady(
            "the ECR budget is queued with first reads: read again at its next turn", remaining, next_read
        ) from None
    except ScanNotReady as exc:
        if remaining > 0:
            next_read = svc.scan_waits.next_read(region, waiting_as)
            raise ScanNotReady(str(exc), remaining=remaining, next_read=next_read) from None
        log.info("not scanned within %ss: %s", svc.settings.scan_wait_seconds, describe(msg.event, msg.match))
        scan = not_scanned()
    svc.scan_waits.done(region, waiting_as)
    report = Report(image=msg.image, scan=scan)
    key = idempotency_key(msg.match, report)
    ttl = svc.settings.result_expires_seconds
    svc.records.put_report(key, json.dumps(render(report, msg.event.source)), ttl)
    return Scanned(event=msg.event, match=msg.match, key=key, status=scan.status)


def notify_step(svc: Services, msg: Scanned, owner: str) -> str:
    """POST the report unless ninkik already has it; returns 'notified' or 'already_sent'."""
    s, records = svc.settings, svc.records
    if not s.api_url or not s.api_token:
        raise PermanentError("not_configured", "NINKIK_API_URL and NINKIK_API_TOKEN must be set to notify")
    lock_ttl = int(s.http_timeout_seconds * 3) + 30
    start = records.begin_send(msg.key, owner, lock_ttl)
    if start.state == "sent":
        return "already_sent"
    if start.state == "busy":
        raise TransientError("another worker is sending this report", retry_after=5)
    sent_ttl = None
    try:
        if start.report is None:
            raise PermanentError("report_expired", "the report expired before it could be sent")
        body: dict[str, Any] = json.loads(start.report)
        status = send(svc.http, images_url(s.api_url, msg.match), s.api_token.get_secret_value(), msg.key, body)
        sent_ttl = s.sent_record_seconds
    finally:
        records.end_send(msg.key, owner, sent_ttl)
    return "notified" if status != 409 else "already_had_it"
