"""Three AWS accounts in one deployment, each reached through AssumeRole with its own queue and repositories.

On moto, what an assumed role creates lands in the role's account and the base identity sees none of it, so
each account's queue and registry can only be read as that account. moto's STS assumes any role and never lets
a session expire: tests/stsproxy.py, in front of it, refuses a role on demand and shortens each session to
LIFETIME seconds, as AWS would with a trust policy changed and a session's end.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from conftest import TENANT_A, TENANT_B, Stack, celery_worker, guide_policy, ingest, own_broker_db
from prometheus_client.parser import text_string_to_metric_families
from stsproxy import StsProxy

from ninkik_tasks import local
from ninkik_tasks.errors import IDENTITY_UNAVAILABLE
from ninkik_tasks.local import wait_for

ACCOUNTS = ("111111111111", "222222222222", "333333333333")
ACCOUNTS_MD = Path(__file__).resolve().parents[1] / "docs" / "accounts.md"
LIFETIME = 6.0  # seconds each role session lasts (the proxy's doing): renewed several times within a test


def role(account: str) -> str:
    return f"arn:aws:iam::{account}:role/ninkik-tasks"


@dataclass
class Org:
    """The three accounts, their queues, the accounts file, and an ingest and a worker reading them."""

    stack: Stack
    sts: StsProxy
    env: dict[str, str]
    queues: dict[str, str]
    ecr: dict[str, Any]
    sqs: dict[str, Any]
    ingest: local.Proc
    worker: local.Proc
    metrics_url: str
    pushed: dict[str, list[str]] = field(default_factory=dict)  # account -> digests in its registry

    def push(self, account: str, repository: str = f"{TENANT_A}/shop", via: str | None = None) -> str:
        """A new image in the account's registry, scanned, its push event sent to its queue (or `via`'s)."""
        digest = local.push_image(self.ecr[account], repository, uuid.uuid4().hex, f"v-{uuid.uuid4().hex[:6]}")
        self.ecr[account].start_image_scan(repositoryName=repository, imageId={"imageDigest": digest})
        event = local.push_event(repository, digest, account=account)
        sender = via or account
        self.sqs[sender].send_message(QueueUrl=self.queues[sender], MessageBody=json.dumps(event))
        self.pushed.setdefault(account, []).append(digest)
        return digest

    def queues_metric(self, name: str) -> dict[str, float]:
        """account -> the value of ingest's per-queue gauge `name` for that account's queue (/metrics)."""
        text = httpx.get(self.metrics_url, timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    assert sample.labels["queue"] == self.queues[sample.labels["account"]], sample.labels
                    out[sample.labels["account"]] = sample.value
        return out

    def failures_of(self, digest: str) -> list[dict[str, str]]:
        return [f for f in self.stack.failures() if f.get("digest") == digest]

    def check(self, **overrides: str) -> subprocess.CompletedProcess[str]:
        return self.cli("check", **overrides)

    def cli(self, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "NINKIK_TENANT_UUIDS": TENANT_A, **overrides}
        command = [sys.executable, "-m", "ninkik_tasks.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)


def assumed(stack: Stack, account: str) -> boto3.session.Session:
    """A session as the account's role, straight from moto (what its owner would use to set it up)."""
    creds = stack.session.client("sts", endpoint_url=stack.moto_url).assume_role(
        RoleArn=role(account), RoleSessionName="setup"
    )["Credentials"]
    return boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=local.REGION,
    )


