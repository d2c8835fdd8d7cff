"""Multi-platform builds, attestations and OCI artifacts, end to end on moto, real workers and the stand-in.

moto (5.2.5) stores OCI indexes and Docker manifest lists as pushed, reports imageManifestMediaType and returns
the index from BatchGetImage; platform findings go in through its scan-findings API. Without BatchGetImage the
IAM layer (tests/iamproxy.py) refuses it as AWS does under the setup guide's policy.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from conftest import PRODUCT_A2, TENANT_A, TOKEN, Stack, celery_worker, ingest, own_broker_db
from faultproxy import FaultProxy
from iamproxy import IamProxy

from ninkik_tasks import backfill as sweeps
from ninkik_tasks import local, scans, scanwait
from ninkik_tasks.artifacts import not_an_image
from ninkik_tasks.config import Settings
from ninkik_tasks.errors import PermanentError, ScanNotReady
from ninkik_tasks.events import ImagePushed
from ninkik_tasks.filters import Filters
from ninkik_tasks.findings import Finding, Image, Report, Scan
from ninkik_tasks.indexes import Platform, merge, platforms_of
from ninkik_tasks.local import oci, wait_for
from ninkik_tasks.notify import render
from ninkik_tasks.ratelimit import RateLimited
from ninkik_tasks.scans import scan_step, waiting_as
from ninkik_tasks.stages import Services, describe_step, match_tenant, notify_step

REPOSITORY = f"{TENANT_A}/web"
HOLD = "10"  # seconds an untagged image waits for an index (the events of one build arrive within a second)
REPORT_BODY = "/tmp/h12-two-platform-body.json"  # the two-platform report body, for the closing note


@dataclass
class Lane:
    """A worker and an ingest of their own (hold on), feeding the shared stand-in."""

    stack: Stack
    queue_url: str
    worker: local.Proc

    def send(self, body: dict[str, Any]) -> None:
        self.stack.send(self.queue_url, body)


def _start(stack: Stack, name: str, **env: str) -> tuple[local.Proc, local.Proc, str]:
    environment = stack.env(broker_db=own_broker_db(), NINKIK_UNTAGGED_HOLD_SECONDS=HOLD, **env)
    queue_url = stack.new_queue()
    worker = celery_worker(stack, environment, name)
    feeder = ingest(stack, environment, queue_url, name=f"ingest-{name}")
    return worker, feeder, queue_url


@pytest.fixture(scope="module")
def lane(stack: Stack) -> Iterator[Lane]:
    worker, feeder, queue_url = _start(stack, "indexes")
    yield Lane(stack, queue_url, worker)
    feeder.stop()
    worker.stop()


FINDINGS = {
    "linux/amd64": [
        local.basic_finding("CVE-2026-0001", "HIGH", "openssl", "3.0.1"),
        local.basic_finding("CVE-2026-0002", "LOW", "zlib", "1.2.11"),
    ],
    "linux/arm64/v8": [
        local.basic_finding("CVE-2026-0001", "HIGH", "openssl", "3.0.1"),  # the same finding on both platforms
        local.basic_finding("CVE-2026-0003", "MEDIUM", "libatomic", "12.2"),
    ],
}


def build(stack: Stack, platforms: tuple[str, ...], tag: str, **kwargs: Any) -> oci.Build:
    """Push a buildx build to moto; each platform scanned with FINDINGS, each attestation UNSUPPORTED_IMAGE."""
    made = oci.push_build(stack.ecr, REPOSITORY, uuid.uuid4().hex, platforms, tag, **kwargs)
    for label, digest in made.platforms.items():
        local.set_scan_result(stack.moto_url, stack.ecr, REPOSITORY, digest, findings=FINDINGS.get(label, []))
    for digest in made.attestations.values():
        local.set_scan_result(stack.moto_url, stack.ecr, REPOSITORY, digest, status="UNSUPPORTED_IMAGE")
    return made


def events(made: oci.Build, tag: str, media_type: str = oci.OCI_INDEX) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The push events ECR sends for a build: one per manifest (untagged), then the index's."""
    manifests = [local.push_event(REPOSITORY, d) for d in made.platforms.values()]
    manifests += [
        local.push_event(REPOSITORY, d, manifest_media_type=oci.OCI_MANIFEST, artifact_media_type=oci.OCI_CONFIG)
        for d in made.attestations.values()
    ]
    index = local.push_event(REPOSITORY, made.index, tag, manifest_media_type=media_type, artifact_media_type=None)
    return manifests, index


