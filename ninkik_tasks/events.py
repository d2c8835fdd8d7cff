"""EventBridge models: `parse` turns a queue message body into an ImagePushed, or says why not."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import (
    IGNORED_IMAGE_SCAN,
    IGNORED_INSPECTOR_FINDING,
    IGNORED_INSPECTOR_SCAN,
    IGNORED_OTHER_EVENT,
    IGNORED_PUSH_FAILED,
    IgnoredEvent,
    InvalidEvent,
)
from .findings import Image

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,299}$"
ACCOUNT_PATTERN = r"^\d{12}$"
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-\d$"
MEDIA_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
# The events a customer's broader EventBridge rule can put on the queue: source -> the detail-types AWS
# documents for it (EventBridge's event reference for ECR, Amazon Inspector's EventBridge schema page).
# Anything else (a detail-type of another service, a misspelt one) is not what AWS sends: quarantined.
CLOUDTRAIL = "AWS API Call via CloudTrail"
AWS_EVENTS = {
    "aws.ecr": {
        "ECR Image Action",
        "ECR Image Scan",
        "ECR Replication Action",
        "ECR Artifact Action",
        "ECR Referrer Action",
        "ECR Scan Resource Change",
        "ECR Pull Through Cache Action",
        CLOUDTRAIL,
    },
    "aws.inspector2": {"Inspector2 Finding", "Inspector2 Scan", "Inspector2 Coverage", CLOUDTRAIL},
}
# "ECR Image Action": what action-type and result say besides PUSH / SUCCESS.
IMAGE_ACTIONS = {"PUSH", "DELETE", "UPDATE_STORAGE_CLASS"}
RESULTS = {"SUCCESS", "FAILURE"}
_REPOSITORY_ARN = re.compile(r"^arn:aws[a-z-]*:ecr:[a-z0-9-]+:\d{12}:repository/(?P<name>.+)$")
# An image's ARN as "Inspector2 Finding" names it in `resources[0]`: the repository, then the digest.
_IMAGE_ARN = re.compile(
    r"^arn:aws[a-z-]*:ecr:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):repository/(?P<name>.+)/(?P<digest>sha256:[0-9a-f]{64})$"
)


class _Envelope(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    detail_type: str = Field(alias="detail-type")
    source: str
    account: str = Field(pattern=ACCOUNT_PATTERN)
    time: datetime
    region: str = Field(pattern=REGION_PATTERN)
    detail: dict[str, Any]


class _Action(BaseModel):
    """What every "ECR Image Action" carries, push or not."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    result: str
    action_type: str = Field(alias="action-type")


class _Push(_Action):
    repository_name: str = Field(alias="repository-name", min_length=2, max_length=256)
    image_digest: str = Field(alias="image-digest", pattern=DIGEST_PATTERN)
    image_tag: str | None = Field(default=None, alias="image-tag", pattern=TAG_PATTERN)
    manifest_media_type: str | None = Field(default=None, alias="manifest-media-type")
    artifact_media_type: str | None = Field(default=None, alias="artifact-media-type")

    @field_validator("image_tag", mode="before")
    @classmethod
    def _untagged(cls, value: object) -> object:
        # ECR sends an untagged push (a platform image of a multi-arch build, a push by digest) as "".
        return None if value == "" else value

    @field_validator("manifest_media_type", "artifact_media_type", mode="before")
    @classmethod
    def _media_type(cls, value: object) -> object:
        # Only a fallback for what DescribeImages says: an odd one is dropped, never a reason to lose the push.
        return value if isinstance(value, str) and re.fullmatch(MEDIA_TYPE_PATTERN, value) else None


class _EcrImage(BaseModel):
    """`detail.resources[].details.awsEcrContainerImage` of an "Inspector2 Finding" (Inspector's
    AwsEcrContainerImageDetails: registry, repositoryName and imageHash are required there)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    registry: str = Field(pattern=ACCOUNT_PATTERN)
    repository_name: str = Field(alias="repositoryName", min_length=2, max_length=256)
    image_hash: str = Field(alias="imageHash", pattern=DIGEST_PATTERN)


class _ScanDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    scan_status: str = Field(alias="scan-status", min_length=1, max_length=64)
    repository_name: str = Field(alias="repository-name", min_length=2, max_length=512)
    image_digest: str = Field(alias="image-digest", pattern=DIGEST_PATTERN)
    image_tags: list[str] = Field(default=[], alias="image-tags")
    finding_severity_counts: dict[str, int] = Field(default={}, alias="finding-severity-counts")


class ImageEvent(BaseModel):
    """What every event about one image names: the event, and the image's registry, region, repository, digest."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    account: str
    region: str
    repository: str
    digest: str


