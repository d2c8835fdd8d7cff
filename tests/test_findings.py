"""Basic and enhanced findings normalised, severity counts, and the report fingerprint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ninkik_tasks.findings import Finding, Image, Report, Scan, from_basic, from_enhanced, severity_counts

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
    )


def test_from_basic_prefers_cvss3() -> None:
    raw = {**BASIC, "attributes": [*BASIC["attributes"], {"key": "CVSS3_SCORE", "value": "7.5"}]}
    assert from_basic(raw).score == 7.5


def test_from_basic_with_little_information() -> None:
    finding = from_basic({"name": "CVE-2024-1234", "severity": "medium"})
    assert finding == Finding(id="CVE-2024-1234", severity="MEDIUM")


def test_from_basic_with_an_unreadable_score() -> None:
    assert from_basic({**BASIC, "attributes": [{"key": "CVSS2_SCORE", "value": "n/a"}]}).score is None


# from_enhanced


def test_from_enhanced_gives_one_finding_per_vulnerable_package() -> None:
    findings = from_enhanced(ENHANCED)
    assert [(f.package, f.version, f.fixed_version) for f in findings] == [
        ("curl", "7.88.1", "7.88.1-10+deb12u4"),
        ("libcurl4", "7.88.1", "7.88.1-10+deb12u4"),
    ]
    for finding in findings:
        assert finding.id == "CVE-2023-38545"
        assert finding.severity == "CRITICAL"
        assert finding.score == 9.8
        assert finding.title == "CVE-2023-38545 - curl, libcurl4"
        assert finding.uri == "https://nvd.nist.gov/vuln/detail/CVE-2023-38545"


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
