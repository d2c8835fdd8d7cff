"""Backfill, reconcile and rescan: walk the registries' images and start a chain for each; no Celery here."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from .config import Settings
from .ecr import classified, error_code
from .errors import ConfigError, InvalidFilter, PermanentError, TransientError
from .events import ImagePushed
from .tenants import split

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_ecr.type_defs import ImageDetailTypeDef

    from .stages import Services

log = logging.getLogger(__name__)

Source = Literal["backfill", "reconcile", "rescan"]
Start = Callable[[ImagePushed], object]
PAGE_SIZE = 1000  # the most DescribeRepositories and DescribeImages return per call
NOT_READY = {"PENDING", "IN_PROGRESS"}
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


@dataclass(frozen=True)
class Filters:
    """Which images a sweep covers; every field optional."""

    tenant: str | None = None
    repository: str | None = None
    since: datetime | None = None

    def as_kwargs(self) -> dict[str, str | None]:
        """The filters as the backfill task's keyword arguments (JSON-friendly)."""
        return {
            "tenant": self.tenant,
            "repository": self.repository,
            "since": self.since.isoformat() if self.since else None,
        }


def validate(
    tenant: object = None,
    repository: object = None,
    since: object = None,
    *,
    tenant_known: Callable[[str], bool],
    now: datetime | None = None,
) -> Filters:
    """Check and normalise backfill filters; InvalidFilter with a one-line reason if one is unusable."""
    if tenant is not None:
        if not isinstance(tenant, str) or not _UUID.fullmatch(tenant.strip()):
            raise InvalidFilter(f"tenant {tenant!r} is not a UUID (like 3f1c9a52-5d0e-4b8a-9c7e-0a1b2c3d4e5f)")
        tenant = tenant.strip().lower()
    if repository is not None:
        if not isinstance(repository, str):
            raise InvalidFilter(f"repository {repository!r} is not a repository name")
        try:
            owner = split(repository).tenant
        except PermanentError:
            raise InvalidFilter(
                f"repository {repository[:300]!r} is not a ninkik repository (${{TENANT_UUID}}/${{PRODUCT}}[/...])"
            ) from None
        if tenant is not None and owner != tenant:
            raise InvalidFilter(f"repository {repository} belongs to tenant {owner}, not to tenant {tenant}")
    else:
        owner = None
    for uuid_ in {t for t in (tenant, owner) if t}:
        if not tenant_known(uuid_):
            raise InvalidFilter(f"tenant {uuid_} is not known to ninkik")
    when = None
    if since is not None:
        when = parse_since(since)
        if when > (now or datetime.now(UTC)):
            raise InvalidFilter(f"since {since!r} is in the future: no image would match")
    return Filters(tenant=tenant, repository=repository, since=when)