def unreported(made: oci.Build) -> dict[str, str]:
    """What each manifest's chain should end with: a platform's in_index; an attestation's either (its scan is
    UNSUPPORTED_IMAGE: when read before the index claimed it, likely_attestation)."""
    return {
        **{d: "in_index" for d in made.platforms.values()},
        **{d: "attestation" for d in made.attestations.values()},
    }


def ended(stack: Stack, made: oci.Build, worker: local.Proc) -> dict[str, str]:
    """How each manifest's chain ended: in_index (logged, not in the failures journal: nothing for an operator
    to do) or a recorded reason; an attestation's in_index or likely_attestation read as "attestation"."""
    reasons = skipped(stack, made.manifests())
    for line in worker.output().splitlines():
        if "ended the chain (in_index:" in line:
            reasons.update({d: "in_index" for d in made.manifests() if f"digest={d}" in line})
    return {
        d: "attestation" if d in made.attestations.values() and r in ("in_index", "likely_attestation") else r
        for d, r in reasons.items()
    }


def skipped(stack: Stack, digests: list[str]) -> dict[str, str]:
    """digest -> the reason its chain ended without a report."""
    return {f["digest"]: f["reason"] for f in stack.failures() if f.get("digest") in digests}


def posts_for(stack: Stack, digests: list[str]) -> list[str]:
    """Every digest ninkik received a report for, among `digests` (a digest twice: reported twice)."""
    return [r.body["image"]["digest"] for r in stack.standin.received if r.body["image"]["digest"] in digests]


def test_a_two_platform_build_is_one_report_with_both_platforms(lane: Lane) -> None:
    stack = lane.stack
    made = build(stack, ("linux/amd64", "linux/arm64/v8"), "1.4.2")
    manifests, index = events(made, "1.4.2")
    for event in [*manifests, index]:  # the order ECR sends them in: the manifests just before the index
        lane.send(event)
    wait_for(lambda: stack.received_for(made.index), 60, "the index's report")
    expected = unreported(made)
    wait_for(lambda: ended(stack, made, lane.worker) == expected, 60, "every manifest's chain to end unreported")
    assert posts_for(stack, [made.index, *made.manifests()]) == [made.index]
    [received] = stack.received_for(made.index)
    assert received.product == PRODUCT_A2
    body = received.body
    with open(REPORT_BODY, "w") as out:
        json.dump(body, out, indent=2)
    assert body["image"]["tags"] == ["1.4.2"]
    assert body["image"]["manifest_media_type"] == oci.OCI_INDEX
    platforms = {p["platform"]: p for p in body["index"]["platforms"]}
    assert set(platforms) == {"linux/amd64", "linux/arm64/v8"}  # the attestations left out
    assert platforms["linux/arm64/v8"]["digest"] == made.platforms["linux/arm64/v8"]
    assert (platforms["linux/arm64/v8"]["os"], platforms["linux/arm64/v8"]["variant"]) == ("linux", "v8")
    assert all(p["scan_status"] == "COMPLETE" for p in platforms.values())
    assert platforms["linux/amd64"]["severity_counts"] == {"HIGH": 1, "LOW": 1}
    scan = body["scan"]
    assert (scan["type"], scan["status"]) == ("BASIC", "COMPLETE")
    assert scan["severity_counts"] == {"HIGH": 1, "MEDIUM": 1, "LOW": 1}  # distinct findings of all platforms
    where = {f["id"]: f["platforms"] for f in scan["findings"]}
    assert where == {
        "CVE-2026-0001": ["linux/amd64", "linux/arm64/v8"],
        "CVE-2026-0002": ["linux/amd64"],
        "CVE-2026-0003": ["linux/arm64/v8"],
    }


