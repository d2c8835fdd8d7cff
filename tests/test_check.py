"""`ninkik-tasks check` against moto with the setup guide's IAM policies enforced."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis
from conftest import TENANT_A, Stack, celery_worker, enforce_iam, guide_policy, make_broker
from iamproxy import IamProxy
from kombu import Connection

from ninkik_tasks import check, local
from ninkik_tasks.celery_app import QUEUES
from ninkik_tasks.config import Settings


class GuideAccount:
    """An emulated AWS account set up as the customer guide says, with IAM enforced afterwards."""

    def __init__(self, stack: Stack, enhanced: bool = False) -> None:
        self.proc, self.url = local.start_moto(stack.work)
        admin = boto3.session.Session(
            aws_access_key_id="admin", aws_secret_access_key="admin", region_name=local.REGION
        )
        sqs, iam = admin.client("sqs", endpoint_url=self.url), admin.client("iam", endpoint_url=self.url)
        self.queue_url = sqs.create_queue(QueueName="ecr-docker-push", Attributes={"MessageRetentionPeriod": "60"})[
            "QueueUrl"
        ]
        ecr = admin.client("ecr", endpoint_url=self.url)
        digest = local.push_image(ecr, f"{TENANT_A}/shop", "check", "1.0")
        if enhanced:  # scanned by Amazon Inspector: what ECR answers then needs inspector2:ListFindings
            finding = local.enhanced_finding("CVE-2026-1234", "CRITICAL", "log4j-core", "2.14.1", "2.17.1")
            local.set_scan_result(self.url, ecr, f"{TENANT_A}/shop", digest, status="ACTIVE", enhanced=[finding])
        # moto checks ECR actions against the resource "*" only, so the guide's ECR policy is used with
        # its Resource widened to "*": the actions are exactly the guide's. The SQS policy is verbatim.
        ecr_policy = json.loads(guide_policy("ecr"))
        for statement in ecr_policy["Statement"]:
            statement["Resource"] = "*"
        arns = {
            "ecr": iam.create_policy(PolicyName="ecr", PolicyDocument=json.dumps(ecr_policy))["Policy"]["Arn"],
            "sqs": iam.create_policy(PolicyName="sqs", PolicyDocument=guide_policy("sqs"))["Policy"]["Arn"],
        }
        self.keys = {}
        for user, policies in (("ninkik", ("ecr", "sqs")), ("sqs-only", ("sqs",))):
            iam.create_user(UserName=user)
            for policy in policies:
                iam.attach_user_policy(UserName=user, PolicyArn=arns[policy])
            key = iam.create_access_key(UserName=user)["AccessKey"]
            self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        enforce_iam(self.url)

    def check(self, stack: Stack, user: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        key_id, secret = self.keys[user]
        env = stack.env(
            AWS_ENDPOINT_URL=self.url,
            AWS_ACCESS_KEY_ID=key_id,
            AWS_SECRET_ACCESS_KEY=secret,
            **{
                "NINKIK_SQS_QUEUE_URL": self.queue_url,
                "NINKIK_REDIS_NAMESPACE": f"check-{uuid.uuid4().hex[:8]}",  # nothing remembered by other tests
                "NINKIK_TENANT_UUIDS": TENANT_A,
                **overrides,
            },
        )
        return subprocess.run(
            [sys.executable, "-m", "ninkik_tasks.cli", "check"], env=env, capture_output=True, text=True, timeout=60
        )


@pytest.fixture(scope="module")
def account(stack: Stack) -> Iterator[GuideAccount]:
    guide = GuideAccount(stack)
    yield guide
    guide.proc.stop()


def test_the_guides_policies_pass_with_warnings(stack: Stack, account: GuideAccount) -> None:
    done = account.check(stack, "ninkik")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in lines if line.startswith("FAIL")]
    assert any(
        line.startswith("WARN") and "sqs:DeleteMessage is not granted" in line and "add it to the policy" in line
        for line in lines
    )
    assert any(line.startswith("WARN") and "retention is 60 s" in line and "reconciliation" in line for line in lines)
    for granted in (
        "ecr:DescribeRepositories",
        "ecr:DescribeImages",
        "ecr:DescribeImageScanFindings",
        "sqs:ReceiveMessage",
    ):
        assert any(line.startswith("OK") and granted in line for line in lines), granted
    assert any(line.startswith("OK") and "ninkik" in line and "accepts the token" in line for line in lines)
    assert "Traceback" not in done.stderr


def test_a_missing_permission_fails_and_is_named(stack: Stack, account: GuideAccount) -> None:
    done = account.check(stack, "sqs-only")
    assert done.returncode == 1
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1
    assert "ecr:DescribeRepositories is not granted" in failures[0] and "policy" in failures[0]


# As AWS evaluates the guide's ECR policy: scoped to repository/${TENANT_UUID}/* (tests/iamproxy.py)


def guided(stack: Stack, account: GuideAccount, proxy: IamProxy, **overrides: str) -> list[str]:
    proxy.start()
    try:
        done = account.check(stack, "ninkik", AWS_ENDPOINT_URL_ECR=proxy.url, **overrides)
    finally:
        proxy.stop()
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def test_check_under_the_scoped_policy_says_what_works_and_what_is_lost(stack: Stack, account: GuideAccount) -> None:
    nobody = "12345678-1234-4234-8234-123456789abc"  # a tenant ninkik does not know: nothing to sweep
    lines = guided(stack, account, IamProxy(account.url, {TENANT_A}), NINKIK_TENANT_UUIDS=f"{TENANT_A},{nobody}")
    assert not [line for line in lines if line.startswith("FAIL")], lines
    [listing] = [line for line in lines if "on repository/* is not granted" in line]
    assert listing.startswith("WARN") and "sweeps name the repositories they know" in listing
    assert "cannot be found" in listing and '"Action": "ecr:DescribeRepositories"' in listing
    assert f"arn:aws:ecr:{local.REGION}:{local.ACCOUNT}:repository/*" in listing
    for granted in ("ecr:DescribeRepositories", "ecr:DescribeImages", "ecr:DescribeImageScanFindings"):
        assert f"OK   ecr: {granted} is granted on {TENANT_A}/shop" in lines, (granted, lines)
    # The image has no scan: enhanced scanning cannot be seen, and its statement is given.
    assert any(
        line.startswith("WARN")
        and "could not tell whether enhanced scanning" in line
        and "inspector2:ListFindings" in line
        for line in lines
    )
    assert any(line.startswith("WARN") and f"tenant {nobody} has nothing to sweep" in line for line in lines)
    # What ecr:BatchGetImage would change (multi-platform images), with the statement to add.
    [batch] = [line for line in lines if "ecr:BatchGetImage" in line]
    assert batch.startswith("WARN") and "one report per tag with every platform's findings" in batch, batch
    statement = f"arn:aws:ecr:{local.REGION}:{local.ACCOUNT}:repository/{TENANT_A}/*"
    assert '"Action": "ecr:BatchGetImage"' in batch and statement in batch


def test_check_says_what_batch_get_image_gives_where_it_is_granted(stack: Stack, account: GuideAccount) -> None:
    # The account's own emulator enforces the guide's policy itself: the shared (permissive) one behind the IAM
    # layer plays an account whose policy adds ecr:BatchGetImage.
    stack.push(f"{TENANT_A}/shop", "check-batch-get-image")
    lines = guided(stack, account, IamProxy(stack.moto_url, {TENANT_A}, batch_get_image=True))
    [batch] = [line for line in lines if "ecr:BatchGetImage" in line]
    assert batch.startswith("OK") and "one report per index" in batch, batch


def test_check_names_the_statement_enhanced_scanning_needs(stack: Stack) -> None:
    guide = GuideAccount(stack, enhanced=True)
    try:
        denied = guided(stack, guide, IamProxy(guide.url, {TENANT_A}))
        [failure] = [line for line in denied if line.startswith("FAIL")]
        assert "inspector2:ListFindings is not granted" in failure
        assert '{"Effect": "Allow", "Action": "inspector2:ListFindings", "Resource": "*"}' in failure

        granted = guided(stack, guide, IamProxy(guide.url, {TENANT_A}, inspector=True))
        assert not [line for line in granted if line.startswith("FAIL")]
        assert any(line.startswith("OK") and "enhanced scanning (Amazon Inspector) is on" in line for line in granted)
    finally:
        guide.proc.stop()


def test_check_without_any_known_tenant_says_sweeps_have_nothing_to_read(stack: Stack, account: GuideAccount) -> None:
    lines = guided(stack, account, IamProxy(account.url, {TENANT_A}), NINKIK_TENANT_UUIDS="")
    assert any(
        line.startswith("WARN") and "no tenant is known" in line and "NINKIK_TENANT_UUIDS" in line for line in lines
    )
    # Nor can ninkik's tenant lookup be proven: a made-up tenant answers 404 at a wrong URL too.
    assert any(line.startswith("WARN ninkik:") and "tenant lookup is not proven" in line for line in lines), lines


def test_wrong_token_and_unreachable_redis_are_named(stack: Stack, account: GuideAccount) -> None:
    key_id, secret = account.keys["ninkik"]
    env = stack.env(
        AWS_ENDPOINT_URL=account.url,
        AWS_ACCESS_KEY_ID=key_id,
        AWS_SECRET_ACCESS_KEY=secret,
        NINKIK_SQS_QUEUE_URL=account.queue_url,
        NINKIK_API_TOKEN="wrong",
        NINKIK_REDIS_URL=f"redis://127.0.0.1:{local.free_port()}/2",
    )
    done = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert any("NINKIK_REDIS_URL" in line and "does not answer" in line for line in failures)
    assert any("refuses NINKIK_API_TOKEN" in line for line in failures)
    assert "wrong" not in done.stdout  # the token itself is never printed


def _broker_lines(settings: Settings) -> list[str]:
    return [c.line() for c in check.broker_and_redis(settings)]


def test_check_sees_the_rabbitmq_queues_and_their_type(stack: Stack, rabbitmq: local.RabbitMQ) -> None:
    broker = make_broker(stack, "rabbitmq", rabbitmq)
    redis_urls = {"result_backend": broker.result_backend, "redis_url": f"{stack.redis_url}/2"}
    before = _broker_lines(Settings(broker_url=broker.url, broker_management_url=rabbitmq.management_url, **redis_urls))
    assert any(line.startswith("WARN") and "not declared yet" in line for line in before), before
    proc = celery_worker(stack, broker.env(), "check")  # declares the queues
    try:
        managed = Settings(broker_url=broker.url, broker_management_url=rabbitmq.management_url, **redis_urls)
        lines = _broker_lines(managed)
        assert not [line for line in lines if not line.startswith("OK")], lines
        assert any("RabbitMQ 3." in line for line in lines) and any("management API" in line for line in lines)
        # Without the management API: the queues are found by a passive declare, their type not checked.
        dead = f"http://127.0.0.1:{local.free_port()}"
        lines = _broker_lines(Settings(broker_url=broker.url, broker_management_url=dead, **redis_urls))
        assert any(line.startswith("OK") and "passive declare" in line for line in lines), lines
    finally:
        proc.stop()
    # A classic queue where a quorum one belongs (declared by an older version) is named, with the fix.
    other = make_broker(stack, "rabbitmq", rabbitmq)
    with Connection(other.url) as conn:
        conn.default_channel.queue_declare(QUEUES[0], durable=True)
    lines = _broker_lines(Settings(broker_url=other.url, broker_management_url=rabbitmq.management_url, **redis_urls))
    assert any(line.startswith("FAIL") and f"queue {QUEUES[0]} is a classic queue" in line for line in lines), lines


def test_check_warns_of_guest_on_a_remote_broker_and_fails_one_that_does_not_answer() -> None:
    lines = _broker_lines(Settings(broker_url="amqp://guest:guest@rabbit.invalid:5672//"))
    assert any(line.startswith("WARN") and "guest/guest" in line for line in lines), lines
    assert any(line.startswith("FAIL") and "does not answer" in line for line in lines), lines
    assert not any("guest/guest" in line for line in _broker_lines(Settings(broker_url="amqp://127.0.0.1:1//")))


# What would lose every push: each fails `check` in one line with its fix (exit 2 where the fix is a setting).


def _lines(done: subprocess.CompletedProcess[str], level: str) -> list[str]:
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith(level)]


def test_an_api_url_with_the_api_path_and_a_misspelt_setting(stack: Stack, account: GuideAccount) -> None:
    done = account.check(
        stack, "ninkik", NINKIK_API_URL=f"{stack.standin.url}/api/v1", NINKIK_ECR_CALL_PER_SECOND="2"
    )
    assert done.returncode == 2, done.stdout
    [failure] = _lines(done, "FAIL")
    assert "ends in /api/v1" in failure and f"set it to {stack.standin.url}" in failure
    assert any(
        "NINKIK_ECR_CALL_PER_SECOND is not a setting" in line and "NINKIK_ECR_CALLS_PER_SECOND?" in line
        for line in _lines(done, "WARN")
    )


def test_a_tenant_ninkik_should_know_answering_404_fails(stack: Stack, account: GuideAccount) -> None:
    # A base URL with a path the stand-in does not serve: every lookup 404s, a made-up tenant's as a real one's.
    done = account.check(stack, "ninkik", NINKIK_API_URL=f"{stack.standin.url}/ninkik")
    assert done.returncode == 2, done.stdout
    [failure] = _lines(done, "FAIL")
    assert "answers 404 for every tenant" in failure and f"{TENANT_A} (NINKIK_TENANT_UUIDS)" in failure
    assert "unknown_tenant" in failure and "without /api/v1" in failure


def test_a_tenant_seen_in_the_registry_proves_the_lookup(stack: Stack, account: GuideAccount) -> None:
    done = account.check(stack, "ninkik", NINKIK_TENANT_UUIDS="")  # the registry lists TENANT_A/shop
    assert done.returncode == 0, done.stdout
    assert f"OK   ninkik: API at {stack.standin.url} answers, accepts the token and knows tenant {TENANT_A}" in (
        done.stdout
    )


def test_an_aws_queue_url_used_through_an_emulator_endpoint_fails(stack: Stack, account: GuideAccount) -> None:
    aws_queue = f"https://sqs.{local.REGION}.amazonaws.com/{local.ACCOUNT}/ecr-docker-push"
    done = account.check(stack, "ninkik", NINKIK_SQS_QUEUE_URL=aws_queue)
    assert done.returncode == 2, done.stdout
    mismatch = [line for line in _lines(done, "FAIL") if "is an AWS queue" in line]
    assert mismatch and f"SQS calls go to {account.url}" in mismatch[0] and "AWS_ENDPOINT_URL" in mismatch[0]


@pytest.mark.parametrize(
    ("queue_url", "endpoint", "flagged"),
    [
        ("https://sqs.eu-central-1.amazonaws.com/1/q", "https://sqs.eu-central-1.amazonaws.com", False),
        ("https://sqs.eu-central-1.amazonaws.com/1/q", "http://127.0.0.1:5000", True),
        ("http://127.0.0.1:5000/1/q", "https://sqs.eu-central-1.amazonaws.com", True),
        ("http://127.0.0.1:5000/1/q", "http://127.0.0.1:5000", False),
        # The legacy queue host and VPC endpoints are AWS too.
        ("https://eu-central-1.queue.amazonaws.com/1/q", "https://sqs.eu-central-1.amazonaws.com", False),
        (
            "https://sqs.eu-central-1.amazonaws.com/1/q",
            "https://vpce-0a1b-2c3d.sqs.eu-central-1.vpce.amazonaws.com",
            False,
        ),
        ("https://sqs.cn-north-1.amazonaws.com.cn/1/q", "https://sqs.cn-north-1.amazonaws.com.cn", False),
    ],
)
def test_queue_endpoint_mismatch(queue_url: str, endpoint: str, flagged: bool) -> None:
    from ninkik_tasks.clients import queue_endpoint_mismatch

    assert (queue_endpoint_mismatch(queue_url, endpoint) is not None) is flagged


def test_a_tenants_file_of_the_wrong_shape_is_one_line(stack: Stack, account: GuideAccount, tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({TENANT_A: {"name": "Acme", "products": []}}))
    done = account.check(stack, "ninkik", NINKIK_TENANTS_FILE=str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    [failure] = _lines(done, "FAIL")
    assert failure.startswith("FAIL tenants:") and "has the wrong shape" in failure and '{"tenants": [...]}' in failure


@pytest.fixture(scope="module")
def own_redis(stack: Stack) -> Iterator[tuple[str, redis.Redis]]:
    proc, url = local.start_redis(stack.work)
    yield url, redis.Redis.from_url(url)
    proc.stop()


def test_redis_that_evicts_or_is_full_fails(stack: Stack, own_redis: tuple[str, redis.Redis]) -> None:
    url, client = own_redis
    urls = {"broker_url": f"{url}/0", "result_backend": f"{url}/1", "redis_url": f"{url}/2"}
    assert not [line for line in _broker_lines(Settings(**urls)) if not line.startswith("OK")]
    client.config_set("maxmemory-policy", "volatile-lru")  # ElastiCache's default parameter group
    try:
        lines = _broker_lines(Settings(**urls))
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    [evicts] = [line for line in lines if line.startswith("FAIL")]  # once for the server, not once per URL
    assert "maxmemory-policy volatile-lru" in evicts and "set maxmemory-policy noeviction" in evicts
    assert "parameter group" in evicts
    client.config_set("maxmemory", "1")  # full: reads and PING still work, writes are refused
    try:
        done = account_free_check(stack, f"{url}/2")
    finally:
        client.config_set("maxmemory", "0")
    assert done.returncode == 1, done.stdout
    [full] = _lines(done, "FAIL")
    assert full.startswith("FAIL redis: NINKIK_REDIS_URL") and "Redis is full (maxmemory reached" in full


def account_free_check(stack: Stack, redis_url: str) -> subprocess.CompletedProcess[str]:
    """`check` of the stack's own (permissive) emulator, with the records in `redis_url`."""
    env = stack.env(NINKIK_REDIS_URL=redis_url, NINKIK_SQS_QUEUE_URL=stack.new_queue(), NINKIK_TENANT_UUIDS=TENANT_A)
    return subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "check"], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("broker_url", "management"),
    [
        (
            "amqps://u:p@b-1234-abcd.mq.eu-central-1.amazonaws.com:5671/ninkik",
            "https://b-1234-abcd.mq.eu-central-1.amazonaws.com",
        ),
        ("amqp://u:p@rabbitmq:5672/ninkik", "http://rabbitmq:15672"),
        ("amqps://u:p@rabbit.internal:5671/ninkik", "http://rabbit.internal:15672"),
    ],
)
def test_the_management_api_of_amazon_mq_is_https(broker_url: str, management: str) -> None:
    from ninkik_tasks.brokers.rabbitmq import management_url

    assert management_url(Settings(broker_url=broker_url)) == management
