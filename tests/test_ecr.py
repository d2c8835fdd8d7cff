"""ECR calls against botocore's Stubber.

moto answers every ECR list call in one page and has no IN_PROGRESS or PENDING phase (DESIGN.md §4),
so pagination, scan states and AWS error codes are played here with Stubber on a real client.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from conftest import Stack

from ninkik_tasks.clients import AWS_CONFIG
from ninkik_tasks.ecr import ScanHead, describe_image, not_scanned, scan_findings, scan_head
from ninkik_tasks.errors import PermanentError, ScanNotReady, TransientError
from ninkik_tasks.findings import Image
from ninkik_tasks.local import basic_finding, enhanced_finding, free_port

ACCOUNT = "123456789012"
REGION = "eu-central-1"
REPOSITORY = "3f2c1a9e-8d4b-4c6e-9a7f-2b1d0e5c4a83/web"
DIGEST = "sha256:9b2a1e7c4f0d83a65e2c7b1d4f9e0a3c6b8d2e5f7a1c4b9e3d6f0a2c5e8b1d4f"
COMPLETED = datetime(2026, 11, 27, 10, 2, 11, tzinfo=UTC)
IMAGE = Image(registry_id=ACCOUNT, region=REGION, repository=REPOSITORY, digest=DIGEST, tags=["1.2.3"])


@pytest.fixture(scope="module")
def ecr() -> Any:
    # The production configuration (standard retries). Stubber answers in botocore's before-call
    # hook, ahead of the retry handler, so one stubbed error is exactly what the caller sees once
    # botocore's retries have given up: there is no need to queue the error once per attempt.
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("ecr", config=AWS_CONFIG)


@pytest.fixture
def stub(ecr: Any) -> Iterator[Stubber]:
    with Stubber(ecr) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def scan_params(token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "registryId": ACCOUNT,
        "repositoryName": REPOSITORY,
        "imageId": {"imageDigest": DIGEST},
        "maxResults": 1000,
    }
    if token:
        params["nextToken"] = token
    return params


def scan_page(
    status: str = "COMPLETE",
    findings: list[dict[str, Any]] | None = None,
    enhanced: list[dict[str, Any]] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"imageScanCompletedAt": COMPLETED, "vulnerabilitySourceUpdatedAt": COMPLETED}
    if findings is not None:
        body["findings"] = findings
    if enhanced is not None:
        body["enhancedFindings"] = enhanced
    page: dict[str, Any] = {
        "registryId": ACCOUNT,
        "repositoryName": REPOSITORY,
        "imageId": {"imageDigest": DIGEST, "imageTag": "1.2.3"},
        "imageScanStatus": {"status": status, "description": "The scan was completed successfully."},
        "imageScanFindings": body,
    }
    if token:
        page["nextToken"] = token
    return page


def basics(first: int, count: int, severity: str = "HIGH") -> list[dict[str, Any]]:
    return [basic_finding(f"CVE-2026-{n:04d}", severity, f"pkg{n}", "1.0.0") for n in range(first, first + count)]


# scan_findings


def test_every_page_of_basic_findings(ecr: Any, stub: Stubber) -> None:
    stub.add_response("describe_image_scan_findings", scan_page(findings=basics(0, 1000), token="t1"), scan_params())
    stub.add_response(
        "describe_image_scan_findings", scan_page(findings=basics(1000, 1000, "LOW"), token="t2"), scan_params("t1")
    )
    stub.add_response(
        "describe_image_scan_findings", scan_page(findings=basics(2000, 5, "CRITICAL")), scan_params("t2")
    )
    scan = scan_findings(ecr, IMAGE)
    assert (scan.type, scan.status, scan.completed_at) == ("BASIC", "COMPLETE", COMPLETED)
    assert len(scan.findings) == 2005
    assert len({f.id for f in scan.findings}) == 2005
    assert list(scan.severity_counts.items()) == [("CRITICAL", 5), ("HIGH", 1000), ("LOW", 1000)]
    assert scan.findings[0].package == "pkg0"


def test_every_page_of_enhanced_findings(ecr: Any, stub: Stubber) -> None:
    first = [enhanced_finding(f"CVE-2026-{n:04d}", "HIGH", f"pkg{n}", "1.0", "1.1") for n in range(100)]
    second = [enhanced_finding("CVE-2026-9999", "CRITICAL", "openssl", "3.0.1", "3.0.2")]
    second[0]["packageVulnerabilityDetails"]["vulnerablePackages"].append(
        {"name": "libssl3", "version": "3.0.1", "fixedInVersion": "3.0.2"}
    )
    stub.add_response("describe_image_scan_findings", scan_page("ACTIVE", enhanced=first, token="e1"), scan_params())
    stub.add_response("describe_image_scan_findings", scan_page("ACTIVE", enhanced=second), scan_params("e1"))
    scan = scan_findings(ecr, IMAGE)
    assert (scan.type, scan.status) == ("ENHANCED", "ACTIVE")
    assert len(scan.findings) == 102
    assert [(f.id, f.package) for f in scan.findings[-2:]] == [
        ("CVE-2026-9999", "openssl"),
        ("CVE-2026-9999", "libssl3"),
    ]
    assert scan.severity_counts == {"CRITICAL": 2, "HIGH": 100}


def test_complete_without_findings(ecr: Any, stub: Stubber) -> None:
    stub.add_response("describe_image_scan_findings", scan_page(findings=[]), scan_params())
    scan = scan_findings(ecr, IMAGE)
    assert (scan.status, scan.findings, scan.severity_counts) == ("COMPLETE", [], {})


def test_page_size_is_passed(ecr: Any, stub: Stubber) -> None:
    stub.add_response("describe_image_scan_findings", scan_page(findings=[]), {**scan_params(), "maxResults": 100})
    scan_findings(ecr, IMAGE, page_size=100)


@pytest.mark.parametrize("status", ["IN_PROGRESS", "PENDING"])
def test_scan_running(ecr: Any, stub: Stubber, status: str) -> None:
    page = scan_page(status)
    del page["imageScanFindings"]
    stub.add_response("describe_image_scan_findings", page, scan_params())
    with pytest.raises(ScanNotReady):
        scan_findings(ecr, IMAGE)


def test_no_scan_yet(ecr: Any, stub: Stubber) -> None:
    stub.add_client_error(
        "describe_image_scan_findings",
        service_error_code="ScanNotFoundException",
        service_message=f"Image scan does not exist for the image with '{{imageDigest:'{DIGEST}'}}'",
        http_status_code=400,
    )
    with pytest.raises(ScanNotReady):
        scan_findings(ecr, IMAGE)


# scan_head: a rescan's one call for a basic scan DescribeImages does not list


def test_scan_head_is_one_page_of_one_finding(ecr: Any, stub: Stubber) -> None:
    stub.add_response(
        "describe_image_scan_findings", scan_page(findings=basics(0, 1)), {**scan_params(), "maxResults": 1}
    )
    assert scan_head(ecr, ACCOUNT, REPOSITORY, DIGEST) == ScanHead(False, "COMPLETE", COMPLETED)


@pytest.mark.parametrize("status", ["COMPLETE", "ACTIVE"])
def test_scan_head_of_an_enhanced_scan(ecr: Any, stub: Stubber, status: str) -> None:
    # Enhanced scanning answers up to 100 findings whatever maxResults says, ACTIVE for continuous scanning and
    # COMPLETE (with enhancedFindings) for scan on push.
    enhanced = [enhanced_finding(f"CVE-2026-{n:04d}", "HIGH", f"pkg{n}", "1.0", "1.1") for n in range(100)]
    page = scan_page(status, enhanced=enhanced, token="e1")
    stub.add_response("describe_image_scan_findings", page, {**scan_params(), "maxResults": 1})
    assert scan_head(ecr, ACCOUNT, REPOSITORY, DIGEST) == ScanHead(True, status, COMPLETED)


def test_scan_head_without_a_scan(ecr: Any, stub: Stubber) -> None:
    stub.add_client_error("describe_image_scan_findings", "ScanNotFoundException", http_status_code=400)
    with pytest.raises(ScanNotReady):
        scan_head(ecr, ACCOUNT, REPOSITORY, DIGEST)


@pytest.mark.parametrize("status", ["FAILED", "UNSUPPORTED_IMAGE", "SCAN_ELIGIBILITY_EXPIRED", "FINDINGS_UNAVAILABLE"])
def test_final_status_without_findings(ecr: Any, stub: Stubber, status: str) -> None:
    # Even a page that carries findings (and a next page) is not read further: the status is the answer.
    stub.add_response(
        "describe_image_scan_findings", scan_page(status, findings=basics(0, 2), token="x"), scan_params()
    )
    scan = scan_findings(ecr, IMAGE)
    assert (scan.status, scan.findings, scan.severity_counts) == (status, [], {})


@pytest.mark.parametrize(
    ("code", "http_status"),
    [
        ("ThrottlingException", 400),
        ("ThrottleException", 429),
        ("LimitExceededException", 400),
        ("ServerException", 500),
        ("ServiceUnavailable", 503),
    ],
)
def test_throttling_and_server_errors_are_transient(ecr: Any, stub: Stubber, code: str, http_status: int) -> None:
    stub.add_client_error("describe_image_scan_findings", service_error_code=code, http_status_code=http_status)
    with pytest.raises(TransientError) as caught:
        scan_findings(ecr, IMAGE)
    assert not isinstance(caught.value, ScanNotReady)


def test_throttled_on_a_later_page(ecr: Any, stub: Stubber) -> None:
    stub.add_response("describe_image_scan_findings", scan_page(findings=basics(0, 3), token="t1"), scan_params())
    stub.add_client_error("describe_image_scan_findings", service_error_code="ThrottlingException")
    with pytest.raises(TransientError):
        scan_findings(ecr, IMAGE)


def test_stubbed_error_is_seen_once_despite_retries(ecr: Any, stub: Stubber) -> None:
    assert ecr.meta.config.retries["mode"] == "standard"
    stub.add_client_error("describe_image_scan_findings", service_error_code="ThrottlingException")
    stub.add_response("describe_image_scan_findings", scan_page(findings=[]), scan_params())
    with pytest.raises(TransientError):
        scan_findings(ecr, IMAGE)
    assert scan_findings(ecr, IMAGE).status == "COMPLETE"


@pytest.mark.parametrize("code", ["AccessDeniedException", "AccessDenied", "403"])
def test_access_denied_is_permanent(ecr: Any, stub: Stubber, code: str) -> None:
    stub.add_client_error("describe_image_scan_findings", service_error_code=code, http_status_code=403)
    with pytest.raises(PermanentError) as caught:
        scan_findings(ecr, IMAGE)
    assert caught.value.reason == "access_denied"
    assert "ecr:DescribeImageScanFindings" in str(caught.value)


def test_image_deleted_while_waiting(ecr: Any, stub: Stubber) -> None:
    stub.add_client_error("describe_image_scan_findings", service_error_code="ImageNotFoundException")
    with pytest.raises(PermanentError) as caught:
        scan_findings(ecr, IMAGE)
    assert caught.value.reason == "image_gone"


def test_unclassified_client_errors_propagate(ecr: Any, stub: Stubber) -> None:
    stub.add_client_error("describe_image_scan_findings", service_error_code="ValidationException")
    with pytest.raises(ClientError):
        scan_findings(ecr, IMAGE)


def test_not_scanned() -> None:
    assert (not_scanned().type, not_scanned().status, not_scanned().findings) == ("NONE", "NOT_SCANNED", [])


# describe_image


def describe_params() -> dict[str, Any]:
    return {"registryId": ACCOUNT, "repositoryName": REPOSITORY, "imageIds": [{"imageDigest": DIGEST}]}


def image_details(**overrides: Any) -> dict[str, Any]:
    detail = {
        "registryId": ACCOUNT,
        "repositoryName": REPOSITORY,
        "imageDigest": DIGEST,
        "imageTags": ["latest", "1.2.3"],
        "imageSizeInBytes": 31_457_280,
        "imagePushedAt": datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        "imageScanStatus": {"status": "COMPLETE", "description": "The scan was completed successfully."},
        "imageManifestMediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactMediaType": "application/vnd.oci.image.config.v1+json",
    }
    detail.update(overrides)
    return {"imageDetails": [{k: v for k, v in detail.items() if v is not None}]}


def test_describe_image(ecr: Any, stub: Stubber) -> None:
    stub.add_response("describe_images", image_details(), describe_params())
    assert describe_image(ecr, ACCOUNT, REGION, REPOSITORY, DIGEST) == Image(
        registry_id=ACCOUNT,
        region=REGION,
        repository=REPOSITORY,
        digest=DIGEST,
        tags=["1.2.3", "latest"],
        pushed_at=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        size_bytes=31_457_280,
        manifest_media_type="application/vnd.oci.image.manifest.v1+json",
        artifact_media_type="application/vnd.oci.image.config.v1+json",
    )


def test_untagged_image_has_no_tags(ecr: Any, stub: Stubber) -> None:
    stub.add_response("describe_images", image_details(imageTags=None, artifactMediaType=None), describe_params())
    image = describe_image(ecr, ACCOUNT, REGION, REPOSITORY, DIGEST)
    assert image.tags == []
    assert image.artifact_media_type is None


@pytest.mark.parametrize("code", ["ImageNotFoundException", "RepositoryNotFoundException", "InvalidParameterException"])
def test_image_gone(ecr: Any, stub: Stubber, code: str) -> None:
    stub.add_client_error("describe_images", service_error_code=code, http_status_code=400)
    with pytest.raises(PermanentError) as caught:
        describe_image(ecr, ACCOUNT, REGION, REPOSITORY, DIGEST)
    assert caught.value.reason == "image_gone"


def test_no_image_details(ecr: Any, stub: Stubber) -> None:
    stub.add_response("describe_images", {"imageDetails": []}, describe_params())
    with pytest.raises(PermanentError) as caught:
        describe_image(ecr, ACCOUNT, REGION, REPOSITORY, DIGEST)
    assert caught.value.reason == "image_gone"


def test_describe_throttled(ecr: Any, stub: Stubber) -> None:
    stub.add_client_error("describe_images", service_error_code="ThrottlingException")
    with pytest.raises(TransientError):
        describe_image(ecr, ACCOUNT, REGION, REPOSITORY, DIGEST)


def test_describe_denied(ecr: Any, stub: Stubber) -> None:
    stub.add_client_error("describe_images", service_error_code="AccessDeniedException", http_status_code=403)
    with pytest.raises(PermanentError) as caught:
        describe_image(ecr, ACCOUNT, REGION, REPOSITORY, DIGEST)
    assert caught.value.reason == "access_denied"


def test_unreachable_endpoint_is_transient() -> None:
    # A real connection error (Stubber cannot raise one), with retries off: botocore's retries would
    # only delay the same outcome by several seconds of backoff.
    ecr = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client(
        "ecr",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=AWS_CONFIG.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1)),
    )
    with pytest.raises(TransientError):
        describe_image(ecr, ACCOUNT, REGION, REPOSITORY, DIGEST)
    with pytest.raises(TransientError):
        scan_findings(ecr, IMAGE)


def test_a_workers_threads_share_one_client_per_region(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's threads, all asking at a worker's first burst, get one Services and one client (each was making
    its own: up to 16 boto3 clients, 0.1 s of CPU each, and as many log lines)."""
    from ninkik_tasks import clients
    from ninkik_tasks.config import Settings
    from ninkik_tasks.stages import services

    monkeypatch.setattr(clients, "_cache", {})  # this process's clients: none yet
    settings = Settings(redis_url=f"{stack.redis_url}/2", ecr_calls_per_second=0)
    start = threading.Barrier(16)
    got: list[Any] = []

    def ask() -> None:
        start.wait()
        got.append(services(settings).ecr(ACCOUNT, "eu-west-1"))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(got) == 16 and len({id(client) for client in got}) == 1
