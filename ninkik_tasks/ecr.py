"""The ECR calls of the chain: DescribeImages and every page of DescribeImageScanFindings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from .errors import PermanentError, ScanNotReady, TransientError
from .findings import Finding, Image, Scan, from_basic, from_enhanced, severity_counts

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

THROTTLING = {"ThrottlingException", "ThrottleException", "LimitExceededException", "TooManyRequestsException"}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}
GONE = {"ImageNotFoundException", "RepositoryNotFoundException"}
NOT_READY = {"PENDING", "IN_PROGRESS"}
# Statuses that end the wait without findings; reported as they are.
FINAL_WITHOUT_FINDINGS = {
    "FAILED",
    "UNSUPPORTED_IMAGE",
    "SCAN_ELIGIBILITY_EXPIRED",
    "FINDINGS_UNAVAILABLE",
    "LIMIT_EXCEEDED",
    "IMAGE_ARCHIVED",
    "IMAGE_SIZE_EXCEEDED",
}


# What the guide's ECR policy lacks for images that Amazon Inspector scans (enhanced scanning): ListFindings has no
# resource-level permissions, so "*" is the only resource it can be granted on.
INSPECTOR_STATEMENT = '{"Effect": "Allow", "Action": "inspector2:ListFindings", "Resource": "*"}'
INSPECTOR_FIX = (
    "inspector2:ListFindings is not granted, and ECR needs it to read the findings of images scanned by Amazon "
    f"Inspector (enhanced scanning): add the statement {INSPECTOR_STATEMENT} to the ECR policy of the setup guide"
)


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError."""
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def classified(action: str) -> Iterator[None]:
    """Turn botocore errors into TransientError / PermanentError for `action` (e.g. ecr:DescribeImages)."""
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLING or status == 429 or status >= 500:
            raise TransientError(f"{action} throttled or failed ({code or status})") from None
        if code in DENIED:
            raise PermanentError("access_denied", denied_message(exc, action)) from None
        if code in GONE:
            raise PermanentError("image_gone", f"{action}: {code}") from None
        raise
    except BotoCoreError as exc:
        raise TransientError(f"{action} failed: {type(exc).__name__}") from None


def error_message(exc: ClientError) -> str:
    """The AWS error message of a ClientError."""
    return str(exc.response.get("Error", {}).get("Message", ""))


def denied_message(exc: ClientError, action: str) -> str:
    """What to grant for an AccessDenied answer to `action`: AWS's message names the action it refused."""
    if "inspector2:" in error_message(exc):
        return INSPECTOR_FIX
    return f"{action} is not granted: add it to the ECR policy of the setup guide"


def describe_image(ecr: ECRClient, registry_id: str, region: str, repository: str, digest: str) -> Image:
    """The pushed image's digest, tags, push time, size and media types; PermanentError if it is gone."""
    with classified("ecr:DescribeImages"):
        try:
            answer = ecr.describe_images(
                registryId=registry_id, repositoryName=repository, imageIds=[{"imageDigest": digest}]
            )
        except ClientError as exc:
            if error_code(exc) == "InvalidParameterException":
                raise PermanentError("image_gone", f"ecr:DescribeImages refused the image: {exc}") from None
            raise
    details = answer.get("imageDetails", [])
    if not details:
        raise PermanentError("image_gone", "ecr:DescribeImages found no such image")
    return image_from_details(details[0], region)


MAX_IMAGE_IDS = 100  # the most imageIds DescribeImages takes in one call (AWS's API reference, botocore's model)


def describe_images(
    ecr: ECRClient, registry_id: str, region: str, repository: str, digests: list[str]
) -> dict[str, Image] | None:
    """One DescribeImages for up to MAX_IMAGE_IDS images of one repository: the images it lists, by digest.

    None when the call is refused as a whole for one of the ids (ImageNotFoundException: one image is gone, as
    moto answers; InvalidParameterException): the caller describes each image alone. An image the answer leaves
    out (DescribeImages' response has no `failures` list, unlike BatchGetImage's) is missing from the result.
    """
    with classified("ecr:DescribeImages"):
        try:
            answer = ecr.describe_images(
                registryId=registry_id,
                repositoryName=repository,
                imageIds=[{"imageDigest": digest} for digest in digests[:MAX_IMAGE_IDS]],
            )
        except ClientError as exc:
            if error_code(exc) in ("ImageNotFoundException", "InvalidParameterException"):
                return None
            raise
    listed = (image_from_details(detail, region) for detail in answer.get("imageDetails", []))
    return {image.digest: image for image in listed if image.digest in digests}


