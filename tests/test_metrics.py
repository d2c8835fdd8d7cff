"""The pipeline's counters in Redis (PipelineStats), on redis-server."""

from __future__ import annotations

import uuid

from conftest import Stack

from ninkik_tasks.local import wait_for
from ninkik_tasks.metrics import PipelineStats


def test_frequent_counts_share_the_next_write_or_are_written_within_a_second(stack: Stack) -> None:
    stats = PipelineStats(stack.records, f"t-{uuid.uuid4().hex[:8]}")
    for _ in range(3):
        stats.soon("ecr_call", "123456789012", "eu-central-1")  # three ECR calls: held in the process
    stats.incr("notified", "COMPLETE", latency=7.0)  # written at once, with what was held, in one round trip
    assert stats.read() == {
        "ecr_call:123456789012:eu-central-1": 3,
        "notified:COMPLETE": 1,
        "latency_in:15": 1,  # the one bucket it falls in (the collector makes them cumulative)
        "latency_count": 1,
        "latency_sum": 7.0,
    }
    stats.soon("ecr_call", "123456789012", "eu-central-1")  # nothing else to write with: its timer writes it
    wait_for(lambda: stats.read()["ecr_call:123456789012:eu-central-1"] == 4, 5, "the held count to be written")
