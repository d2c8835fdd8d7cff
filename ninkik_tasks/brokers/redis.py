"""The Redis broker: kombu's Redis transport, its options and the countdown cap they impose."""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

from ..config import Settings

TRANSPORT = "ninkik_tasks.brokers.redis:Transport"


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's Redis transport options, derived from NINKIK_BROKER_VISIBILITY_TIMEOUT."""
    visibility = settings.broker_visibility_timeout
    return {
        # ETA/countdown tasks and prefetched ones stay unacked in Redis until they are acknowledged: every
        # hold is kept well under this (countdown_cap), or another worker would restore and run it twice.
        "visibility_timeout": visibility,
        # A task held by a worker that died is restored by the sweep of any live worker; kombu's default
        # sweep runs every 10 x 10 s, far too rarely for a short visibility timeout, so sweep every
        # fifth of it (at most every 10 s; the sweep is one ZRANGE on an index).
        "unacked_restore_interval": max(1, min(10, visibility // 5)),
        "unacked_restore_throttle": 1,
        # The sweep holds a Redis mutex; a worker killed while holding it (SIGKILL, OOM) would stop
        # every other worker's sweep for kombu's default 300 s. Half a visibility timeout is plenty
        # for one sweep of ten messages.
        "unacked_mutex_expire": max(5, min(300, visibility // 2)),
        # A Redis that vanishes without closing the connection (failover, NAT) must not hang a publish.
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings that belong to the Redis broker."""
    return {"broker_transport": TRANSPORT, "broker_transport_options": transport_options(settings)}


def countdown_cap(settings: Settings) -> float:
    """The longest retry countdown: a quarter of the visibility timeout, so a held task is never restored."""
    return min(float(settings.retry_backoff_max_seconds), settings.broker_visibility_timeout / 4)


class Channel(kombu_redis.Channel):
    """kombu 5.7.0's Redis channel, able to give back its unacknowledged messages after a connection loss.

    On a lost connection Celery calls `Connection.collect()`, which detaches the transport (its `client`
    becomes None), then `Connection.close()`. The channel's close disconnects its pools, then restores
    the messages it had delivered but not acknowledged; that needs a new pool, whose parameters kombu reads
    from the detached transport: AttributeError "'NoneType' object has no attribute 'hostname'", which
    Celery treats as unrecoverable and the worker exits (seen when Redis restarts with tasks in hand;
    the same failure as celery/kombu issue 582). Here the parameters come from the connection the channel
    was opened with; with Redis still down the restore fails as a connection error, which kombu ignores,
    and the messages stay in the unacked set for the visibility sweep.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._opened_with = self.connection.client

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport.client is not None:
            params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[no-untyped-call]
            return params
        transport.client = self._opened_with
        try:
            params = super()._connparams(asynchronous)  # type: ignore[no-untyped-call]
            return params
        finally:
            transport.client = None


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the Channel above."""

    Channel = Channel
