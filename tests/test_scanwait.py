"""The scan wait: a steady poll spread over the ECR budget, on redis-server and on a running pipeline."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber
from conftest import PRODUCT_A1, TENANT_A, Stack, celery_worker, ingest, own_broker_db
from faultproxy import FaultProxy

from ninkik_tasks import clients, local
from ninkik_tasks.config import Settings
from ninkik_tasks.errors import ScanNotReady
from ninkik_tasks.events import ImagePushed
from ninkik_tasks.findings import Image
from ninkik_tasks.local import wait_for
from ninkik_tasks.ratelimit import RateLimited, RateLimiter
from ninkik_tasks.scans import scan_step
from ninkik_tasks.scanwait import ScanWaits, member
from ninkik_tasks.stages import Described, Matched, Services, describe_step, ecr_limit_key
from ninkik_tasks.tenants import Match


@pytest.fixture
def waits(stack: Stack) -> ScanWaits:
    return ScanWaits(stack.records, f"test-{uuid.uuid4().hex[:8]}", poll_seconds=5, calls_per_second=20)


ACCOUNT_A, ACCOUNT_B = "111111111111", "222222222222"


def image(name: str, account: str = ACCOUNT_A) -> str:
    """A waiting image of `account`, named as ScanWaits names images (its registry id first)."""
    return member(account, "tenant/product", f"sha256:{name}")


def test_a_few_waiting_images_are_read_at_the_poll_interval(waits: ScanWaits) -> None:
    assert 4.5 <= waits.next_read("eu-central-1", image("one")) <= 5.5
    assert waits.waiting(ACCOUNT_A, "eu-central-1") == 1


def test_many_waiting_images_share_half_the_ecr_budget(waits: ScanWaits) -> None:
    for i in range(199):
        waits.next_read("eu-central-1", image(f"image-{i}"))
    # 200 images at 20 calls/s, half of it for waits: each read every 20 s, 10 reads/s in all.
    assert 18 <= waits.next_read("eu-central-1", image("image-199")) <= 22
    assert waits.waiting(ACCOUNT_A, "eu-west-1") == 0  # per region


def test_each_account_and_region_has_its_own_share_of_its_own_budget(waits: ScanWaits) -> None:
    # As the ECR budget (NINKIK_ECR_CALLS_PER_SECOND per account and region): one account's 200 waits stretch its
    # own reads to every 20 s, while another account's image in the same region is read at the poll interval.
    for i in range(200):
        waits.next_read("eu-central-1", image(f"busy-{i}"))
    assert 4.5 <= waits.next_read("eu-central-1", image("quiet", ACCOUNT_B)) <= 5.5
    assert (waits.waiting(ACCOUNT_A, "eu-central-1"), waits.waiting(ACCOUNT_B, "eu-central-1")) == (200, 1)
    assert 18 <= waits.next_read("eu-central-1", image("busy-0")) <= 22
    assert 4 <= (waits.turn("eu-central-1", image("quiet", ACCOUNT_B)).due or 0) <= 4.5
    waits.done("eu-central-1", image("quiet", ACCOUNT_B), image("busy-0"))
    assert (waits.waiting(ACCOUNT_A, "eu-central-1"), waits.waiting(ACCOUNT_B, "eu-central-1")) == (199, 0)


def test_a_task_woken_before_its_turn_is_told_to_wait_again(waits: ScanWaits) -> None:
    assert waits.turn("eu-central-1", image("new")).due is None  # not waiting yet: its first read, now
    waits.next_read("eu-central-1", image("read-just-now"))
    assert 4 <= (waits.turn("eu-central-1", image("read-just-now")).due or 0) <= 4.5  # 0.9 of the 5 s interval


def test_a_finished_wait_leaves_and_an_abandoned_one_expires(stack: Stack) -> None:
    waits = ScanWaits(stack.records, f"test-{uuid.uuid4().hex[:8]}", poll_seconds=0.1, calls_per_second=20)
    waits.next_read("r", image("done"))
    waits.done("r", image("done"))
    assert waits.waiting(ACCOUNT_A, "r") == 0
    waits.next_read("r", image("abandoned"))  # its worker died: never read again
    # After three of its intervals it no longer counts against the budget.
    wait_for(
        lambda: waits.next_read("r", image("alive")) and waits.waiting(ACCOUNT_A, "r") == 1,
        5,
        "the abandoned wait to expire",
    )


def _behind_a_scanning_proxy(stack: Stack, **settings: str) -> tuple[FaultProxy, dict[str, str], str]:
    """A proxy in front of moto that can answer IN_PROGRESS (moto's scans are final at once), the environment of
    a pipeline on its own broker DB reading ECR through it (long backoff and visibility: only the scan wait
    paces the reads), and a fresh queue; the stand-in emptied."""
    proxy = FaultProxy(stack.moto_url).start()
    env = stack.env(
        broker_db=own_broker_db(),
        AWS_ENDPOINT_URL_ECR=proxy.url,
        NINKIK_RETRY_BACKOFF_MAX_SECONDS="60",
        NINKIK_BROKER_VISIBILITY_TIMEOUT="600",
        **settings,
    )
    queue_url = stack.new_queue()
    stack.standin.reset()
    return proxy, env, queue_url


def test_a_scan_that_finishes_later_is_read_at_a_steady_pace_not_a_growing_one(stack: Stack) -> None:
    """Exponential backoff (the old wait) would leave gaps of 4-8 s by the 4th retry; a 1 s poll does not.

    moto's scans are final at once, so a proxy in front of it answers IN_PROGRESS until each scan "ends".
    """
    proxy, env, queue_url = _behind_a_scanning_proxy(
        stack, NINKIK_SCAN_POLL_SECONDS="1", NINKIK_SCAN_WAIT_SECONDS="120", NINKIK_SCAN_FIRST_READ_SECONDS="2"
    )
    repository = f"{TENANT_A}/shop"
    digests = [stack.push(repository, f"scan-later-{i}") for i in range(3)]
    worker = celery_worker(stack, env, "scanwait")
    feeder = ingest(stack, env, queue_url, name="ingest-scanwait")
    began = time.monotonic()
    for i, digest in enumerate(digests):
        proxy.scanning[digest] = began + 4 * (i + 1)  # scans of 4, 8 and 12 s
    try:
        sent = {}
        for i, digest in enumerate(digests):
            sent[digest] = time.monotonic()
            stack.send(queue_url, local.push_event(repository, digest, f"scan-later-{i}"))
        wait_for(lambda: all(stack.received_for(d) for d in digests), 90, "every image after its scan")
        for digest in digests:
            assert len(stack.received_for(digest)) == 1
            reads = [c.at for c in proxy.calls if c.action == "DescribeImageScanFindings" and _digest(c) == digest]
            assert any(c.action == "DescribeImages" and digest in _images(c) for c in proxy.calls)
            assert reads[0] - sent[digest] >= 1.5  # a push's scan is not read right away
            gaps = [b - a for a, b in zip(reads, reads[1:], strict=False)]
            assert max(gaps, default=0.0) < 3.5, gaps  # one read alone: the scan ended before it (a loaded machine)
            scanning = proxy.scanning[digest] - reads[0]
            assert len(reads) <= scanning / 0.9 + 2, (len(reads), scanning)  # one read per poll, no more
    finally:
        feeder.stop()
        worker.stop()
        proxy.stop()


def _images(call: object) -> list[str]:
    """The digests a DescribeImages call asked for (several when the images of a repository are described together)."""
    return [i.get("imageDigest") for i in call.params.get("imageIds") or []]  # type: ignore[attr-defined]


def _digest(call: object) -> str | None:
    return (call.params.get("imageId") or {}).get("imageDigest")  # type: ignore[attr-defined, no-any-return]


# Enhanced scanning: ACTIVE is not "done" (moto cannot answer ACTIVE with no findings: Stubber plays ECR).


class _Stubbed(Services):
    stubbed: Any = None

    def ecr(self, account: str, region: str, rereading: bool = False) -> Any:
        return self.stubbed


def _active(findings: list[dict[str, Any]]) -> dict[str, Any]:
    # The shape alexjurkiewicz/ecr-scan-image issue 45 quotes for continuous enhanced scanning.
    return {
        "registryId": local.ACCOUNT,
        "repositoryName": f"{TENANT_A}/shop",
        "imageId": {"imageDigest": "sha256:" + "ab" * 32},
        "imageScanStatus": {"status": "ACTIVE", "description": "Continuous scan is selected for image."},
        "imageScanFindings": {"enhancedFindings": findings} if findings else {},
    }


def test_an_image_read_just_now_is_not_read_again_before_its_turn(stack: Stack) -> None:
    svc = _services(stack)
    msg = _described(age=60)
    with Stubber(svc.stubbed) as stub:
        stub.add_response("describe_image_scan_findings", _in_progress())
        with pytest.raises(ScanNotReady):
            scan_step(svc, msg)
        # Woken early (a capped countdown): no ECR call (Stubber has no answer left), wait the rest.
        with pytest.raises(ScanNotReady, match="turn") as caught:
            scan_step(svc, msg)
        stub.assert_no_pending_responses()
    assert caught.value.next_read is not None and 0 < caught.value.next_read <= 4.5


def test_a_scan_event_during_the_first_read_wakes_the_chain_at_once(stack: Stack) -> None:
    """The event finds nothing waiting yet (the chain registers its wait after the read), so it starts no chain;
    the waiting chain must not sleep a whole poll on an event that already came. The event's arrival is played
    by what ingest does with it (ScanWaits.finish), hooked after Stubber's answer."""
    svc = _services(stack)
    msg = _described(age=60)
    image = member(msg.image.registry_id, msg.image.repository, msg.image.digest)
    svc.stubbed.meta.events.register(
        "after-call.ecr.DescribeImageScanFindings",
        lambda **_: svc.scan_waits.finish(msg.event.region, image, 600),
    )
    with Stubber(svc.stubbed) as stub:
        stub.add_response("describe_image_scan_findings", _in_progress())
        with pytest.raises(ScanNotReady) as caught:
            scan_step(svc, msg)
        assert caught.value.next_read == 0
        stub.add_response("describe_image_scan_findings", _active([]))
        assert scan_step(svc, msg).status == "ACTIVE"  # read again at once, its scan taken as final
        stub.assert_no_pending_responses()


def _in_progress() -> dict[str, Any]:
    return {**_active([]), "imageScanStatus": {"status": "IN_PROGRESS"}, "imageScanFindings": {}}


@pytest.mark.parametrize(("age", "findings", "ready"), [(60, False, False), (60, True, True), (400, False, True)])
def test_an_active_enhanced_scan_without_findings_waits_for_inspectors_first_scan(
    stack: Stack, age: int, findings: bool, ready: bool
) -> None:
    svc = _services(stack)
    enhanced = [local.enhanced_finding("CVE-2026-1234", "CRITICAL", "log4j-core", "2.14.1", "2.17.1")]
    with Stubber(svc.stubbed) as stub:
        stub.add_response("describe_image_scan_findings", _active(enhanced if findings else []))
        if ready:
            assert scan_step(svc, _described(age)).status == "ACTIVE"
        else:
            with pytest.raises(ScanNotReady, match="first scan") as caught:
                scan_step(svc, _described(age))
            assert caught.value.next_read is not None


def _services(stack: Stack) -> _Stubbed:
    settings = Settings(
        redis_url=f"{stack.redis_url}/2",
        redis_namespace=f"t-{uuid.uuid4().hex[:8]}",
        scan_wait_seconds=900,
        enhanced_settle_seconds=300,
    )
    svc = _Stubbed(settings, stack.records, httpx.Client())
    svc.stubbed = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="x", region_name=local.REGION
    ).client("ecr")
    return svc


