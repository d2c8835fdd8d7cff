"""What operators do and see: scaled workers in Flower, quarantine replay, JSON logs, no secrets anywhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import redis
from conftest import TENANT_A, TOKEN, Pipeline, Stack, celery_worker, ingest, own_broker_db

from ninkik_tasks import local
from ninkik_tasks.local import wait_for

AWS_SECRET = "aws-secret-Q7pzL0ok"  # recognisable, like TOKEN


DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def test_two_workers_share_one_queue_and_flower_lists_both(stack: Stack) -> None:
    db = own_broker_db()
    env = stack.env(broker_db=db, NINKIK_LOG_FORMAT="json", FLOWER_BASIC_AUTH="ops:flower-pw")
    auth = ("ops", "flower-pw")
    queue_url = stack.new_queue()
    port = local.free_port()
    procs = [celery_worker(stack, env, "left", concurrency=1), celery_worker(stack, env, "right", concurrency=1)]
    procs.append(ingest(stack, env, queue_url, name="ingest-scale"))
    flower = local.Proc(
        "flower",
        [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "flower", "--address=127.0.0.1", f"--port={port}"],
        stack.work,
        env,
    )
    procs.append(flower)
    try:
        stack.standin.answer_next(0, times=16, delay=0.1)  # each POST takes a while: both workers get work
        digests = [stack.push(f"{TENANT_A}/shop", f"scale-{i}") for i in range(16)]
        for i, digest in enumerate(digests):
            stack.send(queue_url, local.push_event(f"{TENANT_A}/shop", digest, f"scale-{i}"))
        wait_for(lambda: all(stack.received_for(d) for d in digests), 90, "every notification")

        def notified_by(proc: local.Proc) -> set[str]:
            """Images this worker logged as sent (or, after a client timeout, as already at ninkik)."""
            lines = [line for line in proc.output().splitlines() if line.startswith("{")]
            done = ('"message": "notified', '"message": "already_had_it')
            return {d for line in lines if line.startswith(done, line.find('"message"')) for d in DIGEST.findall(line)}

        # The log line comes just after the POST the stand-in saw: wait for it rather than race it.
        wait_for(lambda: notified_by(procs[0]) | notified_by(procs[1]) == set(digests), 30, "every notify log line")
        left, right = notified_by(procs[0]), notified_by(procs[1])
        assert left and right, (len(left), len(right))  # both workers sent some

        def listed() -> set[str]:
            answer = httpx.get(
                f"http://127.0.0.1:{port}/api/workers", params={"refresh": 1}, auth=auth, timeout=10
            ).json()
            return {name.split("@")[0] for name in answer} & {"left", "right"}

        wait_for(lambda: listed() == {"left", "right"}, 60, "Flower to list both workers")
        # Flower's task view shows the chain's tasks by name, with no secret in their arguments.
        tasks = httpx.get(f"http://127.0.0.1:{port}/api/tasks", params={"limit": 200}, auth=auth, timeout=10).json()
        names = {task["name"] for task in tasks.values()}
        assert {"ninkik.match_tenant", "ninkik.describe_image", "ninkik.fetch_scan_findings", "ninkik.notify"} <= names
        assert TOKEN not in json.dumps(tasks)
    finally:
        for proc in procs:
            proc.stop()


def test_quarantine_replay_after_fixing_the_allow_list(stack: Stack, worker: local.Proc) -> None:
    queue_url = stack.new_queue()
    misconfigured = stack.env(NINKIK_AWS_ACCOUNT_IDS="111111111111")
    proc = ingest(stack, misconfigured, queue_url, name="ingest-misconfigured")
    try:
        digest = stack.push(f"{TENANT_A}/shop", "replay")
        event = local.push_event(f"{TENANT_A}/shop", digest, "replay")
        stack.send(queue_url, event)
        entry = wait_for(
            lambda: next((q for q in stack.quarantined() if event["id"] in q.get("body", "")), None),
            30,
            "the event to be quarantined",
        )
        assert entry["reason"] == "account_not_allowed"
    finally:
        proc.stop()
    [entry_id] = [eid for eid, fields in stack.records.xrange("ninkik:quarantine") if event["id"] in fields["body"]]
    done = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "quarantine", "replay", entry_id],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"replayed {entry_id}" in done.stdout
    wait_for(lambda: stack.received_for(digest), 30, "the replayed event's notification")
    assert len(stack.received_for(digest)) == 1


def test_secrets_stay_out_of_logs_tasks_results_and_records(stack: Stack) -> None:
    db = own_broker_db()
    env = stack.env(broker_db=db, AWS_SECRET_ACCESS_KEY=AWS_SECRET, NINKIK_LOG_LEVEL="DEBUG")
    queue_url = stack.new_queue()
    procs = [celery_worker(stack, env, "secrets"), ingest(stack, env, queue_url, name="ingest-secrets")]
    try:
        stack.standin.answer_next(503)  # a retry too, so its arguments are stored and logged
        digest = stack.push(f"{TENANT_A}/shop", "secrets")
        stack.send(queue_url, local.push_event(f"{TENANT_A}/shop", digest, "secrets"))
        stack.send(queue_url, f"not json {TOKEN[:3]}")
        unknown = stack.push("deadbeef-0000-4000-8000-000000000000/x", "1")
        stack.send(queue_url, local.push_event("deadbeef-0000-4000-8000-000000000000/x", unknown, "1"))
        wait_for(lambda: stack.received_for(digest), 60, "the notification")
        wait_for(lambda: any(f["digest"] == unknown for f in stack.failures()), 30, "the recorded failure")
    finally:
        for proc in procs:
            proc.stop()
    for proc in procs:
        for secret in (TOKEN, AWS_SECRET):
            assert secret not in proc.output(), f"{secret} in {proc.name}'s log"
    for number in (db, db + 1, 2):  # broker (task messages), results, records and quarantine
        client = redis.Redis.from_url(f"{stack.redis_url}/{number}")
        for key in client.scan_iter(count=1000):
            value = _read(client, key)
            text = repr(value)
            assert TOKEN not in text and AWS_SECRET not in text, f"secret in redis db {number} key {key!r}"


def _read(client: redis.Redis, key: bytes) -> object:
    """Whatever a key holds, whatever its type."""
    kind = client.type(key).decode()
    readers = {
        "string": client.get,
        "list": lambda k: client.lrange(k, 0, -1),
        "hash": client.hgetall,
        "stream": client.xrange,
        "zset": lambda k: client.zrange(k, 0, -1),
        "set": client.smembers,
    }
    return readers[kind](key)


def test_failures_retry_after_ninkik_refused_once(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    stack.standin.answer_next(400)
    digest = stack.push(f"{TENANT_A}/shop", "refused-once")
    stack.send(pipeline.queue_url, local.push_event(f"{TENANT_A}/shop", digest, "refused-once"))
    wait_for(lambda: any(f["digest"] == digest for f in stack.failures()), 30, "the recorded failure")
    [entry_id] = [eid for eid, f in stack.records.xrange("ninkik:failures") if f["digest"] == digest]
    done = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "failures", "retry", entry_id],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [received] = wait_for(lambda: stack.received_for(digest), 30, "the notification after the retry")
    assert received.body["source"] == "push"
