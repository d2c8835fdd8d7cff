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
from .artifacts import IN_INDEX, LIKELY_ATTESTATION, is_index, not_an_image
from .config import Settings
from .ecr import describe_image, not_scanned, scan_findings
from .errors import PermanentError, ScanNotReady, TransientError
from .events import ImagePushed
from .findings import Image, Index, Report, Scan
from .idempotency import Records, image_id
from .indexes import (
    UNREAD_REASON,
    Claims,
    IndexUnreadable,
    Platform,
    config_media_type,
    merge,
    platforms_of,
    read_manifest,
)
from .metrics import PipelineStats
from .notify import idempotency_key, images_url, render, send
from .ratelimit import RateLimited, RateLimiter
from .records import Journal, failures
from .scanwait import ScanWaits, member
from .tenants import Directory, Match

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

log = logging.getLogger(__name__)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX_UNREAD = "INDEX_UNREAD"  # the scan status of an index whose manifest ecr:BatchGetImage could not read
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
    def claims(self) -> Claims:
        """Which index lists a manifest (and where ecr:BatchGetImage is refused)."""
        return Claims(self.redis, self.settings.redis_namespace)

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
    platforms: list[Platform] | None = None  # an index read with ecr:BatchGetImage: its platform manifests


class Scanned(Matched):
    """After fetch_scan_findings: the report itself waits in Redis under `key`."""

    key: str
    status: str
    stamp: str | None = None  # Report.stamp: remembered once ninkik has the report


def describe(pushed: ImagePushed, match: Match | None = None) -> str:
    """The fields every log line about an image carries."""
    tenant = f" tenant={match.tenant} product={match.product}" if match else ""
    return f"repository={pushed.repository} digest={pushed.digest}{tenant} event={pushed.event_id}"


def match_tenant(svc: Services, pushed: ImagePushed) -> Matched:
    """Find the tenant and product the repository reports to."""
    return Matched(event=pushed, match=svc.directory().match(pushed.repository))


def describe_step(svc: Services, msg: Matched) -> Described:
    """DescribeImages in the event's registry and region; an index's manifest too (ecr:BatchGetImage).

    Artifacts that are not images end the chain here (artifacts.SKIP_REASONS, recorded, never reported).
    """
    e = msg.event
    ecr = svc.ecr(e.region)
    image = describe_image(ecr, e.account, e.region, e.repository, e.digest)
    # DescribeImages leaves out what it does not know (moto: the artifact type); the push event may say it.
    fallback = {"manifest_media_type": e.manifest_media_type, "artifact_media_type": e.artifact_media_type}
    missing = {k: v for k, v in fallback.items() if v and getattr(image, k) is None}
    if missing:
        image = image.model_copy(update=missing)
    claims = svc.claims
    readable = not claims.unreadable(e.region, image.registry_id)
    if image.artifact_media_type is None and image.manifest_media_type == OCI_MANIFEST and readable:
        # An OCI manifest whose config type nobody said (AWS says it; moto does not): the manifest says it.
        try:
            config = config_media_type(read_manifest(ecr, image))
            image = image.model_copy(update={"artifact_media_type": config})
        except IndexUnreadable:
            claims.mark_unreadable(e.region, image.registry_id)
    skip = not_an_image(image)
    if skip is not None:
        raise PermanentError(*skip)
    if not is_index(image):
        return Described(event=e, match=msg.match, image=image)
    try:
        platforms, listed = platforms_of(read_manifest(ecr, image))
    except IndexUnreadable:
        claims.mark_unreadable(e.region, image.registry_id)
        log.info("index read without its platforms (ecr:BatchGetImage not granted): %s", describe(e, msg.match))
        return Described(event=e, match=msg.match, image=image, platforms=None)
    claims.claim(e.region, image.registry_id, image.repository, listed, image.digest, svc.settings.sent_record_seconds)
    return Described(event=e, match=msg.match, image=image, platforms=platforms)


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


def waiting_as(image: Image) -> str:
    """How ScanWaits names an image: registry/repository@digest."""
    return member(image.registry_id, image.repository, image.digest)


