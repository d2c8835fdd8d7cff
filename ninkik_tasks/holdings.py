"""What ninkik has of each image: one Redis hash per repository (digest -> Holding), kept with the reports.

The report step writes an image's Holding in the same round trip that records its report as sent
(idempotency.py), the removal step when ninkik confirmed a DELETE. The lifecycle sweep (lifecycle.py) compares
these with the registry, and coverage counts them. Each Holding carries the time its image was observed
(DescribeImages' call): a report or removal observed before what ninkik has now is stale and dropped, so events
handled out of order end in what DescribeImages said last, not in the order they came.

Layout, per repository `{ns}:held:{account}:{region}:{repository}`: field digest, value the Holding's JSON with
one-letter keys; with the tag map about 500 bytes an image (bench/holdings.py). Beside it
`{ns}:tags:{account}:{region}:{repository}`: tag -> the digest ninkik has it on, which is how a push that takes a
tag from another image is found (no event names the image that lost it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict

# A removed image's Holding (gone) is kept this long, so a report observed before its removal is still stale; a
# re-push after the removal is observed later and reported again.
GONE_KEEP_SECONDS = 7 * 24 * 3600

# KEYS: held, tags, sending (the removal's lock), reported. ARGV: digest, removal JSON, owner.
# The image's tags leave the tag map where they still point at it; its Holding becomes a tombstone.
END_REMOVE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local h = cjson.decode(old)
  for _, tag in ipairs(h.t or {}) do
    if redis.call('HGET', KEYS[2], tag) == ARGV[1] then redis.call('HDEL', KEYS[2], tag) end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[4])
if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
"""

# KEYS: held, sending. ARGV: digest, observed, owner, lock seconds.
BEGIN_REMOVE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local h = cjson.decode(v)
  if tonumber(h.o) > tonumber(ARGV[2]) then return 'stale' end
  if h.g then return 'removed' end
end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 'busy'
end
return 'ours'
"""


class Holding(BaseModel):
    """What ninkik has of one image: the report's key, when it was observed, its tags and states."""

    model_config = ConfigDict(frozen=True)
    key: str = ""  # the Idempotency-Key of the report ninkik has ("" once removed)
    observed: float  # epoch seconds of the DescribeImages call the report or removal followed
    tags: list[str] = []
    status: str = "ACTIVE"  # the image's: ACTIVE, ARCHIVED, ACTIVATING
    scan: str = ""  # the reported scan status (COMPLETE, ACTIVE, NOT_SCANNED, ...)
    scan_type: str = ""  # BASIC, ENHANCED, NONE
    tenant: str = ""
    product: str = ""
    gone: bool = False  # removed from ninkik: a tombstone, kept GONE_KEEP_SECONDS

    def dump(self) -> str:
        """The stored JSON: one-letter keys (the scripts read k, o, t, g), defaults left out."""
        fields = self.model_dump(exclude_defaults=True)
        return json.dumps({SHORT[name]: value for name, value in fields.items()}, separators=(",", ":"))

    @classmethod
    def load(cls, raw: str | bytes) -> Holding:
        return cls.model_validate({LONG[k]: v for k, v in json.loads(raw).items() if k in LONG})


SHORT = {
    "key": "k",
    "observed": "o",
    "tags": "t",
    "status": "s",
    "scan": "c",
    "scan_type": "y",
    "tenant": "n",
    "product": "p",
    "gone": "g",
}
LONG = {short: name for name, short in SHORT.items()}


