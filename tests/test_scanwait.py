"""The scan wait: a steady poll spread over the ECR budget, on redis-server and on a running pipeline."""

from __future__ import annotations

import time
import uuid

import pytest
from conftest import TENANT_A, Stack, celery_worker, ingest, own_broker_db
from faultproxy import FaultProxy

from ninkik_tasks import local
from ninkik_tasks.local import wait_for
from ninkik_tasks.scanwait import ScanWaits


@pytest.fixture
def waits(stack: Stack) -> ScanWaits:
    return ScanWaits(stack.records, f"test-{uuid.uuid4().hex[:8]}", poll_seconds=5, calls_per_second=20)


def test_a_few_waiting_images_are_read_at_the_poll_interval(waits: ScanWaits) -> None:
    assert 4.5 <= waits.next_read("eu-central-1", "one") <= 5.5
    assert waits.waiting("eu-central-1") == 1


def test_many_waiting_images_share_half_the_ecr_budget(waits: ScanWaits) -> None:
    for i in range(199):
        waits.next_read("eu-central-1", f"image-{i}")
    # 200 images at 20 calls/s, half of it for waits: each read every 20 s, 10 reads/s in all.
    assert 18 <= waits.next_read("eu-central-1", "image-199") <= 22
    assert waits.waiting("eu-west-1") == 0  # per region


def test_a_finished_wait_leaves_and_an_abandoned_one_expires(stack: Stack) -> None:
    waits = ScanWaits(stack.records, f"test-{uuid.uuid4().hex[:8]}", poll_seconds=0.1, calls_per_second=20)
    waits.next_read("r", "done")
    waits.done("r", "done")
    assert waits.waiting("r") == 0
    waits.next_read("r", "abandoned")  # its worker died: never read again
    # After three of its intervals it no longer counts against the budget.
    wait_for(lambda: waits.next_read("r", "alive") and waits.waiting("r") == 1, 5, "the abandoned wait to expire")


def test_a_scan_that_finishes_later_is_read_at_a_steady_pace_not_a_growing_one(stack: Stack) -> None:
    """Exponential backoff (the old wait) would leave gaps of 4-8 s by the 4th retry; a 1 s poll does not.

    moto's scans are final at once, so a proxy in front of it answers IN_PROGRESS until each scan "ends".
    """
    proxy = FaultProxy(stack.moto_url).start()
    env = stack.env(
        broker_db=own_broker_db(),
        AWS_ENDPOINT_URL_ECR=proxy.url,
        NINKIK_SCAN_POLL_SECONDS="1",
        NINKIK_SCAN_WAIT_SECONDS="120",
        NINKIK_RETRY_BACKOFF_MAX_SECONDS="60",
        NINKIK_BROKER_VISIBILITY_TIMEOUT="600",
    )
    repository = f"{TENANT_A}/shop"
    queue_url = stack.new_queue()
    stack.standin.reset()
    digests = [stack.push(repository, f"scan-later-{i}") for i in range(3)]
    began = time.monotonic()
    for i, digest in enumerate(digests):
        proxy.scanning[digest] = began + 4 * (i + 1)  # scans of 4, 8 and 12 s
    worker = celery_worker(stack, env, "scanwait")
    feeder = ingest(stack, env, queue_url, name="ingest-scanwait")
    try:
        for i, digest in enumerate(digests):
            stack.send(queue_url, local.push_event(repository, digest, f"scan-later-{i}"))
        wait_for(lambda: all(stack.received_for(d) for d in digests), 90, "every image after its scan")
        for digest in digests:
            assert len(stack.received_for(digest)) == 1
            reads = [c.at for c in proxy.calls if c.action == "DescribeImageScanFindings" and _digest(c) == digest]
            gaps = [b - a for a, b in zip(reads, reads[1:], strict=False)]
            assert max(gaps) < 3.5, gaps
            scanning = proxy.scanning[digest] - reads[0]
            assert len(reads) <= scanning / 0.9 + 2, (len(reads), scanning)  # one read per poll, no more
    finally:
        feeder.stop()
        worker.stop()
        proxy.stop()


def _digest(call: object) -> str | None:
    return (call.params.get("imageId") or {}).get("imageDigest")  # type: ignore[attr-defined, no-any-return]
