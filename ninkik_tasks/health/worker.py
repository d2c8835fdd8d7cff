"""The worker's heartbeat: its event loop's timer and its reconnection loop beat; ready while its consumer consumes."""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.signals import worker_shutting_down
from celery.worker.consumer import Consumer as CeleryConsumer

from . import STOP_GRACE_SECONDS, Heartbeat
from .export import start_export

_state: dict[str, Any] = {}


def heartbeat() -> Heartbeat:
    """This worker's heartbeat, made from the settings on first use."""
    if "heartbeat" not in _state:
        from ..config import get_settings

        s = get_settings()
        _state["heartbeat"] = Heartbeat(s.health_dir, "worker", s.health_max_age_seconds)
    beat: Heartbeat = _state["heartbeat"]
    return beat


class Liveness(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker step: the heartbeat's files and its copy in Redis, from the worker's start to its end."""

    def start(self, worker: Any) -> None:
        _state["export"] = start_export(heartbeat().start())

    def stop(self, worker: Any) -> None:
        if "export" in _state:
            _state.pop("export").stop()
        heartbeat().stop()

    terminate = stop


class Consuming(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: the event loop's timer beats while the consumer runs, and the worker is ready meanwhile.

    The timer is the event loop's own (the threads and prefork pools run one), so a beat means the loop that
    takes tasks runs; a consumer restarting after a broker outage stops this step and starts it again.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        beat = heartbeat()
        self.tref = c.timer.call_repeatedly(beat.every / 2, beat.beat)
        beat.ready(True)

    def stop(self, c: Any) -> None:
        heartbeat().ready(False)
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, whose reconnection loop beats too: a broker that is away does not make the worker stuck.

    kombu's `ensure_connection` calls its `callback` at every attempt and every second it waits between two.
    """

    def ensure_connected(self, conn: Any) -> Any:
        ensure = conn.ensure_connection

        def ensure_connection(*args: Any, callback: Any = None, **kwargs: Any) -> Any:
            def beat_then(*a: Any) -> Any:
                heartbeat().beat()
                return callback(*a) if callback else None

            return ensure(*args, callback=beat_then, **kwargs)

        conn.ensure_connection = ensure_connection
        return super().ensure_connected(conn)


def _shutting_down(**_: Any) -> None:
    # Not ready at once; alive while the running tasks finish (the event loop no longer runs then).
    beat = heartbeat()
    beat.ready(False)
    beat.keep_fresh(STOP_GRACE_SECONDS["worker"])


worker_shutting_down.connect(_shutting_down)