def image_from_details(detail: Any, region: str) -> Image:
    """An Image from one entry of DescribeImages' imageDetails."""
    return Image(
        registry_id=detail["registryId"],
        region=region,
        repository=detail["repositoryName"],
        digest=detail["imageDigest"],
        tags=sorted(detail.get("imageTags") or []),
        pushed_at=detail.get("imagePushedAt"),
        size_bytes=detail.get("imageSizeInBytes"),
        manifest_media_type=detail.get("imageManifestMediaType"),
        artifact_media_type=detail.get("artifactMediaType"),
        status=detail.get("imageStatus") or "ACTIVE",
    )


def scan_findings(ecr: ECRClient, image: Image, *, page_size: int = 1000) -> Scan:
    """Every finding of the image's scan; ScanNotReady while it has not finished."""
    findings: list[Finding] = []
    status = completed_at = None
    scan_type = "BASIC"
    in_use: tuple[int | None, str | None] = (None, None)
    paginator = ecr.get_paginator("describe_image_scan_findings")
    pages = paginator.paginate(
        registryId=image.registry_id,
        repositoryName=image.repository,
        imageId={"imageDigest": image.digest},
        PaginationConfig={"PageSize": page_size},
    )
    with classified("ecr:DescribeImageScanFindings"):
        try:
            for page in pages:
                if status is None:
                    status = (page.get("imageScanStatus") or {}).get("status", "")
                    if status in NOT_READY:
                        raise ScanNotReady(f"scan is {status}")
                    if status in FINAL_WITHOUT_FINDINGS:
                        break
                body: Any = page.get("imageScanFindings") or {}
                completed_at = completed_at or body.get("imageScanCompletedAt")
                findings.extend(from_basic(raw) for raw in body.get("findings") or [])
                if body.get("enhancedFindings"):
                    scan_type = "ENHANCED"
                    for raw in body["enhancedFindings"]:
                        findings.extend(from_enhanced(raw))
                        in_use = max(in_use, _in_use(raw), key=lambda u: (u[0] or -1, u[1] or ""))
        except ClientError as exc:
            if error_code(exc) == "ScanNotFoundException":
                raise ScanNotReady("no scan yet") from None
            raise
    if status == "ACTIVE":
        scan_type = "ENHANCED"
    return Scan(
        type=scan_type,  # type: ignore[arg-type]
        status=status or "COMPLETE",
        completed_at=completed_at,
        severity_counts=severity_counts(findings),
        findings=findings,
        in_use_count=in_use[0],
        last_in_use_at=in_use[1],
    )


def _in_use(raw: Any) -> tuple[int | None, str | None]:
    """An enhanced finding's image usage: resources[].details.awsEcrContainerImage inUseCount and lastInUseAt."""
    for resource in raw.get("resources") or []:
        image = (resource.get("details") or {}).get("awsEcrContainerImage") or {}
        if "inUseCount" in image or "lastInUseAt" in image:
            when = image.get("lastInUseAt")
            at = when.astimezone(UTC).isoformat().replace("+00:00", "Z") if isinstance(when, datetime) else when
            return image.get("inUseCount"), at
    return None, None


class ScanHead(NamedTuple):
    """What the first page of DescribeImageScanFindings says of the scan as a whole."""

    enhanced: bool  # ACTIVE, or Amazon Inspector's findings on the page
    status: str
    completed_at: datetime | None


def scan_head(ecr: ECRClient, registry_id: str, repository: str, digest: str) -> ScanHead:
    """The scan's status and completion time from one page of at most one finding (maxResults=1): one call
    whatever the number of findings (enhanced scanning ignores maxResults and answers up to 100 on it).
    ScanNotReady if the image has no scan."""
    with classified("ecr:DescribeImageScanFindings"):
        try:
            page = ecr.describe_image_scan_findings(
                registryId=registry_id, repositoryName=repository, imageId={"imageDigest": digest}, maxResults=1
            )
        except ClientError as exc:
            if error_code(exc) == "ScanNotFoundException":
                raise ScanNotReady("no scan yet") from None
            raise
    status = (page.get("imageScanStatus") or {}).get("status", "")
    body: Any = page.get("imageScanFindings") or {}
    enhanced = status == "ACTIVE" or bool(body.get("enhancedFindings"))
    return ScanHead(enhanced, status, body.get("imageScanCompletedAt"))


def not_scanned() -> Scan:
    """The scan of an image that was not scanned within the wait."""
    return Scan(type="NONE", status="NOT_SCANNED")
