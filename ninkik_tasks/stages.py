"""The stages of the chain as plain functions over small messages (the scan read: scans.py); no Celery here."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import httpx
import redis
from pydantic import BaseModel, ConfigDict

from . import clients
from .accounts import account_of
from .artifacts import is_index, not_an_image
from .config import Settings
from .errors import IMAGE_GONE, PermanentError, TransientError
from .events import ImagePushed
from .findings import Image
from .gathering import Gathering, gathered_image
from .holdings import Holding, Holdings
from .idempotency import Records, image_id
from .indexes import (
    Claims,
    IndexUnreadable,
    Platform,
    config_media_type,
    platforms_of,
    read_manifest,
)
from .metrics import PipelineStats
from .notify import images_url, send
from .ratelimit import RateLimiter
from .records import Journal, failures
from .scanwait import ScanWaits, member
from .tenants import Directory, Match

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

log = logging.getLogger(__name__)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# The longest a call waits for its slot in the region's ECR budget (RateLimited beyond: retried when the queue
# will have drained); a scan still running, read again, waits at most a second and else reads at its next turn.
FIRST_MAX_WAIT = 10.0
REREAD_MAX_WAIT = 1.0


def ecr_limit_key(namespace: str, account: str, region: str) -> str:
    """The Redis key of an account's ECR budget in a region (as ECR counts its quotas), which every worker shares."""
    return f"{namespace}:ratelimit:ecr:{account}:{region}"


@dataclass
class Services:
    """What the stages need, made once per process (services()), each part on first use."""

    settings: Settings
    redis: redis.Redis
    http: httpx.Client
    _ecr: dict[tuple[str, str, bool], ECRClient] = field(default_factory=dict, repr=False)
    # The pool's threads ask for the region's client at once on a worker's first burst: one of them makes it.
    _making: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def records(self) -> Records:
        """Idempotency records."""
        return Records(self.redis, self.settings.redis_namespace)

    @cached_property
    def holdings(self) -> Holdings:
        """What ninkik has of each image, per repository."""
        return Holdings(self.redis, self.settings.redis_namespace)

    @cached_property
    def stats(self) -> PipelineStats:
        """Cluster-wide outcome counters (exported by ingest's /metrics)."""
        return PipelineStats(self.redis, self.settings.redis_namespace)

    @cached_property
    def scan_waits(self) -> ScanWaits:
        """The images waiting for their scan, and how often each may be read."""
        s = self.settings
        return ScanWaits(
            self.redis, s.redis_namespace, s.scan_poll_seconds, s.ecr_calls_per_second, s.scan_safety_poll_seconds
        )

    @cached_property
    def claims(self) -> Claims:
        """Which index lists a manifest (and where ecr:BatchGetImage is refused)."""
        return Claims(self.redis, self.settings.redis_namespace)

    @cached_property
    def gathering(self) -> Gathering:
        """The images waiting to be described together, per repository."""
        return Gathering(self.redis, self.settings.redis_namespace)

    @cached_property
    def failures(self) -> Journal:
        """Where chains that ended without a notification are recorded."""
        return failures(self.redis, self.settings.redis_namespace)

    def ecr(self, account: str, region: str, rereading: bool = False) -> ECRClient:
        """The ECR client of an account in a region, acting as that account (accounts.py), its calls limited across
        all workers by NINKIK_ECR_CALLS_PER_SECOND for that account and region.

        `rereading`: for a scan still running, read again. Such a call waits at most REREAD_MAX_WAIT for its
        slot (RateLimited otherwise: read at its next turn), so a burst of new pushes' first reads and
        DescribeImages never queues behind the waits, which take at most half of the budget anyway.
        """
        made = self._ecr.get((account, region, rereading))
        if made is not None:
            return made
        with self._making:
            made = self._ecr.get((account, region, rereading))
            if made is not None:
                return made
            s = self.settings
            limiter = None
            if s.ecr_calls_per_second > 0:
                max_wait = REREAD_MAX_WAIT if rereading else FIRST_MAX_WAIT
                key = ecr_limit_key(s.redis_namespace, account, region)
                limiter = RateLimiter(self.redis, key, s.ecr_calls_per_second, max_wait=max_wait)
            stats = self.stats
            made = clients.ecr(
                account_of(s, account),
                region,
                limiter,
                lane="reread" if rereading else "",
                count=lambda: stats.soon("ecr_call", account, region),
            )
            self._ecr[(account, region, rereading)] = made
            return made

    def directory(self) -> Directory:
        """The tenant directory (API or file); ConfigError if neither is configured."""
        self.settings.require_tenant_directory()
        return self._directory

    @cached_property
    def _directory(self) -> Directory:
        s = self.settings
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
    """This process's services for `settings`, made once (a forked child makes its own, with its own clients)."""
    made = clients.per_process(("services", id(settings)), lambda: _services(settings))
    return made if made.settings is settings else _services(settings)  # another Settings at a freed one's address


def _services(settings: Settings) -> Services:
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
    observed: float = 0.0  # when DescribeImages was called (epoch seconds): orders what ninkik is told (holdings.py)
    gone: bool = False  # DescribeImages found no such image: ninkik is told to remove it


class Scanned(Matched):
    """After fetch_scan_findings: the report itself waits in Redis under `key` (or, `gone`, the image is removed)."""

    key: str
    status: str
    stamp: str | None = None  # Report.stamp: remembered once ninkik has the report
    holding: Holding | None = None  # what ninkik will have of the image once it has the report
    gone: bool = False


def describe(pushed: ImagePushed, match: Match | None = None) -> str:
    """The fields every log line about an image carries."""
    tenant = f" tenant={match.tenant} product={match.product}" if match else ""
    return f"repository={pushed.repository} digest={pushed.digest}{tenant} event={pushed.event_id}"


