"""Backfill, reconcile, rescan and the beat singleton: on real processes where they can be, Stubber where not.

Real parts: moto's server, redis-server, Celery worker and beat processes, Flower, the ninkik stand-in.
moto answers every ECR list call in one page and pins an image's scan result on its first read, so
pagination and a scan result that changes are played with botocore's Stubber on a real client, with the
real Redis records and the real stand-in behind.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from botocore.utils import parse_timestamp
from celery import Celery
from conftest import TENANT_A, TENANT_B, TOKEN, Stack, celery_worker, ingest
from iamproxy import IamProxy

from ninkik_tasks import local
from ninkik_tasks.backfill import CALLS_PER_IMAGE, Sweep, reconcile, rescan, rescan_pace, watermark_key
from ninkik_tasks.clients import AWS_CONFIG
from ninkik_tasks.config import Settings
from ninkik_tasks.errors import TransientError
from ninkik_tasks.events import ImagePushed
from ninkik_tasks.filters import Filters
from ninkik_tasks.inventory import Inventory, Known, Registry
from ninkik_tasks.listing import HEAD_CALLS, Progress
from ninkik_tasks.local import wait_for
from ninkik_tasks.ratelimit import Pace
from ninkik_tasks.scans import scan_step
from ninkik_tasks.stages import Services, describe_step, match_tenant, notify_step
from ninkik_tasks.tenants import Directory

CONTROL = "ninkik-control"
WEST, NORTH = "eu-west-1", "eu-north-1"  # regions of their own, so sweeps there see only their test's images


def new_tenant(stack: Stack) -> str:
    """A tenant nobody else pushes to, with one product "app", known to the stand-in from now on."""
    tenant = str(uuid.uuid4())
    stack.standin.tenants.append(
        {"uuid": tenant, "name": tenant[:8], "products": [{"uuid": str(uuid.uuid4()), "name": "app"}]}
    )
    return tenant


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def client(env: dict[str, str]) -> Celery:
    """A Celery client on a test's broker and result backend (sends by task name, reads results)."""
    return Celery(broker=env["NINKIK_BROKER_URL"], backend=env["NINKIK_RESULT_BACKEND"])


def logged(proc: local.Proc, *parts: str) -> bool:
    return any(all(p in line for p in parts) for line in proc.output().splitlines())


def once_each(stack: Stack, digests: list[str]) -> bool:
    return all(len(stack.received_for(d)) == 1 for d in digests)


@dataclass
class Scratch:
    """A broker and result backend of our own (a redis-server for this module, not one of the shared DBs),
    for the tests here that need a worker or beat of their own, one test at a time."""

    url: str

    def env(self, stack: Stack, **overrides: str) -> dict[str, str]:
        for number in (0, 1):
            redis.Redis.from_url(f"{self.url}/{number}").flushdb()
        return stack.env(NINKIK_BROKER_URL=f"{self.url}/0", NINKIK_RESULT_BACKEND=f"{self.url}/1", **overrides)


@pytest.fixture(scope="module")
def scratch(stack: Stack) -> Iterator[Scratch]:
    proc, url = local.start_redis(stack.work)
    yield Scratch(url)
    proc.stop()


# 1. The CLI, with --wait


