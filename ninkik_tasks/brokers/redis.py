"""The Redis broker: kombu's Redis transport, its options and the countdown cap they impose."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kombu.entity import Queue
from kombu.transport import redis as kombu_redis

from ..config import Settings

TRANSPORT = "ninkik_tasks.brokers.redis:Transport"


# The rule the Redis settings follow (docs/reliability.md): with V the visibility timeout, no task held
# by a live worker may stay unacknowledged for V, or a sweep gives it to a second worker. A hold is a
# wait for a pool slot (at most one run) + a retry countdown (at most COUNTDOWN_SHARE of V) + its own
# run (at most RUN_SHARE of V, enforced by time limits): 3/4 of V, a quarter left for event-loop lag.
# A dead worker's tasks come back within V + one sweep interval + the sweep mutex's expiry.
COUNTDOWN_SHARE = 0.25
RUN_SHARE = 0.25
SWEEP_MAX_SECONDS = 10
MUTEX_MAX_SECONDS = 30


def sweep_interval(settings: Settings) -> int:
    """Seconds between two sweeps of the unacked set (by any live worker)."""
    return max(1, min(SWEEP_MAX_SECONDS, settings.broker_visibility_timeout // 10))


def mutex_expire(settings: Settings) -> int:
    """The sweep mutex's expiry: how long a worker killed inside a sweep blocks the others' sweeps."""
    return max(2, min(MUTEX_MAX_SECONDS, settings.broker_visibility_timeout // 8))


def restore_bound(settings: Settings) -> float:
    """The longest a SIGKILLed worker's tasks wait before a live worker gets them again."""
    return float(settings.broker_visibility_timeout + sweep_interval(settings) + mutex_expire(settings))


def run_limit(settings: Settings) -> float:
    """The hard time limit of one chain task's run (the soft limit, a retry, comes at four fifths of it)."""
    return settings.broker_visibility_timeout * RUN_SHARE


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's Redis transport options, derived from NINKIK_BROKER_VISIBILITY_TIMEOUT."""
    return {
        # ETA/countdown tasks and prefetched ones stay unacked in Redis until they are acknowledged: every
        # hold is kept under this (countdown_cap, run_limit), or another worker would restore and run it twice.
        "visibility_timeout": settings.broker_visibility_timeout,
        # A task held by a worker that died is restored by the sweep of any live worker; kombu's default
        # sweep runs every 10 x 10 s, too rarely for the bound, so sweep every tenth of the timeout (at
        # most every 10 s; the sweep is one ZRANGE on an index) and restore all that are due.
        "unacked_restore_interval": sweep_interval(settings),
        "unacked_restore_throttle": 1,
        # The sweep holds a Redis mutex; a worker killed while holding it (SIGKILL, OOM) would stop
        # every other worker's sweep for kombu's default 300 s. One sweep takes milliseconds.
        "unacked_mutex_expire": mutex_expire(settings),
        # A Redis that vanishes without closing the connection (failover, NAT) must not hang a publish.
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
    }


def celery_config(
    settings: Settings, chain_tasks: Sequence[str] = (), sweep_tasks: Sequence[str] = ()
) -> dict[str, Any]:
    """The Celery settings that belong to the Redis broker: the transport, and time limits on the chain."""
    limit = run_limit(settings)
    return {
        "broker_transport": TRANSPORT,
        "broker_transport_options": transport_options(settings),
        # Enforced by the prefork pool (the threads pool cannot: there the clients' timeouts bound a run).
        # The soft limit raises inside the task, which retries the step. The sweeps have no limit, and here
        # are acknowledged on receipt: one running past the visibility timeout would be given to a second
        # worker while it runs (on RabbitMQ they are acknowledged late, docs/health.md). Stopped by a warm
        # shutdown, a sweep queues itself again (pipeline.py); only one killed outright is left to the schedule.
        "task_annotations": {
            **{name: {"time_limit": limit, "soft_time_limit": limit * 0.8} for name in chain_tasks},
            **{name: {"acks_late": False} for name in sweep_tasks},
        },
    }


def task_queues(names: Sequence[str]) -> list[Queue]:
    """Plain queues (kombu's Redis transport keeps each as a list)."""
    return [Queue(name) for name in names]  # type: ignore[no-untyped-call]


def countdown_floor(settings: Settings) -> float:
    """The shortest retry countdown: none beyond Celery's own."""
    return 0.0


def countdown_cap(settings: Settings) -> float:
    """The longest retry countdown: a quarter of the visibility timeout, so a held task is never restored."""
    return min(float(settings.retry_backoff_max_seconds), settings.broker_visibility_timeout * COUNTDOWN_SHARE)


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
