"""Redis records that make redeliveries harmless: events seen, reports sent, sends in flight."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import redis

from .holdings import Holding

# KEYS: sent, sending (the lock), report, the repository's Holdings (holdings.py). ARGV: owner, lock seconds, and
# with a Holding: digest, observed, idempotency key. What ninkik has of the image decides where it is recorded: a
# report observed before it is stale; ninkik having another report of the image (or having removed it) makes this
# one new whatever was sent before (a tag that came back); else the report's own record says.
BEGIN_SEND = """
local fresh, before = false, ''
if ARGV[3] ~= '' then
  local v = redis.call('HGET', KEYS[4], ARGV[3])
  if v then
    local h = cjson.decode(v)
    if tonumber(h.o) > tonumber(ARGV[4]) then return {'stale'} end
    if not h.g and h.k == ARGV[5] then return {'sent'} end
    fresh = true
    if redis.call('EXISTS', KEYS[1]) == 1 then before = h.k or 'removed' end
  end
end
if not fresh and redis.call('EXISTS', KEYS[1]) == 1 then return {'sent'} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {'busy'}
end
return {'ours', redis.call('GET', KEYS[3]) or '', before}
"""
# KEYS: sent, sending, reported (remember_reported), Holdings, tag map. ARGV: owner, seconds to remember the send
# (0: it did not happen), now, the report's stamp ('' none), digest ('' no Holding), the Holding's JSON, observed.
# Returns the digests that had one of the report's tags in ninkik (a tag moved to this image): re-reported.
END_SEND = """
local moved = {}
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
  if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2]) end
  local old = ARGV[5] ~= '' and redis.call('HGET', KEYS[4], ARGV[5])
  local later = old and tonumber(cjson.decode(old).o) > tonumber(ARGV[7])
  if ARGV[5] ~= '' and not later then
    local lost = {}
    if old then for _, tag in ipairs(cjson.decode(old).t or {}) do lost[tag] = true end end
    local seen = {}
    for _, tag in ipairs(cjson.decode(ARGV[6]).t or {}) do
      local had = redis.call('HGET', KEYS[5], tag)
      if had and had ~= ARGV[5] and not seen[had] then table.insert(moved, had); seen[had] = true end
      redis.call('HSET', KEYS[5], tag, ARGV[5])
      lost[tag] = nil
    end
    for tag, _ in pairs(lost) do
      if redis.call('HGET', KEYS[5], tag) == ARGV[5] then redis.call('HDEL', KEYS[5], tag) end
    end
    redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
  end
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return moved
"""


@dataclass(frozen=True)
class SendStart:
    """What begin_send found: "sent" (ninkik has it), "busy" (another worker sends it), "ours", or "stale" (ninkik
    has what a later DescribeImages said of the image)."""

    state: Literal["sent", "busy", "ours", "stale"]
    report: str | None = None  # with "ours": the stored body, None if it expired
    # With "ours": the key of the report ninkik has now, where ninkik had this very report before it (a tag that
    # came back, a restore): the POST's Idempotency-Key is derived from both, or ninkik would drop it as a repeat.
    returning_from: str | None = None


def image_id(account: str, region: str, repository: str, digest: str) -> str:
    """How the records name one image of one registry."""
    return f"{account}/{region}/{repository}@{digest}"


class Records:
    """Idempotency records under one key namespace."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.ns = namespace
        self._begin = client.register_script(BEGIN_SEND)
        self._end = client.register_script(END_SEND)

    def key(self, *parts: str) -> str:
        """A key inside the namespace."""
        return ":".join((self.ns, *parts))

    # Events: marked only after their chain was enqueued, so a crash in between redoes the
    # event (the notification is idempotent) instead of losing it.
    def seen_events(self, event_ids: list[str]) -> set[str]:
        """The subset of `event_ids` already handed to a chain."""
        if not event_ids:
            return set()
        values = self.r.mget([self.key("event", event_id) for event_id in event_ids])
        return {event_id for event_id, value in zip(event_ids, values, strict=True) if value is not None}

    def mark_events(self, event_ids: list[str], ttl: int) -> None:
        """Remember that these events were handed to a chain."""
        if not event_ids:
            return
        pipe = self.r.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.set(self.key("event", event_id), "1", ex=ttl)
        pipe.execute()

    def claim_message(self, message_id: str, ttl: int) -> bool:
        """True the first time a (bad) SQS message is seen, so redeliveries are recorded once."""
        return bool(self.r.set(self.key("message", message_id), "1", nx=True, ex=ttl))

    # Reports: one round trip to start a send and one to end it (each a script, so a check and what
    # depends on it cannot be split by another worker).
    def begin_send(
        self, idempotency_key: str, owner: str, lock_ttl: int, held: tuple[str, str, float] | None = None
    ) -> SendStart:
        """Whether ninkik has this report, another worker is sending it, or it is ours to send (with its body).

        `held`: (the repository's Holdings key, digest, observed) to decide by what ninkik has of the image."""
        keys = [self.key(kind, idempotency_key) for kind in ("sent", "sending", "report")]
        keys.append(held[0] if held else self.key("held"))
        args = [owner, lock_ttl, *((held[1], held[2], idempotency_key) if held else ("", 0, ""))]
        answer = self._begin(keys=keys, args=args)
        if answer[0] == "ours":
            report, before = (a.decode() if isinstance(a, bytes) else a for a in answer[1:3])
            return SendStart("ours", report or None, before or None)
        state = answer[0].decode() if isinstance(answer[0], bytes) else answer[0]
        return SendStart(cast(Literal["sent", "busy", "stale"], state))

    def end_send(
        self,
        idempotency_key: str,
        owner: str,
        sent_ttl: int | None,
        reported: tuple[str, str] | None = None,
        holding: tuple[str, str, str, Holding] | None = None,
    ) -> list[str]:
        """Give the send back (if still ours), first remembering for `sent_ttl` s that ninkik accepted it, with
        `reported` (image, stamp) what ninkik now has of the image (as remember_reported), and with `holding`
        (Holdings key, tag map key, digest, Holding) its Holding. Returns the digests whose tag this image took."""
        keys = [self.key("sent", idempotency_key), self.key("sending", idempotency_key)]
        keys.append(self.key("reported", reported[0]) if reported else self.key("reported"))
        keys += [holding[0], holding[1]] if holding else [self.key("held"), self.key("tags")]
        args: list[str | int | float] = [owner, sent_ttl or 0, int(time.time()), reported[1] if reported else ""]
        args += [holding[2], holding[3].dump(), holding[3].observed] if holding else ["", "", 0]
        moved = self._end(keys=keys, args=args)
        return [m.decode() if isinstance(m, bytes) else m for m in moved]

    # What ninkik has of each image (Report.stamp): a rescan does not read again what cannot have changed.
    def remember_reported(self, image: str, stamp: str, ttl: int) -> None:
        """`image` (account/region/repository@digest) is in ninkik as `stamp` says."""
        self.r.set(self.key("reported", image), stamp, ex=ttl)

    def reported(self, images: list[str]) -> list[str | None]:
        """The stamp ninkik has of each image, None where there is none."""
        if not images:
            return []
        values = self.r.mget([self.key("reported", image) for image in images])
        return [v.decode() if isinstance(v, bytes) else v for v in values]

    # Reports are kept out of task messages (Flower shows arguments); they travel by key.
    def put_report(self, fingerprint: str, payload: str, ttl: int) -> None:
        """Store a report body under its fingerprint."""
        self.r.set(self.key("report", fingerprint), payload, ex=ttl)
