"""Redis records that make redeliveries harmless: events seen, reports sent, sends in flight."""

from __future__ import annotations

import time

import redis


class Records:
    """Idempotency records under one key namespace."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.ns = namespace

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

    # Reports
    def was_sent(self, idempotency_key: str) -> bool:
        """Whether ninkik already accepted this exact report."""
        return bool(self.r.exists(self.key("sent", idempotency_key)))

    def mark_sent(self, idempotency_key: str, ttl: int) -> None:
        """Remember that ninkik accepted this report."""
        self.r.set(self.key("sent", idempotency_key), str(int(time.time())), ex=ttl)

    def lock_send(self, idempotency_key: str, owner: str, ttl: int) -> bool:
        """Take the right to send this report; False while another worker holds it."""
        lock = self.key("sending", idempotency_key)
        if self.r.set(lock, owner, nx=True, ex=ttl):
            return True
        # The same task redelivered after its worker died holds the lock already.
        return self.r.get(lock) == owner

    def unlock_send(self, idempotency_key: str, owner: str) -> None:
        """Give the send back (only if still ours)."""
        lock = self.key("sending", idempotency_key)
        if self.r.get(lock) == owner:
            self.r.delete(lock)

    # Reports are kept out of task messages (Flower shows arguments); they travel by key.
    def put_report(self, fingerprint: str, payload: str, ttl: int) -> None:
        """Store a report body under its fingerprint."""
        self.r.set(self.key("report", fingerprint), payload, ex=ttl)

    def get_report(self, fingerprint: str) -> str | None:
        """A stored report body, if it has not expired."""
        value = self.r.get(self.key("report", fingerprint))
        return value if isinstance(value, str) else None