def test_a_deleted_index_is_removed_and_its_platforms_follow_describe_images(lane: Lane) -> None:
    # The index goes (by its tag: ECR sends a DELETE naming the index's digest); its platform manifests stay in
    # the repository, untagged. ninkik had the index's report alone (the platforms were in it): it is removed,
    # and the platforms, which DescribeImages still lists, are not reported on their own.
    stack = lane.stack
    made = build(stack, ("linux/amd64", "linux/arm64/v8"), "2.0.0")
    manifests, index = events(made, "2.0.0")
    for event in [*manifests, index]:
        lane.send(event)
    wait_for(lambda: stack.received_for(made.index), 60, "the index's report")
    wait_for(lambda: ended(stack, made, lane.worker) == unreported(made), 60, "every manifest's chain to end")
    stack.ecr.batch_delete_image(repositoryName=REPOSITORY, imageIds=[{"imageTag": "2.0.0"}])
    deleted = local.push_event(REPOSITORY, made.index, "2.0.0", manifest_media_type=oci.OCI_INDEX)
    deleted["detail"]["action-type"] = "DELETE"
    lane.send(deleted)
    wait_for(lambda: [r.status for r in stack.standin.removed if r.digest == made.index] == [204], 60, "the DELETE")
    assert stack.standin.holds(made.index) is None
    left = stack.ecr.describe_images(
        repositoryName=REPOSITORY, imageIds=[{"imageDigest": d} for d in made.platforms.values()]
    )
    assert len(left["imageDetails"]) == 2  # the platforms are still there
    assert posts_for(stack, list(made.platforms.values())) == []
    assert not [r for r in stack.standin.removed if r.digest in made.platforms.values()]


def test_the_index_event_first_and_a_single_platform_build_with_its_attestation(lane: Lane) -> None:
    stack = lane.stack
    made = build(stack, ("linux/amd64",), "2.0.0", media_type=oci.DOCKER_LIST)
    manifests, index = events(made, "2.0.0", oci.DOCKER_LIST)
    lane.send(index)
    wait_for(lambda: stack.received_for(made.index), 60, "the index's report")
    for event in manifests:  # late: their index has claimed them already
        lane.send(event)
    expected = unreported(made)
    wait_for(lambda: ended(stack, made, lane.worker) == expected, 60, "every manifest's chain to end unreported")
    assert posts_for(stack, [made.index, *made.manifests()]) == [made.index]
    body = stack.received_for(made.index)[0].body
    assert [p["platform"] for p in body["index"]["platforms"]] == ["linux/amd64"]
    assert body["scan"]["severity_counts"] == {"HIGH": 1, "LOW": 1}


def test_a_plain_push_and_an_untagged_image_of_no_index_are_reported_on_their_own(lane: Lane) -> None:
    stack = lane.stack
    plain = stack.push(REPOSITORY, "plain", findings=FINDINGS["linux/amd64"])
    alone = stack.push(REPOSITORY, None, findings=FINDINGS["linux/arm64/v8"])  # pushed by digest, no index
    lane.send(local.push_event(REPOSITORY, plain, "plain"))
    lane.send(local.push_event(REPOSITORY, alone))
    wait_for(lambda: stack.received_for(plain) and stack.received_for(alone), 60, "both reports")
    body = stack.received_for(plain)[0].body
    assert "index" not in body and all("platforms" not in f for f in body["scan"]["findings"])
    assert stack.received_for(alone)[0].body["image"]["tags"] == []
    assert posts_for(stack, [plain, alone]) == [plain, alone] or posts_for(stack, [plain, alone]) == [alone, plain]
    held = stack.records.hget("ninkik:stats", "held:untagged")
    assert held is not None and int(held) >= 1


