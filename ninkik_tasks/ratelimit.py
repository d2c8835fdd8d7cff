"""A rate limit shared by every worker process: ECR calls per second, per region, reserved in Redis.

Celery's `rate_limit` is per worker, so scaling out would multiply it. Here each call reserves the next
free slot in Redis (one Lua script: the slots are spaced 1/rate apart on Redis's clock, so the workers'
clocks do not matter) and sleeps until it; a caller whose slot is too far away gives up with a
TransientError, so its task is retried later instead of holding a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from .errors import TransientError

# KEYS[1] = next free slot (microseconds, Redis clock); ARGV = interval_us, max_wait_us.
# Returns the wait in microseconds before the reserved slot, or minus the queue's length if it would exceed
# max_wait (nothing reserved then).
_RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local wait = slot - now
if wait > tonumber(ARGV[2]) then return -wait end
redis.call('SET', KEYS[1], tostring(slot + interval), 'PX', math.floor((wait + interval) / 1000) + 1000)
return wait
"""


class RateLimited(TransientError):
    """The limiter's queue is longer than a call may wait: come back when it will have drained (`retry_after`),
    not after a growing backoff, or a burst's retries keep the queue full for minutes after it."""


class RateLimiter:
    """At most `per_second` acquisitions per second per key, across all processes sharing the Redis."""

    def __init__(self, client: redis.Redis, key: str, per_second: float, max_wait: float = 10.0) -> None:
        self.key = key
        self.interval_us = int(1_000_000 / per_second)
        self.max_wait_us = int(max_wait * 1_000_000)
        self._reserve = client.register_script(_RESERVE)

    def acquire(self) -> float:
        """Wait for this caller's slot; returns the seconds waited. TransientError if the queue is too long."""
        wait_us = int(self._reserve(keys=[self.key], args=[self.interval_us, self.max_wait_us]))
        if wait_us < 0:
            queued = -wait_us / 1_000_000
            raise RateLimited(
                f"rate limit {self.key}: {queued:.1f}s of calls queued, more than the {self.max_wait_us / 1e6:.0f}s "
                "a call may wait",
                retry_after=max(1.0, queued - self.max_wait_us / 2_000_000),
            )
        if wait_us:
            time.sleep(wait_us / 1_000_000)
        return wait_us / 1_000_000

    def before_send(self, **_: Any) -> None:
        """botocore `before-send` hook: every HTTP attempt, retries and pages included, takes a slot."""
        self.acquire()


class Pace:
    """At most `per_second` steps per second in this process, by sleeping: a sweep's own pace, so it spreads its
    chains' ECR calls instead of queueing them all at once in front of new pushes."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / per_second
        self._clock, self._sleep = clock, sleep
        self._next = 0.0

    def wait(self) -> None:
        """Return when the next step may go."""
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval
