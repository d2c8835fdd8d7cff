"""Faults on real processes; each test ends by checking the exact set of notifications: every image once.

Run alone with `./scripts/test -m reliability`. NINKIK_TEST_SCALE multiplies the event counts for a
longer soak (the figures in docs/reliability.md came from NINKIK_TEST_SCALE=5).
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest
import redis
from conftest import TENANT_A, TENANTS, TOKEN, IamQueue, Stack, celery_worker, ingest, own_broker_db
from faultproxy import FaultProxy

from ninkik_tasks import local
from ninkik_tasks.local import wait_for
from ninkik_tasks.local.standin import Standin

SCALE = float(os.environ.get("NINKIK_TEST_SCALE", "1"))
# The waits below carry their own deadlines and say what is missing; pytest-timeout is only the backstop.
pytestmark = [pytest.mark.reliability, pytest.mark.timeout(int(600 * SCALE))]
REPOSITORY = f"{TENANT_A}/shop"


def n(count: int) -> int:
    """A test's event count, scaled for soaks."""
    return max(1, int(count * SCALE))


def push_many(stack: Stack, count: int, label: str) -> list[str]:
    """Put `count` new images with a finished scan in the emulated ECR."""
    return [stack.push(REPOSITORY, f"{label}-{i}") for i in range(count)]


def send_events(stack: Stack, queue_url: str, digests: list[str], label: str) -> None:
    """One push event per image, sent in batches of ten."""
    events = [local.push_event(REPOSITORY, d, f"{label}-{i}") for i, d in enumerate(digests)]
    for start in range(0, len(events), 10):
        entries = [{"Id": str(i), "MessageBody": json.dumps(e)} for i, e in enumerate(events[start : start + 10])]
        stack.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def assert_each_once(received: list[object], digests: list[str]) -> None:
    """Every image notified exactly once; nothing else for these images."""
    counts = Counter(r.body["image"]["digest"] for r in received)  # type: ignore[attr-defined]
    missing = [d for d in digests if counts[d] == 0]
    doubled = {d: c for d, c in counts.items() if d in digests and c > 1}
    assert not missing and not doubled, f"lost {len(missing)}, doubled {doubled}"


def report(test: str, standin: Standin, digests: list[str], **facts: object) -> None:
    """One line of figures per fault test, for docs/reliability.md (shown with -s)."""
    keys = {r.key for r in standin.received if r.body["image"]["digest"] in digests}
    repeats = sum(1 for status, key in standin.attempts if key in keys and status == 409)
    extra = " ".join(f"{k}={v}" for k, v in facts.items())
    print(f"\nRELIABILITY {test}: events={len(digests)} lost=0 duplicates=0 repeated_posts_409={repeats} {extra}")


def notified(standin: Standin) -> set[str]:
    """Digests the stand-in has received a report for."""
    return {r.body["image"]["digest"] for r in list(standin.received)}


def all_notified(standin: Standin, digests: list[str]) -> bool:
    return set(digests) <= notified(standin)


def wait_all_notified(
    stack: Stack, digests: list[str], timeout: float, what: str, procs: list[local.Proc], standin: Standin | None = None
) -> None:
    """Wait until every image is notified; on timeout, fail with what is missing and where it got to."""
    standin = standin or stack.standin
    try:
        wait_for(lambda: all_notified(standin, digests), timeout, what)
    except TimeoutError:
        got = notified(standin)
        missing = [d for d in digests if d not in got]
        failures = [f for f in stack.failures() if f.get("digest") in missing]
        short = missing[0].removeprefix("sha256:")[:16]
        traces = [line for p in procs for line in p.output().splitlines() if short in line]
        raise AssertionError(
            f"{what}: {len(missing)} of {len(digests)} never notified; failures recorded for them: {failures[:5]}; "
            f"log lines naming {missing[0]}: {traces[-20:]}"
        ) from None


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    stack.standin.reset()
    return stack


