"""Real servers for the tests: redis-server, moto's server, the ninkik stand-in, ingest and worker processes."""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis

from ninkik_tasks import local
from ninkik_tasks.local.standin import Standin

TOKEN = "test-token-Zq81xv"  # recognisable, so tests can grep for leaks

TENANT_A = "11111111-2222-4333-8444-555555555555"
TENANT_B = "99999999-8888-4777-8666-555555555555"
PRODUCT_A1 = "aaaaaaaa-0000-4000-8000-000000000001"
PRODUCT_A2 = "aaaaaaaa-0000-4000-8000-000000000002"
PRODUCT_B1 = "bbbbbbbb-0000-4000-8000-000000000001"
TENANTS = [
    {
        "uuid": TENANT_A,
        "name": "A",
        "products": [{"uuid": PRODUCT_A1, "name": "shop"}, {"uuid": PRODUCT_A2, "name": "web"}],
    },
    # Tenant B also has a product called "web": reports must never cross over.
    {"uuid": TENANT_B, "name": "B", "products": [{"uuid": PRODUCT_B1, "name": "web"}]},
]
_db_numbers = itertools.count(3)
# CI installs rabbitmq-server (.ci/run) and must skip nothing; elsewhere its tests skip with one line.
CI = os.environ.get("CI", "").lower() == "true"
# Tests whose subject is not the broker run once, on the Redis broker: the `ninkik-tasks dev` default,
# available wherever redis-server is. Those where the broker matters (kills, restarts, outages) take the
# `broker` fixture, parametrized over BROKERS.
DEFAULT_BROKER = "redis"
BROKERS = ("rabbitmq", "redis")
# The setup guide ninkik gives its customers, as given (its IAM policies are the ones enforced in tests).
SEED = Path(__file__).resolve().parents[1] / "docs" / "customer-setup-guide.txt"


def enforce_iam(moto_url: str) -> None:
    """From now on, every call to this moto server is checked against IAM (set the users up before)."""
    httpx.post(f"{moto_url}/moto-api/reset-auth", content="0").raise_for_status()


