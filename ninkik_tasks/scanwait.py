"""How often a waiting image's scan status may be read: a steady poll, spread so the waits fit the ECR budget.

Every image whose scan has not finished is registered, per account and region, in one Redis sorted set (scored
by its latest read). Each image is read again after `max(poll, waiting / (calls_per_second x share))` seconds, so
the status reads of an account's waiting images in a region take at most `share` of that account and region's ECR
budget (stages.ecr_limit_key: ECR counts its quotas that way) and the rest stays for first reads (new pushes),
DescribeImages and sweeps; one account's many waits never slow another's reads. The account is the member's
registry id (`member`). An image whose wait ended without saying so
(its worker died) drops out once it has not been read for three of its intervals. A scan-complete event
for a waiting image ends its wait at once (ingest starts a chain that reads it now; see ingest.py): that
chain takes up the waiting chain's message (`park`) rather than describing the image again, and the waiting
chain, when its turn comes, takes that chain's read (`turn`) rather than reading again, so the event
costs one status read and no DescribeImages.

Where scan-complete events arrive for an image's account and region (ingest saw one there within the last hour:
freshness.LastSeen), polling is the safety net, not the mechanism: a waiting image is read at its first read, then
every NINKIK_SCAN_SAFETY_POLL_SECONDS (the budget's share still a floor), and at once when its event comes.

An untagged image whose scan is final may still be held a short while (NINKIK_UNTAGGED_HOLD_SECONDS after its
push) for an index that lists it (scans.hold_seconds): a held image leaves the waiting set (it takes no reads and
no share of the budget), its final scan is kept here, and it is counted apart (`held`), not as a scan wait.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import TYPE_CHECKING, NamedTuple, cast

import redis

if TYPE_CHECKING:
    from .events import ImagePushed, ImageScanned
    from .indexes import Claims

log = logging.getLogger(__name__)

# Both scripts: KEYS[1] = the account and region's waiting set, KEYS[2] = ingest's hash of when it last saw each
# kind of event in the image's account and region (seen_key); ARGV = member, the poll, the slowest pace any image
# may have (the safety-net pace, else the poll), SCAN_EVENTS_RECENT, reads per second for waits, then the kinds of
# scan-complete events (SCAN_EVENT_KINDS). The image's pace is the safety-net pace while such events arrive there.
_PACE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pace, slowest, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
if slowest > pace then
  for _, seen in ipairs(redis.call('HMGET', KEYS[2], unpack(ARGV, 6))) do
    if seen and now - tonumber(seen) < tonumber(ARGV[4]) then pace = slowest end
  end
end
"""

# KEYS[3] = the account and region's waits by when each began. Registers a read of the member now, drops entries
# not read for three of the slowest intervals (their worker died); returns the member's interval until its next read.
_REGISTER = (
    _PACE
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
local stale = 3 * math.max(slowest, redis.call('ZCARD', KEYS[1]) / budget)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - stale)
redis.call('EXPIRE', KEYS[1], math.ceil(stale) + 60)
local interval = math.max(pace, redis.call('ZCARD', KEYS[1]) / budget)
redis.call('ZADD', KEYS[3], 'NX', now, ARGV[1])
redis.call('EXPIRE', KEYS[3], math.floor(3 * math.max(slowest, interval)) + 600)
return tostring(interval)
"""
)

# KEYS[3] = the member's scan-complete mark (ScanWaits.finish). Returns {the mark or nil, seconds until the member is
# due for a read (0: now), or -1 if it is not waiting}.
_TURN = (
    """
local finished = redis.call('GET', KEYS[3])
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not last then return {finished, '-1'} end
"""
    + _PACE
    + """
local interval = math.max(pace, redis.call('ZCARD', KEYS[1]) / budget)
return {finished, tostring(math.max(0, tonumber(last) + 0.9 * interval - now))}
"""
)

WAIT_SHARE = 0.5  # of NINKIK_ECR_CALLS_PER_SECOND, at most, for re-reading scans that have not finished
# Scan-complete events "arrive" for an account and region when ingest saw one there within this long: their
# waits are then read at the safety-net pace (NINKIK_SCAN_SAFETY_POLL_SECONDS) rather than the poll.
SCAN_EVENTS_RECENT = 3600
SCAN_EVENT_KINDS = ("image_scan", "inspector2_scan")  # freshness.KINDS' names of "ECR Image Scan", "Inspector2 Scan"


def seen_key(namespace: str, account: str, region: str) -> str:
    """The Redis hash of when ingest last saw each kind of event in an account and region (freshness.LastSeen)."""
    return f"{namespace}:eventseen:{account}:{region}"


def member(registry_id: str, repository: str, digest: str) -> str:
    """How ScanWaits names an image of a region (the chain's waits and ingest's scan events must agree)."""
    return f"{registry_id}/{repository}@{digest}"


def account_of(image: str) -> str:
    """The account (registry id) of an image as `member` names it."""
    return image.split("/", 1)[0]


def waiting_key(namespace: str, account: str, region: str) -> str:
    """The account and region's waiting set: image -> its latest read (Unix time, Redis' clock)."""
    return f"{namespace}:scanwait:{account}:{region}"


def since_key(namespace: str, account: str, region: str) -> str:
    """The account and region's waits by when each began: image -> Unix time of its first status read."""
    return f"{namespace}:scanwaitsince:{account}:{region}"


