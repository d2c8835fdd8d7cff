"""Across hosts: the services on one test host, ingest on a second, workers on two more (tests/hosts.py).

A host that drops off the network is not a killed process: its TCP connections hang instead of closing,
so what brings its work back is the broker's own timeout (Redis: the visibility timeout; RabbitMQ: its
heartbeat). Each test ends, as the fault suite does, by checking every image was notified once, with one
report, and prints one line of figures for docs/reliability.md (shown with -s).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import redis
from celery import Celery
from conftest import CI, TENANT_A, TENANTS, TOKEN
from hosts import Hosts, available

from ninkik_tasks import local
from ninkik_tasks.idempotency import Records
from ninkik_tasks.local import wait_for
from ninkik_tasks.local.standin import Standin

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.servers,  # a stack of its own, across network namespaces
    pytest.mark.skipif(available() is not None and not CI, reason=available() or ""),  # CI skips nothing
]
REPOSITORY = f"{TENANT_A}/shop"
VISIBILITY = 20  # the Redis broker's visibility timeout in these tests (seconds; run limit a quarter of it)


@dataclass
class Net:
    """The test hosts and the services running on theirs."""

    hosts: Hosts
    work: Path
    redis_url: str
    moto_url: str
    standin: Standin
    rabbitmq: local.RabbitMQ | None

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment for ingest and workers on the other hosts: only the services host's address."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            **local.aws_env(self.moto_url),
            "NINKIK_BROKER_URL": f"{self.redis_url}/0",
            "NINKIK_RESULT_BACKEND": f"{self.redis_url}/1",
            "NINKIK_REDIS_URL": f"{self.redis_url}/2",
            "NINKIK_AWS_ACCOUNT_IDS": local.ACCOUNT,
            "NINKIK_AWS_REGIONS": local.REGION,
            "NINKIK_API_URL": self.standin.url,
            "NINKIK_API_TOKEN": TOKEN,
            "NINKIK_SCAN_WAIT_SECONDS": "10",
            "NINKIK_SCAN_POLL_SECONDS": "0.5",
            "NINKIK_SCAN_FIRST_READ_SECONDS": "0",
            "NINKIK_RETRY_BACKOFF_MAX_SECONDS": "1",
            "NINKIK_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY),
            "NINKIK_HTTP_TIMEOUT_SECONDS": "2",
            "NINKIK_METRICS_PORT": "0",
            "NINKIK_ECR_CALLS_PER_SECOND": "0",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "PYTHONUNBUFFERED": "1",
            **overrides,
        }


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """Four hosts; redis-server, moto and the ninkik stand-in on the services host. The test's own thread
    stays on the services host meanwhile, so it reaches them at that host's address too."""
    work = tmp_path_factory.mktemp("hosts")
    with Hosts(["ingest", "worker-1", "worker-2"]) as hosts, hosts.inside(Hosts.SERVICES):
        address = hosts.address(Hosts.SERVICES)
        redis_proc, redis_url = local.start_redis(work, host=hosts.second_address)  # so it can be cut off alone
        moto_proc, moto_url = local.start_moto(work, host=address)
        standin = Standin(TENANTS, TOKEN, host=address).start()
        rabbitmq = local.start_rabbitmq(work, host=address) if local.rabbitmq_scripts() or CI else None
        try:
            yield Net(hosts, work, redis_url, moto_url, standin, rabbitmq)
        finally:
            if rabbitmq is not None:
                rabbitmq.remove()
            standin.stop()
            moto_proc.stop()
            redis_proc.stop()