def guide_policy(kind: str) -> str:
    """The setup guide's "ecr" or "sqs" IAM policy as written there, with account and tenant filled in."""
    text = SEED.read_text()
    title = {
        "ecr": "Read permission for the ECR registry",
        "sqs": "Read permission for the previously created SQS queue",
    }
    match = re.search(re.escape(title[kind]) + r"\s*(\{.*?\n\})", text, re.S)
    assert match, f"the {kind} policy is not in {SEED}"
    return (
        match.group(1).replace("${YOUR_AWS_ACCOUNT_ID}", local.ACCOUNT).replace("${YOUR_NINKIK_TENANT_UUID}", TENANT_A)
    )  # broker/result DBs for pipelines of their own; 0-2 are the shared ones


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        help="only the tests that start no server (the inner loop, under a minute); CI runs them all",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "servers: starts servers without the stack fixture (left out by --quick)")
    # Each test worker (pytest-xdist: gw0, gw1 ...) picks its servers' ports from a block of its own, below the
    # kernel's ephemeral range (32768-60999), so that no worker, and no outgoing connection, takes another's.
    number = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    os.environ[local.PORTS_ENV] = f"{10000 + 1000 * number}-{10999 + 1000 * number}"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (its loadgroup names the items by them)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests of a module that share a module-scoped fixture run on one worker (the fixture is made once, and
    scenarios that follow each other run in order); --quick keeps the tests that start no server."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info else ()
        if any(d[-1].scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else item.nodeid))
    if config.getoption("quick"):
        slow = [i for i in items if "stack" in getattr(i, "fixturenames", ()) or i.get_closest_marker("servers")]
        config.hook.pytest_deselected(items=slow)
        left_out = set(map(id, slow))
        items[:] = [i for i in items if id(i) not in left_out]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail at once where pytest-xdist no longer groups (it names grouped tests `id@group`: pytest-xdist#1386)."""
    if getattr(session.config.option, "loadgroup", False):
        grouped = [i for i in session.items if i.get_closest_marker("xdist_group")]
        if grouped and "@" not in grouped[0].nodeid:
            raise pytest.UsageError(
                "pytest-xdist's --dist loadgroup does not group with this pytest (pytest-xdist#1386): "
                "module fixtures would be made on every worker; install the versions pyproject.toml pins"
            )


@dataclass
class Stack:
    """The long-lived servers of the session."""

    work: Path
    redis_url: str
    redis_proc: local.Proc
    moto_url: str
    standin: Standin
    session: boto3.session.Session = field(init=False)
    rabbitmq: local.RabbitMQ | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=local.REGION
        )
        self.ecr = self.session.client("ecr", endpoint_url=self.moto_url)
        self.sqs = self.session.client("sqs", endpoint_url=self.moto_url)
        self.records = redis.Redis.from_url(f"{self.redis_url}/2", decode_responses=True)

    def env(self, broker_db: int = 0, **overrides: str) -> dict[str, str]:
        """Environment for ninkik-tasks processes talking to this stack."""
        base = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("NINKIK_", "AWS_"))},
            **local.aws_env(self.moto_url),
            "NINKIK_BROKER_URL": f"{self.redis_url}/{broker_db}",
            "NINKIK_RESULT_BACKEND": f"{self.redis_url}/{broker_db + 1 if broker_db else 1}",
            "NINKIK_REDIS_URL": f"{self.redis_url}/2",
            "NINKIK_AWS_ACCOUNT_IDS": local.ACCOUNT,
            "NINKIK_AWS_REGIONS": local.REGION,
            "NINKIK_API_URL": self.standin.url,
            "NINKIK_API_TOKEN": TOKEN,
            "NINKIK_SCAN_WAIT_SECONDS": "10",
            "NINKIK_SCAN_POLL_SECONDS": "0.5",
            "NINKIK_SCAN_FIRST_READ_SECONDS": "0",  # moto's scans are final at once (tests/test_scanwait.py has a wait)
            "NINKIK_RETRY_BACKOFF_MAX_SECONDS": "1",
            "NINKIK_UNTAGGED_HOLD_SECONDS": "0",  # tests/test_indexes.py holds untagged images for an index
            # Off: one test's scan events would slow every later test's scan polls (tests/test_scanwait.py turns it on).
            "NINKIK_SCAN_SAFETY_POLL_SECONDS": "0",
            "NINKIK_BROKER_VISIBILITY_TIMEOUT": "40",  # Redis broker: run limit 10 s, back within 49 s
            "NINKIK_HTTP_TIMEOUT_SECONDS": "2",
            "NINKIK_TENANT_CACHE_SECONDS": "2",
            "NINKIK_METRICS_PORT": "0",
            "NINKIK_HEALTH_DIR": str(self.work / "health"),  # this test worker's own (the default is shared)
            "PYTHONUNBUFFERED": "1",
        }
        base.update(overrides)
        return base

    def new_queue(self, name: str | None = None) -> str:
        """A fresh, empty queue (60 s retention as in the setup guide)."""
        name = name or f"ecr-docker-push-{uuid.uuid4().hex[:8]}"
        return str(
            self.sqs.create_queue(
                QueueName=name, Attributes={"MessageRetentionPeriod": "60", "VisibilityTimeout": "5"}
            )["QueueUrl"]
        )

    def push(
        self,
        repository: str,
        tag: str | None = None,
        *,
        findings: list[dict[str, Any]] | None = None,
        enhanced: list[dict[str, Any]] | None = None,
        status: str = "COMPLETE",
        scan: bool = True,
    ) -> str:
        """Put a new, unique image in the emulated ECR with the given scan result; returns its digest."""
        digest = local.push_image(self.ecr, repository, uuid.uuid4().hex, tag)
        if scan:
            local.set_scan_result(
                self.moto_url, self.ecr, repository, digest, status=status, findings=findings, enhanced=enhanced
            )
        return digest

    def send(self, queue_url: str, body: dict[str, Any] | str) -> None:
        """Put one message on a queue."""
        text = body if isinstance(body, str) else json.dumps(body)
        self.sqs.send_message(QueueUrl=queue_url, MessageBody=text)

    def failures(self) -> list[dict[str, str]]:
        """Every recorded chain failure."""
        return [fields for _, fields in self.records.xrange("ninkik:failures")]

    def quarantined(self) -> list[dict[str, str]]:
        """Every quarantined message."""
        return [fields for _, fields in self.records.xrange("ninkik:quarantine")]

    def received_for(self, digest: str) -> list[Any]:
        """Notifications the stand-in accepted for one image."""
        return [r for r in self.standin.received if r.body["image"]["digest"] == digest]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """redis-server, moto's server and the ninkik stand-in, for the whole session."""
    work = tmp_path_factory.mktemp("stack")
    redis_proc, redis_url = local.start_redis(work)
    moto_proc, moto_url = local.start_moto(work)
    standin = Standin(TENANTS, TOKEN).start()
    made = Stack(work, redis_url, redis_proc, moto_url, standin)
    try:
        yield made
    finally:
        if made.rabbitmq is not None:
            made.rabbitmq.remove()
        standin.stop()
        moto_proc.stop()
        redis_proc.stop()