def _described(age: int) -> Described:
    """An image pushed `age` seconds ago, described."""
    repository, digest = f"{TENANT_A}/shop", "sha256:" + "ab" * 32
    pushed = datetime.now(UTC) - timedelta(seconds=age)
    event = ImagePushed(
        event_id="e", account=local.ACCOUNT, region=local.REGION, repository=repository, digest=digest, time=pushed
    )
    image = Image(registry_id=local.ACCOUNT, region=local.REGION, repository=repository, digest=digest, tags=[])
    match = Match(tenant=TENANT_A, product=PRODUCT_A1, product_name="shop", component="")
    return Described(event=event, match=match, image=image)


# Scan-complete events end a wait (AWS's own "ECR Image Scan" and "Inspector2 Scan" samples, tests/aws/events).


@pytest.mark.parametrize("sample", ["ecr-image-scan.json", "inspector2-scan.json"])
def test_a_scan_complete_event_ends_the_wait_at_once(stack: Stack, sample: str) -> None:
    """With a 30 s poll, nothing but the event can report the image within 20 s of its first read."""
    from test_events import live

    proxy, env, queue_url = _behind_a_scanning_proxy(
        stack, NINKIK_SCAN_POLL_SECONDS="30", NINKIK_SCAN_WAIT_SECONDS="300"
    )
    repository = f"{TENANT_A}/shop"
    waiting = stack.push(repository, "waiting")
    nobody = stack.push(repository, "never-pushed")  # a scan event for an image whose push never came
    proxy.scanning[waiting] = time.monotonic() + 3600
    worker = celery_worker(stack, env, f"scanevent-{sample[:4]}")
    feeder = ingest(stack, env, queue_url, name=f"ingest-scanevent-{sample[:4]}")

    def reads(digest: str) -> int:
        return sum(1 for c in proxy.calls if c.action == "DescribeImageScanFindings" and _digest(c) == digest)

    try:
        stack.send(queue_url, local.push_event(repository, waiting, "waiting"))
        wait_for(lambda: reads(waiting) >= 1, 30, "the first read (IN_PROGRESS)")
        first_read = time.monotonic()
        proxy.scanning[waiting] = 0  # the scan finishes ...
        event = live(sample, repository, waiting)
        stack.send(queue_url, event)  # ... and says so
        stack.send(queue_url, event)  # twice: EventBridge delivers at least once
        stack.send(queue_url, live(sample, repository, nobody))
        wait_for(lambda: stack.received_for(waiting), 20, "the report, ended by the scan event")
        assert time.monotonic() - first_read < 27  # the next poll would have come 27-33 s after the first read
        wait_for(lambda: "scan done" in feeder.output(), 10, "ingest to log the scan event")
        assert len(stack.received_for(waiting)) == 1
        assert not stack.received_for(nobody) and reads(nobody) == 0  # nobody waited for it: nothing read
        # The event's chain took up the waiting chain's message: the image was described once.
        assert sum(1 for c in proxy.calls if c.action == "DescribeImages" and waiting in _images(c)) == 1
    finally:
        feeder.stop()
        worker.stop()
        proxy.stop()


