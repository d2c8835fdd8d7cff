"""Every process refuses a configuration it cannot run with in one line (exit 2), warns of the variables it
ignores, and names what it waits for: real `celery` and `ninkik-tasks` processes against the session's servers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import TENANT_A, Stack

from ninkik_tasks import local
from ninkik_tasks.config import unknown_variables

CELERY = [sys.executable, "-m", "celery", "-A", "ninkik_tasks"]
CLI = [sys.executable, "-m", "ninkik_tasks.cli"]


def _refused(argv: list[str], env: dict[str, str]) -> str:
    """Run argv to its end; assert it refused with exit 2 and one line on stderr (no traceback); the line."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ninkik-tasks: "), done.stderr
    assert "polling" not in done.stdout + done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [[*CELERY, "worker"], [*CELERY, "beat"], [*CELERY, "flower", "--address=127.0.0.1"], [*CLI, "ingest"]],
    ids=["worker", "beat", "flower", "ingest"],
)
def test_a_broker_url_of_an_unknown_scheme_is_one_line_at_start(stack: Stack, argv: list[str]) -> None:
    env = stack.env(NINKIK_BROKER_URL="rabbitmq://ninkik:secret@rabbit:5672/ninkik", NINKIK_SQS_QUEUE_URL="x")
    line = _refused(argv, env)
    assert "NINKIK_BROKER_URL has the scheme 'rabbitmq'" in line and "amqp://" in line
    assert "secret" not in line


def test_a_tenants_file_of_the_wrong_shape_stops_every_process_in_one_line(stack: Stack, tmp_path: Path) -> None:
    # {uuid: {...}}: a natural way to write a directory, and not one of the two accepted forms.
    mapping = tmp_path / "tenants.json"
    mapping.write_text(json.dumps({TENANT_A: {"name": "Acme", "products": []}}))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"uuid": "' + TENANT_A + '",}]')
    for path, says in ((mapping, "has the wrong shape"), (broken, "is not valid JSON")):
        env = stack.env(NINKIK_TENANTS_FILE=str(path))
        for argv in ([*CELERY, "worker"], [*CLI, "backfill", "--tenant", TENANT_A]):
            line = _refused(argv, env)
            assert f"NINKIK_TENANTS_FILE {path} {says}" in line and '{"tenants": [...]}' in line, line


def test_an_api_url_with_the_api_path_stops_the_worker(stack: Stack) -> None:
    line = _refused([*CELERY, "worker"], stack.env(NINKIK_API_URL=f"{stack.standin.url}/api/v1/"))
    assert "ends in /api/v1" in line and f"set it to {stack.standin.url}" in line


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    lines = unknown_variables({"NINKIK_ECR_CALL_PER_SECOND": "2", "NINKIK_BROKER_URL": "x", "NINKIK_NOTHING": "1"})
    assert lines == [
        "NINKIK_ECR_CALL_PER_SECOND is not a setting of ninkik-tasks and is ignored: "
        "did you mean NINKIK_ECR_CALLS_PER_SECOND?",
        "NINKIK_NOTHING is not a setting of ninkik-tasks and is ignored: docs/configuration.md lists the known ones",
    ]
    # The scripts' own variables are known too.
    assert unknown_variables({"NINKIK_WORKER_POOL": "threads", "NINKIK_WORKER_QUEUES": "ninkik-aws"}) == []


@pytest.fixture
def namespace() -> str:
    return f"startup-{uuid.uuid4().hex[:8]}"


def _beat(stack: Stack, name: str, namespace: str) -> local.Proc:
    env = stack.env(NINKIK_REDIS_NAMESPACE=namespace, NINKIK_ECR_CALL_PER_SECOND="2")
    return local.Proc(f"beat-{name}-{namespace}", [*CELERY, "beat", "--loglevel", "INFO"], stack.work, env)