def test_backfill_cli_notifies_one_tenants_images_once(stack: Stack, worker: local.Proc) -> None:
    stack.standin.reset()
    mine, other = new_tenant(stack), new_tenant(stack)
    images = {
        t: [stack.push(f"{t}/app", f"v{i}") for i in range(3)] + [stack.push(f"{t}/app/api", None)]
        for t in (mine, other)
    }
    env = stack.env()
    done = cli(env, "backfill", "--tenant", mine, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    task_id = done.stdout.splitlines()[0]
    assert uuid.UUID(task_id)
    assert "done: 2 repositories, 4 images, 4 chains started" in done.stdout
    wait_for(lambda: once_each(stack, images[mine]), 60, "a notification for every image of the tenant")
    assert all(r.body["source"] == "backfill" and r.tenant == mine for d in images[mine] for r in stack.received_for(d))
    assert not any(stack.received_for(d) for d in images[other])

    # Again: the same chains run, and every report is found already sent.
    again = cli(env, "backfill", "--tenant", mine, "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 chains started" in again.stdout
    wait_for(
        lambda: all(logged(worker, "already_sent", d, "event=backfill:") for d in images[mine]),
        60,
        "the second backfill's chains to end",
    )
    assert once_each(stack, images[mine]) and not any(stack.received_for(d) for d in images[other])


# 2. Flower's REST API and `celery call`


def test_backfill_through_flower_and_celery_call(stack: Stack, worker: local.Proc) -> None:
    stack.standin.reset()
    by_flower, by_call = new_tenant(stack), new_tenant(stack)
    images = {t: [stack.push(f"{t}/app", f"v{i}") for i in range(2)] for t in (by_flower, by_call)}
    env = stack.env(FLOWER_BASIC_AUTH="ops:flower-pw")
    port = local.free_port()
    api, auth = f"http://127.0.0.1:{port}/api", ("ops", "flower-pw")
    flower = local.Proc(
        "flower-backfill",
        [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "flower", "--address=127.0.0.1", f"--port={port}"],
        stack.work,
        env,
    )
    try:
        wait_for(
            lambda: any(name.startswith("shared@") for name in httpx.get(f"{api}/workers", auth=auth).json()),
            60,
            "Flower to answer and know the worker",
        )
        answer = httpx.post(
            f"{api}/task/async-apply/ninkik.backfill", auth=auth, json={"kwargs": {"tenant": by_flower}}
        )
        assert answer.status_code == 200, answer.text
        task_id = answer.json()["task-id"]
        wait_for(lambda: once_each(stack, images[by_flower]), 60, "the notifications of the Flower backfill")
        result = wait_for(
            lambda: (r := httpx.get(f"{api}/task/result/{task_id}", auth=auth).json())["state"] == "SUCCESS" and r,
            30,
            "Flower to show the backfill's result",
        )
        assert result["result"]["chains_started"] == 2 and result["result"]["filters"]["tenant"] == by_flower

        called = subprocess.run(
            [
                *[sys.executable, "-m", "celery", "-A", "ninkik_tasks", "call", "ninkik.backfill"],
                *["--kwargs", json.dumps({"tenant": by_call})],
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert called.returncode == 0, called.stderr
        called_id = called.stdout.strip()
        summary = client(env).AsyncResult(called_id).get(timeout=30)
        assert summary["chains_started"] == 2
        # Routed to the control queue by name, though `celery call` never imports the task.
        info = wait_for(lambda: httpx.get(f"{api}/task/info/{called_id}", auth=auth).json(), 30, "Flower's task info")
        assert info["routing_key"] == CONTROL, info
        wait_for(lambda: once_each(stack, images[by_call]), 60, "the notifications of the `celery call` backfill")
        assert once_each(stack, images[by_flower])
    finally:
        flower.stop()


# 3. Reconcile after an ingest outage


def test_reconcile_catches_pushes_whose_events_were_lost(stack: Stack, scratch: Scratch) -> None:
    stack.standin.reset()
    env = scratch.env(stack, NINKIK_AWS_REGIONS=WEST)
    ecr = stack.session.client("ecr", endpoint_url=stack.moto_url, region_name=WEST)
    proc = celery_worker(stack, env, "reconciler")
    feeder = None
    try:
        # Ingest is down: these pushes' events never reach anyone.
        pushes = []
        for repository, tag in ((f"{TENANT_A}/shop", "r1"), (f"{TENANT_A}/web", None), (f"{TENANT_B}/web/api", "r3")):
            digest = local.push_image(ecr, repository, uuid.uuid4().hex, tag)
            local.set_scan_result(stack.moto_url, ecr, repository, digest, region=WEST)
            pushes.append((repository, digest, tag))
        digests = [d for _, d, _ in pushes]
        key = watermark_key("ninkik", Registry(local.ACCOUNT, WEST))
        assert stack.records.get(key) is None

        summary = client(env).send_task("ninkik.reconcile", queue=CONTROL).get(timeout=30)
        assert summary["chains_started"] == 3
        wait_for(lambda: once_each(stack, digests), 60, "the reconciled images' notifications")
        assert {r.body["source"] for d in digests for r in stack.received_for(d)} == {"reconcile"}
        first_mark = datetime.fromisoformat(stack.records.get(key) or "")

        # The events arrive after all (ingest is back): nothing is notified twice.
        queue_url = stack.new_queue()
        feeder = ingest(stack, env, queue_url, name="ingest-reconcile")
        events = [local.push_event(r, d, t, region=WEST) for r, d, t in pushes]
        for event in events:
            stack.send(queue_url, event)
        wait_for(
            lambda: all(logged(proc, "already_sent", f"event={e['id']}") for e in events), 60, "the late events' chains"
        )
        assert once_each(stack, digests)

        # The next run starts from the watermark and starts nothing it started before.
        again = client(env).send_task("ninkik.reconcile", queue=CONTROL).get(timeout=30)
        assert (again["chains_started"], again["already_started"]) == (0, 3)
        assert datetime.fromisoformat(stack.records.get(key) or "") > first_mark
    finally:
        if feeder:
            feeder.stop()
        proc.stop()


# 4. Two beats


def beat(stack: Stack, env: dict[str, str], name: str) -> local.Proc:
    return local.Proc(
        name, [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "beat", "--loglevel", "INFO"], stack.work, env
    )


def test_two_beats_run_each_reconcile_once(stack: Stack, scratch: Scratch) -> None:
    interval = 2
    env = scratch.env(
        stack,
        NINKIK_AWS_REGIONS=NORTH,
        NINKIK_REDIS_NAMESPACE=f"beat-{uuid.uuid4().hex[:8]}",
        NINKIK_RECONCILE_INTERVAL_SECONDS=str(interval),
    )
    proc = celery_worker(stack, env, "scheduled", concurrency=1)
    beats = [beat(stack, env, "beat-1"), beat(stack, env, "beat-2")]

    def runs() -> list[str]:
        return re.findall(r"Task ninkik\.reconcile\[([0-9a-f-]+)\] received", proc.output())

    def sent(b: local.Proc) -> int:
        return b.output().count("Sending due task reconcile")

    try:
        holder = wait_for(lambda: next((b for b in beats if "Acquired lock" in b.output()), None), 30, "a beat to lead")
        standby = beats[1 - beats.index(holder)]
        began, before = time.monotonic(), len(runs())
        wait_for(lambda: len(runs()) >= before + 5, 30, "five scheduled reconciles")
        elapsed = time.monotonic() - began
        # Two schedulers would give about twice as many runs as the interval allows.
        assert len(runs()) - before <= elapsed / interval + 2, (len(runs()) - before, elapsed)
        assert sent(standby) == 0 and "Acquired lock" not in standby.output()
        assert all(b.alive() for b in beats)

        # The leader stops: the other one takes over, and still runs each reconcile once.
        holder.stop()
        wait_for(lambda: "Acquired lock" in standby.output(), 30, "the standby beat to take over")
        began, before = time.monotonic(), len(runs())
        wait_for(lambda: len(runs()) >= before + 3, 30, "reconciles scheduled by the new leader")
        assert len(runs()) - before <= (time.monotonic() - began) / interval + 2
        assert len(set(runs())) == len(runs())
    finally:
        for b in beats:
            b.stop()
        proc.stop()


# 5. Pagination (Stubber: moto answers in one page)


ACCOUNT, REGION = local.ACCOUNT, local.REGION


def stubbed_ecr() -> Any:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    return session.client("ecr", config=AWS_CONFIG)


def digest_of(n: int | str) -> str:
    return "sha256:" + f"{n}".rjust(64, "0")


def repo_page(names: list[str], token: str | None = None) -> dict[str, Any]:
    page: dict[str, Any] = {
        "repositories": [
            {
                "repositoryName": name,
                "registryId": ACCOUNT,
                "repositoryArn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}",
            }
            for name in names
        ]
    }
    if token:
        page["nextToken"] = token
    return page


def detail(repository: str, digest: str, pushed: datetime, tags: list[str] | None = None, **extra: Any) -> Any:
    return {
        "registryId": ACCOUNT,
        "repositoryName": repository,
        "imageDigest": digest,
        "imageTags": tags or [],
        "imagePushedAt": pushed,
        "imageSizeInBytes": 1234,
        "imageManifestMediaType": "application/vnd.docker.distribution.manifest.v2+json",
        **extra,
    }


def image_page(details: list[Any], token: str | None = None) -> dict[str, Any]:
    return {"imageDetails": details, **({"nextToken": token} if token else {})}


def paged(token: str | None = None, **params: Any) -> dict[str, Any]:
    return {"registryId": ACCOUNT, "maxResults": 1000, **params, **({"nextToken": token} if token else {})}


def test_every_page_of_repositories_and_images_is_read() -> None:
    ecr = stubbed_ecr()
    now = datetime.now(UTC)
    other = str(uuid.uuid4())
    mine = [f"{TENANT_A}/shop", f"{TENANT_A}/web", f"{TENANT_A}/web/api"]
    expected: set[str] = set()
    repository_pages = [
        ([mine[0], "hello-world"], [mine[0]]),
        ([f"{other}/app", mine[1]], [mine[1]]),
        ([mine[2]], [mine[2]]),
    ]
    with Stubber(ecr) as stub:
        # Streaming: each page of repositories is worked through before the next one is asked for. The other
        # tenant's repository and "hello-world" get no DescribeImages: Stubber would refuse the call.
        for n, (names, ours) in enumerate(repository_pages):
            token = f"r{n + 1}" if n + 1 < len(repository_pages) else None
            stub.add_response("describe_repositories", repo_page(names, token), paged(f"r{n}" if n else None))
            for repository in ours:
                r = mine.index(repository)
                pages = 3 if r == 0 else 1
                for p in range(pages):
                    details = [detail(repository, digest_of(f"{r}{p}{i}"), now, [f"t{i}"]) for i in range(4)]
                    if p == 1:  # older than `since`: read, counted, not started
                        details[0]["imagePushedAt"] = now - timedelta(days=40)
                    expected |= {d["imageDigest"] for d in details if d["imagePushedAt"] == now}
                    stub.add_response(
                        "describe_images",
                        image_page(details, f"i{p + 1}" if p + 1 < pages else None),
                        paged(f"i{p}" if p else None, repositoryName=repository),
                    )
        started: list[ImagePushed] = []
        reports: list[dict[str, int]] = []
        sweep = Sweep("backfill", lambda account, region: ecr, started.append, lambda p: reports.append(p.as_dict()), 5)
        counts = sweep.run(Registry(ACCOUNT, REGION), Filters(tenant=TENANT_A, since=now - timedelta(days=30)))
        stub.assert_no_pending_responses()
    assert {e.digest for e in started} == expected and len(started) == len(expected) == 19
    assert counts == Progress(repositories=3, images=20, chains_started=19, other_repositories=1)
    assert all(
        e.source == "backfill" and e.event_id == f"backfill:{ACCOUNT}:{REGION}:{e.repository}@{e.digest}"
        for e in started
    )
    assert started[0].time == now and started[0].tag == "t0"
    # Progress was reported as it went, not only at the end.
    assert len(reports) >= 5 and reports[-1]["chains_started"] <= 19


# Reconcile's watermark and rescan: the domain functions with a stubbed ECR, real Redis and the real stand-in


class StubbedServices(Services):
    """The real services, with the ECR client replaced by a stubbed one."""

    stubbed: Any = None

    def ecr(self, account: str, region: str, rereading: bool = False) -> Any:
        return self.stubbed


@pytest.fixture
def svc(stack: Stack) -> Iterator[StubbedServices]:
    settings = Settings(
        redis_url=f"{stack.redis_url}/2",
        redis_namespace=f"t-{uuid.uuid4().hex[:8]}",
        aws_account_ids=[ACCOUNT],
        aws_regions=[REGION],
        api_url=stack.standin.url,
        api_token=TOKEN,
        reconcile_overlap_seconds=600,
        reconcile_first_lookback_seconds=3600,
        scan_wait_seconds=0,
        http_timeout_seconds=5,
    )
    services = StubbedServices(
        settings, redis.Redis.from_url(settings.redis_url, decode_responses=True), httpx.Client()
    )
    services.stubbed = stubbed_ecr()
    yield services
    services.http.close()


def test_reconcile_reads_from_the_watermark_and_keeps_it_on_failure(svc: StubbedServices) -> None:
    repository = f"{TENANT_A}/shop"
    t0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    key = watermark_key(svc.settings.redis_namespace, Registry(ACCOUNT, REGION))
    images = {
        "too old for the first run": detail(repository, digest_of(1), t0 - timedelta(hours=2)),
        "in the first window": detail(repository, digest_of(2), t0 - timedelta(minutes=30)),
        "in the overlap": detail(repository, digest_of(3), t0 - timedelta(minutes=5)),
        "after the first run": detail(repository, digest_of(4), t0 + timedelta(minutes=3)),
    }
    started: list[ImagePushed] = []

    def run(now: datetime, *, fail: bool = False) -> dict[str, Any]:
        present = [d for d in images.values() if d["imagePushedAt"] <= now]
        with Stubber(svc.stubbed) as stub:
            stub.add_response("describe_repositories", repo_page([repository]), paged())
            if fail:
                stub.add_client_error("describe_images", "ServerException", http_status_code=500)
            else:
                stub.add_response("describe_images", image_page(present), paged(repositoryName=repository))
            return reconcile(svc, started.append, now=now)

    # First run: no watermark, looks back an hour.
    assert run(t0)["chains_started"] == 2
    assert {e.digest for e in started} == {digest_of(2), digest_of(3)}
    assert svc.redis.get(key) == t0.isoformat()
    # ECR fails: the watermark stays where it was, so the next run still covers the gap.
    with pytest.raises(TransientError, match="reconcile failed"):
        run(t0 + timedelta(minutes=5), fail=True)
    assert svc.redis.get(key) == t0.isoformat()
    # Next run: from the watermark minus the 10-minute overlap; what it started before is not started again.
    started.clear()
    summary = run(t0 + timedelta(minutes=10))
    assert [e.digest for e in started] == [digest_of(4)]
    assert (summary["chains_started"], summary["already_started"]) == (1, 1)
    assert summary["registries"][f"{ACCOUNT}:{REGION}"]["since"] == (t0 - timedelta(minutes=10)).isoformat()
    assert svc.redis.get(key) == (t0 + timedelta(minutes=10)).isoformat()


# 6. Rescan: a changed report is sent once, an unchanged one never


def test_rescan_notifies_only_a_changed_report(stack: Stack, svc: StubbedServices) -> None:
    # moto pins an image's scan result on its first read (moto/ecr/models.py, describe_image_scan_findings),
    # so the result that changes between two reads is played by Stubber; the chain's stages, Redis records
    # and ninkik's side (the stand-in) are the real ones.
    repository = f"{TENANT_A}/shop"
    digest, running = "sha256:" + uuid.uuid4().hex * 2, "sha256:" + uuid.uuid4().hex * 2
    pushed = datetime.now(UTC) - timedelta(days=2)
    image = detail(repository, digest, pushed, ["1.0"])
    scanning = detail(repository, running, pushed, ["2.0"], imageScanStatus={"status": "IN_PROGRESS"})
    first = [local.basic_finding("CVE-2026-0001", "HIGH", "openssl", "3.0.1")]
    second = [*first, local.basic_finding("CVE-2026-0002", "CRITICAL", "glibc", "2.36")]

    def chain(event: ImagePushed) -> None:
        scanned = scan_step(svc, describe_step(svc, match_tenant(svc, event)))
        notify_step(svc, scanned, owner=f"test-{uuid.uuid4()}")

    def findings_page(findings: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "registryId": ACCOUNT,
            "repositoryName": repository,
            "imageId": {"imageDigest": digest},
            "imageScanStatus": {"status": "COMPLETE", "description": "done"},
            "imageScanFindings": {"imageScanCompletedAt": datetime.now(UTC), "findings": findings},
        }

    def chain_calls(stub: Stubber, findings: list[dict[str, Any]], *, listed: bool = True) -> None:
        """A chain's calls: a push's describes its image, a rescan's takes it from the rescan's listing."""
        ids = {"registryId": ACCOUNT, "repositoryName": repository}
        if not listed:
            stub.add_response("describe_images", image_page([image]), {**ids, "imageIds": [{"imageDigest": digest}]})
        stub.add_response(
            "describe_image_scan_findings",
            findings_page(findings),
            {**ids, "imageId": {"imageDigest": digest}, "maxResults": 1000},
        )

    def rescan_with(findings: list[dict[str, Any]]) -> dict[str, Any]:
        with Stubber(svc.stubbed) as stub:
            stub.add_response("describe_repositories", repo_page([repository]), paged())
            stub.add_response("describe_images", image_page([image, scanning]), paged(repositoryName=repository))
            # The scan head of the image ninkik has (the listing shows no scan): each result here completed anew,
            # so the chain reads it. The image whose scan is running gets no chain: no calls for it.
            head = {"registryId": ACCOUNT, "repositoryName": repository, "imageId": {"imageDigest": digest}}
            stub.add_response("describe_image_scan_findings", findings_page(findings[:1]), {**head, "maxResults": 1})
            chain_calls(stub, findings)
            summary = rescan(svc, chain)
            stub.assert_no_pending_responses()
        return summary

    # The push itself was notified with the first result.
    with Stubber(svc.stubbed) as stub:
        chain_calls(stub, first, listed=False)
        chain(
            ImagePushed(
                event_id="e1", account=ACCOUNT, region=REGION, repository=repository, digest=digest, time=pushed
            )
        )
    assert [r.body["source"] for r in stack.received_for(digest)] == ["push"]

    assert (summary := rescan_with(first))["chains_started"] == 1 and summary["not_ready"] == 1
    assert len(stack.received_for(digest)) == 1  # unchanged: nothing sent
    rescan_with(second)
    assert [r.body["source"] for r in stack.received_for(digest)] == ["push", "rescan"]
    assert stack.received_for(digest)[-1].body["scan"]["severity_counts"] == {"CRITICAL": 1, "HIGH": 1}
    rescan_with(second)
    assert len(stack.received_for(digest)) == 2 and not stack.received_for(running)


def test_a_rescan_does_not_read_a_basic_scan_the_listing_shows_unchanged(stack: Stack, svc: StubbedServices) -> None:
    """For basic scanning DescribeImages lists each image's scan status and when it completed (its
    imageScanFindingsSummary; AWS's DescribeImages reference). moto lists neither, so that listing is played by
    Stubber: an image with the tags and the completed scan ninkik has costs the rescan no call of its own; a new
    scan, a new tag or an enhanced scan is read again."""
    repository = f"{TENANT_A}/shop"
    digest, enhanced = "sha256:" + uuid.uuid4().hex * 2, "sha256:" + uuid.uuid4().hex * 2
    pushed = datetime.now(UTC) - timedelta(days=2)
    scanned_at = datetime(2026, 11, 30, 8, 0, 1, 250000, tzinfo=UTC)
    ids = {"registryId": ACCOUNT, "repositoryName": repository}
    cve = [local.basic_finding("CVE-2026-0001", "HIGH", "openssl", "3.0.1")]

    def listed(tags: list[str], completed: datetime) -> Any:
        summary = {"imageScanCompletedAt": completed, "findingSeverityCounts": {"HIGH": 1}}
        status = {"status": "COMPLETE", "description": "The scan was completed successfully."}
        return detail(repository, digest, pushed, tags, imageScanStatus=status, imageScanFindingsSummary=summary)

    inspected = detail(repository, enhanced, pushed, ["2.0"], imageScanStatus={"status": "ACTIVE"})

    def chain_calls(stub: Stubber, image: Any, completed: datetime, *, listed: bool = True) -> None:
        """A chain's calls: a push's describes its image, a rescan's takes it from the rescan's listing."""
        if not listed:
            stub.add_response("describe_images", image_page([image]), {**ids, "imageIds": [{"imageDigest": digest}]})
        findings = {
            **ids,
            "imageId": {"imageDigest": digest},
            "imageScanStatus": {"status": "COMPLETE", "description": "done"},
            "imageScanFindings": {"imageScanCompletedAt": completed, "findings": cve},
        }
        expected = {**ids, "imageId": {"imageDigest": digest}, "maxResults": 1000}
        stub.add_response("describe_image_scan_findings", findings, expected)

    def chain(event: ImagePushed) -> None:
        if event.digest == enhanced:
            started.append(event.digest)  # read again every rescan: not this test's chain to run
            return
        notify_step(svc, scan_step(svc, describe_step(svc, match_tenant(svc, event))), owner=f"t-{uuid.uuid4()}")

    def rescan_listing(image: Any, completed: datetime | None = None) -> dict[str, Any]:
        with Stubber(svc.stubbed) as stub:
            stub.add_response("describe_repositories", repo_page([repository]), paged())
            stub.add_response("describe_images", image_page([image, inspected]), paged(repositoryName=repository))
            if completed is not None:
                chain_calls(stub, image, completed)
            summary = rescan(svc, chain)
            stub.assert_no_pending_responses()  # and no call beyond them: Stubber refuses one it was not given
        return summary

    started: list[str] = []
    with Stubber(svc.stubbed) as stub:  # the push
        chain_calls(stub, listed(["1.0"], scanned_at), scanned_at, listed=False)
        chain(
            ImagePushed(event_id="e", account=ACCOUNT, region=REGION, repository=repository, digest=digest, time=pushed)
        )
    assert len(stack.received_for(digest)) == 1

    summary = rescan_listing(listed(["1.0"], scanned_at))  # nothing changed: the listing alone
    assert (summary["unchanged"], summary["chains_started"], started) == (1, 1, [enhanced])
    assert len(stack.received_for(digest)) == 1

    rescanned_at = scanned_at + timedelta(days=1)  # StartImageScan: a new scan, read again (same findings: not sent)
    assert rescan_listing(listed(["1.0"], rescanned_at), rescanned_at)["unchanged"] == 0
    assert len(stack.received_for(digest)) == 1
    assert rescan_listing(listed(["1.0"], rescanned_at))["unchanged"] == 1  # and that read is remembered

    retagged = listed(["1.0", "latest"], rescanned_at)  # a new tag: read, and reported with it
    assert rescan_listing(retagged, rescanned_at)["unchanged"] == 0
    assert stack.received_for(digest)[-1].body["image"]["tags"] == ["1.0", "latest"]
    assert rescan_listing(retagged)["unchanged"] == 1


AWS = Path(__file__).parent / "aws"


def aws_sample(name: str) -> Any:
    """A body AWS published (tests/aws/SOURCES), its timestamps parsed as botocore parses them: Stubber hands
    back what it is given."""

    def parsed(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: parse_timestamp(v) if k in TIMESTAMPS else parsed(v) for k, v in node.items()}
        return [parsed(v) for v in node] if isinstance(node, list) else node

    return parsed(json.loads((AWS / name).read_text()))


TIMESTAMPS = {
    *("imagePushedAt", "imageScanCompletedAt", "vulnerabilitySourceUpdatedAt"),
    *("firstObservedAt", "lastObservedAt", "updatedAt", "pushedAt", "lastInUseAt"),
}


def test_a_rescan_reads_one_small_page_of_a_basic_scan_describe_images_does_not_list(
    stack: Stack, svc: StubbedServices
) -> None:
    """AWS's current basic scanner (AWS_NATIVE) lists no scan in DescribeImages (AWS's sample has no
    imageScanStatus or imageScanFindingsSummary), so a rescan compares the basic scan ninkik has with the first
    page, of one finding, of DescribeImageScanFindings: one call, and no chain while it completed when ninkik's
    report says. ECR is Stubber here: moto keeps an image's first result and allows one scan a day, so a scan
    that completes anew, one running and a registry moved to enhanced scanning cannot be played on it. An
    enhanced image gets no scan head: it is read in full every rescan, as Inspector changes its findings."""
    repository = f"{TENANT_A}/shop"
    basic, enhanced = "sha256:" + uuid.uuid4().hex * 2, "sha256:" + uuid.uuid4().hex * 2
    pushed = datetime.now(UTC) - timedelta(days=2)
    [listed] = aws_sample("images/describe-images-awscli.json")["imageDetails"]
    assert not {"imageScanStatus", "imageScanFindingsSummary"} & set(listed)
    ids = {"registryId": ACCOUNT, "repositoryName": repository}
    images = {d: {**listed, **ids, "imageDigest": d, "imagePushedAt": pushed} for d in (basic, enhanced)}
    first = aws_sample("findings/basic-awscli.json")
    scanned_at = first["imageScanFindings"]["imageScanCompletedAt"]
    inspected = aws_sample("findings/enhanced-api-reference.json")
    calls: list[tuple[str, str, int]] = []  # (operation, digest, maxResults) of every ECR call with an image

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        image = params.get("imageId") or next(iter(params.get("imageIds") or []), None)
        if image:
            calls.append((model.name, image["imageDigest"], params.get("maxResults", 0)))

    svc.stubbed.meta.events.register("before-parameter-build.ecr", record)

    def findings(digest: str, body: Any, **changes: Any) -> Any:
        return {**body, **ids, "imageId": {"imageDigest": digest}, **changes}

    def chain_calls(stub: Stubber, digest: str, body: Any, *, listed: bool = True) -> None:
        """A chain's calls: a push's describes its image, a rescan's takes it from the rescan's listing."""
        image = {"imageDigest": digest}
        if not listed:
            stub.add_response("describe_images", image_page([images[digest]]), {**ids, "imageIds": [image]})
        stub.add_response("describe_image_scan_findings", body, {**ids, "imageId": image, "maxResults": 1000})

    def chain(event: ImagePushed) -> None:
        notify_step(svc, scan_step(svc, describe_step(svc, match_tenant(svc, event))), owner=f"t-{uuid.uuid4()}")

    def rescan_with(head: Any, read: Any = None, *, with_enhanced: bool = False) -> dict[str, Any]:
        """One rescan: the listing, the basic image's scan head (a body, or an error code), its chain's calls if
        `read` is given; with `with_enhanced`, the enhanced image and its chain."""
        listing = [images[basic], images[enhanced]] if with_enhanced else [images[basic]]
        calls.clear()
        with Stubber(svc.stubbed) as stub:
            stub.add_response("describe_repositories", repo_page([repository]), paged())
            stub.add_response("describe_images", image_page(listing), paged(repositoryName=repository))
            one = {**ids, "imageId": {"imageDigest": basic}, "maxResults": 1}
            if isinstance(head, str):
                stub.add_client_error("describe_image_scan_findings", head, http_status_code=500, expected_params=one)
            else:
                stub.add_response("describe_image_scan_findings", head, one)
            if read is not None:
                chain_calls(stub, basic, read)
            if with_enhanced:
                chain_calls(stub, enhanced, findings(enhanced, inspected))
            summary = rescan(svc, chain)
            stub.assert_no_pending_responses()  # and no call beyond them: Stubber refuses one it was not given
        return summary

    with Stubber(svc.stubbed) as stub:  # the pushes
        chain_calls(stub, basic, findings(basic, first), listed=False)
        chain_calls(stub, enhanced, findings(enhanced, inspected), listed=False)
        for digest in (basic, enhanced):
            chain(
                ImagePushed(
                    event_id=digest, account=ACCOUNT, region=REGION, repository=repository, digest=digest, time=pushed
                )
            )
    assert [len(stack.received_for(d)) for d in (basic, enhanced)] == [1, 1]

    # Nothing changed: the basic image costs one call of one finding and no chain; the enhanced one is read.
    summary = rescan_with(findings(basic, first), with_enhanced=True)
    assert (summary["unchanged"], summary["scan_heads"], summary["chains_started"]) == (1, 1, 1)
    assert [c for c in calls if c[1] == basic] == [("DescribeImageScanFindings", basic, 1)]
    assert [c[0] for c in calls if c[1] == enhanced] == ["DescribeImageScanFindings"]  # described by the listing
    assert [len(stack.received_for(d)) for d in (basic, enhanced)] == [1, 1]

    # A new scan (StartImageScan, a day later) with one more finding: read by a chain, sent once.
    scan, cve = first["imageScanFindings"], local.basic_finding("CVE-2026-0002", "CRITICAL", "glibc", "2.36")
    rescanned = {**scan, "imageScanCompletedAt": scanned_at + timedelta(days=1), "findings": [*scan["findings"], cve]}
    second = findings(basic, first, imageScanFindings=rescanned)
    summary = rescan_with(second, second)
    assert (summary["unchanged"], summary["chains_started"]) == (0, 1)
    assert [r.body["source"] for r in stack.received_for(basic)] == ["push", "rescan"]
    assert stack.received_for(basic)[-1].body["scan"]["severity_counts"] == {"CRITICAL": 1, "MEDIUM": 1}
    assert rescan_with(second)["unchanged"] == 1  # and that read is remembered

    # A scan running now: left for the next rescan, nothing read or sent (its wait is long over: a chain
    # would report it NOT_SCANNED).
    running = findings(basic, first, imageScanStatus={"status": "IN_PROGRESS", "description": "scanning"})
    summary = rescan_with(running)
    assert (summary["not_ready"], summary["chains_started"]) == (1, 0)
    # The head not read (ECR failing): the chain reads the scan, with its retries; the same report, not sent.
    summary = rescan_with("ServerException", second)
    assert (summary["scan_heads"], summary["chains_started"]) == (1, 1)
    assert len(stack.received_for(basic)) == 2

    # The registry moved to enhanced scanning: the head shows Inspector's findings, and the chain sends them.
    moved = findings(basic, inspected)
    summary = rescan_with(moved, moved)
    assert (summary["unchanged"], summary["chains_started"]) == (0, 1)
    assert stack.received_for(basic)[-1].body["scan"]["type"] == "ENHANCED"
    assert len(stack.received_for(basic)) == 3 and len(stack.received_for(enhanced)) == 1


def test_a_rescan_spreads_its_chains_over_a_share_of_the_ecr_budget() -> None:
    """The daily rescan makes its ECR calls at a quarter of the region's ECR budget (a chain one: its image comes
    from the rescan's DescribeImages page; a scan head one), not in one burst in front of new pushes; with no
    budget set there is nothing to share and no pace."""
    pace = rescan_pace(Settings(ecr_calls_per_second=20))
    assert pace is not None and pace.interval == pytest.approx(0.2)  # 5 calls a second
    assert rescan_pace(Settings(ecr_calls_per_second=0)) is None
    now, slept = [100.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    paced = Pace(5, clock=lambda: now[0], sleep=sleep)
    for calls in (CALLS_PER_IMAGE, CALLS_PER_IMAGE, HEAD_CALLS, HEAD_CALLS, CALLS_PER_IMAGE):
        paced.wait(calls)
    # The first goes at once; after a chain or a head the next waits 0.2 s (5 a second).
    assert slept == pytest.approx([0.2, 0.2, 0.2, 0.2])


# 7. Bad filters, and Ctrl-C while waiting


def test_bad_filters_are_refused_before_anything_is_queued(stack: Stack, scratch: Scratch, worker: local.Proc) -> None:
    env = scratch.env(stack)  # no worker on this broker: anything queued would stay there
    broker = redis.Redis.from_url(env["NINKIK_BROKER_URL"])
    unknown = str(uuid.uuid4())
    cases = {
        ("--tenant", "acme"): "tenant 'acme' is not a UUID",
        ("--since", "last tuesday"): "since 'last tuesday' is not an ISO-8601 date or time",
        ("--tenant", unknown): f"tenant {unknown} is not known to ninkik",
        ("--repository", "hello-world"): "repository 'hello-world' is not a ninkik repository",
        (
            "--tenant",
            TENANT_A,
            "--repository",
            f"{TENANT_B}/web",
        ): f"belongs to tenant {TENANT_B}, not to tenant {TENANT_A}",
    }
    for args, message in cases.items():
        done = cli(env, "backfill", *args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""
    assert broker.llen(CONTROL) == 0 and broker.dbsize() == 0

    # The same check inside the task, for Flower and `celery call`: the task fails with the reason.
    shared = client(stack.env())
    for kwargs, message in (({"tenant": "acme"}, "is not a UUID"), ({"since": "2026-13-45"}, "not an ISO-8601")):
        result = shared.send_task("ninkik.backfill", kwargs=kwargs, queue=CONTROL)
        with pytest.raises(Exception, match=message):
            result.get(timeout=30)
        assert result.state == "FAILURE"


def test_ctrl_c_stops_waiting_not_the_backfill(stack: Stack, scratch: Scratch) -> None:
    env = scratch.env(stack)  # no worker: the backfill stays queued, and --wait keeps waiting
    waiting = local.Proc(
        "backfill-wait", [sys.executable, "-m", "ninkik_tasks.cli", "backfill", "--wait"], stack.work, env
    )
    try:
        task_id = wait_for(
            lambda: re.search(r"^([0-9a-f-]{36})$", waiting.output(), re.M), 30, "the task id to be printed"
        ).group(1)
        waiting.send(signal.SIGINT)
        assert waiting.popen.wait(15) == 130
        assert f"backfill {task_id} keeps running" in waiting.output()
        queued = redis.Redis.from_url(env["NINKIK_BROKER_URL"]).lrange(CONTROL, 0, -1)
        assert [json.loads(m)["headers"]["id"] for m in queued] == [task_id]
    finally:
        waiting.stop()


# 8. Under the guide's exact policy, as AWS evaluates it (tests/iamproxy.py in front of moto)


@pytest.fixture
def guarded(stack: Stack) -> Iterator[IamProxy]:
    """An IAM layer granting the guide's two policies, the ECR one for TENANT_A and one new tenant per test."""
    proxy = IamProxy(stack.moto_url, tenants={TENANT_A}).start()
    yield proxy
    proxy.stop()


def test_backfill_under_the_guides_policy_names_every_known_repository(
    stack: Stack, scratch: Scratch, guarded: IamProxy
) -> None:
    stack.standin.reset()
    mine, other = new_tenant(stack), new_tenant(stack)
    guarded.tenants.add(mine)
    region = "ap-south-1"  # a region of its own: its repositories are only this test's
    guarded.regions.add(region)
    product = next(t for t in stack.standin.tenants if t["uuid"] == mine)["products"][0]["uuid"]
    ecr = stack.session.client("ecr", endpoint_url=stack.moto_url, region_name=region)

    def push(repository: str, tag: str | None) -> str:
        digest = local.push_image(ecr, repository, uuid.uuid4().hex, tag)
        local.set_scan_result(stack.moto_url, ecr, repository, digest, region=region)
        return digest

    expected = {
        "by product name": push(f"{mine}/app", "1"),
        "by product UUID": push(f"{mine}/{product}", "2"),
        "seen in an event": push(f"{mine}/app/api", None),
        "named by the operator": push(f"{mine}/app/worker", "4"),
    }
    lost = push(f"{mine}/app/batch", "5")  # sub-path, never seen, never named: the accepted limit
    foreign = [push(f"{other}/app", "6"), push(f"{other}/app/api", "7")]
    env = scratch.env(
        stack,
        **guarded.env(),
        NINKIK_AWS_REGIONS=region,
        NINKIK_REDIS_NAMESPACE=f"iam-{uuid.uuid4().hex[:8]}",
        NINKIK_REPOSITORIES=f"{mine}/app/worker",
    )
    proc = celery_worker(stack, env, "guarded")
    queue_url = stack.new_queue()
    feeder = ingest(stack, env, queue_url, name="ingest-guarded")
    try:
        # The push of the sub-path repository arrives: ingest (behind the guide's SQS policy) remembers it.
        stack.send(queue_url, local.push_event(f"{mine}/app/api", expected["seen in an event"], region=region))
        wait_for(lambda: stack.received_for(expected["seen in an event"]), 60, "the pushed image's notification")
        assert wait_for(lambda: guarded.refusals("sqs:DeleteMessage"), 30, "a refused DeleteMessageBatch")
        wait_for(lambda: "sqs:DeleteMessage is not granted" in feeder.output(), 30, "ingest's warning")

        done = cli(env, "backfill", "--tenant", mine, "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "4 repositories, 4 images, 4 chains started" in done.stdout, done.stdout
        assert f"registry not listable ({local.ACCOUNT}/{region})" in done.stdout
        assert "sub-path" in done.stdout and "cannot be found" in done.stdout
        wait_for(lambda: once_each(stack, list(expected.values())), 60, "every known image notified once")
        assert not stack.received_for(lost) and not any(stack.received_for(d) for d in foreign)
        # What AWS refused: the one unfiltered listing, and the deletes; nothing of the other tenant was asked for.
        assert {r.action for r in guarded.refusals()} == {"ecr:DescribeRepositories", "sqs:DeleteMessage"}
        [listing] = guarded.refusals("ecr:DescribeRepositories")
        assert listing.resource == f"arn:aws:ecr:{region}:{local.ACCOUNT}:repository/*"
        assert not {n for n in guarded.repositories_read() if n.startswith(other)}
        assert logged(proc, "sweeps name the repositories they know")

        # The operator names repositories for one backfill; one of them does not exist.
        again = cli(env, "backfill", "--repository", f"{mine}/app/batch", "--repository", f"{mine}/nope", "--wait")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 repositories, 1 images, 1 chains started" in again.stdout, again.stdout
        wait_for(lambda: once_each(stack, [lost]), 60, "the named repository's image")
        summary = client(env).send_task("ninkik.backfill", kwargs={"repository": [f"{mine}/nope"]}, queue=CONTROL)
        assert summary.get(timeout=30)["missing_repositories"] == 1
    finally:
        feeder.stop()
        proc.stop()


def test_reconcile_and_rescan_under_the_guides_policy(stack: Stack, scratch: Scratch, guarded: IamProxy) -> None:
    stack.standin.reset()
    mine = new_tenant(stack)
    guarded.tenants.add(mine)
    region = "ap-southeast-2"
    guarded.regions.add(region)
    ecr = stack.session.client("ecr", endpoint_url=stack.moto_url, region_name=region)
    env = scratch.env(
        stack,
        **guarded.env(),
        NINKIK_AWS_REGIONS=region,
        NINKIK_REDIS_NAMESPACE=f"iam-{uuid.uuid4().hex[:8]}",
        NINKIK_TENANT_UUIDS=mine,
    )
    proc = celery_worker(stack, env, "guarded-sweeps")
    try:
        # Ingest is down: these pushes' events are lost. Both repositories are the product's, by name.
        lost = []
        for tag in ("r1", None):
            digest = local.push_image(ecr, f"{mine}/app", uuid.uuid4().hex, tag)
            local.set_scan_result(stack.moto_url, ecr, f"{mine}/app", digest, region=region)
            lost.append(digest)
        summary = client(env).send_task("ninkik.reconcile", queue=CONTROL).get(timeout=30)
        assert summary["chains_started"] == 2 and summary["by_name"] == [f"{local.ACCOUNT}/{region}"]
        assert "cannot be found" in summary["limit"] and summary["unreachable"] == []
        wait_for(lambda: once_each(stack, lost), 60, "the reconciled images' notifications")
        assert {r.body["source"] for d in lost for r in stack.received_for(d)} == {"reconcile"}
        wait_for(lambda: all(logged(proc, "notified", d) for d in lost), 30, "the notify steps to end")

        # moto's DescribeImages lists no scan, as AWS's basic scanner (AWS_NATIVE) does not: each image's scan is
        # compared by one small DescribeImageScanFindings page (the guide grants it), and nothing changed.
        rescanned = client(env).send_task("ninkik.rescan", queue=CONTROL).get(timeout=30)
        assert (rescanned["scan_heads"], rescanned["unchanged"], rescanned["chains_started"]) == (2, 2, 0)
        assert rescanned["by_name"] and once_each(stack, lost)

        # One of them deleted with no event: the lifecycle sweep finds it under the same policy (DescribeImages
        # of a tenant's repository, every image status) and ninkik is told to remove it.
        ecr.batch_delete_image(repositoryName=f"{mine}/app", imageIds=[{"imageDigest": lost[0]}])
        swept = client(env).send_task("ninkik.lifecycle", queue=CONTROL).get(timeout=30)
        assert (swept["repositories"], swept["images"], swept["gone"], swept["unreachable"]) == (1, 2, 1, [])
        wait_for(lambda: [r.digest for r in stack.standin.removed] == [lost[0]], 60, "the swept image's removal")
        assert {r.action for r in guarded.refusals()} == {"ecr:DescribeRepositories"}
    finally:
        proc.stop()


def test_a_policy_that_allows_the_listing_is_used(stack: Stack, scratch: Scratch, guarded: IamProxy) -> None:
    stack.standin.reset()
    mine = new_tenant(stack)
    guarded.tenants.add(mine)
    guarded.list_registry = True
    region = "ca-central-1"
    guarded.regions.add(region)
    ecr = stack.session.client("ecr", endpoint_url=stack.moto_url, region_name=region)
    digest = local.push_image(ecr, f"{mine}/app/never-seen", uuid.uuid4().hex, "1")
    local.set_scan_result(stack.moto_url, ecr, f"{mine}/app/never-seen", digest, region=region)
    env = scratch.env(stack, **guarded.env(), NINKIK_AWS_REGIONS=region)
    proc = celery_worker(stack, env, "listing")
    try:
        done = cli(env, "backfill", "--tenant", mine, "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 chains started" in done.stdout and "not listable" not in done.stdout
        wait_for(lambda: once_each(stack, [digest]), 60, "the listed image's notification")
        assert not guarded.refusals()
    finally:
        proc.stop()


def test_the_iam_layer_refuses_what_aws_refuses(stack: Stack, guarded: IamProxy) -> None:
    stack.push(f"{TENANT_A}/shop", "iam")
    stack.push(f"{TENANT_B}/web", "iam")
    ecr = stack.session.client("ecr", endpoint_url=guarded.url)
    sqs = stack.session.client("sqs", endpoint_url=guarded.url)
    with pytest.raises(ClientError) as listing:
        ecr.describe_repositories()
    assert listing.value.response["Error"]["Code"] == "AccessDeniedException"
    assert listing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert listing.value.response["Error"]["Message"] == (
        f"User: arn:aws:iam::{local.ACCOUNT}:user/ninkik is not authorized to perform: ecr:DescribeRepositories "
        f"on resource: arn:aws:ecr:{local.REGION}:{local.ACCOUNT}:repository/* because no identity-based policy "
        "allows the ecr:DescribeRepositories action"
    )
    assert ecr.describe_repositories(repositoryNames=[f"{TENANT_A}/shop"])["repositories"]
    assert ecr.describe_images(repositoryName=f"{TENANT_A}/shop")["imageDetails"]
    for call in (
        lambda: ecr.describe_images(repositoryName=f"{TENANT_B}/web"),
        lambda: ecr.describe_repositories(repositoryNames=[f"{TENANT_A}/shop", f"{TENANT_B}/web"]),
        lambda: ecr.batch_get_image(repositoryName=f"{TENANT_A}/shop", imageIds=[{"imageTag": "iam"}]),
        lambda: stack.session.client("ecr", endpoint_url=guarded.url, region_name=WEST).describe_images(
            repositoryName=f"{TENANT_A}/shop"
        ),
    ):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    queue_url = stack.new_queue()
    assert sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    for call in (
        lambda: sqs.delete_message_batch(QueueUrl=queue_url, Entries=[{"Id": "0", "ReceiptHandle": "x"}]),
        lambda: sqs.send_message(QueueUrl=queue_url, MessageBody="{}"),
    ):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"  # from x-amzn-query-error
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert [r.action for r in guarded.refusals()][-2:] == ["sqs:DeleteMessage", "sqs:SendMessage"]


def test_names_come_from_products_events_and_the_operator_for_known_tenants_only(stack: Stack) -> None:
    namespace = f"known-{uuid.uuid4().hex[:8]}"
    mine, unknown = new_tenant(stack), str(uuid.uuid4())
    product = next(t for t in stack.standin.tenants if t["uuid"] == mine)["products"][0]["uuid"]
    records = redis.Redis.from_url(f"{stack.redis_url}/2", decode_responses=True)
    inventory = Inventory(records, namespace)
    registry = Registry(ACCOUNT, REGION)
    # What ingest remembers: a sub-path repository of `mine`, one of a tenant ninkik does not know, and a
    # repository that is not a ninkik one at all (never remembered).
    inventory.remember(
        [(ACCOUNT, REGION, f"{mine}/app/api"), (ACCOUNT, REGION, f"{unknown}/app"), (ACCOUNT, REGION, "hello-world")]
    )
    with httpx.Client() as http:
        directory = Directory(records, namespace, http=http, api_url=stack.standin.url, token=TOKEN)
        known = Known(inventory, lambda: directory, tenants=set(), named=(f"{mine}/app/worker",))
        assert known.all_tenants() == {mine, unknown}
        assert known.names(registry, mine) == sorted(
            [f"{mine}/app", f"{mine}/{product}", f"{mine}/app/api", f"{mine}/app/worker"]
        )
        assert known.names(registry, unknown) == []  # no AWS call for a tenant ninkik does not know
    assert inventory.known(ACCOUNT, REGION) == {f"{mine}/app/api", f"{unknown}/app"}
    inventory.forget(ACCOUNT, REGION, f"{unknown}/app")
    assert inventory.known(ACCOUNT, REGION) == {f"{mine}/app/api"}
