"""Finding events refresh the report (freshness.py), and when each kind of event was last seen.

On the real stack: redis-server, moto behind tests/faultproxy.py, a real worker and a real ingest. moto keeps the
first scan result it served for an image, while Amazon Inspector changes an image's findings as its database
changes: the proxy answers DescribeImageScanFindings with the changed findings (`FaultProxy.findings`), as
Inspector would after the change its "Inspector2 Finding" events announce.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import TENANT_A, Stack, celery_worker, ingest, own_broker_db
from faultproxy import FaultProxy
from test_events import live

from ninkik_tasks import local
from ninkik_tasks.events import FindingChanged
from ninkik_tasks.freshness import INSPECTOR_FINDING, PUSH, LastSeen, Refreshes
from ninkik_tasks.indexes import Claims
from ninkik_tasks.local import oci, wait_for
from ninkik_tasks.scanwait import ScanWaits, member

REPOSITORY = f"{TENANT_A}/shop"
WINDOW = 2.0  # NINKIK_FINDING_REFRESH_SECONDS here (10 by default)
# AWS's samples (2021: the ECR guide's; 2024: the Inspector guide's current shape), identifiers replaced by the
# emulated image's.
SAMPLE, CURRENT = "inspector2-finding.json", "inspector2-finding-2024.json"


@dataclass
class Lane:
    """A worker and an ingest of their own, ECR read through the proxy."""

    stack: Stack
    proxy: FaultProxy
    queue_url: str
    worker: local.Proc
    feeder: local.Proc

    def send(self, body: dict[str, Any]) -> None:
        self.stack.send(self.queue_url, body)

    def refreshes(self, digest: str) -> list[str]:
        """The event ids whose finding refresh of `digest` ingest started."""
        return re.findall(rf"finding refresh in \S+ repository=\S+ digest={digest} event=(\S+) ", self.feeder.output())

    def finished(self, event_id: str) -> bool:
        """Whether the chain of `event_id` reached its report step's outcome (sent, or found already sent)."""
        outcomes = ("notified (", "already_sent (", "already_had_it (")
        return any(
            f"event={event_id} " in line and any(o in line for o in outcomes)
            for line in self.worker.output().splitlines()
        )


@pytest.fixture(scope="module")
def lane(stack: Stack) -> Iterator[Lane]:
    proxy = FaultProxy(stack.moto_url).start()
    env = stack.env(
        broker_db=own_broker_db(), AWS_ENDPOINT_URL_ECR=proxy.url, NINKIK_FINDING_REFRESH_SECONDS=str(WINDOW)
    )
    queue_url = stack.new_queue()
    worker = celery_worker(stack, env, "freshness")
    feeder = ingest(stack, env, queue_url, name="ingest-freshness")
    yield Lane(stack, proxy, queue_url, worker, feeder)
    feeder.stop()
    worker.stop()
    proxy.stop()


def inspected(repository: str, digest: str, findings: list[dict[str, Any]]) -> dict[str, Any]:
    """DescribeImageScanFindings of an image under enhanced (continuous) scanning."""
    return {
        "registryId": local.ACCOUNT,
        "repositoryName": repository,
        "imageId": {"imageDigest": digest},
        "imageScanStatus": {"status": "ACTIVE", "description": "Continuous scan is selected for image."},
        "imageScanFindings": {"enhancedFindings": findings},
    }


def finding_event(repository: str, digest: str, status: str = "ACTIVE", sample: str = SAMPLE) -> dict[str, Any]:
    event = live(sample, repository, digest)
    event["detail"]["status"] = status
    return event


OPENSSL = local.enhanced_finding("CVE-2026-1001", "HIGH", "openssl", "3.0.1", "3.0.2")
GLIBC = local.enhanced_finding("CVE-2026-1002", "CRITICAL", "glibc", "2.36", "2.37")