@pytest.fixture(scope="module")
def org(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    work = tmp_path_factory.mktemp("org")
    sts = StsProxy(stack.moto_url, lifetime=LIFETIME).start()
    queues, ecr, sqs = {}, {}, {}
    for account in ACCOUNTS:
        session = assumed(stack, account)
        ecr[account] = session.client("ecr", endpoint_url=stack.moto_url)
        sqs[account] = session.client("sqs", endpoint_url=stack.moto_url)
        queues[account] = sqs[account].create_queue(
            QueueName=f"ecr-docker-push-{uuid.uuid4().hex[:8]}",
            Attributes={"MessageRetentionPeriod": "60", "VisibilityTimeout": "5"},
        )["QueueUrl"]
        assert f"/{account}/" in queues[account]
    listed = [
        {
            "id": account,
            "regions": [local.REGION],
            "queues": [queues[account]],
            "role_arn": role(account),
            # The third account's role has no ExternalId (one's own organization): allowed, `check` warns.
            **({"external_id": f"ninkik-{account[:4]}"} if account != ACCOUNTS[2] else {}),
        }
        for account in ACCOUNTS
    ]
    (work / "accounts.json").write_text(json.dumps({"accounts": listed}))
    db = own_broker_db()
    env = stack.env(
        broker_db=db,
        NINKIK_ACCOUNTS_FILE=str(work / "accounts.json"),
        AWS_ENDPOINT_URL_STS=sts.url,
        NINKIK_HEALTH_DIR=str(work / "health"),
        NINKIK_SQS_WAIT_SECONDS="2",
        NINKIK_METRICS_PORT=str(local.free_port()),
    )
    del env["NINKIK_AWS_ACCOUNT_IDS"]
    worker = celery_worker(stack, env, f"org-{db}", concurrency=4, pool="threads")
    proc = ingest(stack, env, None, name="ingest-org", queues=3)
    metrics_url = f"http://127.0.0.1:{env['NINKIK_METRICS_PORT']}/metrics"
    made = Org(stack, sts, env, queues, ecr, sqs, proc, worker, metrics_url)
    try:
        yield made
    finally:
        proc.stop()
        worker.stop()
        sts.stop()


def test_each_accounts_pushes_are_notified_once_through_its_role_renewed_mid_run(org: Org) -> None:
    stack = org.stack
    first = {account: org.push(account) for account in ACCOUNTS}
    wait_for(lambda: all(stack.received_for(d) for d in first.values()), 60, "every account's first push notified")
    sessions = {account: org.sts.count(role(account)) for account in ACCOUNTS}
    # Past the sessions' end: the second pushes are read with sessions renewed meanwhile.
    wait_for(lambda: all(org.sts.count(role(a)) > sessions[a] for a in ACCOUNTS), LIFETIME * 3, "sessions renewed")
    second = {account: org.push(account, f"{TENANT_B}/web") for account in ACCOUNTS}
    wait_for(lambda: all(stack.received_for(d) for d in second.values()), 60, "every account's second push notified")
    for account in ACCOUNTS:
        for digest in (first[account], second[account]):
            received = stack.received_for(digest)
            assert len(received) == 1, (account, digest)
            assert received[0].body["image"]["registry_id"] == account
    assert "Traceback" not in org.ingest.output()
    # Each queue's state and last successful poll, labelled by its account and queue.
    assert org.queues_metric("ninkik_ingest_queue_up") == {account: 1.0 for account in ACCOUNTS}
    polled = org.queues_metric("ninkik_ingest_queue_last_poll_timestamp_seconds")
    assert set(polled) == set(ACCOUNTS) and all(time.time() - at < 30 for at in polled.values()), polled


def test_a_role_refused_mid_run_fails_only_its_own_images_and_names_the_account(org: Org) -> None:
    stack = org.stack
    broken = ACCOUNTS[2]
    org.sts.refused.add(role(broken))
    try:
        # As on AWS, a session handed out before the trust changed works until its end.
        ended = org.sts.expires[role(broken)]
        wait_for(lambda: time.time() > ended, LIFETIME + 5, "the broken account's sessions to end")
        refused_since, assumed_before = time.monotonic(), org.sts.count(role(broken))
        # The broken account's event comes through a working account's queue (a central queue): its chain runs.
        lost = org.push(broken, via=ACCOUNTS[0])
        fine = [org.push(account) for account in ACCOUNTS[:2]]
        wait_for(lambda: all(stack.received_for(d) for d in fine), 60, "the other accounts' pushes notified")
        wait_for(lambda: org.failures_of(lost), 60, "the broken account's image recorded as failed")
        (failure,) = org.failures_of(lost)
        assert failure["reason"] == IDENTITY_UNAVAILABLE and failure["account"] == broken
        assert failure["message"].startswith(f"account {broken}: role {role(broken)} cannot be assumed (AccessDenied")
        assert not stack.received_for(lost)
        # Its own queue cannot be polled now: one line for the outage, the other queues go on, ingest stays ready.
        outage = f"queue {org.queues[broken]} of account {broken}: poll failed"
        wait_for(lambda: outage in org.ingest.output(), 30, "the broken queue's outage logged")
        probe = [sys.executable, "-m", "ninkik_tasks.cli", "health", "ingest", "--ready"]
        ready = subprocess.run(probe, env=org.env, capture_output=True, text=True, timeout=30)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        wait_for(lambda: org.queues_metric("ninkik_ingest_queue_up")[broken] == 0, 30, "the broken queue down")
        polled = org.queues_metric("ninkik_ingest_queue_last_poll_timestamp_seconds")
        late = [org.push(account) for account in ACCOUNTS[:2]]
        wait_for(lambda: all(stack.received_for(d) for d in late), 60, "pushes after the outage began notified")
        assert org.ingest.output().count(outage) == 1
        # The others' last poll goes on; the broken queue's stays at its last success, and says so in /metrics.
        wait_for(
            lambda: all(
                org.queues_metric("ninkik_ingest_queue_last_poll_timestamp_seconds")[a] > polled[a]
                for a in ACCOUNTS[:2]
            ),
            30,
            "the working queues polled again",
        )
        assert org.queues_metric("ninkik_ingest_queue_last_poll_timestamp_seconds")[broken] == polled[broken]
        assert org.queues_metric("ninkik_ingest_queue_up") == {ACCOUNTS[0]: 1.0, ACCOUNTS[1]: 1.0, broken: 0.0}
        # Nothing is retried faster than the backoff: ingest's polls of the refused account's queue at 1, 3, 7, 15 ...
        # s (doubling), the chain once (measured: 4 AssumeRole calls in 6 s), never a tight loop on the role.
        tries, elapsed = org.sts.count(role(broken)) - assumed_before, time.monotonic() - refused_since
        assert tries <= 4 + math.log2(1 + elapsed), (tries, elapsed)
    finally:
        org.sts.refused.discard(role(broken))
    wait_for(lambda: "answer again" in org.ingest.output(), 60, "the broken queue polled again once trusted")


def test_check_gives_one_block_per_account_and_names_a_broken_one(org: Org) -> None:
    done = org.check()
    assert done.returncode == 0, done.stdout + done.stderr
    for account in ACCOUNTS:
        assert f"account {account}: sts:GetCallerIdentity answers {account}" in done.stdout, done.stdout
    warns = [line for line in done.stdout.splitlines() if line.startswith("WARN") and "ExternalId" in line]
    assert len(warns) == 1 and ACCOUNTS[2] in warns[0] and "confused-deputy" in warns[0]
    broken = ACCOUNTS[1]
    org.sts.refused.add(role(broken))
    try:
        done = org.check()
    finally:
        org.sts.refused.discard(role(broken))
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failed and all(broken in line for line in failed), failed
    assert "trust policy" in failed[0]
    for account in (ACCOUNTS[0], ACCOUNTS[2]):  # the others still report
        assert f"account {account}: sts:GetCallerIdentity answers {account}" in done.stdout


def test_backfill_of_one_account_reads_its_registry_alone_and_a_refused_one_does_not_stop_the_others(org: Org) -> None:
    first = ACCOUNTS[0]
    org.push(first)
    done = org.cli("backfill", "--account", first, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(org.pushed[first])} chains started" in done.stdout, (org.pushed, done.stdout)
    unknown = org.cli("backfill", "--account", "444444444444")
    assert unknown.returncode == 2 and "account '444444444444' is not one of the configured accounts" in unknown.stderr
    broken = ACCOUNTS[1]
    org.sts.refused.add(role(broken))
    try:
        ended = org.sts.expires[role(broken)]
        wait_for(lambda: time.time() > ended, LIFETIME + 5, "the broken account's sessions to end")
        done = org.cli("backfill", "--wait")
    finally:
        org.sts.refused.discard(role(broken))
    assert done.returncode == 0, done.stdout + done.stderr
    others = sum(len(org.pushed.get(a, [])) for a in ACCOUNTS if a != broken)
    assert f"{others} chains started" in done.stdout, (org.pushed, done.stdout)
    assert f"not read: registry {broken}/{local.REGION}: account {broken}: role" in done.stdout


def test_the_stacksets_template_of_accounts_md_makes_the_guides_role_trusting_one_identity_with_an_external_id(
    stack: Stack,
) -> None:
    template = re.search(r"```yaml\n(AWSTemplateFormatVersion.*?)```", ACCOUNTS_MD.read_text(), re.S)
    assert template, "no CloudFormation template in docs/accounts.md"
    account = str(random.randrange(10**11, 10**12))  # a member account the StackSet deploys to: a fresh one
    trusted = "arn:aws:iam::166666666666:role/ninkik-tasks-irsa"
    session = assumed(stack, account)
    cfn = session.client("cloudformation", endpoint_url=stack.moto_url)
    parameters = {"TrustedPrincipal": trusted, "ExternalId": "ninkik-7f3a", "TenantUuid": TENANT_A}
    cfn.create_stack(
        StackName="ninkik-tasks",
        TemplateBody=template.group(1),
        Capabilities=["CAPABILITY_NAMED_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    (made,) = cfn.describe_stacks(StackName="ninkik-tasks")["Stacks"]
    assert made["StackStatus"] == "CREATE_COMPLETE", made
    assert made["Outputs"] == [{"OutputKey": "RoleArn", "OutputValue": role(account)}]
    iam = session.client("iam", endpoint_url=stack.moto_url)
    assert iam.get_role(RoleName="ninkik-tasks")["Role"]["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": trusted},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "ninkik-7f3a"}},
        }
    ]
    # The guide's two policies, for the account's every region (the guide's are for eu-central-1).
    for kind in ("ecr", "sqs"):
        guide = json.loads(guide_policy(kind).replace(local.ACCOUNT, account).replace(":eu-central-1:", ":*:"))
        wanted = [{k: v for k, v in statement.items() if k != "Sid"} for statement in guide["Statement"]]
        policy: Any = iam.get_role_policy(RoleName="ninkik-tasks", PolicyName=f"ninkik-{kind}")["PolicyDocument"]
        # moto's server answers a policy that CloudFormation made as the repr of a Python dict (AWS: JSON).
        document = ast.literal_eval(policy) if isinstance(policy, str) else policy
        assert document["Statement"] == wanted, (kind, policy)
