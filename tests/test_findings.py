"""Findings normalised (basic and enhanced), severity counts, the fingerprint; AWS's own findings bodies replayed."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber
from conftest import TENANT_A, Pipeline, Stack, celery_worker, ingest, own_broker_db
from iamproxy import IamProxy

from ninkik_tasks import local
from ninkik_tasks.ecr import INSPECTOR_FIX, INSPECTOR_STATEMENT, scan_findings
from ninkik_tasks.errors import PermanentError
from ninkik_tasks.findings import (
    Finding,
    Image,
    Report,
    Scan,
    fixed_version,
    from_basic,
    from_enhanced,
    installed_version,
    severity_counts,
)
from ninkik_tasks.holdings import Holdings
from ninkik_tasks.local import wait_for

DIGEST = "sha256:9b2a1e7c4f0d83a65e2c7b1d4f9e0a3c6b8d2e5f7a1c4b9e3d6f0a2c5e8b1d4f"
REPOSITORY = "3f2c1a9e-8d4b-4c6e-9a7f-2b1d0e5c4a83/web"

BASIC = {
    "name": "CVE-2023-0464",
    "description": "A security vulnerability has been identified in all supported versions of OpenSSL.",
    "uri": "https://security-tracker.debian.org/tracker/CVE-2023-0464",
    "severity": "HIGH",
    "attributes": [
        {"key": "package_version", "value": "3.0.8-1"},
        {"key": "package_name", "value": "openssl"},
        {"key": "CVSS2_VECTOR", "value": "AV:N/AC:L/Au:N/C:N/I:N/A:P"},
        {"key": "CVSS2_SCORE", "value": "5"},
    ],
}

ENHANCED = {
    "awsAccountId": "123456789012",
    "description": "curl: SOCKS5 heap buffer overflow",
    "findingArn": "arn:aws:inspector2:eu-central-1:123456789012:finding/0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "firstObservedAt": datetime(2026, 11, 27, 10, 3, tzinfo=UTC),
    "score": 9.8,
    "severity": "CRITICAL",
    "status": "ACTIVE",
    "title": "CVE-2023-38545 - curl, libcurl4",
    "type": "PACKAGE_VULNERABILITY",
    "packageVulnerabilityDetails": {
        "vulnerabilityId": "CVE-2023-38545",
        "source": "NVD",
        "sourceUrl": "https://nvd.nist.gov/vuln/detail/CVE-2023-38545",
        "referenceUrls": ["https://curl.se/docs/CVE-2023-38545.html"],
        "cvss": [
            {
                "baseScore": 9.8,
                "scoringVector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
                "source": "NVD",
                "version": "3.1",
            }
        ],
        "vulnerablePackages": [
            {
                "name": "curl",
                "version": "7.88.1",
                "release": "10+deb12u1",
                "arch": "X86_64",
                "packageManager": "OS",
                "fixedInVersion": "7.88.1-10+deb12u4",
            },
            {
                "name": "libcurl4",
                "version": "7.88.1",
                "release": "10+deb12u1",
                "arch": "X86_64",
                "packageManager": "OS",
                "fixedInVersion": "7.88.1-10+deb12u4",
            },
        ],
    },
}


# from_basic


def test_from_basic() -> None:
    assert from_basic(BASIC) == Finding(
        id="CVE-2023-0464",
        severity="HIGH",
        package="openssl",
        version="3.0.8-1",
        fixed_version=None,
        score=5.0,
        title="A security vulnerability has been identified in all supported versions of OpenSSL.",
        uri="https://security-tracker.debian.org/tracker/CVE-2023-0464",
        cvss_vector="AV:N/AC:L/Au:N/C:N/I:N/A:P",
        cvss_version="2.0",
    )


def test_from_basic_prefers_cvss3() -> None:
    raw = {**BASIC, "attributes": [*BASIC["attributes"], {"key": "CVSS3_SCORE", "value": "7.5"}]}
    assert from_basic(raw).score == 7.5
    assert from_basic(raw).cvss_version == "3"
    vector = {"key": "CVSS3_VECTOR", "value": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}
    raw["attributes"].append(vector)
    assert (from_basic(raw).cvss_vector, from_basic(raw).cvss_version) == (vector["value"], "3.1")


def test_from_basic_with_little_information() -> None:
    finding = from_basic({"name": "CVE-2024-1234", "severity": "medium"})
    assert finding == Finding(id="CVE-2024-1234", severity="MEDIUM")


def test_from_basic_with_an_unreadable_score() -> None:
    assert from_basic({**BASIC, "attributes": [{"key": "CVSS2_SCORE", "value": "n/a"}]}).score is None


# from_enhanced


def test_from_enhanced_gives_one_finding_per_vulnerable_package() -> None:
    findings = from_enhanced(ENHANCED)
    assert [(f.package, f.version, f.fixed_version) for f in findings] == [
        ("curl", "7.88.1-10+deb12u1", "7.88.1-10+deb12u4"),
        ("libcurl4", "7.88.1-10+deb12u1", "7.88.1-10+deb12u4"),
    ]
    for finding in findings:
        assert finding.id == "CVE-2023-38545"
        assert finding.severity == "CRITICAL"
        assert finding.score == 9.8
        assert finding.title == "CVE-2023-38545 - curl, libcurl4"
        assert finding.uri == "https://nvd.nist.gov/vuln/detail/CVE-2023-38545"
        assert (finding.cvss_vector, finding.cvss_version) == ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "3.1")
        assert (finding.package_manager, finding.status) == ("OS", "ACTIVE")


def test_from_enhanced_falls_back_to_cvss_and_reference_urls() -> None:
    details = {k: v for k, v in ENHANCED["packageVulnerabilityDetails"].items() if k != "sourceUrl"}
    details["cvss"] = [{"baseScore": 7.1, "scoringVector": "x", "source": "NVD", "version": "3.1"}]
    raw = {k: v for k, v in ENHANCED.items() if k != "score"}
    raw["packageVulnerabilityDetails"] = details
    finding = from_enhanced(raw)[0]
    assert finding.score == 7.1
    assert finding.uri == "https://curl.se/docs/CVE-2023-38545.html"


def test_from_enhanced_without_package_details() -> None:
    raw = {"findingArn": "arn:finding/1", "severity": "low", "title": "Weak TLS configuration"}
    assert from_enhanced(raw) == [Finding(id="Weak TLS configuration", severity="LOW", title="Weak TLS configuration")]


# severity_counts


def findings_of(*severities: str) -> list[Finding]:
    return [Finding(id=f"CVE-2026-{i:04d}", severity=s) for i, s in enumerate(severities)]


def test_severity_counts_most_severe_first() -> None:
    counts = severity_counts(
        findings_of("LOW", "CRITICAL", "UNDEFINED", "HIGH", "LOW", "INFORMATIONAL", "MEDIUM", "UNTRIAGED", "CRITICAL")
    )
    assert list(counts.items()) == [
        ("CRITICAL", 2),
        ("HIGH", 1),
        ("MEDIUM", 1),
        ("LOW", 2),
        ("INFORMATIONAL", 1),
        ("UNTRIAGED", 1),
        ("UNDEFINED", 1),
    ]


def test_severity_counts_leave_out_zeros_and_put_unknown_severities_last() -> None:
    counts = severity_counts(findings_of("ZETA", "LOW", "ALPHA", "HIGH", "ZETA"))
    assert list(counts.items()) == [("HIGH", 1), ("LOW", 1), ("ALPHA", 1), ("ZETA", 2)]
    assert severity_counts([]) == {}


# Report.fingerprint


def report(
    findings: list[Finding] | None = None,
    tags: list[str] | None = None,
    status: str = "COMPLETE",
    completed_at: datetime | None = None,
    **image: Any,
) -> Report:
    findings = findings if findings is not None else [from_basic(BASIC), *from_enhanced(ENHANCED)]
    return Report(
        image=Image(
            **{
                "registry_id": "123456789012",
                "region": "eu-central-1",
                "repository": REPOSITORY,
                "digest": DIGEST,
                "tags": tags if tags is not None else ["1.2.3", "latest"],
                "pushed_at": datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
                "size_bytes": 31_457_280,
                **image,
            }
        ),
        scan=Scan(
            type="BASIC",
            status=status,
            completed_at=completed_at or datetime(2026, 11, 27, 10, 2, tzinfo=UTC),
            severity_counts=severity_counts(findings),
            findings=findings,
        ),
    )


def test_fingerprint_is_stable() -> None:
    assert report().fingerprint() == report().fingerprint()
    assert len(report().fingerprint()) == 32


def test_fingerprint_ignores_order_of_findings_and_tags() -> None:
    findings = [from_basic(BASIC), *from_enhanced(ENHANCED)]
    assert (
        report(findings, ["1.2.3", "latest"]).fingerprint()
        == report(list(reversed(findings)), ["latest", "1.2.3"]).fingerprint()
    )


def test_fingerprint_ignores_times() -> None:
    later = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
    assert report().fingerprint() == report(completed_at=later, pushed_at=later).fingerprint()


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda: report(findings=[from_basic(BASIC)]), id="finding-removed"),
        pytest.param(
            lambda: report(findings=[*from_enhanced(ENHANCED), from_basic({**BASIC, "severity": "LOW"})]),
            id="severity-changed",
        ),
        pytest.param(
            lambda: report(findings=[*from_enhanced(ENHANCED), from_basic({**BASIC, "name": "CVE-2023-0465"})]),
            id="id-changed",
        ),
        pytest.param(lambda: report(findings=[]), id="no-findings"),
        pytest.param(lambda: report(status="FAILED"), id="status"),
        pytest.param(lambda: report(tags=["1.2.3"]), id="tag-removed"),
        pytest.param(lambda: report(digest="sha256:" + "0" * 64), id="digest"),
        pytest.param(lambda: report(repository=REPOSITORY + "/api"), id="repository"),
    ],
)
def test_fingerprint_changes_with_what_ninkik_sees(other: Any) -> None:
    assert other().fingerprint() != report().fingerprint()


def test_fingerprint_changes_with_scan_type() -> None:
    enhanced = report().model_copy(update={"scan": report().scan.model_copy(update={"type": "ENHANCED"})})
    assert enhanced.fingerprint() != report().fingerprint()


# What AWS really returns (tests/aws/findings/)

AWS = Path(__file__).parent / "aws" / "findings"


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((AWS / name).read_text())
    return data


def test_aws_enhanced_finding_as_a_security_user_reads_it() -> None:
    [raw] = sample("enhanced-api-reference.json")["imageScanFindings"]["enhancedFindings"]
    assert from_enhanced(raw) == [
        Finding(
            id="CVE-2022-49043",
            severity="HIGH",
            package="libxml2",
            version="2.9.14+dfsg-1.3~deb12u1",  # version-release; epoch 0 is not written
            fixed_version=None,  # AWS says "NotAvailable"
            score=8.1,
            title="CVE-2022-49043 - libxml2",
            uri="https://security-tracker.debian.org/tracker/CVE-2022-49043",
            fix_available="NO",
            exploit_available="NO",
            package_manager="OS",
            cvss_vector="CVSS:3.1/AV:L/AC:H/PR:N/UI:N/S:C/C:H/I:H/A:H",
            cvss_version="3.1",
            vendor_severity="not yet assigned",
            status="ACTIVE",
        )
    ]


def test_aws_basic_finding() -> None:
    [raw] = sample("basic-awscli.json")["imageScanFindings"]["findings"]
    finding = from_basic(raw)
    assert (finding.id, finding.package, finding.version, finding.score) == (
        "CVE-2019-5188",
        "e2fsprogs",
        "1.44.1-1ubuntu1.1",
        4.6,
    )
    assert (finding.cvss_vector, finding.cvss_version, finding.fixed_version) == (
        "AV:L/AC:L/Au:N/C:P/I:P/A:P",
        "2.0",
        None,
    )


def test_inspector_event_finding_uses_inspector_score_fields() -> None:
    # "Inspector2 Finding" events (and Inspector's ListFindings) say inspectorScore, not score.
    event = json.loads((Path(__file__).parent / "aws" / "events" / "inspector2-finding.json").read_text())
    [finding] = from_enhanced(event["detail"])
    assert (finding.score, finding.cvss_version, finding.vendor_severity) == (6.5, "3.0", "Moderate")
    assert finding.version == "1.4.3-12.amzn2.2" and finding.fixed_version is None


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        ({"version": "1.1.1k", "release": "5.el8_5", "epoch": 1}, "1:1.1.1k-5.el8_5"),
        ({"version": "2.9.14+dfsg", "release": "1.3~deb12u1", "epoch": 0}, "2.9.14+dfsg-1.3~deb12u1"),
        ({"version": "4.17.21"}, "4.17.21"),  # a language package: no epoch, no release
        ({"version": "3.0.2", "release": ""}, "3.0.2"),
        ({"release": "1"}, None),
    ],
)
def test_installed_version(package: dict[str, Any], expected: str | None) -> None:
    assert installed_version(package) == expected


@pytest.mark.parametrize("value", ["NotAvailable", "notavailable", "", None, "None", "N/A"])
def test_no_fixed_version(value: Any) -> None:
    assert fixed_version(value) is None


def test_a_fixed_version_is_kept() -> None:
    assert fixed_version("1:1.1.1k-7.el8_6") == "1:1.1.1k-7.el8_6"


def test_fields_a_finding_lacks_do_not_enter_the_fingerprint() -> None:
    # So a field added later changes only the reports that have it: the basic report below is what it was
    # before fix_available & co. existed, as long as its findings carry none of them.
    plain = [Finding(id="CVE-2026-0001", severity="HIGH", package="zlib", version="1.2.11")]
    material = report(plain).scan.findings[0].model_dump(mode="json", exclude_none=True)
    assert set(material) == {"id", "severity", "package", "version"}
    assert report(plain).fingerprint() == report(plain).fingerprint()


# ECR's answer for enhanced-scanned images without inspector2:ListFindings


def test_inspector_denial_names_the_statement_to_add() -> None:
    ecr = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name="eu-central-1").client(
        "ecr"
    )
    message = (
        "User: arn:aws:iam::123456789012:user/ninkik is not authorized to perform: inspector2:ListFindings "
        "on resource: arn:aws:inspector2:eu-central-1:123456789012:/findings/list"
    )
    image = report().image
    with Stubber(ecr) as stub:
        stub.add_client_error("describe_image_scan_findings", "AccessDeniedException", message, http_status_code=400)
        with pytest.raises(PermanentError) as caught:
            scan_findings(ecr, image)
    assert caught.value.reason == "access_denied"
    assert str(caught.value) == INSPECTOR_FIX
    assert INSPECTOR_STATEMENT in str(caught.value)
    assert json.loads(INSPECTOR_STATEMENT) == {"Effect": "Allow", "Action": "inspector2:ListFindings", "Resource": "*"}


# AWS's findings bodies through moto and the running pipeline


@pytest.mark.parametrize(
    ("name", "scan_type"), [("basic-awscli.json", "BASIC"), ("enhanced-api-reference.json", "ENHANCED")]
)
def test_aws_findings_bodies_are_notified_as_normalised(pipeline: Pipeline, name: str, scan_type: str) -> None:
    stack = pipeline.stack
    repository = f"{TENANT_A}/shop"
    # Tagged: moto hands a result left over for an untagged image of the repository to any untagged image.
    digest = stack.push(repository, f"aws-{uuid.uuid4().hex[:8]}", scan=False)
    body = sample(name)
    body.update(registryId=local.ACCOUNT, repositoryName=repository, imageId={"imageDigest": digest})
    stack.ecr.start_image_scan(repositoryName=repository, imageId={"imageDigest": digest})
    httpx.post(
        f"{stack.moto_url}/moto-api/static/ecr/scan-finding-results", json={"results": [body], "region": local.REGION}
    ).raise_for_status()
    stack.send(pipeline.queue_url, local.push_event(repository, digest))
    [received] = wait_for(lambda: stack.received_for(digest), 60, "the notification")
    scan = received.body["scan"]
    assert (scan["type"], scan["status"]) == (scan_type, body["imageScanStatus"]["status"])
    assert scan["completed_at"]
    expected = [
        f.model_dump(mode="json", exclude={"platforms"})  # index reports only
        for raw in body["imageScanFindings"].get("findings", [])
        for f in [from_basic(raw)]
    ] + [
        f.model_dump(mode="json", exclude={"platforms"})
        for raw in body["imageScanFindings"].get("enhancedFindings", [])
        for f in from_enhanced(raw)
    ]
    assert scan["findings"] == expected
    assert "in_use_count" not in scan  # usage goes apart from the report (lifecycle.py's usage report)
    in_use = Holdings(stack.records, "ninkik").in_use(local.ACCOUNT, local.REGION, repository, digest)
    if scan_type == "ENHANCED":
        assert scan["findings"][0]["fixed_version"] is None
        assert scan["findings"][0]["version"] == "2.9.14+dfsg-1.3~deb12u1"
        # awsEcrContainerImage's inUseCount and lastInUseAt, kept for the next usage report.
        assert in_use == (1, "2025-06-09T04:43:20.427000Z")
    else:
        assert in_use is None


def test_enhanced_findings_refused_at_run_time_name_the_statement(stack: Stack) -> None:
    # The chain on a worker whose ECR goes through the IAM layer: the guide's policy, no inspector2:ListFindings.
    proxy = IamProxy(stack.moto_url, {TENANT_A}).start()
    db = own_broker_db()
    env = stack.env(db, **proxy.env())
    proc = celery_worker(stack, env, "inspector", concurrency=1)
    queue_url = stack.new_queue()
    feeder = ingest(stack, env, queue_url, name="ingest-inspector")
    try:
        repository = f"{TENANT_A}/shop"
        enhanced = [local.enhanced_finding("CVE-2026-4321", "HIGH", "libxml2", "2.9.14", "NotAvailable")]
        digest = stack.push(repository, None, enhanced=enhanced, status="ACTIVE")
        stack.send(queue_url, local.push_event(repository, digest))
        failure = wait_for(
            lambda: next((f for f in stack.failures() if f.get("digest") == digest), None), 60, "the recorded failure"
        )
        assert (failure["stage"], failure["reason"]) == ("fetch_scan_findings", "access_denied")
        assert (
            INSPECTOR_STATEMENT in failure["message"] and "inspector2:ListFindings is not granted" in failure["message"]
        )
        assert proxy.refusals("inspector2:ListFindings") and not stack.received_for(digest)
    finally:
        feeder.stop()
        proc.stop()
        proxy.stop()