class ImagePushed(ImageEvent):
    """One successful push, reduced to the facts the chain needs (small enough for task arguments)."""

    tag: str | None = None
    time: datetime
    source: Literal["push", "backfill", "reconcile", "rescan", "lifecycle"] = "push"
    # source lifecycle: what made the image worth reading again (lifecycle.py): an ECR event (deleted, archived,
    # restored), a tag it lost to another image (retagged), or the lifecycle sweep (swept).
    change: Literal["deleted", "archived", "restored", "retagged", "swept"] | None = None
    # From the push event; used where DescribeImages does not give them.
    manifest_media_type: str | None = None
    artifact_media_type: str | None = None
    # Started by a scan-complete event for an image that was waiting: read its scan at once, take it as final.
    scan_finished: bool = False
    # Started by an "Inspector2 Finding" event (freshness.py): the chain starts NINKIK_FINDING_REFRESH_SECONDS
    # later, so that the image's other finding events of the burst are read by the same read.
    finding_refresh: bool = False
    # From a sweep's DescribeImages page: the chain's describe step takes the image from here, no call of its own.
    listed: Image | None = None
    observed: float | None = None  # with `listed`: when the page was read (epoch seconds)


class ImageScanned(ImageEvent):
    """An "ECR Image Scan" event: a basic scan of one image finished (it ends that image's scan wait)."""

    status: str
    tags: list[str]
    severity_counts: dict[str, int]
    time: datetime


class Inspector2Scanned(ImageScanned):
    """An "Inspector2 Scan" event: Amazon Inspector's initial scan of one image finished (ends its wait)."""


class FindingChanged(ImageEvent):
    """An "Inspector2 Finding" event for an ECR image: one of its findings was created, updated or closed.

    `account` is the image's registry (awsEcrContainerImage.registry), which with an Inspector delegated
    administrator is not the account the event arrived in (`event_account`).
    """

    status: str  # the finding's: ACTIVE, SUPPRESSED, CLOSED
    event_account: str
    time: datetime


_Scan = TypeVar("_Scan", bound=ImageScanned)
_Model = TypeVar("_Model", bound=BaseModel)


def parse(
    body: str | bytes,
    *,
    accounts: Collection[str],
    regions: Collection[str] | Mapping[str, Collection[str]],
    max_bytes: int = 256 * 1024,
) -> ImagePushed:
    """Validate one message body: an ImagePushed, IgnoredEvent for another well-formed AWS event, else InvalidEvent.

    `regions` is the regions of every account, or each account's own (account id -> its regions).
    """
    try:
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    except UnicodeEncodeError:
        raise InvalidEvent("not_json", "message is not valid UTF-8 text") from None
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"message is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent("not_json", f"message is not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise InvalidEvent("wrong_shape", f"message is a JSON {type(data).__name__}, not an object")
    source, detail_type = data.get("source"), data.get("detail-type")
    if not (isinstance(source, str) and isinstance(detail_type, str) and detail_type in AWS_EVENTS.get(source, ())):
        raise InvalidEvent(
            "not_an_image_action",
            f"detail-type {str(detail_type)[:80]!r} from {str(source)[:80]!r} is not an ECR or Amazon Inspector event",
        )
    envelope = _validated(_Envelope, data, "")
    kind = (envelope.source, envelope.detail_type)
    finding = finding_event(envelope, data.get("resources")) if kind == FINDING else None
    # A finding's image may be in another account than the event (an Inspector delegated administrator's).
    account = finding.account if finding is not None else envelope.account
    if account not in accounts:
        raise InvalidEvent("account_not_allowed", f"account {account} is not in NINKIK_AWS_ACCOUNT_IDS")
    if isinstance(regions, Mapping):
        own = regions.get(account, ())
        if envelope.region not in own:
            raise InvalidEvent(
                "region_not_allowed",
                f"region {envelope.region} is not listed for account {account} (its regions: {', '.join(sorted(own))})",
            )
    elif envelope.region not in regions:
        raise InvalidEvent("region_not_allowed", f"region {envelope.region} is not in NINKIK_AWS_REGIONS")
    if kind == ("aws.ecr", "ECR Image Action"):
        return _image_action(envelope)
    if kind == ("aws.ecr", "ECR Image Scan"):
        scanned = scan_event(envelope, ImageScanned)
        raise IgnoredEvent(IGNORED_IMAGE_SCAN, f"basic scan {scanned.status} of {_ref(scanned)}", scanned)
    if kind == ("aws.inspector2", "Inspector2 Scan"):
        inspected = scan_event(envelope, Inspector2Scanned)
        raise IgnoredEvent(IGNORED_INSPECTOR_SCAN, f"Inspector scan {inspected.status} of {_ref(inspected)}", inspected)
    if kind == FINDING:
        if finding is None:
            raise IgnoredEvent(
                IGNORED_OTHER_EVENT, "an Amazon Inspector finding of a resource that is not an ECR image"
            )
        raise IgnoredEvent(
            IGNORED_INSPECTOR_FINDING,
            f"Inspector finding {finding.status} of {_ref(finding)}: refreshes its report",
            finding,
        )
    raise IgnoredEvent(IGNORED_OTHER_EVENT, f"{envelope.detail_type[:80]!r} from {envelope.source} is not a push")