def parse_since(value: object) -> datetime:
    """An ISO-8601 date or date-time as an aware UTC datetime (no offset means UTC)."""
    if not isinstance(value, str):
        raise InvalidFilter(f"since {value!r} is not an ISO-8601 date or time")
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidFilter(
            f"since {value[:80]!r} is not an ISO-8601 date or time (like 2026-11-01 or 2026-11-01T08:00:00Z)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass(frozen=True)
class Registry:
    """One account's registry in one region."""

    account: str
    region: str


def registries(settings: Settings) -> list[Registry]:
    """Every registry to read: each allowed account in each allowed region."""
    if not settings.aws_account_ids:
        raise ConfigError("NINKIK_AWS_ACCOUNT_IDS is not set: set it to the accounts whose registries to read")
    regions = settings.allowed_regions()
    if not regions:
        raise ConfigError("no AWS region known: set NINKIK_AWS_REGIONS or AWS_REGION to the region of your registries")
    return [Registry(account, region) for account in settings.aws_account_ids for region in regions]


@dataclass
class Progress:
    """What a sweep has done so far; also its summary."""

    repositories: int = 0
    images: int = 0
    chains_started: int = 0
    already_started: int = 0  # reconcile: started by an earlier run
    not_ready: int = 0  # rescan: a scan running right now is read next time
    other_repositories: int = 0  # not named ${TENANT_UUID}/${PRODUCT}: no image call made

    def as_dict(self) -> dict[str, int]:
        """The counts, for task state and results."""
        return asdict(self)

    def add(self, other: Progress) -> None:
        """Add another sweep's counts to these."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def repositories(ecr: ECRClient, registry_id: str, filters: Filters, progress: Progress) -> Iterator[str]:
    """The registry's ninkik repositories (every page), only the filtered tenant's or repository when given."""
    if filters.repository:
        with classified("ecr:DescribeRepositories"):
            try:
                ecr.describe_repositories(registryId=registry_id, repositoryNames=[filters.repository])
            except ClientError as exc:
                if error_code(exc) != "RepositoryNotFoundException":
                    raise
                log.info("no repository %s in registry %s", filters.repository, registry_id)
                return
        yield filters.repository
        return
    paginator = ecr.get_paginator("describe_repositories")
    with classified("ecr:DescribeRepositories"):
        for page in paginator.paginate(registryId=registry_id, PaginationConfig={"PageSize": PAGE_SIZE}):
            for repository in page.get("repositories", []):
                name = repository["repositoryName"]
                try:
                    owner = split(name).tenant
                except PermanentError:
                    progress.other_repositories += 1
                    log.debug("not a ninkik repository, skipped: repository=%s", name)
                    continue
                if filters.tenant is None or owner == filters.tenant:
                    yield name


def image_pages(ecr: ECRClient, registry_id: str, repository: str) -> Iterator[list[ImageDetailTypeDef]]:
    """Every page of DescribeImages for one repository (nothing if it was deleted meanwhile)."""
    paginator = ecr.get_paginator("describe_images")
    pages = paginator.paginate(
        registryId=registry_id, repositoryName=repository, PaginationConfig={"PageSize": PAGE_SIZE}
    )
    with classified("ecr:DescribeImages"):
        try:
            for page in pages:
                yield page.get("imageDetails", [])
        except ClientError as exc:
            if error_code(exc) != "RepositoryNotFoundException":
                raise
            log.info("repository deleted during the sweep: repository=%s", repository)


def pushed_at(detail: ImageDetailTypeDef) -> datetime | None:
    """When the image was pushed, as an aware datetime."""
    when = detail.get("imagePushedAt")
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def pushed_event(source: Source, detail: ImageDetailTypeDef, region: str) -> ImagePushed:
    """The ImagePushed a sweep hands to the chain for one image of DescribeImages."""
    registry, repository, digest = detail["registryId"], detail["repositoryName"], detail["imageDigest"]
    tags = sorted(detail.get("imageTags") or [])
    return ImagePushed(
        event_id=f"{source}:{registry}:{region}:{repository}@{digest}",
        account=registry,
        region=region,
        repository=repository,
        digest=digest,
        tag=tags[0] if tags else None,
        time=pushed_at(detail) or datetime.now(UTC),
        source=source,
    )


@dataclass
class Sweep:
    """One pass over some registries' images, starting a chain per image; streams page by page."""

    source: Source
    ecr: Callable[[str], ECRClient]
    start: Start
    on_progress: Callable[[Progress], None] | None = None
    progress_every: int = 100
    # reconcile: (event ids) -> those already started, and (event ids) -> remember them as started
    seen: Callable[[list[str]], set[str]] | None = None
    mark: Callable[[list[str]], None] | None = None
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
        return mine

    def _run(self, registry: Registry, filters: Filters, mine: Progress) -> None:
        ecr = self.ecr(registry.region)
        for repository in repositories(ecr, registry.account, filters, mine):
            mine.repositories += 1
            self._report(mine)
            for page in image_pages(ecr, registry.account, repository):
                before = mine.images
                mine.images += len(page)
                wanted = [d for d in page if filters.since is None or (pushed_at(d) or filters.since) >= filters.since]
                if self.source == "rescan":
                    ready = [d for d in wanted if (d.get("imageScanStatus") or {}).get("status") not in NOT_READY]
                    mine.not_ready += len(wanted) - len(ready)
                    wanted = ready
                events = [pushed_event(self.source, d, registry.region) for d in wanted]
                if self.seen is not None:
                    seen = self.seen([e.event_id for e in events])
                    mine.already_started += len(seen)
                    events = [e for e in events if e.event_id not in seen]
                for event in events:
                    self.start(event)
                    mine.chains_started += 1
                if self.mark is not None and events:
                    self.mark([e.event_id for e in events])  # only once their chains are queued
                self._report(mine, before)
            log.log(
                logging.INFO if self.source == "backfill" else logging.DEBUG,  # scheduled sweeps: totals only
                "%s: repository=%s registry=%s region=%s, %d chains started in this registry so far",
                self.source,
                repository,
                registry.account,
                registry.region,
                mine.chains_started,
            )

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


def backfill(
    svc: Services,
    filters: Filters,
    start: Start,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: int = 100,
) -> dict[str, Any]:
    """Start a chain (source backfill) for every image the filters select, in every registry."""
    began = time.monotonic()
    sweep = Sweep("backfill", svc.ecr, start, on_progress, progress_every)
    for registry in registries(svc.settings):
        sweep.run(registry, filters)
    summary = {**sweep.progress.as_dict(), "seconds": round(time.monotonic() - began, 3)}
    log.info("backfill done %s: %s", filters.as_kwargs(), summary)
    return {**summary, "filters": filters.as_kwargs()}


def watermark_key(namespace: str, registry: Registry) -> str:
    """Where the reconcile watermark of one registry lives."""
    return f"{namespace}:watermark:{registry.account}:{registry.region}"


def reconcile(svc: Services, start: Start, *, now: datetime | None = None) -> dict[str, Any]:
    """Start chains for images pushed since each registry's watermark (minus the overlap) not yet started.

    A registry's watermark moves to the time its sweep began, and only once the sweep succeeded; a
    registry with no watermark yet is read back NINKIK_RECONCILE_FIRST_LOOKBACK_SECONDS.
    """
    s, r, records = svc.settings, svc.redis, svc.records
    with _exclusive(svc, "reconcile", ttl=max(300, 3 * s.reconcile_interval_seconds)) as mine:
        if not mine:
            log.info("reconcile skipped: another reconcile is running")
            return {"skipped": "another reconcile is running"}
        sweep = Sweep(
            "reconcile",
            svc.ecr,
            start,
            seen=records.seen_events,
            mark=lambda ids: records.mark_events(ids, s.event_dedupe_seconds),
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
        return {**sweep.progress.as_dict(), "registries": out}


def rescan(svc: Services, start: Start, *, now: datetime | None = None) -> dict[str, Any]:
    """Start chains (source rescan) for images pushed in the last NINKIK_RESCAN_DAYS days.

    Only a report whose fingerprint changed is sent again: the notification step skips keys ninkik has.
    """
    s = svc.settings
    with _exclusive(svc, "rescan", ttl=max(3600, s.rescan_interval_seconds)) as mine:
        if not mine:
            log.info("rescan skipped: another rescan is running")
            return {"skipped": "another rescan is running"}
        since = (now or datetime.now(UTC)) - timedelta(days=s.rescan_days)
        sweep = Sweep("rescan", svc.ecr, start)
        for registry in registries(s):
            sweep.run(registry, Filters(since=since))
        log.info("rescan done: %s", sweep.progress.as_dict())
        return {**sweep.progress.as_dict(), "since": since.isoformat()}


@contextmanager
def _exclusive(svc: Services, name: str, ttl: int) -> Iterator[bool]:
    """A Redis lock so two runs of one sweep never overlap (a manual run and a scheduled one, say)."""
    key, token = f"{svc.settings.redis_namespace}:lock:{name}", uuid.uuid4().hex
    acquired = bool(svc.redis.set(key, token, nx=True, ex=ttl))
    try:
        yield acquired
    finally:
        if acquired and svc.redis.get(key) == token:
            svc.redis.delete(key)