def test_a_burst_of_finding_events_gives_one_report_from_one_read(lane: Lane) -> None:
    """10 events for one image within a second: one new report, at most 2 DescribeImageScanFindings for it; then
    an event that changes nothing (a tag, a resource update) is read and sends nothing."""
    stack, proxy = lane.stack, lane.proxy
    digest = stack.push(REPOSITORY, "inspected", enhanced=[OPENSSL], status="ACTIVE")
    lane.send(local.push_event(REPOSITORY, digest, "inspected"))
    wait_for(lambda: stack.received_for(digest), 30, "the push's report")

    proxy.findings[digest] = inspected(REPOSITORY, digest, [OPENSSL, GLIBC])  # Inspector finds a new CVE ...
    before = proxy.reads(digest)
    began = time.monotonic()
    statuses = ["ACTIVE"] * 8 + ["SUPPRESSED", "CLOSED"]
    burst = [finding_event(REPOSITORY, digest, s, (SAMPLE, CURRENT)[i % 2]) for i, s in enumerate(statuses)]
    for event in burst:  # ... and sends one event per finding of the image
        lane.send(event)
    assert time.monotonic() - began < 1.0
    wait_for(lambda: len(stack.received_for(digest)) >= 2, 30, "the refreshed report")
    latency = time.monotonic() - began
    ids = [e["id"] for e in burst]
    wait_for(lambda: all(stack.records.exists(f"ninkik:event:{i}") for i in ids), 10, "every event handled")
    started = lane.refreshes(digest)
    wait_for(lambda: all(lane.finished(e) for e in started), 30, "every refresh chain to finish")
    reports = stack.received_for(digest)
    assert len(reports) == 2, [r.body["source"] for r in reports]
    body = reports[1].body
    assert body["source"] == "rescan"
    assert sorted(f["id"] for f in body["scan"]["findings"]) == ["CVE-2026-1001", "CVE-2026-1002"]
    assert 1 <= len(started) <= 2 and proxy.reads(digest) - before <= 2, (started, proxy.reads(digest) - before)
    assert WINDOW <= latency < WINDOW + 10, latency

    unchanged = finding_event(REPOSITORY, digest)  # Inspector updates a finding's resource: the findings stay
    lane.send(unchanged)
    wait_for(lambda: lane.finished(unchanged["id"]), 30, "the unchanged refresh's chain")
    assert len(stack.received_for(digest)) == 2
    seen = LastSeen(stack.records, "ninkik").get(local.ACCOUNT, local.REGION)
    assert {PUSH, INSPECTOR_FINDING} <= set(seen) and time.time() - seen[INSPECTOR_FINDING] < 60


def test_a_platforms_finding_event_refreshes_its_indexs_report(lane: Lane) -> None:
    """A platform manifest's findings are in its index's report: its finding event refreshes that report (the
    claims say which index lists it), never a report of the platform's own."""
    stack, proxy = lane.stack, lane.proxy
    repository = f"{TENANT_A}/web"
    made = oci.push_build(stack.ecr, repository, uuid.uuid4().hex, ("linux/amd64", "linux/arm64/v8"), "2.0.0")
    for digest in made.platforms.values():
        local.set_scan_result(stack.moto_url, stack.ecr, repository, digest, enhanced=[OPENSSL], status="ACTIVE")
    index = local.push_event(
        repository, made.index, "2.0.0", manifest_media_type=oci.OCI_INDEX, artifact_media_type=None
    )
    lane.send(index)
    wait_for(lambda: stack.received_for(made.index), 30, "the index's report")
    arm = made.platforms["linux/arm64/v8"]
    proxy.findings[arm] = inspected(repository, arm, [OPENSSL, GLIBC])
    event = finding_event(repository, arm, sample=CURRENT)
    lane.send(event)
    wait_for(lambda: len(stack.received_for(made.index)) == 2, 30, "the index's refreshed report")
    body = stack.received_for(made.index)[1].body
    assert body["source"] == "rescan"
    where = {f["id"]: f["platforms"] for f in body["scan"]["findings"]}
    assert where == {"CVE-2026-1001": ["linux/amd64", "linux/arm64/v8"], "CVE-2026-1002": ["linux/arm64/v8"]}
    assert lane.refreshes(made.index) == [event["id"]] and not lane.refreshes(arm)
    assert not stack.received_for(arm)


def test_a_finding_event_of_no_tenants_repository_makes_no_ecr_call(lane: Lane) -> None:
    stack, proxy = lane.stack, lane.proxy
    other = stack.push("other-team/app", "x", enhanced=[OPENSSL], status="ACTIVE")  # Inspector scans it too
    unknown = f"{uuid.uuid4()}/shop"  # a tenant's format, a tenant ninkik does not know
    stranger = stack.push(unknown, "y", enhanced=[OPENSSL], status="ACTIVE")
    lane.send(finding_event("other-team/app", other))
    lane.send(finding_event(unknown, stranger))
    wait_for(lambda: "not acted on (repository_format)" in lane.feeder.output(), 20, "ingest to drop the first")
    wait_for(
        lambda: any(f.get("digest") == stranger and f["reason"] == "unknown_tenant" for f in stack.failures()),
        30,
        "the second's chain to end as unknown_tenant",
    )
    assert not lane.refreshes(other)
    assert not proxy.named({"other-team/app", unknown})  # the pushes above went to moto directly