def test_a_helm_chart_and_cosign_artifacts_are_not_reported(lane: Lane) -> None:
    stack = lane.stack
    chart = oci.put(stack.ecr, REPOSITORY, oci.helm_chart_manifest(uuid.uuid4().hex), "0.1.0")
    image = stack.push(REPOSITORY, "signed")
    signature = stack.push(REPOSITORY, f"{image.replace(':', '-')}.sig")
    sbom = stack.push(REPOSITORY, f"{image.replace(':', '-')}.sbom")
    manifest_type, artifact_type = oci.media_types(oci.helm_chart_manifest("x"))
    lane.send(
        local.push_event(
            REPOSITORY, chart, "0.1.0", manifest_media_type=manifest_type, artifact_media_type=artifact_type
        )
    )
    for digest, tag in ((signature, f"{image.replace(':', '-')}.sig"), (sbom, f"{image.replace(':', '-')}.sbom")):
        lane.send(local.push_event(REPOSITORY, digest, tag))
    lane.send(local.push_event(REPOSITORY, image, "signed"))
    wait_for(lambda: stack.received_for(image), 60, "the signed image's report")
    expected = {chart: "not_an_image", signature: "cosign_artifact", sbom: "cosign_artifact"}
    wait_for(lambda: skipped(stack, list(expected)) == expected, 60, "the artifacts' chains to end unreported")
    assert not posts_for(stack, list(expected))
    [record] = [f for f in stack.failures() if f.get("digest") == chart]
    assert record["message"] == f"an OCI artifact of type {oci.HELM_CONFIG}, not a container image"
    assert int(stack.records.hget("ninkik:stats", "skipped:not_an_image") or 0) >= 1
    assert int(stack.records.hget("ninkik:stats", "skipped:cosign_artifact") or 0) >= 2


def test_without_batch_get_image_each_platform_is_reported_once_and_the_index_as_an_index(stack: Stack) -> None:
    proxy = IamProxy(stack.moto_url, tenants={TENANT_A}).start()  # the guide's policy: no ecr:BatchGetImage
    worker, feeder, queue_url = _start(stack, "no-batch-get", **proxy.env())
    try:
        made = build(stack, ("linux/amd64", "linux/arm64/v8"), "3.0.0")
        manifests, index = events(made, "3.0.0")
        for event in [*manifests, index]:
            stack.send(queue_url, event)
        platforms = list(made.platforms.values())
        wait_for(lambda: all(stack.received_for(d) for d in [made.index, *platforms]), 90, "index and platforms")
        attestations = list(made.attestations.values())
        expected = {d: "likely_attestation" for d in attestations}
        wait_for(lambda: skipped(stack, attestations) == expected, 60, "the attestations' chains to end unreported")
        assert sorted(posts_for(stack, [made.index, *made.manifests()])) == sorted([made.index, *platforms])
        body = stack.received_for(made.index)[0].body
        assert body["image"]["tags"] == ["3.0.0"] and body["image"]["manifest_media_type"] == oci.OCI_INDEX
        assert (body["scan"]["type"], body["scan"]["status"], body["scan"]["findings"]) == ("NONE", "INDEX_UNREAD", [])
        assert body["index"]["platforms"] is None and "ecr:BatchGetImage" in body["index"]["unread_reason"]
        for label, digest in made.platforms.items():
            alone = stack.received_for(digest)[0].body
            assert alone["image"]["tags"] == [] and "index" not in alone  # no invented link
            assert {f["id"] for f in alone["scan"]["findings"]} == {f["name"] for f in FINDINGS[label]}
        assert proxy.refusals("ecr:BatchGetImage")
    finally:
        feeder.stop()
        worker.stop()
        proxy.stop()