def _image_action(envelope: _Envelope) -> ImagePushed:
    action = _validated(_Action, envelope.detail, "detail.")
    if action.action_type not in IMAGE_ACTIONS or action.result not in RESULTS:
        raise InvalidEvent(
            "not_a_successful_push",
            f"action-type {action.action_type[:40]!r} with result {action.result[:40]!r} is not an image action "
            "ECR sends",
        )
    if action.result != "SUCCESS":
        raise IgnoredEvent(IGNORED_PUSH_FAILED, f"a {action.action_type} whose result is {action.result[:40]!r}")
    push = _validated(_Push, envelope.detail, "detail.")
    change: Literal["deleted", "archived", "restored"] | None = None
    if action.action_type == "DELETE":
        change = "deleted"  # by digest, or a tag (`image-tag`): DescribeImages says whether the image is gone
    elif action.action_type == "UPDATE_STORAGE_CLASS":
        target = envelope.detail.get("target-storage-class")
        change = "archived" if target == "ARCHIVE" else "restored"
    return ImagePushed(
        source="lifecycle" if change else "push",
        change=change,
        event_id=envelope.id,
        account=envelope.account,
        region=envelope.region,
        repository=push.repository_name,
        digest=push.image_digest,
        tag=push.image_tag,
        time=envelope.time,
        manifest_media_type=push.manifest_media_type,
        artifact_media_type=push.artifact_media_type,
    )


def scan_event(envelope: _Envelope, model: type[_Scan]) -> _Scan:
    """An "ECR Image Scan" or "Inspector2 Scan" event as its model (repository-name may be the repository's ARN)."""
    detail = _validated(_ScanDetail, envelope.detail, "detail.")
    arn = _REPOSITORY_ARN.fullmatch(detail.repository_name)
    return model(
        event_id=envelope.id,
        account=envelope.account,
        region=envelope.region,
        repository=arn["name"] if arn else detail.repository_name,
        digest=detail.image_digest,
        status=detail.scan_status,
        tags=sorted(t for t in detail.image_tags if t),
        severity_counts=detail.finding_severity_counts,
        time=envelope.time,
    )


FINDING = ("aws.inspector2", "Inspector2 Finding")


def finding_event(envelope: _Envelope, resources: object) -> FindingChanged | None:
    """The image an "Inspector2 Finding" is about, None for another resource (EC2, Lambda, a code repository).

    `detail.resources[].details.awsEcrContainerImage` names it; `resources[0]` (the image's ARN) is the fallback.
    Timestamps in the detail are not read: AWS's samples write them console-style ("Dec 3, 2021, 6:02:30 PM").
    """
    status = envelope.detail.get("status")
    status = status[:32] if isinstance(status, str) and status else "UNKNOWN"
    image: tuple[str, str, str] | None = None
    listed = envelope.detail.get("resources")
    for resource in listed if isinstance(listed, list) else []:
        details = resource.get("details") if isinstance(resource, dict) else None
        ecr = details.get("awsEcrContainerImage") if isinstance(details, dict) else None
        if ecr is not None:
            found = _validated(_EcrImage, ecr, "detail.resources[].details.awsEcrContainerImage.")
            image = (found.registry, found.repository_name, found.image_hash)
            break
    if image is None and isinstance(resources, list) and resources and isinstance(resources[0], str):
        arn = _IMAGE_ARN.fullmatch(resources[0])
        image = (arn["account"], arn["name"], arn["digest"]) if arn else None
    if image is None:
        return None
    return FindingChanged(
        event_id=envelope.id,
        account=image[0],
        region=envelope.region,
        repository=image[1],
        digest=image[2],
        status=status,
        event_account=envelope.account,
        time=envelope.time,
    )


def scanned_image(event: ImageScanned) -> ImagePushed:
    """What the chain needs to report an image whose scan a scan-complete event says is done."""
    return ImagePushed(
        event_id=event.event_id,
        account=event.account,
        region=event.region,
        repository=event.repository,
        digest=event.digest,
        tag=event.tags[0] if event.tags else None,
        time=event.time,
        scan_finished=True,
    )


def _validated(model: type[_Model], data: Any, prefix: str) -> _Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidEvent("wrong_shape", f"{prefix}{where}: {first['msg']}") from None


def _ref(event: ImageEvent) -> str:
    return f"repository={event.repository} digest={event.digest}"
