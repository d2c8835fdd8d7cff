"""Backfill, reconcile and rescan: walk the registries' images and start a chain for each; no Celery here."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .artifacts import INDEX_MEDIA_TYPES
from .ecr import NOT_READY
from .errors import IdentityUnavailable, PermanentError, SweepStopped, TransientError
from .events import ImagePushed
from .filters import Filters
from .findings import Image
from .idempotency import image_id
from .indexes import Claims, claim_listed
from .inventory import Known, Registry, registries
from .listing import (
    ListingDenied,
    Missing,
    Progress,
    Source,
    changed,
    image_pages,
    pushed_at,
    pushed_event,
    repositories,
)
from .ratelimit import Pace

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_ecr.type_defs import ImageDetailTypeDef

    from .config import Settings
    from .stages import Services

log = logging.getLogger(__name__)

Start = Callable[[ImagePushed], object]


# The accepted limit of sweeping without a full listing, as sweeps and `check` state it.
LIMIT = (
    "without a listing of the registry, a repository that is neither a product's (TENANT/PRODUCT_UUID or "
    "TENANT/PRODUCT_NAME), nor seen in a push event, nor named in NINKIK_REPOSITORIES or `backfill --repository` "
    "(a sub-path one such as TENANT/web/api whose events were all lost) cannot be found"
)
LISTING_STATEMENT = (
    '{"Effect": "Allow", "Action": "ecr:DescribeRepositories", '
    '"Resource": "arn:aws:ecr:<region>:<account>:repository/*"}'
)
_listing_denied: set[Registry] = set()  # registries whose listing was refused, logged once per process


@dataclass
class Sweep:
    """One pass over some registries' images, starting a chain per image; streams page by page."""

    source: Source
    ecr: Callable[[str, str], ECRClient]  # (account, region) -> a client acting as that account
    start: Start
    on_progress: Callable[[Progress], None] | None = None
    progress_every: int = 100
    # reconcile: (event ids) -> those already started, and (event ids) -> remember them as started
    seen: Callable[[list[str]], set[str]] | None = None
    mark: Callable[[list[str]], None] | None = None
    # where names come from when the registry cannot be listed (None: such a sweep fails)
    known: Known | None = None
    pace: Pace | None = None  # rescan: how fast its ECR calls go (a chain's two, a scan head's one)
    # rescan: (image ids) -> the stamp ninkik has of each (None: read it again whatever the listing says)
    reported: Callable[[list[str]], list[str | None]] | None = None
    # which index lists a manifest (None: every image gets a chain); claims are kept this many seconds
    claims: Claims | None = None
    claim_ttl: int = 90 * 24 * 3600
    stop: Callable[[], bool] | None = None  # True once the worker is stopping: SweepStopped at the next image
    progress: Progress = field(default_factory=Progress)

    def run(self, registry: Registry, filters: Filters) -> Progress:
        """Sweep one registry; returns this registry's counts (the running total is in `progress`)."""
        mine = Progress()
        try:
            self._run(registry, filters, mine)
        finally:
            self.progress.add(mine)
        if mine.other_repositories:
            log.info(
                "%s: %d repositories in %s/%s are not named ${TENANT_UUID}/${PRODUCT} and were skipped",
                self.source,
                mine.other_repositories,
                registry.account,
                registry.region,
            )
        if mine.unreachable:
            log.warning(
                "%s: %d repositories in %s/%s could not be read: %s",
                self.source,
                len(mine.unreachable),
                registry.account,
                registry.region,
                "; ".join(mine.unreachable[:5]),
            )
        return mine

    def _names(self, ecr: ECRClient, registry: Registry, filters: Filters, mine: Progress) -> Iterator[str]:
        """The repositories to read: those named by the filters, else the listing, else what is known by name."""
        if filters.repositories:
            yield from filters.repositories
            return
        try:
            yield from repositories(ecr, registry.account, filters, mine)
            return
        except ListingDenied as exc:
            if self.known is None:
                raise PermanentError("access_denied", f"ecr:DescribeRepositories is not granted: {exc}") from None
            where = f"{registry.account}/{registry.region}"
            mine.by_name.append(where)
            if registry not in _listing_denied:
                _listing_denied.add(registry)
                log.warning(
                    "the policy does not grant ecr:DescribeRepositories on repository/* in %s: sweeps name the "
                    "repositories they know (tenants' products, repositories seen in events, NINKIK_REPOSITORIES); "
                    "%s. To list instead, add %s",
                    where,
                    LIMIT,
                    LISTING_STATEMENT,
                )
        tenants = [filters.tenant] if filters.tenant else sorted(self.known.all_tenants())
        if not tenants:
            log.warning(
                "%s: no tenant is known in %s/%s (set NINKIK_TENANT_UUIDS, or NINKIK_TENANTS_FILE): nothing to sweep",
                self.source,
                registry.account,
                registry.region,
            )
        for tenant in tenants:
            names = self.known.names(registry, tenant)
            if not names:
                log.info("%s: tenant %s has no repository known by name: nothing to sweep", self.source, tenant)
            yield from names

    def _run(self, registry: Registry, filters: Filters, mine: Progress) -> None:
        ecr = self.ecr(registry.account, registry.region)
        for repository in self._names(ecr, registry, filters, mine):
            self._maybe_stop()
            mine.repositories += 1
            self._report(mine)
            try:
                self._repository(ecr, registry, repository, filters, mine)
            except Missing:
                mine.repositories -= 1
                mine.missing_repositories += 1
                log.debug("no repository %s in %s/%s", repository, registry.account, registry.region)
                if self.known is not None:
                    self.known.inventory.forget(registry.account, registry.region, repository)
            except PermanentError as exc:
                if exc.reason != "access_denied":
                    raise
                mine.unreachable.append(f"{repository}: {exc}")
            log.log(
                logging.INFO if self.source == "backfill" else logging.DEBUG,  # scheduled sweeps: totals only
                "%s: repository=%s registry=%s region=%s, %d chains started in this registry so far",
                self.source,
                repository,
                registry.account,
                registry.region,
                mine.chains_started,
            )

    def _repository(
        self, ecr: ECRClient, registry: Registry, repository: str, filters: Filters, mine: Progress
    ) -> None:
        # Untagged manifests are started last, once the repository's indexes have claimed theirs: a multi-platform
        # tag is one report (its index's), not one per manifest.
        indexes: list[str] = []
        untagged: list[ImageDetailTypeDef] = []
        for page in image_pages(ecr, registry.account, repository):
            before = mine.images
            mine.images += len(page)
            wanted = [d for d in page if filters.since is None or (pushed_at(d) or filters.since) >= filters.since]
            if self.source == "rescan":
                ready = [d for d in wanted if (d.get("imageScanStatus") or {}).get("status") not in NOT_READY]
                mine.not_ready += len(wanted) - len(ready)
                if self.reported is not None:
                    ids = [image_id(registry.account, registry.region, repository, d["imageDigest"]) for d in ready]
                    ready = changed(ecr, ready, self.reported(ids), mine, self.pace)
                wanted = ready
            if self.claims is not None:
                indexes += [d["imageDigest"] for d in wanted if d.get("imageManifestMediaType") in INDEX_MEDIA_TYPES]
                later = [
                    d
                    for d in wanted
                    if not d.get("imageTags") and d.get("imageManifestMediaType") not in INDEX_MEDIA_TYPES
                ]
                untagged += later
                wanted = [d for d in wanted if d not in later]
            self._start(registry, wanted, mine)
            self._report(mine, before)
        if untagged and self.claims is not None:
            where = Image(
                registry_id=registry.account, region=registry.region, repository=repository, digest="", tags=[]
            )
            digests = [d["imageDigest"] for d in untagged]
            claimed = claim_listed(ecr, self.claims, where, indexes, digests, self.claim_ttl)
            mine.in_index += len(claimed)
            self._start(registry, [d for d in untagged if d["imageDigest"] not in claimed], mine)

    def _start(self, registry: Registry, details: list[ImageDetailTypeDef], mine: Progress) -> None:
        events = [pushed_event(self.source, d, registry.region) for d in details]
        if self.seen is not None:
            seen = self.seen([e.event_id for e in events])
            mine.already_started += len(seen)
            events = [e for e in events if e.event_id not in seen]
        started: list[str] = []
        try:
            for event in events:
                self._maybe_stop()
                if self.pace is not None:
                    self.pace.wait(CALLS_PER_IMAGE)
                self.start(event)
                started.append(event.event_id)
                mine.chains_started += 1
        finally:
            if self.mark is not None and started:
                self.mark(started)  # only once their chains are queued (a stop keeps those already started)

    def _maybe_stop(self) -> None:
        if self.stop is not None and self.stop():
            raise SweepStopped(f"{self.source} stopped by the worker's shutdown: {self.progress.as_dict()}")

    def _report(self, mine: Progress, images_before: int | None = None) -> None:
        """Report the running total at each new repository and whenever another `progress_every` images were read."""
        if self.on_progress is None:
            return
        if images_before is not None and images_before // self.progress_every == mine.images // self.progress_every:
            return
        total = Progress()
        total.add(self.progress)
        total.add(mine)
        self.on_progress(total)