def read_scan(
    svc: Services, msg: Described, image: Image, now: datetime, finished: bool, rereading: bool = False
) -> Scan:
    """One read of `image`'s scan; ScanNotReady while it is not final. `rereading`: a scan still running, read
    again: it gives way to first reads in the ECR budget (RateLimited when they queue)."""
    scan = scan_findings(svc.ecr(msg.event.region, rereading=rereading), image)
    if scan.status == "ACTIVE" and not scan.findings and not finished and now < settle_deadline(svc, msg):
        # ACTIVE says continuous scanning is on, not that Inspector's first scan is done (aws/aws-cli#6759).
        raise ScanNotReady("enhanced scan ACTIVE with no findings yet: Inspector's first scan may be running")
    return scan


def scan_step(svc: Services, msg: Described, now: datetime | None = None) -> Scanned:
    """Read the scan's findings (an index's: every platform's); ScanNotReady until done or the wait ran out."""
    now = now or datetime.now(UTC)
    index = None
    if is_index(msg.image):
        scan, index = index_scan(svc, msg, now)
    else:
        scan = image_scan(svc, msg, now)
    report = Report(image=msg.image, scan=scan, index=index)
    key = idempotency_key(msg.match, report)
    ttl = svc.settings.result_expires_seconds
    svc.records.put_report(key, json.dumps(render(report, msg.event.source)), ttl)
    return Scanned(event=msg.event, match=msg.match, key=key, status=scan.status, stamp=report.stamp())


def image_scan(svc: Services, msg: Described, now: datetime) -> Scan:
    """One image's scan. An untagged one is first looked up among the indexes' manifests, then held (see hold)."""
    region, member = msg.event.region, waiting_as(msg.image)
    remaining = (scan_deadline(svc, msg) - now).total_seconds()
    untagged = not msg.image.tags
    if untagged:
        _not_in_index(svc, msg)
    held = svc.scan_waits.held(region, member) if untagged else None
    if held is not None and held[0] > 0:
        raise ScanNotReady("held for an index that lists it", remaining=held[0], next_read=held[0])
    if held is not None:
        scan = Scan.model_validate_json(held[1])
    else:
        finished = msg.event.scan_finished or svc.scan_waits.finished(region, member)
        due = None if finished else svc.scan_waits.due_in(region, member)
        if due and remaining > 0:
            raise ScanNotReady("not this image's turn to be read yet", remaining=remaining, next_read=due)
        rereading = due is not None
        try:
            scan = read_scan(svc, msg, msg.image, now, finished, rereading)
        except RateLimited:
            if not rereading or remaining <= 0:
                raise
            next_read = svc.scan_waits.next_read(region, member)
            raise ScanNotReady(
                "the ECR budget is queued with first reads: read again at its next turn", remaining, next_read
            ) from None
        except ScanNotReady as exc:
            if remaining > 0:
                next_read = svc.scan_waits.next_read(region, member)
                raise ScanNotReady(str(exc), remaining=remaining, next_read=next_read) from None
            log.info("not scanned within %ss: %s", svc.settings.scan_wait_seconds, describe(msg.event, msg.match))
            scan = not_scanned()
        svc.scan_waits.done(region, member)
    if untagged and scan.status == "UNSUPPORTED_IMAGE":
        svc.scan_waits.release(region, member)
        raise PermanentError(
            LIKELY_ATTESTATION, "untagged, in no index known, and its scan is UNSUPPORTED_IMAGE: likely an attestation"
        )
    hold = hold_seconds(svc, msg, now) if untagged and held is None else 0.0
    if hold > 0:
        svc.scan_waits.hold(region, member, hold, scan.model_dump_json())
        svc.stats.incr("held", "untagged")
        log.info("untagged image held %.1fs for an index that lists it: %s", hold, describe(msg.event, msg.match))
        raise ScanNotReady("held for an index that lists it", remaining=hold, next_read=hold)
    svc.scan_waits.release(region, member)
    return scan


def hold_seconds(svc: Services, msg: Described, now: datetime) -> float:
    """How much longer an untagged pushed image waits for an index to list it (0: report it now).

    Platform manifests are pushed just before their index: an untagged image is held until
    NINKIK_UNTAGGED_HOLD_SECONDS after its push, apart from (and usually inside) its scan wait. Not where
    ecr:BatchGetImage is refused (no index can list it) nor for sweeps (they read indexes first).
    """
    s, e = svc.settings, msg.event
    if e.source != "push" or s.untagged_hold_seconds <= 0 or svc.claims.unreadable(e.region, msg.image.registry_id):
        return 0.0
    return (pushed_at(msg) + timedelta(seconds=s.untagged_hold_seconds) - now).total_seconds()


