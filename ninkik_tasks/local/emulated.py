"""What the local stack and the tests put in the emulators and on the queue: images, scan results, events."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-central-1"


def manifest(seed: str) -> str:
    """A Docker v2 image manifest that is unique per `seed`."""
    layer = hashlib.sha256(seed.encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 1000,
                "digest": f"sha256:{hashlib.sha256(('config' + seed).encode()).hexdigest()}",
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 12345,
                    "digest": f"sha256:{layer}",
                }
            ],
        }
    )


def push_image(ecr: ECRClient, repository: str, seed: str, tag: str | None = None) -> str:
    """Create the repository if needed and put an image; returns its digest."""
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=repository)
    body = manifest(seed)
    kwargs: dict[str, Any] = {"imageTag": tag} if tag else {}
    answer = ecr.put_image(repositoryName=repository, imageManifest=body, **kwargs)
    return str(answer["image"]["imageId"]["imageDigest"])


def basic_finding(cve: str, severity: str, package: str, version: str) -> dict[str, Any]:
    """A basic-scanning finding as DescribeImageScanFindings returns it."""
    return {
        "name": cve,
        "severity": severity,
        "uri": f"https://nvd.nist.gov/vuln/detail/{cve}",
        "description": f"{cve} in {package}",
        "attributes": [
            {"key": "package_name", "value": package},
            {"key": "package_version", "value": version},
            {"key": "CVSS2_SCORE", "value": "7.5"},
        ],
    }


def enhanced_finding(cve: str, severity: str, package: str, version: str, fixed: str) -> dict[str, Any]:
    """An enhanced-scanning (Inspector) finding as DescribeImageScanFindings returns it."""
    return {
        "awsAccountId": ACCOUNT,
        "description": f"{cve} in {package}",
        "findingArn": f"arn:finding/{cve}",
        "severity": severity,
        "score": 8.1,
        "status": "ACTIVE",
        "title": f"{cve} - {package}",
        "type": "PACKAGE_VULNERABILITY",
        "packageVulnerabilityDetails": {
            "vulnerabilityId": cve,
            "source": "NVD",
            "sourceUrl": f"https://nvd.nist.gov/vuln/detail/{cve}",
            "vulnerablePackages": [{"name": package, "version": version, "fixedInVersion": fixed}],
        },
    }


def set_scan_result(
    moto_url: str,
    ecr: ECRClient,
    repository: str,
    digest: str,
    *,
    status: str = "COMPLETE",
    findings: list[dict[str, Any]] | None = None,
    enhanced: list[dict[str, Any]] | None = None,
    region: str = REGION,
) -> None:
    """Start the image's scan in moto and make DescribeImageScanFindings answer this result."""
    ecr.start_image_scan(repositoryName=repository, imageId={"imageDigest": digest})
    body: dict[str, Any] = {"imageScanCompletedAt": time.time(), "vulnerabilitySourceUpdatedAt": time.time()}
    if enhanced is not None:
        body["enhancedFindings"] = enhanced
    else:
        body["findings"] = findings or []
    result = {
        "registryId": ACCOUNT,
        "repositoryName": repository,
        "imageId": {"imageDigest": digest},
        "imageScanStatus": {"status": status, "description": status},
        "imageScanFindings": body,
    }
    answer = httpx.post(
        f"{moto_url}/moto-api/static/ecr/scan-finding-results", json={"results": [result], "region": region}
    )
    answer.raise_for_status()
    # moto hands a pending result to the next read of any image in the repository whose tag equals the
    # result's (None for both when untagged): read it now, so it sticks to this image and no other.
    ecr.describe_image_scan_findings(repositoryName=repository, imageId={"imageDigest": digest})


def push_event(
    repository: str,
    digest: str,
    tag: str | None = None,
    *,
    account: str = ACCOUNT,
    region: str = REGION,
    event_id: str | None = None,
    manifest_media_type: str = "application/vnd.docker.distribution.manifest.v2+json",
    artifact_media_type: str | None = "application/vnd.docker.container.image.v1+json",
) -> dict[str, Any]:
    """An EventBridge "ECR Image Action" PUSH/SUCCESS event as delivered to SQS (an index's has no artifact type)."""
    # As ECR sends it: an untagged push has "image-tag": "", and the media types are in the event.
    detail: dict[str, Any] = {
        "result": "SUCCESS",
        "repository-name": repository,
        "image-digest": digest,
        "action-type": "PUSH",
        "image-tag": tag or "",
        "manifest-media-type": manifest_media_type,
    }
    if artifact_media_type is not None:
        detail["artifact-media-type"] = artifact_media_type
    return _envelope("ECR Image Action", "aws.ecr", account, region, [], detail, event_id)


def scan_event(repository: str, digest: str, *, account: str = ACCOUNT, region: str = REGION) -> dict[str, Any]:
    """An EventBridge "ECR Image Scan" event, basic scanning done, in the shape of AWS's sample of it
    (tests/aws/events/ecr-image-scan.json)."""
    detail = {
        "scan-status": "COMPLETE",
        "repository-name": repository,
        "finding-severity-counts": {"HIGH": 1, "MEDIUM": 1},
        "image-digest": digest,
        "image-tags": [],
    }
    resources = [f"arn:aws:ecr:{region}:{account}:repository/{repository}"]
    return _envelope("ECR Image Scan", "aws.ecr", account, region, resources, detail)


def finding_event(
    repository: str, digest: str, cve: str, *, status: str = "ACTIVE", account: str = ACCOUNT, region: str = REGION
) -> dict[str, Any]:
    """An EventBridge "Inspector2 Finding" event for one finding of an ECR image, in the shape of AWS's sample of
    it (tests/aws/events/inspector2-finding.json), shortened to the fields ninkik-tasks reads and a few more."""
    arn = f"arn:aws:ecr:{region}:{account}:repository/{repository}/{digest}"
    image = {"imageHash": digest, "registry": account, "repositoryName": repository, "imageTags": []}
    detail = {
        "awsAccountId": account,
        "findingArn": f"arn:aws:inspector2:{region}:{account}:finding/{uuid.uuid4().hex}",
        "resources": [
            {
                "details": {"awsEcrContainerImage": image},
                "id": arn,
                "partition": "aws",
                "region": region,
                "type": "AWS_ECR_CONTAINER_IMAGE",
            }
        ],
        "severity": "HIGH",
        "status": status,
        "title": f"{cve} - openssl",
        "type": "PACKAGE_VULNERABILITY",
    }
    return _envelope("Inspector2 Finding", "aws.inspector2", account, region, [arn], detail)


def _envelope(
    detail_type: str,
    source: str,
    account: str,
    region: str,
    resources: list[str],
    detail: dict[str, Any],
    event_id: str | None = None,
) -> dict[str, Any]:
    """An EventBridge event as delivered to SQS, sent now."""
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": account,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": resources,
        "detail": detail,
    }
