"""Redis records that make redeliveries harmless: events seen, reports sent, sends in flight."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import redis

# KEYS: sent, sending (the lock), report. ARGV: owner, lock seconds.
BEGIN_SEND = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'sent'} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {'busy'}
end
local report = redis.call('GET', KEYS[3])
if report then return {'ours', report} end
return {'ours'}
"""
# KEYS: sent, sending, optionally what ninkik has of the image (remember_reported). ARGV: owner, seconds to remember
# the send (0: it did not happen), now, the report's stamp.
END_SEND = """
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
  if KEYS[3] then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2]) end
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
"""


@dataclass(frozen=True)
class SendStart:
    """What begin_send found: "sent" (ninkik has it), "busy" (another worker sends it) or "ours"."""

    state: Literal["sent", "busy", "ours"]
    report: str | None = None  # with "ours": the stored body, None if it expired


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
    def begin_send(self, idempotency_key: str, owner: str, lock_ttl: int) -> SendStart:
        """Whether ninkik has this report, another worker is sending it, or it is ours to send (with its body)."""
        keys = [self.key(kind, idempotency_key) for kind in ("sent", "sending", "report")]
        answer = self._begin(keys=keys, args=[owner, lock_ttl])
        if answer[0] == "ours":
            return SendStart("ours", answer[1] if len(answer) > 1 else None)
        return SendStart(answer[0])

    def end_send(
        self, idempotency_key: str, owner: str, sent_ttl: int | None, reported: tuple[str, str] | None = None
    ) -> None:
        """Give the send back (if still ours), first remembering for `sent_ttl` s that ninkik accepted it and, with
        `reported` (image, stamp), what ninkik now has of the image (as remember_reported)."""
        keys = [self.key("sent", idempotency_key), self.key("sending", idempotency_key)]
        keys += [self.key("reported", reported[0])] if reported else []
        self._end(keys=keys, args=[owner, sent_ttl or 0, int(time.time()), reported[1] if reported else ""])

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
