"""The shared ECR limiter on the real Redis: at most the limit in any second, however late its callers wake."""

from __future__ import annotations

import random
import threading
import time
import uuid

from conftest import Stack

from ninkik_tasks.ratelimit import RateLimiter

RATE = 20


def _most_in_one_second(times: list[float]) -> int:
    times, most, start = sorted(times), 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_callers_that_wake_late_never_put_more_than_the_limit_in_one_second(stack: Stack) -> None:
    """Eight threads whose sleeps overrun by up to 300 ms (a busy host's late wakes, made on purpose: no real
    part wakes late on demand). Each call's departure is read from Redis's clock as acquire returns."""
    key = f"t-{uuid.uuid4().hex[:8]}:ratelimit:ecr"
    rng = random.Random(7)
    limiter = RateLimiter(stack.records, key, RATE, sleep=lambda s: time.sleep(s + rng.uniform(0, 0.3)))
    departures: list[float] = []

    def caller() -> None:
        for _ in range(12):
            limiter.acquire()
            seconds, micros = stack.records.time()
            departures.append(seconds + micros / 1e6)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(departures) == 96
    assert _most_in_one_second(departures) <= RATE
    # Not far below it either: the slots and the window agree, so a late wake costs only its own lateness.
    assert len(departures) / (max(departures) - min(departures)) >= RATE * 0.8