def match_tenant(svc: Services, pushed: ImagePushed) -> Matched:
    """Find the tenant and product the repository reports to."""
    return Matched(event=pushed, match=svc.directory().match(pushed.repository))


def describe_step(svc: Services, msg: Matched) -> Described:
    """DescribeImages in the event's registry and region, with the other images of the repository waiting to be
    described (gathering.py); an index's manifest too (ecr:BatchGetImage).

    Artifacts that are not images end the chain here (artifacts.SKIP_REASONS, recorded, never reported).
    """
    e = msg.event
    parked = svc.scan_waits.parked(e.region, member(e.account, e.repository, e.digest)) if e.scan_finished else None
    if parked is not None:  # a scan-complete event for a waiting image: the waiting chain described it
        return Described.model_validate_json(parked)
    observed = e.observed or time.time()
    try:
        return _describe(svc, msg, observed)
    except PermanentError as exc:
        if exc.reason != IMAGE_GONE:
            raise
        return gone(msg, observed)


def _describe(svc: Services, msg: Matched, observed: float) -> Described:
    e = msg.event
    ecr = svc.ecr(e.account, e.region)
    image = e.listed or gathered_image(svc.gathering, ecr, e)  # a sweep's page described it already
    if e.listed is not None:
        # The next steps' messages carry the image once, as `image`.
        e = e.model_copy(update={"listed": None, "observed": None})
    # DescribeImages leaves out what it does not know (moto: the artifact type); the push event may say it.
    fallback = {"manifest_media_type": e.manifest_media_type, "artifact_media_type": e.artifact_media_type}
    missing = {k: v for k, v in fallback.items() if v and getattr(image, k) is None}
    if missing:
        image = image.model_copy(update=missing)
    claims = svc.claims
    oci = image.artifact_media_type is None and image.manifest_media_type == OCI_MANIFEST
    if oci and not claims.unreadable(e.region, image.registry_id):
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
        return Described(event=e, match=msg.match, image=image, observed=observed)
    try:
        platforms, listed = platforms_of(read_manifest(ecr, image))
    except IndexUnreadable:
        claims.mark_unreadable(e.region, image.registry_id)
        log.info("index read without its platforms (ecr:BatchGetImage not granted): %s", describe(e, msg.match))
        return Described(event=e, match=msg.match, image=image, platforms=None, observed=observed)
    claims.claim(e.region, image.registry_id, image.repository, listed, image.digest, svc.settings.sent_record_seconds)
    return Described(event=e, match=msg.match, image=image, platforms=platforms, observed=observed)


def gone(msg: Matched, observed: float) -> Described:
    """The image is not in its repository (deleted, or its last tag was): the chain tells ninkik to remove it."""
    e = msg.event
    image = Image(registry_id=e.account, region=e.region, repository=e.repository, digest=e.digest, tags=[])
    return Described(event=e, match=msg.match, image=image, observed=observed, gone=True)


def notify_step(svc: Services, msg: Scanned, owner: str) -> tuple[str, list[str]]:
    """POST the report unless ninkik already has it (or what a later DescribeImages said); returns the outcome
    ('notified', 'already_sent', 'already_had_it', 'superseded') and the digests whose tag this image took."""
    s, records = svc.settings, svc.records
    if not s.api_url or not s.api_token:
        raise PermanentError("not_configured", "NINKIK_API_URL and NINKIK_API_TOKEN must be set to notify")
    lock_ttl = int(s.http_timeout_seconds * 3) + 30
    held = holding_of(svc, msg)
    start = records.begin_send(msg.key, owner, lock_ttl, (held[0], held[2], held[3].observed) if held else None)
    if start.state == "stale":
        return "superseded", []
    if start.state == "sent":
        moved = records.end_send(msg.key, owner, s.sent_record_seconds, reported(msg), held)
        return "already_sent", moved
    if start.state == "busy":
        raise TransientError("another worker is sending this report", retry_after=5)
    sent_ttl = None
    try:
        if start.report is None:
            raise PermanentError("report_expired", "the report expired before it could be sent")
        # The body as the scan step stored it (JSON): sent as it is.
        key = msg.key if start.returning_from is None else returning_key(msg.key, start.returning_from)
        status = send(svc.http, images_url(s.api_url, msg.match), s.api_token.get_secret_value(), key, start.report)
        sent_ttl = s.sent_record_seconds
    finally:
        accepted = (reported(msg), held) if sent_ttl else (None, None)
        moved = records.end_send(msg.key, owner, sent_ttl, *accepted)
    return ("notified" if status != 409 else "already_had_it"), moved


def returning_key(key: str, before: str) -> str:
    """The Idempotency-Key of a report ninkik had before and then another (docs/api.md#the-idempotency-key)."""
    return hashlib.sha256(f"{key}\nafter\n{before}".encode()).hexdigest()


def holding_of(svc: Services, msg: Scanned) -> tuple[str, str, str, Holding] | None:
    """(Holdings key, tag map key, digest, Holding) of the report's image, for Records.end_send."""
    if msg.holding is None:
        return None
    e, holdings = msg.event, svc.holdings
    where = (e.account, e.region, e.repository)
    return holdings.key(*where), holdings.tags_key(*where), e.digest, msg.holding


def reported(msg: Scanned) -> tuple[str, str] | None:
    """(image, stamp) once ninkik has this report: a rescan whose listing shows the same stamp leaves the image
    alone (Records.remember_reported)."""
    if msg.stamp is None:
        return None
    e = msg.event
    return image_id(e.account, e.region, e.repository, e.digest), msg.stamp


