"""Scan findings, basic and enhanced, normalised into one model; the report and its fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNTRIAGED", "UNDEFINED")


class Finding(BaseModel):
    """One vulnerability in one package, with what a security user filters on where AWS gives it."""

    model_config = ConfigDict(frozen=True)
    id: str
    severity: str
    package: str | None = None
    version: str | None = None  # installed: epoch:version-release where AWS gives them
    fixed_version: str | None = None  # None where AWS says there is no fix ("NotAvailable")
    score: float | None = None
    title: str | None = None
    uri: str | None = None
    fix_available: str | None = None  # YES | NO | PARTIAL (enhanced)
    exploit_available: str | None = None  # YES | NO (enhanced)
    package_manager: str | None = None  # OS, PIP, NPM, JAR, ... (enhanced)
    cvss_vector: str | None = None
    cvss_version: str | None = None
    vendor_severity: str | None = None  # the distribution's or vendor's own rating (enhanced)
    status: str | None = None  # Inspector's finding status: ACTIVE | SUPPRESSED | CLOSED (enhanced)
    platforms: list[str] | None = None  # index reports only: the platforms (os/architecture/variant) that have it


class Image(BaseModel):
    """What DescribeImages says about the pushed image."""

    model_config = ConfigDict(frozen=True)
    registry_id: str
    region: str
    repository: str
    digest: str
    tags: list[str]
    pushed_at: datetime | None = None
    size_bytes: int | None = None
    manifest_media_type: str | None = None
    artifact_media_type: str | None = None
    status: str = "ACTIVE"  # DescribeImages' imageStatus: ACTIVE, ARCHIVED, ACTIVATING (being restored)


class Scan(BaseModel):
    """The outcome of the image's scan."""

    model_config = ConfigDict(frozen=True)
    type: Literal["BASIC", "ENHANCED", "NONE"]
    status: str
    completed_at: datetime | None = None
    severity_counts: dict[str, int] = {}
    findings: list[Finding] = []
    # Enhanced scanning's image usage (awsEcrContainerImage): sent as usage (lifecycle.py), never in the report.
    in_use_count: int | None = Field(default=None, exclude=True)
    last_in_use_at: str | None = Field(default=None, exclude=True)


class PlatformScan(BaseModel):
    """One platform of an index: its manifest, its platform and its own scan (the findings are the index's)."""

    model_config = ConfigDict(frozen=True)
    digest: str
    platform: str  # os/architecture[/variant], as findings' `platforms` name it
    os: str | None = None
    architecture: str | None = None
    variant: str | None = None
    scan_type: Literal["BASIC", "ENHANCED", "NONE"]
    scan_status: str
    completed_at: datetime | None = None
    severity_counts: dict[str, int] = {}


class Index(BaseModel):
    """What an index report adds: its platforms, or why they could not be read (ecr:BatchGetImage)."""

    model_config = ConfigDict(frozen=True)
    platforms: list[PlatformScan] | None = None
    unread_reason: str | None = None


class Report(BaseModel):
    """The body POSTed to ninkik, less its `source`."""

    model_config = ConfigDict(frozen=True)
    image: Image
    scan: Scan
    index: Index | None = None  # image indexes (multi-platform builds) only

    def fingerprint(self) -> str:
        """A hash of what ninkik would see change: tags and the scan's status and findings, not times.

        Fields a finding does not have are left out, so a field added later changes only the reports that have it.
        """
        material: dict[str, Any] = {
            "image": {
                "registry_id": self.image.registry_id,
                "region": self.image.region,
                "repository": self.image.repository,
                "digest": self.image.digest,
                "tags": sorted(self.image.tags),
                # Only where not ACTIVE: the reports made before the field keep their fingerprints.
                **({"status": self.image.status} if self.image.status != "ACTIVE" else {}),
            },
            "scan": {
                "type": self.scan.type,
                "status": self.scan.status,
                "findings": sorted(
                    (f.model_dump(mode="json", exclude_none=True) for f in self.scan.findings),
                    key=lambda f: json.dumps(f, sort_keys=True),
                ),
            },
        }
        if self.index is not None:  # single images keep the fingerprint they always had
            platforms = self.index.platforms
            material["index"] = {
                "platforms": None
                if platforms is None
                else sorted(
                    (
                        {"digest": p.digest, "platform": p.platform, "type": p.scan_type, "status": p.scan_status}
                        for p in platforms
                    ),
                    key=lambda p: (p["platform"], p["digest"]),
                )
            }
        blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def stamp(self) -> str | None:
        """What a rescan's listing can show changed without reading the findings (basic_scan_stamp), if anything."""
        if self.index is not None or self.scan.type != "BASIC":
            return None
        return basic_scan_stamp(self.image.tags, self.scan.status, self.scan.completed_at)


