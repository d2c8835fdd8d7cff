"""The pipeline's counters in Redis (PipelineStats), on redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from celery import signals
from conftest import Stack

from ninkik_tasks.celery_app import app  # noqa: F401  (making the app connects worker_process_shutdown)
from ninkik_tasks.local import wait_for
from ninkik_tasks.metrics import PipelineCollector, PipelineStats
from ninkik_tasks.scanwait import ScanWaits, member


def test_frequent_counts_share_the_next_write_or_are_written_within_a_second(stack: Stack) -> None:
    stats = PipelineStats(stack.records, f"t-{uuid.uuid4().hex[:8]}")
    for _ in range(3):
        stats.soon("ecr_call", "123456789012", "eu-central-1")  # three ECR calls: held in the process
    stats.soon("notified", "COMPLETE", latency=7.0)
    assert stats.read() == {}
    stats.incr("failure", "notify", "http_400")  # a rare outcome: written at once, with what was held
    assert stats.read() == {
        "ecr_call:123456789012:eu-central-1": 3,
        "notified:COMPLETE": 1,
        "latency_in:15": 1,  # the one bucket it falls in (the collector makes them cumulative)
        "latency_count": 1,
        "latency_sum": 7.0,
        "failure:notify:http_400": 1,
    }
    stats.soon("notified", "COMPLETE", latency=9000.0)  # nothing else to write with: its timer writes it
    wait_for(lambda: stats.read()["notified:COMPLETE"] == 2, 5, "the held count to be written")
    assert stats.read()["latency_count"] == 2 and stats.read()["latency_sum"] == 9007.0  # above every bucket: +Inf


def test_counts_held_are_written_when_a_process_ends_normally(stack: Stack) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    # A prefork pool's child ends with os._exit: Celery's worker_process_shutdown writes what it holds.
    stats = PipelineStats(stack.records, namespace)
    stats.soon("notified", "COMPLETE", latency=3.0)
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    assert stats.read() == {"notified:COMPLETE": 1, "latency_in:5": 1, "latency_count": 1, "latency_sum": 3.0}
    # Any other process (ingest, a threads pool's worker) at its normal exit, well within the timer's second.
    held = (
        "import redis, sys; from ninkik_tasks.metrics import PipelineStats; "
        "PipelineStats(redis.Redis.from_url(sys.argv[1]), sys.argv[2]).soon('ecr_call', '123456789012', 'eu-central-1')"
    )
    subprocess.run([sys.executable, "-c", held, f"{stack.redis_url}/2", namespace], check=True, timeout=30)
    assert stats.read()["ecr_call:123456789012:eu-central-1"] == 1


def test_scan_waits_are_exposed_per_account_and_region_and_a_set_from_before_the_upgrade_is_not(stack: Stack) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    waits = ScanWaits(stack.records, namespace, poll_seconds=5, calls_per_second=20)
    for account, count in (("111111111111", 2), ("222222222222", 1)):
        for i in range(count):
            waits.next_read("eu-central-1", member(account, "tenant/product", f"sha256:{i}"))
    stack.records.zadd(f"{namespace}:scanwait:eu-central-1", {"111111111111/tenant/product@sha256:old": 1.0})
    families = {f.name: f for f in PipelineCollector(PipelineStats(stack.records, namespace))._state()}
    waiting = {tuple(s.labels.values()): s.value for s in families["ninkik_scans_waiting"].samples}
    assert waiting == {("111111111111", "eu-central-1"): 2.0, ("222222222222", "eu-central-1"): 1.0}
    oldest = families["ninkik_scan_wait_oldest_seconds"].samples
    assert sorted(s.labels["account"] for s in oldest) == ["111111111111", "222222222222"]
