"""The loops' last beats in Redis, so ingest's /metrics shows those of workers and beat (which serve no HTTP)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import redis

from . import Heartbeat

PREFIX = "health"  # keys: <namespace>:health:<kind>:<host>:<pid>, value: the last beat (Unix time)


def key(namespace: str, kind: str) -> str:
    """This process's key."""
    return f"{namespace}:{PREFIX}:{kind}:{socket.gethostname()}:{os.getpid()}"


class Export:
    """A thread copying the heartbeat's last beat to Redis every beat; a key outlives its process by `ttl` s."""

    def __init__(self, heartbeat: Heartbeat, client: redis.Redis, namespace: str, ttl: int) -> None:
        self.heartbeat = heartbeat
        self.client = client
        self.key = key(namespace, heartbeat.kind)
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ninkik-{heartbeat.kind}-export", daemon=True)

    def start(self) -> Export:
        """Start copying."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat.every):
            if self.heartbeat.last:
                with contextlib.suppress(redis.RedisError):  # Redis away: the metric goes stale, as it should
                    self.client.set(self.key, repr(self.heartbeat.last), ex=self.ttl)

    def stop(self) -> None:
        """Stop copying and remove the key (the process leaves: no stale series)."""
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.key)


def start_export(beat: Heartbeat) -> Export:
    """Copy `beat` to Redis (short timeouts: an outage only makes the metric stale), for ingest's /metrics."""
    from .. import tls
    from ..config import get_settings

    s = get_settings()
    options = tls.redis_client_options(s.redis_url, s)
    client = redis.Redis.from_url(s.redis_url, **options, socket_timeout=2, socket_connect_timeout=2)
    return Export(beat, client, s.redis_namespace, ttl=int(10 * s.health_max_age_seconds)).start()