def basic_scan_stamp(tags: Sequence[str], status: str | None, completed_at: datetime | None) -> str | None:
    """The tags and the scan's completion time of a completed basic scan, which DescribeImages also lists.

    A basic scan's findings are fixed when it completes (a new scan, StartImageScan, completes anew), so a report
    whose stamp the listing still shows cannot have changed. None otherwise: an enhanced scan's findings change
    with Inspector's database whatever the listing says, and a scan that did not complete says nothing.
    """
    if status != "COMPLETE" or completed_at is None:
        return None
    when = completed_at.astimezone(UTC) if completed_at.tzinfo else completed_at.replace(tzinfo=UTC)
    return json.dumps([sorted(tags), when.isoformat()], separators=(",", ":"))


def severity_counts(findings: list[Finding]) -> dict[str, int]:
    """Findings per severity, most severe first, zero counts left out."""
    counts = Counter(f.severity for f in findings)
    ordered = {s: counts.pop(s) for s in SEVERITIES if s in counts}
    return {**ordered, **dict(sorted(counts.items()))}


# What Amazon Inspector writes where a package has no fixed version.
NO_FIX = {"notavailable", "not available", "none", "n/a", ""}


def from_basic(raw: dict[str, Any]) -> Finding:
    """A basic-scanning (Clair) finding."""
    attributes = {a.get("key"): a.get("value") for a in raw.get("attributes", []) if isinstance(a, dict)}
    if attributes.get("CVSS3_SCORE") or attributes.get("CVSS3_VECTOR"):
        score, vector, version = attributes.get("CVSS3_SCORE"), attributes.get("CVSS3_VECTOR"), "3"
    else:
        score, vector, version = attributes.get("CVSS2_SCORE"), attributes.get("CVSS2_VECTOR"), "2.0"
    if isinstance(vector, str) and vector.startswith("CVSS:"):
        version = vector.split("/", 1)[0].removeprefix("CVSS:")  # CVSS:3.1/AV:N/... says 3.1
    return Finding(
        id=str(raw.get("name", "")),
        severity=str(raw.get("severity", "UNDEFINED")).upper(),
        package=attributes.get("package_name"),
        version=attributes.get("package_version"),
        fixed_version=None,
        score=_float(score),
        title=raw.get("description"),
        uri=raw.get("uri"),
        cvss_vector=_text(vector),
        cvss_version=version if score is not None or vector else None,
    )


def from_enhanced(raw: dict[str, Any]) -> list[Finding]:
    """An enhanced-scanning (Amazon Inspector) finding: one Finding per vulnerable package.

    Takes DescribeImageScanFindings' shape (`score`, `scoreDetails`) and Inspector's own (`inspectorScore`,
    `inspectorScoreDetails`), as in ListFindings answers and "Inspector2 Finding" events.
    """
    details = raw.get("packageVulnerabilityDetails") or {}
    vulnerability_id = details.get("vulnerabilityId") or raw.get("title") or raw.get("findingArn", "")
    severity = str(raw.get("severity", "UNDEFINED")).upper()
    cvss_list = [c for c in details.get("cvss") or [] if isinstance(c, dict)]
    chosen = (raw.get("scoreDetails") or {}).get("cvss") or (raw.get("inspectorScoreDetails") or {}).get("adjustedCvss")
    score = _first(raw.get("score"), raw.get("inspectorScore"), (chosen or {}).get("score"))
    if score is None and cvss_list:
        score = cvss_list[0].get("baseScore")
    if not chosen:
        # The CVSS entry behind the score, else the first one.
        chosen = next((c for c in cvss_list if _float(c.get("baseScore")) == _float(score)), None) or next(
            iter(cvss_list), {}
        )
    uri = details.get("sourceUrl") or next(iter(details.get("referenceUrls") or []), None)
    packages = details.get("vulnerablePackages") or [{}]
    return [
        Finding(
            id=str(vulnerability_id),
            severity=severity,
            package=package.get("name"),
            version=installed_version(package),
            fixed_version=fixed_version(package.get("fixedInVersion")),
            score=_float(score),
            title=raw.get("title"),
            uri=uri,
            fix_available=_text(raw.get("fixAvailable")),
            exploit_available=_text(raw.get("exploitAvailable")),
            package_manager=_text(package.get("packageManager")),
            cvss_vector=_text(chosen.get("scoringVector")),
            cvss_version=_text(chosen.get("version")),
            vendor_severity=_text(details.get("vendorSeverity")),
            status=_text(raw.get("status")),
        )
        for package in packages
        if isinstance(package, dict)
    ]


def installed_version(package: dict[str, Any]) -> str | None:
    """epoch:version-release as the package manager writes it (epoch 0 and a missing release left out)."""
    version = _text(package.get("version"))
    if version is None:
        return None
    epoch, release = package.get("epoch"), _text(package.get("release"))
    prefix = f"{epoch}:" if epoch not in (None, 0, "0", "") and f"{epoch}:" not in version else ""
    suffix = f"-{release}" if release and not version.endswith(f"-{release}") else ""
    return f"{prefix}{version}{suffix}"


def fixed_version(value: Any) -> str | None:
    """Inspector's fixedInVersion, or None where it says there is none."""
    text = _text(value)
    return None if text is None or text.strip().lower() in NO_FIX else text


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else (str(value) if isinstance(value, int | float) else None)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
