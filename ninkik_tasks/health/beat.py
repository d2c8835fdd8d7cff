"""Beat's heartbeat: RedBeat's scheduler whose tick beats; ready while it holds the schedule's lock."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from redbeat import RedBeatScheduler
from redbeat.schedulers import acquire_distributed_beat_lock
from redis.exceptions import LockError, RedisError

from ..logs import Outage
from . import Heartbeat
from .export import start_export

log = logging.getLogger(__name__)


class Scheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat's scheduler (`beat_scheduler`), with beat's liveness and readiness files.

    Made before beat waits for the lock (RedBeat takes it on `beat_init`): a standby is alive while it waits,
    its helper thread keeping the file fresh (the wait is a Redis poll every few seconds, with no hook of ours).
    Each tick beats; a tick that waits on Redis or the broker keeps the file fresh for up to STEP_BOUND_SECONDS.
    Redis away: the tick is tried again every `max_interval` (RedBeat alone would end the process); the lock
    lost meanwhile (an outage past its timeout): beat stands by for it again, as at its start.
    On stop (SIGTERM) `close` releases the lock, so the standby takes over at its next try.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from ..config import get_settings

        s = get_settings()
        self.heartbeat = Heartbeat(s.health_dir, "beat", s.health_max_age_seconds).start()
        self.heartbeat.keep_fresh(None)  # until the first tick: waiting for the lock
        self.export = start_export(self.heartbeat)
        self.outage = Outage("Redis (the schedule and its lock)", log)

    def tick(self, *args: Any, **kwargs: Any) -> Any:
        if self.lock_key and self.lock is None:
            return self._stand_by()  # Redis was away when beat started: RedBeat's own wait for the lock failed
        try:
            with self.heartbeat.waiting():
                interval = super().tick(*args, **kwargs)  # extends the lock first: it is ours, or this raises
        except LockError as exc:
            log.warning("beat: the schedule's lock is no longer ours (%s): standing by for it", exc)
            return self._stand_by()
        except RedisError as exc:
            self.heartbeat.ready(False)
            self.outage.failed(exc)
            return self.max_interval
        self.outage.ok()
        self.heartbeat.ready(True)
        return interval

    def _stand_by(self) -> float:
        """Wait for the lock as a standby does (kept alive meanwhile); the next tick runs at once once it is ours."""
        self.heartbeat.ready(False)
        self.heartbeat.keep_fresh(None)
        try:
            if self.lock is None:
                acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self))
            else:
                self.lock.acquire()
        except RedisError as exc:
            self.outage.failed(exc)
            return float(self.max_interval)
        finally:
            self.heartbeat.keep_fresh(0)
        log.info("beat: holds the schedule's lock")
        return 0.0

    def close(self) -> None:
        self.heartbeat.ready(False)
        try:
            super().close()
        finally:
            self.export.stop()
            self.heartbeat.stop()