class Holdings:
    """The Holdings of every repository under one namespace."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.ns = namespace
        self._begin_remove = client.register_script(BEGIN_REMOVE)
        self._end_remove = client.register_script(END_REMOVE)

    def key(self, account: str, region: str, repository: str) -> str:
        """The repository's hash of Holdings."""
        return f"{self.ns}:held:{account}:{region}:{repository}"

    def tags_key(self, account: str, region: str, repository: str) -> str:
        """The repository's tag -> digest map of what ninkik has."""
        return f"{self.ns}:tags:{account}:{region}:{repository}"

    def of(self, account: str, region: str, repository: str) -> dict[str, Holding]:
        """Every Holding of one repository (tombstones of removed images included), by digest."""
        raw = self.r.hgetall(self.key(account, region, repository))
        return {_text(digest): Holding.load(value) for digest, value in raw.items()}

    def get(self, account: str, region: str, repository: str, digest: str) -> Holding | None:
        raw = self.r.hget(self.key(account, region, repository), digest)
        return None if raw is None else Holding.load(raw)

    def repositories(self, account: str, region: str, names: Iterable[str]) -> Iterator[tuple[str, dict[str, Holding]]]:
        """The Holdings of each named repository, one pipeline per 100 repositories."""
        listed = list(names)
        for start in range(0, len(listed), 100):
            chunk = listed[start : start + 100]
            pipe = self.r.pipeline(transaction=False)
            for name in chunk:
                pipe.hgetall(self.key(account, region, name))
            for name, raw in zip(chunk, pipe.execute(), strict=True):
                yield name, {_text(d): Holding.load(v) for d, v in raw.items()}

    def begin_remove(
        self, account: str, region: str, repository: str, digest: str, observed: float, owner: str, lock_ttl: int
    ) -> str:
        """'ours' to send the DELETE, 'stale' (ninkik has a later observation), 'removed' (done before) or 'busy'."""
        keys = [self.key(account, region, repository), self._lock(account, region, repository, digest)]
        answer = self._begin_remove(keys=keys, args=[digest, observed, owner, lock_ttl])
        return _text(answer)

    def end_remove(
        self, account: str, region: str, repository: str, digest: str, observed: float, owner: str, reported: str
    ) -> None:
        """ninkik confirmed the DELETE: the image's tags leave the tag map and its Holding becomes a tombstone;
        `reported` (Records' key of its rescan stamp) goes too."""
        keys = [
            self.key(account, region, repository),
            self.tags_key(account, region, repository),
            self._lock(account, region, repository, digest),
            reported,
        ]
        tombstone = Holding(observed=observed, gone=True).dump()
        self._end_remove(keys=keys, args=[digest, tombstone, owner])

    def release_remove(self, account: str, region: str, repository: str, digest: str, owner: str) -> None:
        """Give a removal's lock back without recording it (the DELETE failed; it is retried)."""
        lock = self._lock(account, region, repository, digest)
        if _text(self.r.get(lock) or b"") == owner:
            self.r.delete(lock)

    def prune(self, account: str, region: str, repository: str, before: float) -> int:
        """Forget the tombstones observed before `before`; returns how many went."""
        old = [d for d, h in self.of(account, region, repository).items() if h.gone and h.observed < before]
        if old:
            self.r.hdel(self.key(account, region, repository), *old)
        return len(old)

    def inuse_key(self, account: str, region: str, repository: str) -> str:
        """The repository's enhanced-scanning usage: digest -> [inUseCount, lastInUseAt] as its scan last read it."""
        return f"{self.ns}:inuse:{account}:{region}:{repository}"

    def record_in_use(
        self, account: str, region: str, repository: str, digest: str, count: int | None, last: str | None
    ) -> None:
        """Keep what the image's enhanced findings say of its use, for the next usage report."""
        self.r.hset(self.inuse_key(account, region, repository), digest, json.dumps([count, last]))

    def in_use(self, account: str, region: str, repository: str, digest: str) -> tuple[int | None, str | None] | None:
        raw = self.r.hget(self.inuse_key(account, region, repository), digest)
        if raw is None:
            return None
        count, last = json.loads(raw)
        return count, last

    def _lock(self, account: str, region: str, repository: str, digest: str) -> str:
        return f"{self.ns}:removing:{account}/{region}/{repository}@{digest}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