def test_a_second_beat_says_it_stands_by_and_both_name_a_misspelt_setting(stack: Stack, namespace: str) -> None:
    first = _beat(stack, "first", namespace)
    second: local.Proc | None = None
    try:
        local.wait_for(lambda: "Acquired lock" in first.output() or not first.alive(), 60, "the first beat's lock")
        assert first.alive(), first.output()
        second = _beat(stack, "second", namespace)
        local.wait_for(lambda: "stands by" in second.output() or not second.alive(), 60, "the second beat")
        assert second.alive() and "Acquired lock" not in second.output(), second.output()
        for beat in (first, second):
            assert "NINKIK_ECR_CALL_PER_SECOND is not a setting" in beat.output()
            assert "did you mean NINKIK_ECR_CALLS_PER_SECOND?" in beat.output()
        # The standby takes over once the first one is gone.
        first.stop()
        local.wait_for(lambda: "Acquired lock" in second.output(), 60, "the standby to take the lock")
    finally:
        first.stop()
        if second is not None:
            second.stop()


# Redis full (maxmemory reached): reads work, every write is refused.


@pytest.fixture(scope="module")
def full_redis(stack: Stack) -> Iterator[tuple[str, redis.Redis]]:
    proc, url = local.start_redis(stack.work)
    client = redis.Redis.from_url(url)
    yield url, client
    proc.stop()


def test_ingest_names_a_full_redis_and_says_it_answers_again_only_once_writes_work(
    stack: Stack, full_redis: tuple[str, redis.Redis]
) -> None:
    url, client = full_redis
    queue_url = stack.sqs.create_queue(
        QueueName=f"full-{uuid.uuid4().hex[:8]}", Attributes={"MessageRetentionPeriod": "60", "VisibilityTimeout": "1"}
    )["QueueUrl"]
    env = stack.env(
        NINKIK_REDIS_URL=f"{url}/2",
        NINKIK_SQS_QUEUE_URL=queue_url,
        NINKIK_SQS_WAIT_SECONDS="1",
        NINKIK_LOG_LEVEL="DEBUG",
    )
    proc = local.Proc(f"ingest-full-{uuid.uuid4().hex[:6]}", [*CLI, "ingest"], stack.work, env)
    try:
        local.wait_for(lambda: "polling" in proc.output() or not proc.alive(), 30, "ingest to poll")
        assert proc.alive(), proc.output()
        # The SQS endpoint really used is in the line.
        assert f"through {stack.moto_url}" in proc.output(), proc.output()
        client.config_set("maxmemory", "1")  # below what it uses: full from now on
        digest = stack.push(f"{TENANT_A}/full", "full-redis")
        stack.send(queue_url, local.push_event(f"{TENANT_A}/full", digest, "full-redis"))
        local.wait_for(lambda: "Redis is full (maxmemory reached" in proc.output(), 30, "the full Redis to be named")
        # It goes on polling (each failed retry at DEBUG), and does not call the outage over while writes fail.
        failed_at = proc.output().index("Redis is full")
        local.wait_for(
            lambda: proc.output()[failed_at:].count("retrying in") >= 3, 60, "three more attempts while Redis is full"
        )
        assert "answer again" not in proc.output()
        client.config_set("maxmemory", "0")
        local.wait_for(lambda: "answer again" in proc.output(), 60, "the end of the outage")
        local.wait_for(lambda: f"digest={digest}" in proc.output(), 60, "the push to be accepted once writes work")
    finally:
        client.config_set("maxmemory", "0")
        proc.stop()


def test_backfill_names_a_full_redis_instead_of_the_broker(stack: Stack, full_redis: tuple[str, redis.Redis]) -> None:
    url, client = full_redis
    client.config_set("maxmemory", "1")
    try:
        env = stack.env(NINKIK_BROKER_URL=f"{url}/0", NINKIK_RESULT_BACKEND=f"{url}/1", NINKIK_REDIS_URL=f"{url}/2")
        done = subprocess.run([*CLI, "backfill"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        client.config_set("maxmemory", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Redis is full (maxmemory reached" in done.stderr and "does not answer" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