def test_a_platforms_scan_complete_event_reads_its_waiting_index_at_once(stack: Stack) -> None:
    """With a 120 s poll, nothing but the "ECR Image Scan" event of the platform can report the index within 60 s
    of its first read. moto's scans are final at once: a proxy in front of it answers IN_PROGRESS until then."""
    from test_events import live

    proxy = FaultProxy(stack.moto_url).start()
    worker, feeder, queue_url = _start(
        stack,
        "index-scan-event",
        AWS_ENDPOINT_URL_ECR=proxy.url,
        NINKIK_SCAN_POLL_SECONDS="120",
        NINKIK_SCAN_WAIT_SECONDS="600",
        NINKIK_RETRY_BACKOFF_MAX_SECONDS="200",
        NINKIK_BROKER_VISIBILITY_TIMEOUT="900",
    )
    try:
        made = build(stack, ("linux/amd64", "linux/arm64/v8"), "4.0.0", attestations=False)
        arm = made.platforms["linux/arm64/v8"]
        proxy.scanning[arm] = time.monotonic() + 3600
        _, index = events(made, "4.0.0")
        stack.send(queue_url, index)

        def reads(digest: str) -> int:
            return sum(
                1
                for c in proxy.calls
                if c.action == "DescribeImageScanFindings"
                and (c.params.get("imageId") or {}).get("imageDigest") == digest
            )

        wait_for(lambda: reads(arm) >= 1, 30, "the first read of the platform still scanning")
        # The event must find the index waiting: its wait is recorded just after that read (under load, later).
        index_waits = (
            scanwait.waiting_key("ninkik", local.ACCOUNT, local.REGION),
            scanwait.member(local.ACCOUNT, REPOSITORY, made.index),
        )
        wait_for(
            lambda: stack.records.zscore(*index_waits) is not None, 30, "the index to wait for its platforms' scans"
        )
        proxy.scanning[arm] = 0  # the scan finishes and says so
        stack.send(queue_url, live("ecr-image-scan.json", REPOSITORY, arm))
        [received] = wait_for(lambda: stack.received_for(made.index), 60, "the index's report, read at the event")
        assert [p["scan_status"] for p in received.body["index"]["platforms"]] == ["COMPLETE", "COMPLETE"]
        assert "index read now" in feeder.output()
    finally:
        feeder.stop()
        worker.stop()
        proxy.stop()


# Sweeps: backfill and rescan of a repository with multi-platform tags, the chain's stages run in-process.


class _MotoServices(Services):
    """The real services, ECR the shared emulator (reached directly: these stages run in the test's process)."""

    client: Any = None

    def ecr(self, account: str, region: str, rereading: bool = False) -> Any:
        return self.client


def moto_services(stack: Stack, **settings: Any) -> _MotoServices:
    """Services on the shared Redis (a namespace of their own), the shared emulator and the stand-in."""
    made = Settings(
        redis_url=f"{stack.redis_url}/2",
        redis_namespace=f"t-{uuid.uuid4().hex[:8]}",
        aws_account_ids=[local.ACCOUNT],
        aws_regions=[local.REGION],
        api_url=stack.standin.url,
        api_token=TOKEN,
        http_timeout_seconds=5,
        **settings,
    )
    svc = _MotoServices(made, redis.Redis.from_url(made.redis_url, decode_responses=True), httpx.Client())
    svc.client = stack.ecr
    return svc


def _refused(*_: Any) -> None:
    raise RateLimited("rate limit: 12.0s of calls queued", retry_after=7.0)


