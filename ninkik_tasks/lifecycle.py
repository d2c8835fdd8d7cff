"""The registry as it is now: images deleted, untagged, archived and restored reach ninkik; no Celery here.

Three ways in, one chain. ECR's DELETE and UPDATE_STORAGE_CLASS events (events.py), a tag that a reported push took
from another image (the report step's Holdings answer it), and the lifecycle sweep below each start the usual chain
with source `lifecycle`: it describes the image and tells ninkik what DescribeImages says now. An image that is
gone is removed (remove_step: DELETE .../images/{digest}); one that lost a tag, was archived or restored is
reported again with its tags and status, as any changed report is.

The sweep covers what no event says (lifecycle-policy expirations, events lost, a deployment on the guide's rule,
which routes pushes only): per registry and repository, the images ninkik has (holdings.py) against one
DescribeImages walk of the repository (every image status; 1,000 images a call, the guide's policy), at the
rescan's pace. Its walk also carries each image's last pull, which reaches ninkik with the in-use figures of
enhanced scanning as a usage report (send_usage), never as findings sent again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from .ecr import image_from_details
from .errors import IdentityUnavailable, PermanentError, TransientError
from .events import ImagePushed
from .holdings import GONE_KEEP_SECONDS, Holding
from .idempotency import image_id
from .inventory import registries
from .listing import Missing, image_pages, pushed_at
from .notify import _answered, image_url, remove
from .ratelimit import Pace
from .stages import Scanned, Services

if TYPE_CHECKING:
    from mypy_boto3_ecr.type_defs import ImageDetailTypeDef

log = logging.getLogger(__name__)

Start = Callable[[list[ImagePushed]], object]
USAGE_BATCH = 100  # images per usage report


def remove_step(svc: Services, msg: Scanned, owner: str) -> str:
    """DELETE the image from ninkik unless a later observation says it is back; returns 'removed',
    'already_removed' or 'superseded'."""
    s, e = svc.settings, msg.event
    if not s.api_url or not s.api_token:
        raise PermanentError("not_configured", "NINKIK_API_URL and NINKIK_API_TOKEN must be set to notify")
    observed = msg.holding.observed if msg.holding else time.time()
    where = (e.account, e.region, e.repository, e.digest)
    start = svc.holdings.begin_remove(*where, observed, owner, int(s.http_timeout_seconds * 3) + 30)
    if start == "stale":
        return "superseded"  # reported again after this observation: a re-push
    if start == "removed":
        return "already_removed"
    if start == "busy":
        raise TransientError("another worker is removing this image", retry_after=5)
    try:
        url = image_url(s.api_url, msg.match, e.digest)
        remove(svc.http, url, s.api_token.get_secret_value(), msg.key)
    except Exception:
        svc.holdings.release_remove(*where, owner)
        raise
    reported = svc.records.key("reported", image_id(*where))
    svc.holdings.end_remove(*where, observed, owner, reported)
    return "removed"


def retagged(msg: Scanned, digests: list[str]) -> list[ImagePushed]:
    """The chains that report again the images whose tag the reported image took (in ninkik, two images of one
    repository never claim one tag)."""
    e = msg.event
    return [
        ImagePushed(
            event_id=f"retagged:{msg.key[:16]}:{digest}",
            account=e.account,
            region=e.region,
            repository=e.repository,
            digest=digest,
            time=datetime.now(UTC),
            source="lifecycle",
            change="retagged",
        )
        for digest in digests
    ]


@dataclass
class SweepCounts:
    """What one lifecycle sweep did."""

    repositories: int = 0
    images: int = 0  # images ninkik has, compared
    listed: int = 0  # images DescribeImages listed
    gone: int = 0  # chains started for images no longer listed
    changed: int = 0  # chains started for images whose tags or status changed
    usage_sent: int = 0
    calls: int = 0  # DescribeImages pages read
    pruned: int = 0
    unreachable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def sweep(
    svc: Services,
    start: Start,
    pace: Pace | None,
    account: str | None = None,
    repositories: list[str] | None = None,
) -> SweepCounts:
    """Compare every repository where ninkik has images (or those named) with the registry: start a chain for each
    image that is gone or whose tags or status changed, and send each image's usage."""
    counts = SweepCounts()
    for registry in registries(svc.settings, account):
        try:
            names = repositories or held_repositories(svc, registry.account, registry.region)
            for repository in names:
                _repository(svc, start, pace, registry.account, registry.region, repository, counts)
        except (IdentityUnavailable, TransientError, PermanentError) as exc:
            counts.unreachable.append(f"{registry.account}/{registry.region}: {exc}")
            log.error("lifecycle sweep of %s/%s failed, the other registries go on: %s", *registry.astuple(), exc)
    log.info("lifecycle sweep done: %s", counts.as_dict())
    return counts