def summary_notes(progress: Progress) -> dict[str, Any]:
    """What a sweep's result says beyond its counts: the accepted limit when it enumerated by name."""
    return {"limit": LIMIT} if progress.by_name else {}


def backfill(
    svc: Services,
    filters: Filters,
    start: Start,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: int = 100,
    run_id: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Start a chain (source backfill) for every image the filters select, in every registry.

    With `run_id`, a run stopped and started again (the same id) starts no image's chain twice.
    """
    began = time.monotonic()
    sweep = Sweep(
        "backfill", svc.ecr, start, on_progress, progress_every, known=Known.of(svc), stop=stop, **_claims(svc)
    )
    if run_id is not None:
        ttl, records = svc.settings.event_dedupe_seconds, svc.records
        sweep.seen = lambda ids: {i.split("|", 1)[1] for i in records.seen_events([f"{run_id}|{i}" for i in ids])}
        sweep.mark = lambda ids: records.mark_events([f"{run_id}|{i}" for i in ids], ttl)
    for registry in registries(svc.settings, filters.account):
        _each_account(sweep, registry, filters)
    summary = {
        **sweep.progress.as_dict(),
        **summary_notes(sweep.progress),
        "seconds": round(time.monotonic() - began, 3),
    }
    log.info("backfill done %s: %s", filters.as_kwargs(), summary)
    return {**summary, "filters": filters.as_kwargs()}


def watermark_key(namespace: str, registry: Registry) -> str:
    """Where the reconcile watermark of one registry lives."""
    return f"{namespace}:watermark:{registry.account}:{registry.region}"


def reconcile(
    svc: Services, start: Start, *, now: datetime | None = None, stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Start chains for images pushed since each registry's watermark (minus the overlap) not yet started.

    A registry's watermark moves to the time its sweep began, and only once the sweep succeeded; a
    registry with no watermark yet is read back NINKIK_RECONCILE_FIRST_LOOKBACK_SECONDS.
    """
    s, r, records = svc.settings, svc.redis, svc.records
    with exclusive(svc, "reconcile", ttl=max(300, 3 * s.reconcile_interval_seconds)) as mine:
        if not mine:
            log.info("reconcile skipped: another reconcile is running")
            return {"skipped": "another reconcile is running"}
        sweep = Sweep(
            "reconcile",
            svc.ecr,
            start,
            seen=records.seen_events,
            mark=lambda ids: records.mark_events(ids, s.event_dedupe_seconds),
            known=Known.of(svc),
            stop=stop,
            **_claims(svc),
        )
        out: dict[str, Any] = {}
        errors: list[str] = []
        for registry in registries(s):
            began = now or datetime.now(UTC)
            key = watermark_key(s.redis_namespace, registry)
            stored = r.get(key)
            if isinstance(stored, str):
                since = datetime.fromisoformat(stored) - timedelta(seconds=s.reconcile_overlap_seconds)
            else:
                since = began - timedelta(seconds=s.reconcile_first_lookback_seconds)
            try:
                counts = sweep.run(registry, Filters(since=since))
            except (TransientError, PermanentError) as exc:
                errors.append(f"{registry.account}/{registry.region}: {exc}")
                log.error("reconcile of %s/%s failed, watermark kept: %s", registry.account, registry.region, exc)
                continue
            r.set(key, began.isoformat())
            out[f"{registry.account}:{registry.region}"] = {
                **counts.as_dict(),
                "since": since.isoformat(),
                "watermark": began.isoformat(),
            }
        log.info("reconcile done: %s", sweep.progress.as_dict())
        if errors:
            raise TransientError("reconcile failed for " + "; ".join(errors))
        return {**sweep.progress.as_dict(), **summary_notes(sweep.progress), "registries": out}


# A rescan's calls take at most this share of a region's ECR budget: a chain's one (DescribeImageScanFindings: the
# chain takes its image from the rescan's DescribeImages page), a scan head's one. At the default 20 calls/s,
# 5 calls/s: 5 chains or 5 unchanged basic images a second (18,000 an hour). Pushes keep the rest.
RESCAN_SHARE = 0.25
CALLS_PER_IMAGE = 1


def rescan_pace(s: Settings) -> Pace | None:
    """How fast a rescan makes its ECR calls (None: no ECR budget is set, so nothing to share)."""
    return Pace(s.ecr_calls_per_second * RESCAN_SHARE) if s.ecr_calls_per_second > 0 else None


def rescan(
    svc: Services, start: Start, *, now: datetime | None = None, stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Start chains (source rescan) for images pushed in the last NINKIK_RESCAN_DAYS days, spread at
    `rescan_pace` rather than all at once; none for a basic scan unchanged since ninkik's report
    (listing.changed: what each image costs).

    Only a report whose fingerprint changed is sent again: the notification step skips keys ninkik has.
    """
    s = svc.settings
    with exclusive(svc, "rescan", ttl=max(3600, s.rescan_interval_seconds)) as mine:
        if not mine:
            log.info("rescan skipped: another rescan is running")
            return {"skipped": "another rescan is running"}
        since = (now or datetime.now(UTC)) - timedelta(days=s.rescan_days)
        sweep = Sweep(
            "rescan",
            svc.ecr,
            start,
            known=Known.of(svc),
            pace=rescan_pace(s),
            reported=svc.records.reported,
            stop=stop,
            **_claims(svc),
        )
        for registry in registries(s):
            _each_account(sweep, registry, Filters(since=since))
        log.info("rescan done: %s", sweep.progress.as_dict())
        return {**sweep.progress.as_dict(), **summary_notes(sweep.progress), "since": since.isoformat()}


def _each_account(sweep: Sweep, registry: Registry, filters: Filters) -> None:
    """Sweep one registry; an account whose identity is refused (or a registry that does not answer) is noted as
    unreachable and the other accounts are swept all the same."""
    try:
        sweep.run(registry, filters)
    except (IdentityUnavailable, TransientError) as exc:
        sweep.progress.unreachable.append(f"registry {registry.account}/{registry.region}: {exc}")
        log.error("%s of %s/%s failed, the other registries go on: %s", sweep.source, *registry.astuple(), exc)


def _claims(svc: Services) -> dict[str, Any]:
    """The sweeps' view of which index lists a manifest."""
    return {"claims": svc.claims, "claim_ttl": svc.settings.sent_record_seconds}


@contextmanager
def exclusive(svc: Services, name: str, ttl: int) -> Iterator[bool]:
    """A Redis lock so two runs of one sweep never overlap (a manual run and a scheduled one, say)."""
    key, token = f"{svc.settings.redis_namespace}:lock:{name}", uuid.uuid4().hex
    acquired = bool(svc.redis.set(key, token, nx=True, ex=ttl))
    try:
        yield acquired
    finally:
        if acquired and svc.redis.get(key) == token:
            svc.redis.delete(key)