def test_an_index_waits_for_every_platform_then_reports_what_the_wait_gave(stack: Stack) -> None:
    svc = moto_services(stack, scan_wait_seconds=600, scan_poll_seconds=0.1)
    repository = f"{TENANT_A}/web/wait-{uuid.uuid4().hex[:8]}"
    made = oci.push_build(
        stack.ecr, repository, uuid.uuid4().hex, ("linux/amd64", "linux/arm64"), "1", attestations=False
    )
    amd = made.platforms["linux/amd64"]  # arm64 is never scanned
    local.set_scan_result(stack.moto_url, stack.ecr, repository, amd, findings=FINDINGS["linux/amd64"])
    pushed = ImagePushed(
        event_id=str(uuid.uuid4()),
        account=local.ACCOUNT,
        region=local.REGION,
        repository=repository,
        digest=made.index,
        tag="1",
        time=datetime.now(UTC),
    )
    try:
        described = describe_step(svc, match_tenant(svc, pushed))
        with pytest.raises(ScanNotReady, match="1 of 2 platforms' scans not final"):
            scan_step(svc, described)  # arm64's scan has not started
        assert svc.scan_waits.kept(local.REGION, waiting_as(described.image), amd) is not None  # not read again
        late = datetime.now(UTC) + timedelta(seconds=601)  # the wait ran out
        with pytest.MonkeyPatch.context() as patch:
            # The last read meets a full ECR budget (the limiter's refusal, played here without a limiter):
            # retried when the queue drained, never reported NOT_SCANNED for it.
            patch.setattr(scans, "scan_findings", _refused)
            with pytest.raises(RateLimited):
                scan_step(svc, described, now=late)
        scanned = scan_step(svc, described, now=late)
        report = json.loads(svc.redis.get(svc.records.key("report", scanned.key)) or "{}")
        assert report["scan"]["status"] == "NOT_SCANNED" and report["scan"]["severity_counts"] == {"HIGH": 1, "LOW": 1}
        statuses = {p["platform"]: p["scan_status"] for p in report["index"]["platforms"]}
        assert statuses == {"linux/amd64": "COMPLETE", "linux/arm64": "NOT_SCANNED"}
        assert svc.scan_waits.kept(local.REGION, waiting_as(described.image), amd) is None
        assert svc.scan_waits.waiting(local.ACCOUNT, local.REGION) == 0
    finally:
        svc.http.close()


def test_backfill_and_rescan_report_one_per_tag(stack: Stack) -> None:
    repository = f"{TENANT_A}/web/sweep-{uuid.uuid4().hex[:8]}"
    # No ECR budget, so no rescan pace: the rescan reads every image the session pushed, and its pace (tested in
    # test_backfill.py) would make that half a minute.
    svc = moto_services(stack, scan_wait_seconds=0, ecr_calls_per_second=0)
    made = oci.push_build(stack.ecr, repository, uuid.uuid4().hex, ("linux/amd64", "linux/arm64/v8"), "1.0")
    for label, digest in made.platforms.items():
        local.set_scan_result(stack.moto_url, stack.ecr, repository, digest, findings=FINDINGS[label])
    for digest in made.attestations.values():
        local.set_scan_result(stack.moto_url, stack.ecr, repository, digest, status="UNSUPPORTED_IMAGE")
    plain = local.push_image(stack.ecr, repository, uuid.uuid4().hex, "plain")
    local.set_scan_result(stack.moto_url, stack.ecr, repository, plain)
    # moto's DescribeImages gives no artifactMediaType (AWS does): the chain reads the manifest's config type.
    chart = oci.put(stack.ecr, repository, oci.helm_chart_manifest(uuid.uuid4().hex), "0.1.0")
    outcomes: dict[str, list[str]] = {}

    def chain(event: ImagePushed) -> None:
        try:
            scanned = scan_step(svc, describe_step(svc, match_tenant(svc, event)))
            outcome, _ = notify_step(svc, scanned, owner=f"test-{uuid.uuid4()}")
        except PermanentError as exc:
            outcome = exc.reason
        outcomes.setdefault(event.digest, []).append(outcome)

    try:
        summary = sweeps.backfill(svc, Filters(repositories=(repository,)), chain)
        # Seven manifests, three chains: the index's (its manifests claimed by the sweep), the plain image's and
        # the chart's (not an image: not reported).
        assert (summary["images"], summary["chains_started"], summary["in_index"]) == (7, 3, 4)
        assert outcomes == {made.index: ["notified"], plain: ["notified"], chart: ["not_an_image"]}
        assert posts_for(stack, [made.index, plain, *made.manifests()]).count(made.index) == 1
        body = stack.received_for(made.index)[0].body
        assert body["source"] == "backfill" and len(body["index"]["platforms"]) == 2
        # A rescan (of every known repository) reads the index again: nothing changed, nothing sent (the same
        # key). The plain image's basic scan is compared by one small page of its findings: no chain.
        outcomes.clear()
        summary = sweeps.rescan(svc, chain)
        assert summary["in_index"] >= 4 and not set(made.manifests()) & set(outcomes)
        assert outcomes[made.index] == ["already_sent"] and plain not in outcomes and summary["unchanged"] >= 1
        assert outcomes[chart] == ["not_an_image"]
        assert len(stack.received_for(made.index)) == 1
    finally:
        svc.http.close()


