"""The coverage gauge: images by account, region, tenant and scan state, computed on beat's schedule.

Counting every Holding costs one HGETALL per repository, too much for every scrape of every ingest: the beat task
`ninkik.coverage` counts them every NINKIK_COVERAGE_INTERVAL_SECONDS into one Redis hash, and ingest's collector
(metrics.py) reads that hash on scrape.

The bound: per registry (account and region), at most NINKIK_COVERAGE_TOP_TENANTS tenants by name plus `other`,
times the eight STATES. With thousands of tenants the series stay at registries x (top + 1) x 8 (two accounts in
two regions, top 20: 672 at most): the tenants with the most images not scanned keep their name, the rest are
added up as `other`, so the registry's totals stay exact.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import redis

from ..config import Settings
from ..holdings import Holdings
from ..inventory import registries
from .counts import SCANNED, Coverage, read, reason_of

# A scan state, as the gauge's `state` label: a fixed set, whatever statuses ECR adds later.
STATES = ("scanned", "pending", "no_scan", "unsupported", "expired", "quota", "archived", "failed")
_STATE_OF = {
    **dict.fromkeys(SCANNED, "scanned"),
    "PENDING": "pending",
    "IN_PROGRESS": "pending",
    "NOT_SCANNED": "no_scan",
    "UNSUPPORTED_IMAGE": "unsupported",
    "SCAN_ELIGIBILITY_EXPIRED": "expired",
    "LIMIT_EXCEEDED": "quota",
    "IMAGE_SIZE_EXCEEDED": "quota",
    "IMAGE_ARCHIVED": "archived",
}  # anything else (FAILED, FINDINGS_UNAVAILABLE, INDEX_UNREAD, a new status): failed
OTHER_TENANTS = "other"
SEPARATOR = "|"


def state_of(scan: str) -> str:
    """The gauge state of a reported scan status."""
    reason = reason_of(scan)
    return "scanned" if reason is None else _STATE_OF.get(reason, "failed")


def key(namespace: str) -> str:
    """The hash the gauge is kept in: field `account|region|tenant|state` -> images."""
    return f"{namespace}:coverage:images"


def computed_key(namespace: str) -> str:
    """When the gauge was last computed (epoch seconds)."""
    return f"{namespace}:coverage:computed"


def series(coverage: Coverage, top: int) -> dict[tuple[str, str, str, str], int]:
    """(account, region, tenant, state) -> images, the `top` tenants of each registry by images not scanned
    by name, the others as `other`; every state of every tenant kept, zeros too (a series does not vanish)."""
    by_tenant: dict[tuple[str, str], dict[str, Counter[str]]] = {}
    for group in coverage.groups.values():
        counts = by_tenant.setdefault((group.account, group.region), {}).setdefault(group.tenant, Counter())
        counts["scanned"] += group.scanned
        for reason, n in group.not_scanned.items():
            counts[_STATE_OF.get(reason, "failed")] += n
    out: dict[tuple[str, str, str, str], int] = {}
    for (account, region), tenants in by_tenant.items():
        ranked = sorted(tenants, key=lambda t: (-_unscanned(tenants[t]), -sum(tenants[t].values()), t))
        for rank, tenant in enumerate(ranked):
            label = tenant if rank < top else OTHER_TENANTS
            for state in STATES:
                where = (account, region, label, state)
                out[where] = out.get(where, 0) + tenants[tenant][state]
    return out


def _unscanned(counts: Counter[str]) -> int:
    return sum(n for state, n in counts.items() if state not in ("scanned", "pending"))


def store(client: redis.Redis, namespace: str, values: dict[tuple[str, str, str, str], int], now: float) -> None:
    """Replace the gauge at once (a scrape sees the old counts or the new ones, never half)."""
    target, staging = key(namespace), f"{key(namespace)}:new"
    pipe = client.pipeline(transaction=True)
    pipe.delete(staging)
    if values:
        pipe.hset(staging, mapping={SEPARATOR.join(k): v for k, v in values.items()})
        pipe.rename(staging, target)
    else:
        pipe.delete(target)
    pipe.set(computed_key(namespace), str(now))
    pipe.execute()


def load(client: redis.Redis, namespace: str) -> tuple[dict[tuple[str, ...], float], float | None]:
    """The gauge's series and when it was computed (None: never), for the collector."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(key(namespace))
    pipe.get(computed_key(namespace))
    raw, computed = pipe.execute()
    values: dict[tuple[str, ...], float] = {}
    for field, value in raw.items():
        parts = tuple((field.decode() if isinstance(field, bytes) else str(field)).split(SEPARATOR))
        if len(parts) == 4:
            values[parts] = float(value)
    return values, None if computed is None else float(computed)


def refresh(client: redis.Redis, namespace: str, coverage: Coverage, top: int) -> dict[str, Any]:
    """Store the gauge of `coverage`; returns a summary (the beat task's result)."""
    values = series(coverage, top)
    store(client, namespace, values, time.time())
    totals = coverage.totals()
    return {"series": len(values), "images": totals["images"], "not_scanned": totals["not_scanned"]}


def recount(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """Count every registry's Holdings and store the gauge (the beat task `ninkik.coverage`)."""
    namespace = settings.redis_namespace
    coverage = read(Holdings(client, namespace), registries(settings))
    return refresh(client, namespace, coverage, settings.coverage_top_tenants)