def held_repositories(svc: Services, account: str, region: str) -> list[str]:
    """The repositories of a registry where ninkik has (or removed) images."""
    prefix = svc.holdings.key(account, region, "")
    return sorted(k[len(prefix) :] for k in svc.redis.scan_iter(match=f"{prefix}*", count=1000))


def _repository(
    svc: Services, start: Start, pace: Pace | None, account: str, region: str, repository: str, counts: SweepCounts
) -> None:
    holdings = svc.holdings.of(account, region, repository)
    counts.pruned += svc.holdings.prune(account, region, repository, time.time() - GONE_KEEP_SECONDS)
    have = {d: h for d, h in holdings.items() if not h.gone}
    if not have:
        return
    counts.repositories += 1
    counts.images += len(have)
    observed = time.time()
    listed: dict[str, ImageDetailTypeDef] = {}
    try:
        for page in _pages(svc, pace, account, region, repository, counts):
            listed.update((d["imageDigest"], d) for d in page)
    except Missing:
        pass  # the repository is gone, and every image with it
    counts.listed += len(listed)
    chains: list[ImagePushed] = []
    for digest, holding in have.items():
        detail = listed.get(digest)
        if detail is None:
            counts.gone += 1
            chains.append(_event(account, region, repository, digest, None, observed))
        elif _differs(holding, detail):
            counts.changed += 1
            chains.append(_event(account, region, repository, digest, detail, observed))
    if chains:
        log.info("lifecycle sweep: %d images of %s/%s/%s to read again", len(chains), account, region, repository)
        start(chains)
    usage = [_usage(svc, account, region, repository, d, listed[d]) for d in have if d in listed]
    counts.usage_sent += send_usage(svc, [(have[u["digest"]], u) for u in usage])


def _pages(
    svc: Services, pace: Pace | None, account: str, region: str, repository: str, counts: SweepCounts
) -> Iterator[list[ImageDetailTypeDef]]:
    ecr = svc.ecr(account, region)
    for page in image_pages(ecr, account, repository, any_status=True):
        counts.calls += 1
        if pace is not None:
            pace.wait()
        yield page


def _differs(holding: Holding, detail: ImageDetailTypeDef) -> bool:
    tags = sorted(detail.get("imageTags") or [])
    return tags != sorted(holding.tags) or (detail.get("imageStatus") or "ACTIVE") != holding.status


def _event(
    account: str, region: str, repository: str, digest: str, detail: ImageDetailTypeDef | None, observed: float
) -> ImagePushed:
    return ImagePushed(
        event_id=f"swept:{int(observed)}:{account}:{region}:{repository}@{digest}",
        account=account,
        region=region,
        repository=repository,
        digest=digest,
        time=(pushed_at(detail) if detail else None) or datetime.now(UTC),
        source="lifecycle",
        change="swept",
        listed=image_from_details(detail, region) if detail else None,
        observed=observed if detail else None,
    )


def _usage(svc: Services, account: str, region: str, repository: str, digest: str, detail: Any) -> dict[str, Any]:
    pulled = detail.get("lastRecordedPullTime")
    in_use = svc.holdings.in_use(account, region, repository, digest)
    return {
        "registry_id": account,
        "region": region,
        "repository": repository,
        "digest": digest,
        "last_pulled_at": _iso(pulled),
        "in_use_count": in_use[0] if in_use else None,
        "last_in_use_at": in_use[1] if in_use else None,
    }


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


def send_usage(svc: Services, images: list[tuple[Holding, dict[str, Any]]]) -> int:
    """POST the images' usage to their products' usage endpoint, USAGE_BATCH a call; returns how many ninkik took.

    A failure is logged and counted: the next sweep sends the day's figures again."""
    s = svc.settings
    if not s.api_url or not s.api_token or not images:
        return 0
    products: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for holding, usage in images:
        products.setdefault((holding.tenant, holding.product), []).append(usage)
    sent = 0
    for (tenant, product), usages in products.items():
        url = f"{s.api_url.rstrip('/')}/api/v1/tenants/{tenant}/products/{product}/images/usage"
        for first in range(0, len(usages), USAGE_BATCH):
            body = json.dumps({"images": usages[first : first + USAGE_BATCH]}, separators=(",", ":"))
            key = hashlib.sha256(body.encode()).hexdigest()
            headers = {
                "Authorization": f"Bearer {s.api_token.get_secret_value()}",
                "Idempotency-Key": key,
                "Content-Type": "application/json",
            }
            def post(url: str = url, body: str = body, headers: dict[str, str] = headers) -> httpx.Response:
                return svc.http.post(url, content=body.encode(), headers=headers)

            try:
                _answered(post, done=())
            except (TransientError, PermanentError, httpx.HTTPError) as exc:
                svc.stats.incr("usage", "failed")
                log.warning("usage of %s/%s not sent (the next sweep sends it again): %s", tenant, product, exc)
                continue
            sent += len(usages[first : first + USAGE_BATCH])
            svc.stats.incr("usage", "sent")
    return sent