def oldest_wait(client: redis.Redis, namespace: str, account: str, region: str, now: float) -> float | None:
    """Seconds the longest wait of the account and region has lasted (None: none waiting); drops waits that ended
    unsaid."""
    since = since_key(namespace, account, region)
    entries = cast(list[tuple[str, float]], client.zrange(since, 0, 49, withscores=True))
    for image, began in entries:
        if client.zscore(waiting_key(namespace, account, region), image) is not None:
            return max(0.0, now - float(began))
        client.zrem(since, image)  # dropped from the waiting set as stale (its worker died): not waiting
    return None


class Turn(NamedTuple):
    """Where a waiting image stands (ScanWaits.turn)."""

    # None: no scan-complete event came for it; "": one came and no chain has read the image since; else that read
    # (the final scan, JSON), which a chain still waiting takes instead of reading again.
    after_event: str | None
    due: float | None  # seconds until it may be read again (0: now); None if it is not waiting (its first read)


class ScanWaits:
    """The images waiting for their scan, per account and region; says when each may be read again."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        poll_seconds: float,
        calls_per_second: float,
        safety_poll_seconds: float = 0.0,
    ) -> None:
        self.r = client
        self.namespace = namespace
        self.poll = poll_seconds
        # While scan events arrive for an image's account and region (0: never slower than the poll).
        self.safety_poll = max(poll_seconds, safety_poll_seconds) if safety_poll_seconds > 0 else poll_seconds
        # No limit configured (0): the poll alone sets the pace.
        self.budget = calls_per_second * WAIT_SHARE if calls_per_second > 0 else 1e12
        self._register = client.register_script(_REGISTER)
        self._turn = client.register_script(_TURN)

    def _key(self, region: str, image: str) -> str:
        return waiting_key(self.namespace, account_of(image), region)

    def _since_key(self, region: str, image: str) -> str:
        return since_key(self.namespace, account_of(image), region)

    def _script_args(self, region: str, image: str) -> tuple[list[str], list[str | float]]:
        keys = [self._key(region, image), seen_key(self.namespace, account_of(image), region)]
        return keys, [image, self.poll, self.safety_poll, SCAN_EVENTS_RECENT, self.budget, *SCAN_EVENT_KINDS]

    def next_read(self, region: str, image: str) -> float:
        """Register a status read of `image` now; seconds until its next one (with +-10% jitter): the poll, or the
        slow safety-net pace while scan-complete events arrive for its account and region (its event then ends
        the wait; a lost one costs up to this), longer when the waits would take more than their budget share."""
        keys, args = self._script_args(region, image)
        interval = float(self._register(keys=[*keys, self._since_key(region, image)], args=args))
        return interval * random.uniform(0.9, 1.1)

    def turn(self, region: str, image: str) -> Turn:
        """Whether a scan-complete event came for `image` and when it may be read again, in one round trip. A
        countdown shorter than its turn (the Redis broker caps them) wakes the task early: it waits again without
        spending a read."""
        keys, args = self._script_args(region, image)
        mark, due = self._turn(keys=[*keys, self._finished_key(region, image)], args=args)
        after_event = None if mark is None else "" if mark in ("1", b"1") else str(mark)
        return Turn(after_event, None if float(due) < 0 else float(due))

    def finish(self, region: str, image: str, ttl: int) -> bool:
        """A scan-complete event ("ECR Image Scan", "Inspector2 Scan") for `image`: remember it for `ttl` s
        (a chain reading the image later takes its scan as final); True if the image is waiting right now."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self._finished_key(region, image), "1", ex=ttl)
        pipe.zscore(self._key(region, image), image)
        return pipe.execute()[1] is not None

    def finished(self, region: str, image: str) -> bool:
        """Whether a scan-complete event said the image's scan is done."""
        return self.r.exists(self._finished_key(region, image)) > 0

    def read_after_event(self, region: str, image: str, scan: str) -> None:
        """A chain read the image's final scan (JSON) after its event: the chains still waiting take this read
        instead of their own (the push's chain, when the event's chain reported first)."""
        self.r.set(self._finished_key(region, image), scan, xx=True, keepttl=True)

    def park(self, region: str, image: str, described: str, ttl: int) -> None:
        """The message (JSON) of a chain waiting for `image`: a scan-complete event's chain takes it up instead of
        matching and describing the image again (stages.describe_step)."""
        self.r.set(self._parked_key(region, image), described, ex=ttl)

    def parked(self, region: str, image: str) -> str | None:
        """The message `park` left for the image, if any."""
        value = self.r.get(self._parked_key(region, image))
        return None if value is None else str(value)

    def _parked_key(self, region: str, image: str) -> str:
        return f"{self.namespace}:scanparked:{region}:{image}"

    def _finished_key(self, region: str, image: str) -> str:
        return f"{self.namespace}:scandone:{region}:{image}"

    def done(self, region: str, *images: str) -> None:
        """The images' waits, or holds, are over (scan final, the wait ran out, reported, listed by an index)."""
        pipe = self.r.pipeline(transaction=False)
        for image in images:  # an index's platforms are of its account: one or two keys in all
            pipe.zrem(self._key(region, image), image)
            pipe.zrem(self._since_key(region, image), image)
            pipe.delete(self._held_key(region, image))
            pipe.srem(self._holding_key(region, image), image)
        pipe.execute()

    def is_waiting(self, region: str, image: str) -> bool:
        """Whether a chain is waiting for `image`'s scan now."""
        return self.r.zscore(self._key(region, image), image) is not None

    def waiting(self, account: str, region: str) -> int:
        """How many images of the account in the region are waiting now."""
        return int(self.r.zcard(waiting_key(self.namespace, account, region)))

    def hold(self, region: str, image: str, seconds: float, scan: str) -> None:
        """Hold `image` (its scan final: `scan`, as JSON) for `seconds`; it is not waiting for its scan any more."""
        payload = json.dumps({"until": time.time() + seconds, "scan": scan})
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self._held_key(region, image), payload, ex=int(seconds) + 600)
        pipe.sadd(self._holding_key(region, image), image)
        pipe.expire(self._holding_key(region, image), int(seconds) + 600)
        pipe.zrem(self._key(region, image), image)
        pipe.zrem(self._since_key(region, image), image)
        pipe.execute()

    def held(self, region: str, image: str) -> tuple[float, str] | None:
        """(seconds the hold still lasts, the scan kept) for a held image, else None."""
        raw = self.r.get(self._held_key(region, image))
        if raw is None:
            return None
        data = json.loads(raw)
        return max(0.0, float(data["until"]) - time.time()), str(data["scan"])

    def holding(self, account: str, region: str) -> int:
        """How many untagged images of the account in the region are held for an index now (apart from waits)."""
        return int(self.r.scard(f"{self.namespace}:scanholding:{account}:{region}"))

    def _held_key(self, region: str, image: str) -> str:
        return f"{self.namespace}:scanhold:{region}:{image}"

    def _holding_key(self, region: str, image: str) -> str:
        return f"{self.namespace}:scanholding:{account_of(image)}:{region}"

    # An index's platforms whose scans were final at an earlier read of the index's wait.
    def keep(self, region: str, index: str, platform: str, scan: str, ttl: int) -> None:
        """Keep a platform's final scan (JSON) while the index's other platforms are waited for."""
        self.r.set(self._kept_key(region, index, platform), scan, ex=ttl)

    def kept(self, region: str, index: str, platform: str) -> str | None:
        """A platform's scan kept by `keep`, else None."""
        value = self.r.get(self._kept_key(region, index, platform))
        return None if value is None else str(value)

    def forget_kept(self, region: str, index: str, platforms: list[str]) -> None:
        """The index's wait is over: its next read (a rescan) reads every platform again."""
        if platforms:
            self.r.delete(*(self._kept_key(region, index, p) for p in platforms))

    def _kept_key(self, region: str, index: str, platform: str) -> str:
        return f"{self.namespace}:scankept:{region}:{index}:{platform}"


def scan_done(waits: ScanWaits, claims: Claims, event: ImageScanned, ttl: int) -> ImagePushed | None:
    """A scan-complete event, remembered for the image (`ttl` s); the push whose chain reads it now if the image,
    or the index that lists it, waits for its scan, else None.

    An image nobody is waiting for (never pushed, already reported, its push event still to come) gets no
    chain: the event is only remembered, so a chain reading that image later takes its scan as final.
    """
    from .events import scanned_image

    waiting = waits.finish(event.region, member(event.account, event.repository, event.digest), ttl)
    index = claims.index_of(event.region, event.account, event.repository, [event.digest])[0]
    if index is not None:
        # A platform of an index: the index's report is what waits for it, and is read now if waiting.
        if not waits.finish(event.region, member(event.account, event.repository, index), ttl):
            return None
        log.info(
            "scan done: repository=%s digest=%s (in index %s) event=%s: index read now",
            event.repository,
            event.digest,
            index,
            event.event_id,
        )
        return scanned_image(event).model_copy(update={"digest": index, "tag": None})
    if not waiting:
        return None
    log.info("scan done: repository=%s digest=%s event=%s: read now", event.repository, event.digest, event.event_id)
    return scanned_image(event)