# The routing on redis-server alone (no processes): coalescing, redeliveries, indexes, waits.


def _routing(stack: Stack) -> tuple[Refreshes, Claims, ScanWaits]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    r = stack.records
    return Refreshes(r, namespace, window=30), Claims(r, namespace), ScanWaits(r, namespace, 5, 20)


def _event(digest: str, repository: str = REPOSITORY) -> FindingChanged:
    from datetime import UTC, datetime

    return FindingChanged(
        event_id=str(uuid.uuid4()),
        account=local.ACCOUNT,
        region=local.REGION,
        repository=repository,
        digest=digest,
        status="ACTIVE",
        event_account=local.ACCOUNT,
        time=datetime.now(UTC),
    )


def test_an_images_events_in_one_window_start_one_refresh_and_a_redelivery_restarts_it(stack: Stack) -> None:
    refreshes, claims, waits = _routing(stack)
    digest = "sha256:" + "1" * 64
    events = [_event(digest) for _ in range(10)]
    routed = refreshes.route(events, claims, waits)
    assert [c.event_id for c in routed.chains] == [events[0].event_id] and routed.absorbed == 9
    assert routed.chains[0].source == "rescan" and routed.chains[0].finding_refresh
    # Ingest died after the claim, before marking the event: its redelivery starts the refresh again.
    assert len(refreshes.route([events[0]], claims, waits).chains) == 1
    assert not refreshes.route([events[1]], claims, waits).chains


def test_a_platform_listed_by_two_indexes_refreshes_both(stack: Stack) -> None:
    refreshes, claims, waits = _routing(stack)
    platform, first, second = ("sha256:" + c * 64 for c in "abc")
    for index in (first, second):
        claims.claim(local.REGION, local.ACCOUNT, REPOSITORY, [platform], index, 600)
    routed = refreshes.route([_event(platform)], claims, waits)
    assert sorted(c.digest for c in routed.chains) == [first, second]
    assert len({c.event_id for c in routed.chains}) == 2  # each its own chain, none dropped as a duplicate


def test_no_refresh_for_an_image_waiting_for_its_scan_or_of_no_tenant(stack: Stack) -> None:
    refreshes, claims, waits = _routing(stack)
    waiting = "sha256:" + "d" * 64
    waits.next_read(local.REGION, member(local.ACCOUNT, REPOSITORY, waiting))
    routed = refreshes.route([_event(waiting), _event("sha256:" + "e" * 64, "other-team/app")], claims, waits)
    assert not routed.chains and routed.skipped == 2


def test_check_prints_when_each_kind_of_event_was_last_seen(stack: Stack) -> None:
    """A fact per account and region, not a FAIL: it shows an operator whether each EventBridge rule works."""
    from ninkik_tasks.check import events_seen
    from ninkik_tasks.config import Settings
    from ninkik_tasks.events import ImagePushed

    namespace = f"t-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=f"{stack.redis_url}/2",
        redis_namespace=namespace,
        aws_account_ids=[local.ACCOUNT],
        aws_regions=[local.REGION],
    )
    finding = _event("sha256:" + "f" * 64)
    pushed = ImagePushed(
        event_id="p",
        account=local.ACCOUNT,
        region=local.REGION,
        repository=REPOSITORY,
        digest=finding.digest,
        time=finding.time,
    )
    deleted = pushed.model_copy(update={"event_id": "d", "source": "lifecycle", "change": "deleted"})
    LastSeen(stack.records, namespace).record([pushed], now=time.time() - 3 * 3600)
    LastSeen(stack.records, namespace).record([finding], now=time.time() - 30)
    LastSeen(stack.records, namespace).record([deleted], now=time.time() - 600)
    [line] = list(events_seen(settings))
    assert line.level == "INFO" and line.what == "events"
    assert line.message == (
        f"{local.ACCOUNT}/{local.REGION} last seen by ingest: push 3 h ago, image_scan never, inspector2_scan never, "
        "inspector2_finding 30 s ago, delete 10 min ago, update_storage_class never"
    )
