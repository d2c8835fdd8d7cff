"""Ingest as operators meet it: the setup guide's IAM policy, clear one-line errors, a clean SIGTERM."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from conftest import TENANT_A, IamQueue, Stack, ingest
from iamproxy import IamProxy

from ninkik_tasks import local
from ninkik_tasks.clients import queue_endpoint_mismatch
from ninkik_tasks.config import Settings
from ninkik_tasks.idempotency import Records
from ninkik_tasks.ingest import Ingest
from ninkik_tasks.local import wait_for
from ninkik_tasks.records import quarantine


@pytest.fixture(scope="module")
def iam_queue(stack: Stack) -> Iterator[IamQueue]:
    queue = IamQueue(stack)
    yield queue
    queue.proc.stop()


def test_guide_policy_without_delete_gives_one_post_and_one_warning(
    stack: Stack, worker: local.Proc, iam_queue: IamQueue
) -> None:
    # Nothing outside the policy is allowed: the sender cannot read, the ninkik user cannot delete.
    with pytest.raises(Exception, match="403|AccessDenied"):
        iam_queue.sender.receive_message(QueueUrl=iam_queue.queue_url)
    proc = ingest(stack, iam_queue.env(stack, "ninkik"), iam_queue.queue_url, name="ingest-guide-policy")
    try:
        repository = f"{TENANT_A}/shop"
        digest = stack.push(repository, "3x")
        event = json.dumps(local.push_event(repository, digest, "3x"))
        for _ in range(3):
            iam_queue.sender.send_message(QueueUrl=iam_queue.queue_url, MessageBody=event)
        wait_for(lambda: stack.received_for(digest), 60, "the notification")

        def duplicates() -> int:
            counts = re.findall(r"dropped \d+ duplicate event\(s\) \((\d+) so far\)", proc.output())
            return int(counts[-1]) if counts else 0

        # The two extra copies, plus at least one redelivery of an undeleted message, are dropped.
        wait_for(lambda: duplicates() >= 3, 30, "redeliveries to be dropped as duplicates")
        assert len(stack.received_for(digest)) == 1
        assert len([k for _, k in stack.standin.attempts if k == stack.received_for(digest)[0].key]) == 1
        warnings = [line for line in proc.output().splitlines() if "sqs:DeleteMessage is not granted" in line]
        assert len(warnings) == 1, warnings
        assert "WARNING" in warnings[0]
        assert proc.alive()
    finally:
        proc.stop()
    assert "Traceback" not in proc.output()


def _run_ingest(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], env=env, capture_output=True, text=True, timeout=60
    )


def test_missing_permission_is_one_line_that_names_it(stack: Stack, iam_queue: IamQueue) -> None:
    done = _run_ingest({**iam_queue.env(stack, "nobody"), "NINKIK_SQS_QUEUE_URL": iam_queue.queue_url})
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "sqs:GetQueueAttributes is not granted" in line and "policy" in line


def test_wrong_queue_url_is_one_line(stack: Stack) -> None:
    done = _run_ingest({**stack.env(), "NINKIK_SQS_QUEUE_URL": f"{stack.moto_url}/{local.ACCOUNT}/no-such-queue"})
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "does not exist" in line and "NINKIK_SQS_QUEUE_URL" in line


@pytest.mark.parametrize(
    ("unset", "set_", "expected"),
    [
        ("NINKIK_SQS_QUEUE_URL", {}, "NINKIK_SQS_QUEUE_URL is not set"),
        ("NINKIK_AWS_ACCOUNT_IDS", {"NINKIK_SQS_QUEUE_URL": "http://x/1/q"}, "NINKIK_AWS_ACCOUNT_IDS is not set"),
        (
            None,
            {"NINKIK_SQS_QUEUE_URL": "http://x/1/q", "NINKIK_AWS_ACCOUNT_IDS": "12345"},
            "NINKIK_AWS_ACCOUNT_IDS is invalid",
        ),
    ],
)
def test_missing_settings_are_one_line(stack: Stack, unset: str | None, set_: dict[str, str], expected: str) -> None:
    env = {**stack.env(), **set_}
    env.pop(unset or "", None)
    done = _run_ingest(env)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert expected in line


def test_sigterm_while_polling_exits_cleanly(stack: Stack) -> None:
    proc = ingest(stack, stack.env(), stack.new_queue(), name="ingest-sigterm")
    proc.send(signal.SIGTERM)
    code = wait_for(lambda: proc.popen.poll() is not None and (proc.popen.returncode,), 10, "ingest to exit")
    assert code == (0,)
    assert "stopped" in proc.output() and "Traceback" not in proc.output()
    proc.stop()


def test_a_real_untagged_push_under_the_iam_layer_is_notified_once(stack: Stack, worker: local.Proc) -> None:
    # Ingest behind tests/iamproxy.py: the guide's SQS policy as AWS answers it (DeleteMessageBatch refused
    # with AccessDenied in x-amzn-query-error), and ECR's delivery of an untagged push ("image-tag": "").
    proxy = IamProxy(stack.moto_url, {TENANT_A}).start()
    queue_url = stack.new_queue()
    proc = ingest(stack, stack.env(**proxy.env()), queue_url, name="ingest-iam-layer")
    try:
        repository = f"{TENANT_A}/web"
        digest = stack.push(repository, None)
        event = json.loads((Path(__file__).parent / "aws" / "events" / "soci-pr137-untagged-push.json").read_text())
        event.update(id=str(uuid.uuid4()), account=local.ACCOUNT, region=local.REGION)
        event["detail"].update({"repository-name": repository, "image-digest": digest})
        for _ in range(2):
            stack.send(queue_url, event)
        [received] = wait_for(lambda: stack.received_for(digest), 60, "the notification")
        assert received.body["image"]["tags"] == []
        wait_for(lambda: proxy.refusals("sqs:DeleteMessage"), 30, "a refused DeleteMessageBatch")
        wait_for(lambda: "dropped 1 duplicate event(s)" in proc.output(), 30, "the second copy dropped")
        warnings = [line for line in proc.output().splitlines() if "sqs:DeleteMessage is not granted" in line]
        assert len(warnings) == 1 and len(stack.received_for(digest)) == 1
        assert proc.alive() and "Traceback" not in proc.output()
    finally:
        proc.stop()
        proxy.stop()


AWS_QUEUE = f"https://sqs.{local.REGION}.amazonaws.com/{local.ACCOUNT}/ecr-docker-push"


def test_a_queue_and_an_endpoint_that_disagree_stop_ingest_at_start_with_checks_line(stack: Stack) -> None:
    # An emulator's queue with no endpoint setting: calls go to AWS, which has no such queue (retried for ever before).
    emulated = f"{stack.moto_url}/{local.ACCOUNT}/ecr-docker-push"
    unset = {k: v for k, v in stack.env(NINKIK_SQS_QUEUE_URL=emulated).items() if not k.startswith("AWS_ENDPOINT")}
    # AWS's queue with calls going to an emulator.
    cases = [(unset, emulated, f"https://sqs.{local.REGION}.amazonaws.com"), (stack.env(), AWS_QUEUE, stack.moto_url)]
    for env, queue_url, endpoint in cases:
        done = _run_ingest({**env, "NINKIK_SQS_QUEUE_URL": queue_url})
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line == f"ninkik-tasks: {queue_endpoint_mismatch(queue_url, endpoint)}"  # check's own line


@pytest.mark.parametrize(
    ("queue_url", "endpoint"),
    [
        (AWS_QUEUE, f"https://vpce-0a1b2c3d4e5f67890-abcdefgh.sqs.{local.REGION}.vpce.amazonaws.com"),  # a VPC endpoint
        (f"https://{local.REGION}.queue.amazonaws.com/{local.ACCOUNT}/ecr-docker-push", None),  # the legacy queue host
    ],
)
def test_vpc_endpoints_and_the_legacy_queue_host_are_aws_at_start(
    stack: Stack, queue_url: str, endpoint: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=local.REGION)
    sqs = session.client("sqs", endpoint_url=endpoint)
    with Stubber(sqs) as aws:  # no AWS here: its answer to the one call made at start
        attributes = {"MessageRetentionPeriod": "60", "VisibilityTimeout": "30"}
        aws.add_response("get_queue_attributes", {"Attributes": attributes})
        settings = Settings(sqs_queue_url=queue_url, health_dir=stack.work / "health-aws")
        caplog.set_level(logging.INFO, logger="ninkik_tasks.ingest")
        records, bad = Records(stack.records, "aws-hosts"), quarantine(stack.records, "aws-hosts")
        Ingest(settings, sqs, records, bad, start=list)._start()  # no ConfigError: it polls
    assert f"polling {queue_url} through {sqs.meta.endpoint_url}" in caplog.text


def test_an_event_of_a_region_its_account_does_not_list_is_quarantined_with_one_line(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two accounts with regions of their own: each one's events are accepted in its regions only (the union of
    # all accounts' regions used to be accepted for every account).
    other, west, home = "222222222222", "eu-west-1", local.REGION
    path = tmp_path / "accounts.json"
    listed = [{"id": local.ACCOUNT, "regions": [local.REGION], "queues": [AWS_QUEUE]}, {"id": other, "regions": [west]}]
    path.write_text(json.dumps({"accounts": listed}))
    namespace = f"regions-{uuid.uuid4().hex[:8]}"
    settings = Settings(accounts_file=path, redis_namespace=namespace, health_dir=tmp_path / "health")
    sqs = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=local.REGION).client(
        "sqs", endpoint_url=stack.moto_url
    )
    records, bad = Records(stack.records, namespace), quarantine(stack.records, namespace)
    started: list[str] = []
    poller = Ingest(settings, sqs, records, bad, start=lambda new: [started.append(p.event_id) for p in new])
    image = f"sha256:{uuid.uuid4().hex * 2}"
    events = {
        (account, region): local.push_event(f"{TENANT_A}/shop", image, account=account, region=region)
        for account in (local.ACCOUNT, other)
        for region in (local.REGION, west)
    }
    messages = [{"MessageId": str(uuid.uuid4()), "Body": json.dumps(e), "ReceiptHandle": "r"} for e in events.values()]
    caplog.set_level(logging.INFO, logger="ninkik_tasks.ingest")
    assert len(poller.handle(messages)) == 4  # all handled: none is left for SQS to redeliver
    assert sorted(started) == sorted([events[local.ACCOUNT, local.REGION]["id"], events[other, west]["id"]])
    assert {(e["reason"], e["error"]) for e in bad.list()} == {
        ("region_not_allowed", f"region {west} is not listed for account {local.ACCOUNT} (its regions: {home})"),
        ("region_not_allowed", f"region {home} is not listed for account {other} (its regions: {west})"),
    }
    lines = [r.getMessage() for r in caplog.records if "region_not_allowed" in r.getMessage()]
    assert len(lines) == 2 and all(r.startswith("quarantined message ") for r in lines), lines