def _stages_on_moto(stack: Stack, monkeypatch: pytest.MonkeyPatch, **aws: str) -> Services:
    """The stages in this process on redis-server, ECR the emulator (or `aws`'s endpoints): a 0.1 s poll, the
    default ECR budget, untagged images reported at once (no index lists them)."""
    for name, value in {**local.aws_env(stack.moto_url), **aws}.items():
        monkeypatch.setenv(name, value)
    clients._reset_after_fork()  # this process's ECR clients, made again for the emulator
    settings = Settings(
        redis_url=f"{stack.redis_url}/2",
        redis_namespace=f"t-{uuid.uuid4().hex[:8]}",
        ecr_calls_per_second=20,
        scan_poll_seconds=0.1,
        untagged_hold_seconds=0,
    )
    return Services(settings, stack.records, httpx.Client())


def test_a_scan_event_costs_one_status_read_and_no_second_describe(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event's chain takes up the waiting chain's message (no DescribeImages again), and the waiting chain, at
    its turn, takes the event chain's read (no status read again): one report, one read after the scan ended.
    The stages on redis-server and moto; a proxy counts the ECR calls and answers IN_PROGRESS until the scan ends
    (moto's scans are final at once)."""
    proxy = FaultProxy(stack.moto_url).start()
    svc = _stages_on_moto(stack, monkeypatch, AWS_ENDPOINT_URL_ECR=proxy.url)
    repository = f"{TENANT_A}/shop"
    digest = stack.push(repository, "event-once")
    proxy.scanning[digest] = time.monotonic() + 3600
    match = Match(tenant=TENANT_A, product=PRODUCT_A1, product_name="shop", component="")

    def calls(action: str) -> int:
        return sum(1 for c in proxy.calls if c.action == action and (digest == _digest(c) or digest in _images(c)))

    def pushed(event_id: str, scan_finished: bool) -> Matched:
        event = ImagePushed(
            event_id=event_id,
            account=local.ACCOUNT,
            region=local.REGION,
            repository=repository,
            digest=digest,
            tag="event-once",
            time=datetime.now(UTC),
            scan_finished=scan_finished,
        )
        return Matched(event=event, match=match)

    try:
        waiting = describe_step(svc, pushed("push", scan_finished=False))
        with pytest.raises(ScanNotReady):
            scan_step(svc, waiting)  # IN_PROGRESS: the push's chain waits
        proxy.scanning[digest] = 0  # the scan ends, and its event comes (ingest: ScanWaits.finish)
        assert svc.scan_waits.finish(local.REGION, member(local.ACCOUNT, repository, digest), 600)
        taken_up = describe_step(svc, pushed("scan-event", scan_finished=True))
        assert taken_up == waiting and calls("DescribeImages") == 1
        by_event = scan_step(svc, taken_up)
        assert by_event.status == "COMPLETE" and calls("DescribeImageScanFindings") == 2
        at_its_turn = scan_step(svc, waiting)  # the push's chain wakes: the event's chain read it already
        assert at_its_turn.key == by_event.key and calls("DescribeImageScanFindings") == 2
        assert svc.scan_waits.waiting(local.ACCOUNT, local.REGION) == 0
    finally:
        proxy.stop()
        clients._reset_after_fork()


def test_a_scan_read_again_gives_way_to_first_reads_in_the_ecr_budget(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of new pushes queues their first reads in the region's limiter: a wait's re-read does not join
    the queue behind them (it is read at its next turn), while a first read waits for its slot. Real limiter on
    redis-server, real ECR calls to moto; the queue is made by reserving slots with the limiter's own script."""
    svc = _stages_on_moto(stack, monkeypatch)
    settings = svc.settings
    repository = f"{TENANT_A}/shop"
    match = Match(tenant=TENANT_A, product=PRODUCT_A1, product_name="shop", component="")

    def described(digest: str) -> Described:
        event = ImagePushed(
            event_id=digest,
            account=local.ACCOUNT,
            region=local.REGION,
            repository=repository,
            digest=digest,
            time=datetime.now(UTC),
        )
        image = Image(registry_id=local.ACCOUNT, region=local.REGION, repository=repository, digest=digest, tags=[])
        return Described(event=event, match=match, image=image)

    running = described(stack.push(repository, status="IN_PROGRESS"))
    with pytest.raises(ScanNotReady):
        scan_step(svc, running)  # its first read: the scan is running, so it waits
    waiting_as = member(local.ACCOUNT, repository, running.image.digest)
    wait_for(lambda: svc.scan_waits.turn(local.REGION, waiting_as).due == 0, 5, "its next turn")
    limiter = RateLimiter(stack.records, ecr_limit_key(settings.redis_namespace, local.ACCOUNT, local.REGION), 20)
    slot_key = limiter.key
    for _ in range(40):  # two seconds of first reads queued ahead, at 20 calls/s
        limiter._reserve(keys=[slot_key], args=[limiter.interval_us, 10_000_000])
    queued_until = stack.records.get(slot_key)
    with pytest.raises(RateLimited) as refused:  # any call that may wait 1 s at most: told when to come back
        RateLimiter(stack.records, slot_key, 20, max_wait=1.0).acquire()
    queued = 40 * limiter.interval_us / 1e6  # 2.2 s: 20 calls a second and the guard for the way to AWS
    assert refused.value.retry_after is not None and 1.0 <= refused.value.retry_after <= queued - 0.5
    with pytest.raises(ScanNotReady, match="first reads") as caught:
        scan_step(svc, running)
    assert caught.value.next_read is not None
    assert stack.records.get(slot_key) == queued_until  # it took no slot: no ECR call
    fresh = described(stack.push(repository, findings=[]))
    done = scan_step(svc, fresh)  # a first read waits its turn in the queue, then reads
    assert done.status == "COMPLETE"


# With scan events arriving, polling is the safety net (issue 25 part 2).


def test_while_scan_events_arrive_a_wait_is_read_at_the_safety_pace(stack: Stack) -> None:
    from ninkik_tasks.freshness import IMAGE_SCAN, INSPECTOR_SCAN, LastSeen
    from ninkik_tasks.scanwait import seen_key

    namespace = f"test-{uuid.uuid4().hex[:8]}"
    waits = ScanWaits(stack.records, namespace, poll_seconds=5, calls_per_second=20, safety_poll_seconds=180)
    image = member(local.ACCOUNT, f"{TENANT_A}/shop", "sha256:" + "a" * 64)
    other_account = member("210987654321", f"{TENANT_A}/shop", "sha256:" + "b" * 64)
    assert 4.5 <= waits.next_read(local.REGION, image) <= 5.5  # no scan event seen: the poll
    for kind in (IMAGE_SCAN, INSPECTOR_SCAN):
        stack.records.delete(seen_key(namespace, local.ACCOUNT, local.REGION))
        stack.records.hset(seen_key(namespace, local.ACCOUNT, local.REGION), kind, str(time.time() - 60))
        assert 162 <= waits.next_read(local.REGION, image) <= 198, kind
        assert 161 <= (waits.turn(local.REGION, image).due or 0) <= 162
    assert 4.5 <= waits.next_read(local.REGION, other_account) <= 5.5  # per account and region
    assert 4.5 <= waits.next_read("eu-west-1", image) <= 5.5
    LastSeen(stack.records, namespace).record([], now=time.time())  # nothing recorded: unchanged
    stack.records.delete(seen_key(namespace, local.ACCOUNT, local.REGION))
    stack.records.hset(seen_key(namespace, local.ACCOUNT, local.REGION), IMAGE_SCAN, str(time.time() - 7200))
    assert 4.5 <= waits.next_read(local.REGION, image) <= 5.5  # the last event is over an hour old: the poll again
    # A slow-paced wait is not dropped as abandoned by a fast-paced one registering after three polls.
    stack.records.zadd(f"{namespace}:scanwait:{local.REGION}", {image: time.time() - 30})
    waits.next_read(local.REGION, other_account)
    assert waits.is_waiting(local.REGION, image)


def test_a_safety_pace_of_zero_keeps_the_poll(stack: Stack) -> None:
    from ninkik_tasks.scanwait import seen_key

    namespace = f"test-{uuid.uuid4().hex[:8]}"
    waits = ScanWaits(stack.records, namespace, poll_seconds=5, calls_per_second=20, safety_poll_seconds=0)
    stack.records.hset(seen_key(namespace, local.ACCOUNT, local.REGION), "image_scan", str(time.time()))
    assert 4.5 <= waits.next_read(local.REGION, member(local.ACCOUNT, "t/p", "sha256:" + "c" * 64)) <= 5.5


def test_with_scan_events_arriving_a_wait_costs_its_first_read_and_its_events(stack: Stack) -> None:
    """A 1 s poll would read a 6 s scan about six times; with scan events seen lately in the account and region, the
    wait is read at its first read and at its event: two status reads."""
    from test_events import live

    from ninkik_tasks.scanwait import seen_key

    proxy, env, queue_url = _behind_a_scanning_proxy(
        stack,
        NINKIK_SCAN_POLL_SECONDS="1",
        NINKIK_SCAN_SAFETY_POLL_SECONDS="60",
        NINKIK_SCAN_FIRST_READ_SECONDS="1",
        NINKIK_SCAN_WAIT_SECONDS="300",
    )
    repository = f"{TENANT_A}/shop"
    digest = stack.push(repository, "safety-net")
    proxy.scanning[digest] = time.monotonic() + 3600
    worker = celery_worker(stack, env, "safety-net")
    feeder = ingest(stack, env, queue_url, name="ingest-safety-net")
    try:
        seen = seen_key("ninkik", local.ACCOUNT, local.REGION)
        stack.records.hdel(seen, "image_scan", "inspector2_scan")
        # The rule works: ingest saw a scan event of this account and region (an image nobody waits for).
        stack.send(queue_url, live("ecr-image-scan.json", repository, "sha256:" + uuid.uuid4().hex * 2))
        wait_for(lambda: stack.records.hget(seen, "image_scan"), 20, "ingest to record the scan event")
        stack.send(queue_url, local.push_event(repository, digest, "safety-net"))
        wait_for(lambda: proxy.reads(digest) >= 1, 30, "the first read (IN_PROGRESS)")
        time.sleep(6)  # an absence needs a window: a 1 s poll reads it about six times in it
        assert proxy.reads(digest) == 1
        proxy.scanning[digest] = 0
        stack.send(queue_url, live("ecr-image-scan.json", repository, digest))
        wait_for(lambda: stack.received_for(digest), 20, "the report, at the scan event")
        assert proxy.reads(digest) == 2
    finally:
        feeder.stop()
        worker.stop()
        proxy.stop()
