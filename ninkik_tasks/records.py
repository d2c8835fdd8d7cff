"""Where operators look: quarantined messages and images whose chain ended without a notification."""

from __future__ import annotations

import time
from typing import Any

import redis

# Both are capped Redis streams: bounded memory, ordered by time, addressable by id.
MAX_ENTRIES = 10_000
MAX_BODY_CHARS = 64 * 1024


class Journal:
    """One capped stream of records (quarantine or failures)."""

    def __init__(self, client: redis.Redis, namespace: str, name: str) -> None:
        self.r = client
        self.stream = f"{namespace}:{name}"

    def add(self, **fields: str | int | float | None) -> str:
        """Append a record; returns its id."""
        entry = {k: str(v) for k, v in fields.items() if v is not None}
        entry.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        entry_id = self.r.xadd(self.stream, entry, maxlen=MAX_ENTRIES, approximate=True)  # type: ignore[arg-type]
        return str(entry_id)

    def list(self, count: int = 50) -> list[dict[str, Any]]:
        """The newest records first."""
        rows = self.r.xrevrange(self.stream, count=count)
        return [{"id": entry_id, **fields} for entry_id, fields in rows]  # type: ignore[union-attr,dict-item]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        """One record by id."""
        rows = self.r.xrange(self.stream, min=entry_id, max=entry_id, count=1)
        if not rows:
            return None
        found_id, fields = rows[0]
        return {"id": found_id, **fields}  # type: ignore[dict-item]

    def count(self) -> int:
        """How many records are kept."""
        return int(self.r.xlen(self.stream))


def quarantine(client: redis.Redis, namespace: str) -> Journal:
    """Queue messages refused by ingest, with their raw body and the reason."""
    return Journal(client, namespace, "quarantine")


def failures(client: redis.Redis, namespace: str) -> Journal:
    """Images whose chain ended without a notification, with the stage and the reason."""
    return Journal(client, namespace, "failures")