def _not_in_index(svc: Services, msg: Described) -> None:
    image = msg.image
    [index] = svc.claims.index_of(msg.event.region, image.registry_id, image.repository, [image.digest])
    if index is not None:
        svc.scan_waits.done(msg.event.region, waiting_as(image))
        svc.scan_waits.release(msg.event.region, waiting_as(image))
        raise PermanentError(IN_INDEX, f"a manifest of the index {index}: reported in that index's report")


def index_scan(svc: Services, msg: Described, now: datetime) -> tuple[Scan, Index]:
    """An index's scan: every platform's read, until all are final or the wait ran out (those: NOT_SCANNED)."""
    if msg.platforms is None:
        return Scan(type="NONE", status=INDEX_UNREAD), Index(platforms=None, unread_reason=UNREAD_REASON)
    region, member = msg.event.region, waiting_as(msg.image)
    remaining = (scan_deadline(svc, msg) - now).total_seconds()
    # A platform's scan-complete event marks its index (ingest): read it now, each platform by its own status.
    finished = msg.event.scan_finished or svc.scan_waits.finished(region, member)
    due = None if finished else svc.scan_waits.due_in(region, member)
    if due and remaining > 0:
        raise ScanNotReady("not this index's turn to be read yet", remaining=remaining, next_read=due)
    rereading = due is not None and remaining > 0  # read again: its platforms give way to first reads
    scans: list[tuple[Platform, Scan]] = []
    pending: list[str] = []  # the platforms still scanning, as ScanWaits names them
    waits, keep_for = svc.scan_waits, svc.settings.scan_wait_seconds + 600
    for platform in msg.platforms:
        image = msg.image.model_copy(
            update={"digest": platform.digest, "tags": [], "manifest_media_type": None, "artifact_media_type": None}
        )
        kept = waits.kept(region, member, platform.digest)
        if kept is not None:  # final at an earlier read of this wait: not read again
            scans.append((platform, Scan.model_validate_json(kept)))
            continue
        done = waits.finished(region, waiting_as(image))  # this platform's own scan-complete event
        try:
            scan = read_scan(svc, msg, image, now, done, rereading)
            waits.keep(region, member, platform.digest, scan.model_dump_json(), keep_for)
            scans.append((platform, scan))
        except (ScanNotReady, RateLimited) as exc:
            if isinstance(exc, RateLimited) and not rereading:
                raise  # a first or last read waits for the budget (as image_scan's), never NOT_SCANNED for it
            pending.append(waiting_as(image))
            scans.append((platform, not_scanned()))
    if pending and remaining > 0:
        # Each platform still scanning is one waiting image: its reads count against the budget as any other's.
        next_read = max(waits.next_read(region, m) for m in [member, *pending])
        raise ScanNotReady(
            f"{len(pending)} of {len(scans)} platforms' scans not final", remaining=remaining, next_read=next_read
        )
    if pending:
        log.info(
            "%d platforms not scanned within %ss: %s", len(pending), svc.settings.scan_wait_seconds, describe(msg.event)
        )
    for m in [member, *(waiting_as(msg.image.model_copy(update={"digest": p.digest})) for p in msg.platforms)]:
        waits.done(region, m)
    waits.forget_kept(region, member, [p.digest for p in msg.platforms])
    scan, platforms = merge(scans)
    return scan, Index(platforms=platforms)


def notify_step(svc: Services, msg: Scanned, owner: str) -> str:
    """POST the report unless ninkik already has it; returns 'notified' or 'already_sent'."""
    s, records = svc.settings, svc.records
    if not s.api_url or not s.api_token:
        raise PermanentError("not_configured", "NINKIK_API_URL and NINKIK_API_TOKEN must be set to notify")
    lock_ttl = int(s.http_timeout_seconds * 3) + 30
    start = records.begin_send(msg.key, owner, lock_ttl)
    if start.state == "sent":
        remember_reported(svc, msg)
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
    remember_reported(svc, msg)
    return "notified" if status != 409 else "already_had_it"


def remember_reported(svc: Services, msg: Scanned) -> None:
    """ninkik has this report: a rescan whose listing shows the same stamp leaves the image alone."""
    if msg.stamp is not None:
        e = msg.event
        image = image_id(e.account, e.region, e.repository, e.digest)
        svc.records.remember_reported(image, msg.stamp, svc.settings.sent_record_seconds)