def test_workers_killed_repeatedly(fresh: Stack) -> None:
    stack = fresh
    env = stack.env(broker_db=own_broker_db(), NINKIK_ECR_CALLS_PER_SECOND="0")
    queue_url = stack.new_queue()
    digests = push_many(stack, n(200), "kills")
    stack.standin.answer_next(0, times=len(digests), delay=0.02)
    # prefork only: with the threads pool a SIGKILL loses a task now and then (see docs/reliability.md).
    pools = {"a": ("prefork", 2), "b": ("prefork", 2)}
    procs = {v: celery_worker(stack, env, f"kill-{v}", pool=p, concurrency=c) for v, (p, c) in pools.items()}
    feeder = ingest(stack, env, queue_url, name="ingest-kills")
    kills = 0
    try:
        send_events(stack, queue_url, digests, "kills")
        for round_ in range(3):
            # Kill at a fifth, two fifths and three fifths of the run (at once if a restart took longer).
            target = min(len(digests) - 1, len(digests) * (round_ + 1) // 5)
            wait_for(
                lambda target=target: len(notified(stack.standin)) >= target,
                120,
                "progress between kills",
            )
            if all_notified(stack.standin, digests):
                break
            victim = "a" if round_ % 2 == 0 else "b"
            os.killpg(procs[victim].pid, signal.SIGKILL)
            procs[victim].stop()
            kills += 1
            pool, concurrency = pools[victim]
            procs[victim] = celery_worker(stack, env, f"kill-{victim}{round_}", pool=pool, concurrency=concurrency)
        wait_all_notified(stack, digests, 180, "every image after the kills", [feeder, *procs.values()])
        assert kills >= 2, "the run ended before the workers could be killed"
        assert_each_once(stack.standin.received, digests)
        report("workers-sigkilled", stack.standin, digests, kills=kills)
    finally:
        feeder.stop()
        for proc in procs.values():
            proc.stop()


@pytest.mark.parametrize("deleting", [True, False], ids=["with-delete", "guide-policy-no-delete"])
def test_ingest_killed_mid_batch(fresh: Stack, worker: local.Proc, deleting: bool) -> None:
    stack = fresh
    iam = None if deleting else IamQueue(stack)
    try:
        env = stack.env() if iam is None else iam.env(stack, "ninkik")
        queue_url = stack.new_queue() if iam is None else iam.queue_url
        sqs = stack.sqs if iam is None else iam.sender
        digests = push_many(stack, n(60), f"ingest-kill-{deleting}")
        first = ingest(stack, env, queue_url, name=f"ingest-doomed-{deleting}")
        for i, d in enumerate(digests):
            sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(local.push_event(REPOSITORY, d, f"k{i}")))
            if i == len(digests) // 3:
                wait_for(lambda: "accepted" in first.output(), 30, "ingest to be mid-run")
                first.send(signal.SIGKILL)
                first.stop()
                second = ingest(stack, env, queue_url, name=f"ingest-restarted-{deleting}")
        try:
            wait_all_notified(stack, digests, 120, "every image after the ingest kill", [first, second])
            assert_each_once(stack.standin.received, digests)
            assert ("DeleteMessage is not granted" in second.output()) is not deleting
            report(f"ingest-sigkilled-{'delete' if deleting else 'no-delete'}", stack.standin, digests, kills=1)
        finally:
            second.stop()
    finally:
        if iam:
            iam.proc.stop()


