"""Coverage counts: how many of each tenant's images are scanned, and why the others are not, counted from the Holdings.

It reads what the chains and the sweeps recorded (holdings.py: one Redis hash per repository), never ECR: it is
as fresh as the Holdings' `observed` times, which it reports. Amazon Inspector's own view (inspector.py) is merged
in where inspector2:ListCoverage is granted.

What cannot be known from the Holdings: when an enhanced image's Inspector monitoring ends. ECR's enhanced
scanning re-scans an image for a duration counted from its push or its last pull (Inspector's
`rescanDurationState`, inspector2:GetConfiguration); a Holding records neither time, and ListCoverage gives the
last pull but not the push. The count is `None` and the output says so; SCAN_ELIGIBILITY_EXPIRED (monitoring that
has already ended) is counted like every other reason.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import PermanentError
from ..holdings import Holding, Holdings
from ..inventory import Registry
from ..tenants import split

SCANNED = ("COMPLETE", "ACTIVE")
# Beside ECR's statuses, what a report can say: no scan came (NINKIK_SCAN_WAIT_SECONDS ran out, scan on push off),
# an image index whose platform manifests could not be read (no ecr:BatchGetImage), a status nobody knows yet.
NOT_SCANNED, INDEX_UNREAD, OTHER = "NOT_SCANNED", "INDEX_UNREAD", "OTHER"
ENHANCED = "ENHANCED"
MONITORING_END_UNKNOWN = (
    "enhanced images whose Inspector monitoring ends within 14 days: not known from what is recorded (the "
    "re-scan duration counts from an image's push or last pull, which the Holdings do not keep); images whose "
    "monitoring has ended are counted as SCAN_ELIGIBILITY_EXPIRED"
)


@functools.cache
def ecr_scan_statuses() -> tuple[str, ...]:
    """Every ImageScanStatus ECR defines (botocore's ECR model, enum ScanStatus)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecr")
    enum: list[str] = getattr(model.shape_for("ScanStatus"), "enum", [])  # a StringShape
    return tuple(enum)


def reasons() -> tuple[str, ...]:
    """Every reason an image is counted as not scanned, in a fixed order."""
    return (*(s for s in ecr_scan_statuses() if s not in SCANNED), NOT_SCANNED, INDEX_UNREAD, OTHER)


def reason_of(scan: str) -> str | None:
    """None for a scanned image, else the reason it is not (a status of no known kind is OTHER)."""
    if scan in SCANNED:
        return None
    return scan if scan in reasons() else OTHER


@dataclass
class Group:
    """The counts of one tenant's product in one registry."""

    account: str
    region: str
    tenant: str
    product: str
    repositories: int = 0
    images: int = 0
    scanned: int = 0
    not_scanned: Counter[str] = field(default_factory=Counter)
    repositories_without_scan: int = 0  # repositories none of whose images is scanned
    enhanced: int = 0
    archived: int = 0  # the image's status ARCHIVED or ACTIVATING (not scannable until restored)
    inspector: Counter[str] = field(default_factory=Counter)  # Inspector's scanStatus.reason, where read
    oldest_observed: float | None = None
    newest_observed: float | None = None

    def add(self, holding: Holding) -> bool:
        """Count one image; True if it is scanned."""
        self.images += 1
        reason = reason_of(holding.scan)
        if reason is None:
            self.scanned += 1
        else:
            self.not_scanned[reason] += 1
        self.enhanced += holding.scan_type == ENHANCED
        self.archived += holding.status in ("ARCHIVED", "ACTIVATING")
        self.oldest_observed = min(holding.observed, self.oldest_observed or holding.observed)
        self.newest_observed = max(holding.observed, self.newest_observed or holding.observed)
        return reason is None

    def as_dict(self) -> dict[str, Any]:
        """The group as `coverage --json` prints it (docs/operations.md#coverage)."""
        return {
            "account": self.account,
            "region": self.region,
            "tenant": self.tenant,
            "product": self.product,
            "repositories": self.repositories,
            "images": self.images,
            "scanned": self.scanned,
            "not_scanned": sum(self.not_scanned.values()),
            "not_scanned_by_reason": {r: self.not_scanned[r] for r in reasons() if self.not_scanned[r]},
            "repositories_without_scanned_image": self.repositories_without_scan,
            "enhanced": self.enhanced,
            "archived": self.archived,
            "monitoring_ends_within_14_days": None,  # MONITORING_END_UNKNOWN
            "inspector_reasons": dict(sorted(self.inspector.items())),
            "oldest_observed": iso(self.oldest_observed),
            "newest_observed": iso(self.newest_observed),
        }


@dataclass
class View:
    """Where one registry's counts come from: ECR's statuses as reported, and Inspector's where it was read."""

    account: str
    region: str
    inspector: str = "not asked"  # "read", "not granted: ...", "not read: ...", "not asked"

    @property
    def name(self) -> str:
        """`ecr` or `ecr+inspector`."""
        return "ecr+inspector" if self.inspector == "read" else "ecr"


@dataclass
class Coverage:
    """The counts of every (account, region, tenant, product) read."""

    groups: dict[tuple[str, str, str, str], Group] = field(default_factory=dict)
    views: dict[tuple[str, str], View] = field(default_factory=dict)
    # (account, region, repository, digest) -> (tenant, product): where Inspector's reasons are merged
    images: dict[tuple[str, str, str, str], tuple[str, str]] = field(default_factory=dict)

    def group(self, account: str, region: str, tenant: str, product: str) -> Group:
        """The group, made on first use."""
        key = (account, region, tenant, product)
        if key not in self.groups:
            self.groups[key] = Group(account, region, tenant, product)
        return self.groups[key]

    def add_repository(self, account: str, region: str, repository: str, held: dict[str, Holding]) -> None:
        """Count one repository's Holdings (tombstones of removed images left out)."""
        live = {digest: h for digest, h in held.items() if not h.gone}
        if not live:
            return
        tenant, product = owner(repository, next(iter(live.values())))
        group = self.group(account, region, tenant, product)
        group.repositories += 1
        scanned = False
        for digest, holding in live.items():
            scanned |= group.add(holding)
            self.images[(account, region, repository, digest)] = (tenant, product)
        group.repositories_without_scan += not scanned

    def merge_inspector(self, account: str, region: str, reasons_by_image: dict[tuple[str, str], str]) -> int:
        """Add Inspector's reason of each image ninkik holds (repository, digest) -> reason; returns how many."""
        merged = 0
        for (repository, digest), reason in reasons_by_image.items():
            where = self.images.get((account, region, repository, digest))
            if where is not None:
                self.group(account, region, *where).inspector[reason] += 1
                merged += 1
        return merged

    def rows(self) -> list[Group]:
        """The groups, by account, region, tenant and product."""
        return [self.groups[k] for k in sorted(self.groups)]

    def totals(self) -> dict[str, Any]:
        """Every group added up."""
        total = Group("", "", "", "")
        for g in self.groups.values():
            total.repositories += g.repositories
            total.images += g.images
            total.scanned += g.scanned
            total.not_scanned.update(g.not_scanned)
            total.repositories_without_scan += g.repositories_without_scan
            total.enhanced += g.enhanced
            total.archived += g.archived
            total.inspector.update(g.inspector)
            for when in (g.oldest_observed, g.newest_observed):
                if when is not None:
                    total.oldest_observed = min(when, total.oldest_observed or when)
                    total.newest_observed = max(when, total.newest_observed or when)
        out = total.as_dict()
        for key in ("account", "region", "tenant", "product"):
            out.pop(key)
        return out

    def as_json(self, now: float) -> dict[str, Any]:
        """`coverage --json`'s document (docs/operations.md#coverage)."""
        return {
            "generated_at": iso(now),
            "source": "holdings",
            "registries": [
                {"account": v.account, "region": v.region, "view": v.name, "inspector": v.inspector}
                for v in (self.views[k] for k in sorted(self.views))
            ],
            "totals": self.totals(),
            "groups": [g.as_dict() for g in self.rows()],
            "notes": [MONITORING_END_UNKNOWN],
        }


def owner(repository: str, holding: Holding) -> tuple[str, str]:
    """(tenant, product) of a repository: as the report matched them, else as its name says."""
    if holding.tenant and holding.product:
        return holding.tenant, holding.product
    try:
        name = split(repository)
    except PermanentError:
        return holding.tenant or "?", holding.product or "?"
    return holding.tenant or name.tenant, holding.product or name.product


def repositories(holdings: Holdings, registry: Registry, tenant: str | None = None) -> Iterator[str]:
    """The repositories of a registry that have Holdings (a tenant's only, if given): SCAN, never KEYS."""
    prefix = holdings.key(registry.account, registry.region, "")
    match = f"{prefix}{tenant}/*" if tenant else f"{prefix}*"
    for key in holdings.r.scan_iter(match=match, count=1000):
        yield (key.decode() if isinstance(key, bytes) else str(key))[len(prefix) :]


def read(holdings: Holdings, registries: Iterable[Registry], tenant: str | None = None) -> Coverage:
    """Count the Holdings of the registries (a tenant's only, if given)."""
    coverage = Coverage()
    for registry in registries:
        coverage.views[registry.astuple()] = View(registry.account, registry.region)
        names = sorted(set(repositories(holdings, registry, tenant)))
        for name, held in holdings.repositories(registry.account, registry.region, names):
            coverage.add_repository(registry.account, registry.region, name, held)
    return coverage


def iso(when: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC (None stays None)."""
    return None if when is None else datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
