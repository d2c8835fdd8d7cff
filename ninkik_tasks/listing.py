"""The sweeps' reads of a registry: its repositories (every page) and each repository's images."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from .ecr import DENIED, NOT_READY, ScanHead, classified, error_code, error_message, image_from_details, scan_head
from .errors import PermanentError, TransientError
from .events import ImagePushed
from .filters import Filters
from .findings import basic_scan_stamp
from .ratelimit import Pace
from .tenants import split

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_ecr.type_defs import ImageDetailTypeDef


log = logging.getLogger(__name__)

Source = Literal["backfill", "reconcile", "rescan"]
PAGE_SIZE = 1000  # the most DescribeRepositories and DescribeImages return per call
HEAD_CALLS = 1  # a scan head's ECR calls (ecr.scan_head), for a rescan's pace


@dataclass
class Progress:
    """What a sweep has done so far; also its summary."""

    repositories: int = 0
    images: int = 0
    chains_started: int = 0
    already_started: int = 0  # reconcile: started by an earlier run
    not_ready: int = 0  # rescan: a scan running right now is read next time
    unchanged: int = 0  # rescan: the tags and basic scan ninkik has (Report.stamp): not read again
    scan_heads: int = 0  # rescan: one-finding pages of DescribeImageScanFindings read to compare a basic scan
    in_index: int = 0  # untagged manifests an index lists: reported in the index's report, no chain of their own
    other_repositories: int = 0  # not named ${TENANT_UUID}/${PRODUCT}: no image call made
    missing_repositories: int = 0  # named (a product's, seen in an event, by the operator) but not in the registry
    by_name: list[str] = field(default_factory=list)  # registries that could not be listed: enumerated by name
    unreachable: list[str] = field(default_factory=list)  # "repository: why" for each one the policy refused

    def as_dict(self) -> dict[str, Any]:
        """The counts, for task state and results."""
        return asdict(self)

    def add(self, other: Progress) -> None:
        """Add another sweep's counts to these."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


class ListingDenied(Exception):
    """DescribeRepositories without names was refused (the policy is scoped to some tenants' repositories)."""


class Missing(Exception):
    """The repository named is not in the registry."""


def repositories(ecr: ECRClient, registry_id: str, filters: Filters, progress: Progress) -> Iterator[str]:
    """The registry's ninkik repositories (every page), only the filtered tenant's when given.

    ListingDenied if the policy refuses the listing, raised before any name is given out.
    """
    paginator = ecr.get_paginator("describe_repositories")
    first = True
    with classified("ecr:DescribeRepositories"):
        pages = iter(paginator.paginate(registryId=registry_id, PaginationConfig={"PageSize": PAGE_SIZE}))
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except ClientError as exc:
                if first and error_code(exc) in DENIED:
                    raise ListingDenied(error_message(exc)) from None
                raise
            first = False
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


def image_pages(
    ecr: ECRClient, registry_id: str, repository: str, any_status: bool = False
) -> Iterator[list[ImageDetailTypeDef]]:
    """Every page of DescribeImages for one repository; Missing if there is no such repository.

    DescribeImages lists ACTIVE images only unless asked (`any_status`): archived ones too."""
    paginator = ecr.get_paginator("describe_images")
    status: Any = {"filter": {"imageStatus": "ANY"}} if any_status else {}
    pages = paginator.paginate(
        registryId=registry_id, repositoryName=repository, PaginationConfig={"PageSize": PAGE_SIZE}, **status
    )
    with classified("ecr:DescribeImages"):
        try:
            for page in pages:
                yield page.get("imageDetails", [])
        except ClientError as exc:
            if error_code(exc) != "RepositoryNotFoundException":
                raise
            raise Missing(repository) from None


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
        listed=image_from_details(detail, region),
        manifest_media_type=detail.get("imageManifestMediaType"),
        artifact_media_type=detail.get("artifactMediaType"),
    )


def lists_scan(detail: ImageDetailTypeDef) -> bool:
    """Whether DescribeImages lists the image's scan. Basic scanning did before AWS_NATIVE; AWS_NATIVE, the
    basic scanner of every registry since Clair's retirement, does not ("use DescribeImageScanFindings",
    DescribeImages API reference), nor does moto."""
    return bool(detail.get("imageScanStatus"))


def listed_stamp(detail: ImageDetailTypeDef) -> str | None:
    """The image's Report.stamp as DescribeImages lists it, where it lists the scan (lists_scan)."""
    summary = detail.get("imageScanFindingsSummary") or {}
    status = (detail.get("imageScanStatus") or {}).get("status")
    return basic_scan_stamp(detail.get("imageTags") or [], status, summary.get("imageScanCompletedAt"))


def head_stamp(detail: ImageDetailTypeDef, head: ScanHead) -> str | None:
    """The image's Report.stamp as its listing (tags) and the first page of its findings (scan) show it."""
    if head.enhanced:  # a basic report's stamp never matches an enhanced scan: Inspector changes its findings
        return None
    return basic_scan_stamp(detail.get("imageTags") or [], head.status, head.completed_at)


def changed(
    ecr: ECRClient,
    details: list[ImageDetailTypeDef],
    reported: list[str | None],
    progress: Progress,
    pace: Pace | None = None,
) -> list[ImageDetailTypeDef]:
    """The images whose report may differ from the one ninkik has (`reported`: the Report.stamp of each, if
    any); the others are counted in `progress` (`unchanged`; `not_ready`: a scan running now, read next time).

    What an image costs here, beyond its share of the listing (one DescribeImages per 1,000 images):
    - ninkik has a report of a completed basic scan (a stamp: its tags and the scan's completion): no call where
      DescribeImages lists the scan (basic scanning before AWS_NATIVE); else (AWS_NATIVE, the basic scanner of
      every registry now, and moto) one call, the scan head. A basic scan's findings change only with a new
      scan, which completes anew: the same tags and completion are the same report, and it gets no chain.
    - any other image (enhanced scans: Inspector changes their findings with no new scan, and AWS documents no
      time that moves with every change; indexes; no report yet): no call here, and a chain as before.
    """
    out: list[ImageDetailTypeDef] = []
    for detail, had in zip(details, reported, strict=True):
        if had is None:
            out.append(detail)
            continue
        if lists_scan(detail):
            now = listed_stamp(detail)
        else:
            head = _head(ecr, detail, progress, pace)
            if head is not None and head.status in NOT_READY:
                progress.not_ready += 1
                continue
            now = None if head is None else head_stamp(detail, head)
        if now == had:
            progress.unchanged += 1
        else:
            out.append(detail)
    return out


def _head(ecr: ECRClient, detail: ImageDetailTypeDef, progress: Progress, pace: Pace | None) -> ScanHead | None:
    """The image's scan head; None if it could not be read: its chain reads the scan then, with its retries
    and its record of failures."""
    if pace is not None:
        pace.wait(HEAD_CALLS)
    progress.scan_heads += 1
    repository, digest = detail["repositoryName"], detail["imageDigest"]
    try:
        return scan_head(ecr, detail["registryId"], repository, digest)
    except (TransientError, PermanentError) as exc:
        log.debug("rescan: scan head not read (%s), read by a chain: repository=%s digest=%s", exc, repository, digest)
        return None