@pytest.fixture(scope="session")
def rabbitmq(stack: Stack) -> local.RabbitMQ:
    """A rabbitmq-server node of the session's own (started on first use; tests isolate by vhost)."""
    if stack.rabbitmq is None:
        if local.rabbitmq_scripts() is None:
            message = f"rabbitmq-server is not installed, RabbitMQ tests skipped: {local.RABBITMQ_INSTALL}"
            if CI:
                pytest.fail(f"CI=true: {message}")
            pytest.skip(message)
        stack.rabbitmq = local.start_rabbitmq(stack.work)
    return stack.rabbitmq


@dataclass
class Broker:
    """The broker of one test: a fresh vhost on the session's RabbitMQ, or Redis DBs of its own."""

    kind: str
    url: str
    result_backend: str
    stack: Stack
    node: local.RabbitMQ | None = None

    def env(self, **overrides: str) -> dict[str, str]:
        """stack.env() with this broker (results and records stay on the session's Redis)."""
        return self.stack.env(
            **{"NINKIK_BROKER_URL": self.url, "NINKIK_RESULT_BACKEND": self.result_backend, **overrides}
        )


def make_broker(stack: Stack, kind: str, node: local.RabbitMQ | None = None) -> Broker:
    """A broker of `kind` used by one test alone (RabbitMQ: a fresh vhost on `node`)."""
    if kind == "rabbitmq":
        assert node is not None, "a RabbitMQ broker needs the rabbitmq fixture's node"
        return Broker(kind, node.vhost(f"test-{uuid.uuid4().hex[:10]}"), f"{stack.redis_url}/1", stack, node)
    db = own_broker_db()
    return Broker(kind, f"{stack.redis_url}/{db}", f"{stack.redis_url}/{db + 1}", stack)


@pytest.fixture
def broker(stack: Stack, request: pytest.FixtureRequest) -> Broker:
    """This test's own broker: parametrize with `indirect=True` over BROKERS, else DEFAULT_BROKER."""
    kind = getattr(request, "param", DEFAULT_BROKER)
    return make_broker(stack, kind, request.getfixturevalue("rabbitmq") if kind == "rabbitmq" else None)


def celery_worker(
    stack: Stack,
    env: dict[str, str],
    name: str,
    concurrency: int = 2,
    pool: str = "prefork",
    queues: tuple[str, ...] = (),
) -> local.Proc:
    """A real `celery -A ninkik_tasks worker` process (of `queues`, else all), waited on until it answers a ping."""
    proc = local.Proc(
        f"worker-{name}",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "ninkik_tasks",
            "worker",
            "--loglevel",
            "INFO",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            *(["-Q", ",".join(queues)] if queues else []),
        ],
        stack.work,
        env,
    )
    from celery import Celery

    probe = Celery(broker=env["NINKIK_BROKER_URL"])
    try:
        local.wait_for(lambda: _pinged(probe, name), 60, f"worker {name} to answer a ping")
    except TimeoutError:
        proc.stop()
        raise AssertionError(f"worker {name} did not start:\n{proc.output()[-3000:]}") from None
    finally:
        probe.close()
    return proc