def worker(net: Net, host: str, env: dict[str, str]) -> local.Proc:
    """A prefork x2 Celery worker on `host`, waited on until it answers a ping."""
    name = f"{host}-{uuid.uuid4().hex[:4]}"
    args = [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "worker", "--loglevel", "INFO"]
    args += ["--pool", "prefork", "--concurrency", "2", "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
    proc = net.hosts.proc(host, name, args, net.work, env)
    probe = Celery(broker=env["NINKIK_BROKER_URL"])
    wait_for(lambda: any(name in h for r in probe.control.ping(timeout=0.5) or [] for h in r), 60, f"{name}")
    return proc


def ingest(net: Net, env: dict[str, str], queue_url: str) -> local.Proc:
    proc = net.hosts.proc(
        "ingest",
        "ingest",
        [sys.executable, "-m", "ninkik_tasks.cli", "ingest"],
        net.work,
        {**env, "NINKIK_SQS_QUEUE_URL": queue_url},
    )
    wait_for(lambda: "polling" in proc.output() or not proc.alive(), 30, "ingest to poll")
    assert proc.alive(), proc.output()
    return proc


def push(net: Net, count: int, label: str, queue: str | None = None) -> tuple[list[str], str]:
    """`count` images with a finished scan, their push events on the queue named `queue` (made if new, by
    default one per label); (digests, queue URL)."""
    session = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name=local.REGION)
    ecr = session.client("ecr", endpoint_url=net.moto_url)
    sqs = session.client("sqs", endpoint_url=net.moto_url)
    queue_url = sqs.create_queue(QueueName=f"push-{queue or label}", Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
    digests = []
    for i in range(count):
        digest = local.push_image(ecr, REPOSITORY, f"{label}-{uuid.uuid4()}", f"{label}-{i}")
        local.set_scan_result(net.moto_url, ecr, REPOSITORY, digest, findings=[])
        digests.append(digest)
    for start in range(0, count, 10):
        entries = [
            {"Id": str(i), "MessageBody": json.dumps(local.push_event(REPOSITORY, d, f"{label}-{start + i}"))}
            for i, d in enumerate(digests[start : start + 10])
        ]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    return digests, queue_url


def keys_per_image(standin: Standin, digests: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for r in list(standin.received):
        if r.body["image"]["digest"] in digests:
            out[r.body["image"]["digest"]].add(r.key)
    return out


HEARTBEAT = 6  # RabbitMQ in these tests: a silent peer is dropped after about this long


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_worker_host_dropping_off_the_network_mid_task(net: Net, broker: str) -> None:
    net.standin.reset()
    if broker == "rabbitmq":
        if net.rabbitmq is None:
            pytest.skip(f"rabbitmq-server is not installed: {local.RABBITMQ_INSTALL}")
        with net.hosts.inside(Hosts.SERVICES):
            vhost = net.rabbitmq.vhost(f"hosts-{uuid.uuid4().hex[:6]}")
        env = net.env(NINKIK_BROKER_URL=vhost, NINKIK_BROKER_HEARTBEAT_SECONDS=str(HEARTBEAT))
        bound = f"heartbeat_s={HEARTBEAT}"
    else:
        env = net.env()
        bound = f"visibility_timeout_s={VISIBILITY}"
    with net.hosts.inside(Hosts.SERVICES):
        lost = worker(net, "worker-1", env)
        other = worker(net, "worker-2", env)
        # Every POST takes a second, so the cut finds worker-1 with tasks in hand.
        net.standin.answer_next(0, times=1000, delay=1.0)
        digests, queue_url = push(net, 20, f"worker-host-{broker}")
        feeder = ingest(net, env, queue_url)
        lost_address = net.hosts.address("worker-1")
        try:
            wait_for(lambda: any(peer == lost_address for peer, _ in net.standin.peers), 60, "worker-1 to POST")
            net.hosts.cut("worker-1")
            cut_at = time.monotonic()
            wait_for(lambda: len(keys_per_image(net.standin, digests)) == len(digests), 120, "every image")
            recovered = time.monotonic() - cut_at
            net.hosts.mend("worker-1")
            # The stale worker comes back: it must neither send a second, different report nor break a record.
            probe = Celery(broker=env["NINKIK_BROKER_URL"])
            wait_for(
                lambda: any("worker-1" in h for r in probe.control.ping(timeout=0.5) or [] for h in r),
                90,
                "worker-1 back on the network",
            )
            posts_before = len(net.standin.peers)
            if broker == "redis":
                wait_for(lambda: _drained(net), 60, "the queues to drain")
            keys = keys_per_image(net.standin, digests)
            assert all(len(k) == 1 for k in keys.values()), {d: k for d, k in keys.items() if len(k) != 1}
            records = Records(redis.Redis.from_url(env["NINKIK_REDIS_URL"], decode_responses=True), "ninkik")
            # Recorded once the redo has sent it: after the stale worker's notify lock expired (3 HTTP timeouts
            # + 30 s). On the Redis broker the stale worker may meet its soft time limit inside its own retry;
            # it gives the message back then (pipeline._run) instead of failing and acknowledging it.
            wait_for(
                lambda: all(records.begin_send(next(iter(k)), "probe", 1).state == "sent" for k in keys.values()),
                90,
                "every report recorded as sent",
            )
            repeats = sum(1 for status, key in net.standin.attempts if status == 409)
            print(
                f"\nRELIABILITY worker-host-lost ({broker} broker): events={len(digests)} lost=0 duplicates=0 "
                f"recovered_s={recovered:.1f} {bound} repeated_posts_409={repeats} "
                f"posts_after_return={len(net.standin.peers) - posts_before}"
            )
        finally:
            feeder.stop()
            lost.stop(timeout=5)
            other.stop()


def _drained(net: Net) -> bool:
    client = redis.Redis.from_url(f"{net.redis_url}/0")
    queues = sum(int(client.llen(q)) for q in ("ninkik-aws", "ninkik-api", "ninkik-control"))
    return queues == 0 and int(client.hlen("unacked")) == 0


def test_a_stale_worker_whose_notify_lock_expired_does_not_undo_the_other_workers_send(net: Net) -> None:
    """The lost worker held the notify lock; it expired and another worker sent the report. When the stale
    worker finishes, its end of the send must not delete the other's lock or record, nor claim a new send."""
    with net.hosts.inside(Hosts.SERVICES):
        client = redis.Redis.from_url(f"{net.redis_url}/2", decode_responses=True)
        records = Records(client, f"t-{uuid.uuid4().hex[:6]}")
        key = uuid.uuid4().hex
        records.put_report(key, "{}", 60)
        assert records.begin_send(key, "stale", lock_ttl=1).state == "ours"
        wait_for(lambda: client.ttl(records.key("sending", key)) == -2, 5, "the stale worker's lock to expire")
        assert records.begin_send(key, "other", lock_ttl=30).state == "ours"
        records.end_send(key, "stale", sent_ttl=None)  # the stale worker's POST failed: it gives the send back
        assert client.get(records.key("sending", key)) == "other"  # ... but not the other worker's lock
        records.end_send(key, "other", sent_ttl=60)
        assert records.begin_send(key, "stale", lock_ttl=30).state == "sent"  # its retry sends nothing


@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
def test_ingest_host_dropping_off_the_network(net: Net, kind: str) -> None:
    """Ingest's SQS and broker connections hang: each attempt ends at its timeout, nothing is deleted, so SQS
    redelivers; when the link is back ingest goes on by itself, and its log has one line for the outage."""
    net.standin.reset()
    with net.hosts.inside(Hosts.SERVICES):
        env = net.env()
        if kind == "rabbitmq":
            if net.rabbitmq is None:
                pytest.skip(f"rabbitmq-server is not installed: {local.RABBITMQ_INSTALL}")
            env = net.env(NINKIK_BROKER_URL=net.rabbitmq.vhost(f"hosts-{uuid.uuid4().hex[:6]}"))
        workers = worker(net, "worker-2", env)
        digests, queue_url = push(net, 10, f"ingest-host-{kind}")
        # A 5 s long poll: each hung attempt ends at its 10 s read timeout (25 s at the default 20 s poll).
        feeder = ingest(net, {**env, "NINKIK_SQS_WAIT_SECONDS": "5"}, queue_url)
        try:
            wait_for(lambda: len(keys_per_image(net.standin, digests)) == 10, 60, "the first ten")
            net.hosts.cut("ingest")
            cut_at = time.monotonic()
            more, _ = push(net, 10, f"ingest-host-{kind}-b", queue=f"ingest-host-{kind}")  # they wait in SQS
            wait_for(lambda: "poll failed" in feeder.output(), 60, "ingest to notice the outage")
            net.hosts.mend("ingest")
            wait_for(lambda: len(keys_per_image(net.standin, digests + more)) == 20, 120, "every image after")
            recovered = time.monotonic() - cut_at
            keys = keys_per_image(net.standin, digests + more)
            assert all(len(k) == 1 for k in keys.values())
            assert feeder.alive()
            wait_for(lambda: "answer again" in feeder.output(), 30, "ingest to say the outage is over")
            outage_lines = [line for line in feeder.output().splitlines() if "ERROR" in line]
            assert len(outage_lines) == 1, outage_lines
            print(
                f"\nRELIABILITY ingest-host-lost ({kind} broker): events=20 lost=0 duplicates=0 "
                f"recovered_s={recovered:.1f} error_lines={len(outage_lines)}"
            )
        finally:
            feeder.stop()
            workers.stop()


def test_redis_unreachable_from_the_workers_rabbitmq_broker(net: Net) -> None:
    """Redis (records, results, the limiter) silent for the workers, longer than their socket timeouts, while
    RabbitMQ still answers: the steps that need Redis retry, nothing is lost or doubled, and each worker
    process logs the outage in one line and its end in another."""
    if net.rabbitmq is None:
        pytest.skip(f"rabbitmq-server is not installed: {local.RABBITMQ_INSTALL}")
    net.standin.reset()
    with net.hosts.inside(Hosts.SERVICES):
        vhost = net.rabbitmq.vhost(f"hosts-{uuid.uuid4().hex[:6]}")
        env = net.env(NINKIK_BROKER_URL=vhost)
        workers = worker(net, "worker-1", env)
        digests, queue_url = push(net, 10, "redis-silent")
        feeder = ingest(net, env, queue_url)
        try:
            wait_for(lambda: len(keys_per_image(net.standin, digests)) >= 3, 60, "the first reports")
            net.hosts.block("worker-1", net.hosts.second_address)
            blocked_at = time.monotonic()
            more, _ = push(net, 10, "redis-silent-b", queue="redis-silent")
            wait_for(lambda: "does not answer" in workers.output(), 90, "the workers to meet the outage")
            # Longer than the workers' Redis socket timeouts (10 s for records, 30 s for results).
            wait_for(lambda: time.monotonic() - blocked_at > 35, 40, "the outage to outlast the socket timeouts")
            net.hosts.unblock("worker-1", net.hosts.second_address)
            wait_for(lambda: len(keys_per_image(net.standin, digests + more)) == 20, 180, "every image after")
            recovered = time.monotonic() - blocked_at
            keys = keys_per_image(net.standin, digests + more)
            assert all(len(k) == 1 for k in keys.values())
            assert workers.alive() and feeder.alive()
            # A process says the outage is over when it next works. The one that met it may still have been
            # waiting for Redis inside Celery (storing its retry) while the other child did the rest, so a few
            # more images give every child a step, a batch at a time, until one says so.
            for batch in range(3):
                pushed, _ = push(net, 5, f"redis-silent-after{batch}", queue="redis-silent")
                wait_for(lambda p=pushed: len(keys_per_image(net.standin, p)) == 5, 60, "the images after the outage")
                if "answers again" in workers.output():
                    break
            assert "answers again" in workers.output(), "no worker process logged the end of the outage"
            began = [line for line in workers.output().splitlines() if "does not answer" in line]
            ended = [line for line in workers.output().splitlines() if "answers again" in line]
            processes = 3  # the prefork worker's main process and its two children each say it once
            assert 1 <= len(began) <= processes and 1 <= len(ended) <= processes, (began, ended)
            print(
                f"\nRELIABILITY redis-silent-for-workers (rabbitmq broker): events=20 lost=0 duplicates=0 "
                f"outage_s={recovered:.1f} outage_lines={len(began)} recovery_lines={len(ended)}"
            )
        finally:
            feeder.stop()
            workers.stop(timeout=5)
