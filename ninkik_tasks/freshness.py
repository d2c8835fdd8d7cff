"""What events say about the freshness of reports: when ingest last saw each kind of event, per account and
region, and "Inspector2 Finding" events, which refresh the report of the image they name, coalesced per image.

Amazon Inspector sends one "Inspector2 Finding" per finding created, updated or closed, so a new CVE in a
common package is many events for one image within seconds (and events for changes that leave the findings
as they were: a tag, a resource update). The first event of an image starts a chain (source `rescan`) that
reads the image NINKIK_FINDING_REFRESH_SECONDS later; the image's other events within that window are
absorbed by it (a Redis key per image, set NX for the window), so a burst costs one read of the image. The
report step sends the result only when its fingerprint changed (idempotency.py).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from .errors import PermanentError
from .events import FindingChanged, ImagePushed, ImageScanned, Inspector2Scanned
from .idempotency import Records
from .indexes import Claims
from .scanwait import SCAN_EVENT_KINDS, ScanWaits, member, seen_key
from .tenants import split

log = logging.getLogger(__name__)

# The kinds of event whose last sighting is recorded (`ninkik-tasks check` prints them).
PUSH, INSPECTOR_FINDING = "push", "inspector2_finding"
DELETE, STORAGE_CLASS = "delete", "update_storage_class"  # routed by a rule broader than the guide's
IMAGE_SCAN, INSPECTOR_SCAN = SCAN_EVENT_KINDS  # those scan waits look for (scanwait._PACE)
KINDS = (PUSH, IMAGE_SCAN, INSPECTOR_SCAN, INSPECTOR_FINDING, DELETE, STORAGE_CLASS)
SEEN_TTL = 30 * 24 * 3600  # an account and region silent this long shows `never` again in `check`


def kind_of(event: ImagePushed | ImageScanned | FindingChanged) -> str:
    """The kind an event is recorded as."""
    if isinstance(event, FindingChanged):
        return INSPECTOR_FINDING
    if isinstance(event, Inspector2Scanned):
        return INSPECTOR_SCAN
    if isinstance(event, ImageScanned):
        return IMAGE_SCAN
    if event.change == "deleted":
        return DELETE
    return STORAGE_CLASS if event.change in ("archived", "restored") else PUSH


class LastSeen:
    """When ingest last saw each kind of event, per account and region (a Redis hash per account and region)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.namespace = namespace

    def _key(self, account: str, region: str) -> str:
        return seen_key(self.namespace, account, region)

    def record(self, events: Iterable[ImagePushed | ImageScanned | FindingChanged], now: float | None = None) -> None:
        """Remember that these events arrived now (one write per account and region)."""
        when = str(round(now if now is not None else time.time(), 3))
        fields: dict[tuple[str, str], dict[str, str]] = {}
        for event in events:
            fields.setdefault((event.account, event.region), {})[kind_of(event)] = when
        if not fields:
            return
        pipe = self.r.pipeline(transaction=False)
        for (account, region), kinds in fields.items():
            pipe.hset(self._key(account, region), mapping=kinds)  # type: ignore[arg-type]
            pipe.expire(self._key(account, region), SEEN_TTL)
        pipe.execute()

    def get(self, account: str, region: str) -> dict[str, float]:
        """kind -> when it was last seen (epoch seconds), for one account and region."""
        raw = self.r.hgetall(self._key(account, region))
        return {str(k): float(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Refresh:
    """What a batch of finding events comes to: the chains to start, and the events they cover."""

    chains: list[ImagePushed]
    absorbed: int  # events whose image is read by a refresh already under way (in its window)
    skipped: int  # not a tenant's repository, or the image is waiting for its scan anyway


class Refreshes:
    """Finding events -> refresh chains, at most one per image per window."""

    def __init__(self, client: redis.Redis, namespace: str, window: float) -> None:
        self.r = client
        self.namespace = namespace
        self.window = window

    def _key(self, region: str, image: str) -> str:
        return f"{self.namespace}:findingrefresh:{region}:{image}"

    def claim(self, region: str, image: str, event_id: str) -> bool:
        """True if this event starts the image's refresh: no refresh in its window yet, or this event's own
        (a redelivery after ingest died between the claim and marking the event)."""
        key = self._key(region, image)
        if self.r.set(key, event_id, nx=True, px=max(1, int(self.window * 1000))):
            return True
        return self.r.get(key) in (event_id, event_id.encode())

    def release(self, region: str, image: str) -> None:
        """The refresh could not be started: the next event of the image may start it."""
        self.r.delete(self._key(region, image))

    def start(
        self,
        events: list[FindingChanged],
        records: Records,
        claims: Claims,
        waits: ScanWaits,
        start: Callable[[ImagePushed], Any],
        counts: Counter[str],
    ) -> list[str]:
        """Start the refreshes a batch of finding events calls for; returns the event ids now handled (to mark
        once the chains are queued, as a push's). Redeliveries of handled events are left out."""
        seen = records.seen_events([e.event_id for e in events])
        new = list({e.event_id: e for e in events if e.event_id not in seen}.values())
        routed = self.route(new, claims, waits)
        for pushed in routed.chains:
            try:
                result = start(pushed)
            except BaseException:
                self.release(pushed.region, member(pushed.account, pushed.repository, pushed.digest))
                raise
            counts["refreshes_started"] += 1
            log.info(
                "finding refresh in %.0fs: repository=%s digest=%s event=%s chain=%s",
                self.window,
                pushed.repository,
                pushed.digest,
                pushed.event_id,
                getattr(result, "id", None),
            )
        counts["findings_absorbed"] += routed.absorbed
        return [e.event_id for e in new]

    def route(self, events: list[FindingChanged], claims: Claims, waits: ScanWaits) -> Refresh:
        """The refresh chains for new finding events (event ids already handled are left out by the caller).

        A platform manifest an index lists refreshes each index that lists it (their report holds its findings),
        not a report of its own. An image waiting for its scan is left to its waiting chain. A repository that
        is not `${TENANT_UUID}/${PRODUCT}` gets nothing (no ECR call).
        """
        chains: list[ImagePushed] = []
        absorbed = skipped = 0
        for event in events:
            try:
                split(event.repository)
            except PermanentError as exc:
                skipped += 1
                log.info("finding event %s not acted on (%s): %s", event.event_id, exc.reason, exc)
                continue
            indexes = claims.indexes_of(event.region, event.account, event.repository, event.digest)
            for i, digest in enumerate(indexes or [event.digest]):
                image = member(event.account, event.repository, digest)
                if waits.is_waiting(event.region, image):
                    skipped += 1
                    log.info(
                        "finding event %s: repository=%s digest=%s waits for its scan: read by its own chain",
                        event.event_id,
                        event.repository,
                        digest,
                    )
                elif self.claim(event.region, image, event.event_id):
                    chains.append(refresh_of(event, digest, first=i == 0))
                else:
                    absorbed += 1
        return Refresh(chains, absorbed, skipped)


def refresh_of(event: FindingChanged, digest: str, first: bool = True) -> ImagePushed:
    """The chain's message for a finding event's image (`digest`: the image, or an index that lists it)."""
    return ImagePushed(
        event_id=event.event_id if first else f"{event.event_id}/{digest}",
        account=event.account,
        region=event.region,
        repository=event.repository,
        digest=digest,
        time=event.time,
        source="rescan",
        finding_refresh=True,
    )