# The pure parts: index reading, merging, media types, fingerprints.


def test_attestations_are_not_platforms_and_every_manifest_is_claimed() -> None:
    manifest = {
        "manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {
                "digest": "sha256:b",
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            },
        ]
    }
    platforms, listed = platforms_of(manifest)
    assert [p.label for p in platforms] == ["linux/arm/v7"] and listed == ["sha256:a", "sha256:b"]


def test_an_index_of_too_many_platforms_claims_only_those_in_its_report() -> None:
    manifest = {
        "manifests": [
            {"digest": f"sha256:{i}", "platform": {"os": "linux", "architecture": f"a{i}"}} for i in range(70)
        ]
    }
    platforms, listed = platforms_of(manifest)
    assert len(platforms) == 64 and listed == [p.digest for p in platforms]


def test_the_index_status_is_complete_only_when_every_platform_is() -> None:
    amd, arm = Platform(digest="sha256:a", os="linux", architecture="amd64"), Platform(digest="sha256:b")
    finding = Finding(id="CVE-1", severity="HIGH", package="p", version="1")
    scan, per = merge([(amd, Scan(type="BASIC", status="COMPLETE", findings=[finding])), (arm, local_not_scanned())])
    assert scan.status == "NOT_SCANNED" and [p.scan_status for p in per] == ["COMPLETE", "NOT_SCANNED"]
    assert scan.findings[0].platforms == ["linux/amd64"] and scan.severity_counts == {"HIGH": 1}


def local_not_scanned() -> Scan:
    return Scan(type="NONE", status="NOT_SCANNED")


def _image(**kwargs: Any) -> Image:
    return Image(registry_id=local.ACCOUNT, region=local.REGION, repository=REPOSITORY, digest="sha256:x", **kwargs)


def test_which_media_types_are_images() -> None:
    assert not_an_image(_image(tags=["1"], artifact_media_type=oci.DOCKER_CONFIG)) is None
    assert not_an_image(_image(tags=[], manifest_media_type=oci.OCI_INDEX)) is None
    soci = _image(tags=[], artifact_media_type="application/vnd.amazon.soci.index.v1+json")
    assert not_an_image(soci) == (
        "not_an_image",
        "an OCI artifact of type application/vnd.amazon.soci.index.v1+json, not a container image",
    )
    sig = "sha256-" + "0" * 64 + ".att"
    assert not_an_image(_image(tags=[sig]))[0] == "cosign_artifact"  # type: ignore[index]
    assert not_an_image(_image(tags=[sig, "latest"])) is None  # also tagged as an image: reported


def test_a_single_image_report_keeps_its_body_and_fingerprint() -> None:
    finding = Finding(id="CVE-1", severity="HIGH", package="p", version="1")
    report = Report(image=_image(tags=["1"]), scan=Scan(type="BASIC", status="COMPLETE", findings=[finding]))
    assert report.fingerprint() == "f0b732d07ec5a07bc2be3ea11b541244"  # as before indexes were reported
    body = render(report, "push")
    assert set(body) == {"source", "image", "scan"} and "platforms" not in body["scan"]["findings"][0]
