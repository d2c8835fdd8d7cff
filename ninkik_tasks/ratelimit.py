"""A rate limit shared by every worker process: ECR calls per second, per region, reserved in Redis.

Celery's `rate_limit` is per worker, so scaling out would multiply it. Here each call reserves the next
free slot in Redis (one Lua script: the slots are spaced 1/rate apart on Redis's clock, so the workers'
clocks do not matter) and sleeps until it; a caller whose slot is too far away gives up with a
TransientError, so its task is retried later instead of holding a worker.

A caller wakes a little late from its sleep, so calls reserved 1/rate apart can leave closer together: the
emulator saw 22 calls in one second at a limit of 20. So a call that woke also records its departure in a
log of the last window's calls (a second script) and goes only if fewer than the limit left in the window
before it; otherwise it waits for the oldest to leave the window. The slots are spaced a window's share
apart, so that wait only ever covers a late wake. The window is a second plus GUARD, for the time between
a call's departure and its arrival at AWS, which is not the same for every call: measured against the
benchmark's emulator on an idle 2-core machine, p99 4 ms but up to 53 ms, almost all of it between Redis's
answer and the worker's thread running again (bench/RESULTS.md, 2026-12-02, "departure to arrival"). At most the limit
leaves in any second, then, by Redis's clock, and reaches AWS in any second unless a call is held up more
than GUARD longer than another; the cost is GUARD's share of the rate (1/11 of it: 18.2 calls a second at
a limit of 20).
"""

from __future__ import annotations

import secrets
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


# KEYS[1] = the departures of the last window (a sorted set, Redis-clock microseconds); ARGV = most calls in a
# window, window_us, a unique member. Returns 0 if this call may go now (recorded), else microseconds to wait.
_DEPART = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
  return 0
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
return math.max(1, oldest + window - now)
"""

GUARD_SECONDS = 0.1  # how much longer one call's way to AWS may take than another's (added to the window)


def departures_key(key: str) -> str:
    """Where the limiter at `key` logs the last window's departures (a sorted set, Redis-clock microseconds)."""
    return f"{key}:departed"


class RateLimited(TransientError):
    """The limiter's queue is longer than a call may wait: come back when it will have drained (`retry_after`),
    not after a growing backoff, or a burst's retries keep the queue full for minutes after it."""


class RateLimiter:
    """At most `per_second` acquisitions per second per key, across all processes sharing the Redis."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        per_second: float,
        max_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.key = key
        self._sleep = sleep
        self.max_wait_us = int(max_wait * 1_000_000)
        # The departures' window: a second (one call's interval if that is longer), plus the flight's guard;
        # the slots are spaced to match it, or a long burst's departures would fall further and further behind.
        window = max(1.0, 1.0 / per_second)
        self.per_window = max(1, int(per_second * window))
        self.window_us = int((window + GUARD_SECONDS) * 1_000_000)
        self.interval_us = self.window_us // self.per_window
        self._reserve = client.register_script(_RESERVE)
        self._depart = client.register_script(_DEPART)

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
            self._sleep(wait_us / 1_000_000)
        departure: list[int | str] = [self.per_window, self.window_us, secrets.token_hex(8)]
        while late_us := int(self._depart(keys=[departures_key(self.key)], args=departure)):
            self._sleep(late_us / 1_000_000)
            wait_us += late_us
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

    def wait(self, steps: float = 1.0) -> None:
        """Return when the next step may go; it counts as `steps` (a sweep's: the ECR calls it makes)."""
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + steps * self.interval