def test_redis_restarted_mid_run(fresh: Stack, tmp_path: Path) -> None:
    stack = fresh
    port = local.free_port()
    data = tmp_path / "redis-data"
    redis_proc, url = local.start_redis(tmp_path, port=port, data_dir=data)
    env = stack.env(
        NINKIK_BROKER_URL=f"{url}/0",
        NINKIK_RESULT_BACKEND=f"{url}/1",
        NINKIK_REDIS_URL=f"{url}/2",
        NINKIK_ECR_CALLS_PER_SECOND="0",
    )
    queue_url = stack.new_queue()
    digests = push_many(stack, n(60), "redis-restart")
    stack.standin.answer_next(0, times=len(digests), delay=0.05)
    workers = [celery_worker(stack, env, "redis-a"), celery_worker(stack, env, "redis-b")]
    feeder = ingest(stack, env, queue_url, name="ingest-redis")
    try:
        half = len(digests) // 2
        send_events(stack, queue_url, digests[:half], "redis-restart")
        wait_for(lambda: len(stack.standin.received) >= half // 2, 60, "the run to be under way")
        redis_proc.stop()  # SIGTERM: Redis writes its append-only file and exits, as in a restart
        send_events(stack, queue_url, digests[half:], "redis-restart-b")  # arriving while Redis is down
        wait_for(lambda: "poll failed" in feeder.output(), 30, "ingest to notice Redis is gone")
        redis_proc, _ = local.start_redis(tmp_path, port=port, data_dir=data)
        wait_all_notified(stack, digests, 180, "every image after the restart", [feeder, *workers])
        assert_each_once(stack.standin.received, digests)
        assert feeder.alive() and all(w.alive() for w in workers)
        report("redis-restarted", stack.standin, digests, restarts=1)
    finally:
        feeder.stop()
        for w in workers:
            w.stop()
        redis_proc.stop()


def test_ninkik_refusing_then_failing_then_slow(fresh: Stack) -> None:
    stack = fresh
    port = local.free_port()
    ninkik = Standin(TENANTS, TOKEN, port=port)  # not started yet: connection refused
    # Tenants come from a file here, so that only the notifications meet the outage.
    tenants_file = stack.work / "tenants-outage.json"
    tenants_file.write_text(json.dumps(TENANTS))
    env = stack.env(
        broker_db=own_broker_db(), NINKIK_API_URL=f"http://127.0.0.1:{port}", NINKIK_TENANTS_FILE=str(tenants_file)
    )
    own = celery_worker(stack, env, "outage")
    queue_url = stack.new_queue()
    feeder = ingest(stack, env, queue_url, name="ingest-outage")
    try:
        digests = push_many(stack, n(10), "outage")
        send_events(stack, queue_url, digests, "outage")
        wait_for(lambda: own.output().count("ninkik unreachable") >= len(digests), 60, "every notify to be refused")
        ninkik.answer_next(503, times=2 * len(digests))
        ninkik.answer_next(0, times=len(digests), delay=3)  # past the 2 s client timeout: retried, then 409
        ninkik.start()
        wait_all_notified(stack, digests, 180, "every image once ninkik is back", [feeder, own], ninkik)
        assert_each_once(ninkik.received, digests)
        assert not [f for f in stack.failures() if f["digest"] in digests]
        report("ninkik-refused-503-slow", ninkik, digests, scripted_failures=3 * len(digests))
    finally:
        feeder.stop()
        own.stop()
        ninkik.stop()


def test_throttling_storm_with_the_shared_limiter(fresh: Stack) -> None:
    stack = fresh
    rate = 6
    proxy = FaultProxy(stack.moto_url, throttle_every=4).start()
    env = stack.env(broker_db=own_broker_db(), AWS_ENDPOINT_URL_ECR=proxy.url, NINKIK_ECR_CALLS_PER_SECOND=str(rate))
    queue_url = stack.new_queue()
    digests = push_many(stack, n(24), "throttle")
    workers = [celery_worker(stack, env, f"throttle-{i}") for i in range(3)]
    feeder = ingest(stack, env, queue_url, name="ingest-throttle")
    try:
        send_events(stack, queue_url, digests, "throttle")
        wait_all_notified(stack, digests, 180, "every image through the storm", [feeder, *workers])
        assert_each_once(stack.standin.received, digests)
        assert proxy.throttled > 0
        # Slots are spaced 1/rate apart on Redis's clock; a call that wakes a little late can share a
        # one-second window with the slot after its last, hence the one call of slack.
        assert proxy.peak_per_second() <= rate + 1, proxy.peak_per_second()
        elapsed = proxy.calls[-1].at - proxy.calls[0].at
        assert len(proxy.calls) / max(elapsed, 1.0) <= rate * 1.05
        report(
            "ecr-throttling-storm",
            stack.standin,
            digests,
            workers=3,
            limit_per_s=rate,
            ecr_calls=len(proxy.calls),
            throttled=proxy.throttled,
            peak_per_s=proxy.peak_per_second(),
        )
    finally:
        feeder.stop()
        for w in workers:
            w.stop()
        proxy.stop()


def test_backlog_while_workers_are_down(fresh: Stack) -> None:
    stack = fresh
    db = own_broker_db()
    env = stack.env(broker_db=db, NINKIK_ECR_CALLS_PER_SECOND="0", NINKIK_RESULT_EXPIRES_SECONDS="60")
    queue_url = stack.new_queue()
    digests = push_many(stack, n(400), "backlog")
    feeder = ingest(stack, env, queue_url, name="ingest-backlog")
    broker = redis.Redis.from_url(f"{stack.redis_url}/{db}")
    results = redis.Redis.from_url(f"{stack.redis_url}/{db + 1}")
    workers: list[local.Proc] = []
    try:
        for start in range(0, len(digests), 50):  # fed gradually: moto's SQS slows as it gets deep
            send_events(stack, queue_url, digests[start : start + 50], f"backlog{start}")
            wait_for(lambda start=start: feeder.output().count("accepted event") >= start + 50, 60, "ingest")
        backlog = sum(broker.llen(q) for q in ("ninkik-api", "ninkik-aws", "ninkik-control"))
        assert backlog == len(digests)  # one match_tenant task per event, waiting
        memory_before = int(broker.info("memory")["used_memory"])
        workers = [celery_worker(stack, env, "backlog-a", concurrency=4)]
        wait_all_notified(stack, digests, 300, "the backlog to drain", [feeder, *workers])
        assert_each_once(stack.standin.received, digests)
        rss = [p.memory_info().rss for w in workers for p in [psutil.Process(w.pid), *psutil.Process(w.pid).children()]]
        assert max(rss) < 300 * 2**20, f"a worker process reached {max(rss) / 2**20:.0f} MB"
        # Everything the run left behind expires: results, records; only capped streams and counters stay.
        no_ttl = [k for k in results.scan_iter(count=1000) if results.ttl(k) == -1]
        assert not no_ttl, no_ttl[:5]
        leftovers = sum(broker.llen(q) for q in ("ninkik-api", "ninkik-aws", "ninkik-control"))
        assert leftovers == 0
        memory_after = int(broker.info("memory")["used_memory"])
        report(
            "backlog-workers-down",
            stack.standin,
            digests,
            broker_used_memory_before=memory_before,
            broker_used_memory_after=memory_after,
            peak_worker_rss_mb=round(max(rss) / 2**20),
        )
    finally:
        feeder.stop()
        for w in workers:
            w.stop()