def _pinged(probe: Any, name: str) -> bool:
    replies = probe.control.ping(timeout=0.5) or []
    return any(name in host for reply in replies for host in reply)


def ingest(
    stack: Stack, env: dict[str, str], queue_url: str | None, name: str = "ingest", queues: int = 1
) -> local.Proc:
    """A real `ninkik-tasks ingest` process on `queue_url` (None: the queues of NINKIK_ACCOUNTS_FILE), waited on
    until it polls (`queues` of them)."""
    proc = local.Proc(
        name,
        [sys.executable, "-m", "ninkik_tasks.cli", "ingest"],
        stack.work,
        {**env, "NINKIK_SQS_QUEUE_URL": queue_url} if queue_url else env,
    )
    local.wait_for(lambda: proc.output().count("polling") >= queues or not proc.alive(), 30, f"{name} to poll")
    assert proc.alive(), proc.output()
    return proc


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Iterator[local.Proc]:
    """The shared worker on the shared broker DB (DEFAULT_BROKER: Redis)."""
    proc = celery_worker(stack, stack.env(), "shared")
    yield proc
    proc.stop()


@dataclass
class Pipeline:
    """An ingest on its own queue, feeding the shared worker."""

    stack: Stack
    queue_url: str
    ingest: local.Proc


@pytest.fixture
def pipeline(stack: Stack, worker: local.Proc) -> Iterator[Pipeline]:
    """A fresh queue and an ingest polling it, with the shared worker behind, on DEFAULT_BROKER (Redis)."""
    stack.standin.reset()
    queue_url = stack.new_queue()
    proc = ingest(stack, stack.env(), queue_url)
    yield Pipeline(stack, queue_url, proc)
    proc.stop()
    assert worker.alive(), worker.output()[-3000:]


def own_broker_db() -> int:
    """A broker DB number (and the next one for results) used by one test alone."""
    number = next(_db_numbers) * 2
    assert number < 64, "out of Redis DBs"
    return number


class IamQueue:
    """An SQS emulator of its own with IAM enforced: the guide's ninkik user, an EventBridge-like sender."""

    def __init__(self, stack: Stack) -> None:
        self.proc, self.url = local.start_moto(stack.work)
        admin = boto3.session.Session(
            aws_access_key_id="admin", aws_secret_access_key="admin", region_name=local.REGION
        )
        sqs, iam = admin.client("sqs", endpoint_url=self.url), admin.client("iam", endpoint_url=self.url)
        # Without DeleteMessage every message comes back after each visibility timeout until it expires.
        # moto hands out the oldest visible messages first, so a very short timeout lets redeliveries crowd
        # out new messages until they expire (real SQS samples; its default timeout is 30 s): 10 s here.
        self.queue_url = sqs.create_queue(
            QueueName="ecr-docker-push", Attributes={"MessageRetentionPeriod": "60", "VisibilityTimeout": "10"}
        )["QueueUrl"]
        arn = iam.create_policy(PolicyName="ninkik-sqs", PolicyDocument=guide_policy("sqs"))["Policy"]["Arn"]
        self.keys = {}
        for user, policy in (("ninkik", arn), ("sender", None), ("nobody", None)):
            iam.create_user(UserName=user)
            if policy:
                iam.attach_user_policy(UserName=user, PolicyArn=policy)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        iam.put_user_policy(
            UserName="sender",
            PolicyName="send",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}],
                }
            ),
        )
        enforce_iam(self.url)
        key_id, secret = self.keys["sender"]
        self.sender = boto3.session.Session(
            aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=local.REGION
        ).client("sqs", endpoint_url=self.url)

    def env(self, stack: Stack, user: str) -> dict[str, str]:
        """Ingest's environment as that IAM user, SQS on this emulator, ECR on the shared one."""
        key_id, secret = self.keys[user]
        return stack.env(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_ENDPOINT_URL_SQS=self.url)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line when the RabbitMQ tests were skipped, saying how to run them."""
    skipped = [
        r for r in terminalreporter.stats.get("skipped", []) if "rabbitmq-server is not installed" in str(r.longrepr)
    ]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} RabbitMQ tests skipped: rabbitmq-server is not installed ({local.RABBITMQ_INSTALL})",
            yellow=True,
        )
