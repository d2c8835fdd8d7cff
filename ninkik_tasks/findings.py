"""Scan findings, basic and enhanced, normalised into one model; the report and its fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNTRIAGED", "UNDEFINED")


class Finding(BaseModel):
    """One vulnerability in one package."""

    model_config = ConfigDict(frozen=True)
    id: str
    severity: str
    package: str | None = None
    version: str | None = None
    fixed_version: str | None = None
    score: float | None = None
    title: str | None = None
    uri: str | None = None


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


class Scan(BaseModel):
    """The outcome of the image's scan."""

    model_config = ConfigDict(frozen=True)
    type: Literal["BASIC", "ENHANCED", "NONE"]
    status: str
    completed_at: datetime | None = None
    severity_counts: dict[str, int] = {}
    findings: list[Finding] = []


class Report(BaseModel):
    """The body POSTed to ninkik, less its `source`."""

    model_config = ConfigDict(frozen=True)
    image: Image
    scan: Scan

    def fingerprint(self) -> str:
        """A hash of what ninkik would see change: tags and the scan's status and findings, not times."""
        material = {
            "image": {
                "registry_id": self.image.registry_id,
                "region": self.image.region,
                "repository": self.image.repository,
                "digest": self.image.digest,
                "tags": sorted(self.image.tags),
            },
            "scan": {
                "type": self.scan.type,
                "status": self.scan.status,
                "findings": sorted(
                    (f.model_dump(mode="json") for f in self.scan.findings),
                    key=lambda f: json.dumps(f, sort_keys=True),
                ),
            },
        }
        blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


def severity_counts(findings: list[Finding]) -> dict[str, int]:
    """Findings per severity, most severe first, zero counts left out."""
    counts = Counter(f.severity for f in findings)
    ordered = {s: counts.pop(s) for s in SEVERITIES if s in counts}
    return {**ordered, **dict(sorted(counts.items()))}


def from_basic(raw: dict[str, Any]) -> Finding:
    """A basic-scanning (Clair) finding."""
    attributes = {a.get("key"): a.get("value") for a in raw.get("attributes", []) if isinstance(a, dict)}
    score = attributes.get("CVSS3_SCORE") or attributes.get("CVSS2_SCORE")
    return Finding(
        id=str(raw.get("name", "")),
        severity=str(raw.get("severity", "UNDEFINED")).upper(),
        package=attributes.get("package_name"),
        version=attributes.get("package_version"),
        fixed_version=None,
        score=_float(score),
        title=raw.get("description"),
        uri=raw.get("uri"),
    )


def from_enhanced(raw: dict[str, Any]) -> list[Finding]:
    """An enhanced-scanning (Amazon Inspector) finding: one Finding per vulnerable package."""
    details = raw.get("packageVulnerabilityDetails") or {}
    vulnerability_id = details.get("vulnerabilityId") or raw.get("title") or raw.get("findingArn", "")
    severity = str(raw.get("severity", "UNDEFINED")).upper()
    score = raw.get("score")
    if score is None:
        cvss = details.get("cvss") or []
        score = cvss[0].get("baseScore") if cvss else None
    uri = details.get("sourceUrl") or next(iter(details.get("referenceUrls") or []), None)
    packages = details.get("vulnerablePackages") or [{}]
    return [
        Finding(
            id=str(vulnerability_id),
            severity=severity,
            package=package.get("name"),
            version=package.get("version"),
            fixed_version=package.get("fixedInVersion"),
            score=_float(score),
            title=raw.get("title"),
            uri=uri,
        )
        for package in packages
    ]


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
