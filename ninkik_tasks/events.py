"""EventBridge "ECR Image Action" models; `parse` turns a queue message body into an ImagePushed."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidEvent

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
TAG_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,299}$"
ACCOUNT_PATTERN = r"^\d{12}$"
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-\d$"


class _Detail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    result: str
    action_type: str = Field(alias="action-type")
    repository_name: str = Field(alias="repository-name", min_length=2, max_length=256)
    image_digest: str = Field(alias="image-digest", pattern=DIGEST_PATTERN)
    image_tag: str | None = Field(default=None, alias="image-tag", pattern=TAG_PATTERN)


class _Envelope(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    detail_type: str = Field(alias="detail-type")
    source: str
    account: str = Field(pattern=ACCOUNT_PATTERN)
    time: datetime
    region: str = Field(pattern=REGION_PATTERN)
    detail: _Detail


class ImagePushed(BaseModel):
    """One successful push, reduced to the facts the chain needs (small enough for task arguments)."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    account: str
    region: str
    repository: str
    digest: str
    tag: str | None = None
    time: datetime
    source: Literal["push", "backfill", "reconcile", "rescan"] = "push"


def parse(
    body: str | bytes,
    *,
    accounts: Collection[str],
    regions: Collection[str],
    max_bytes: int = 256 * 1024,
) -> ImagePushed:
    """Validate one message body; raise InvalidEvent with a reason code if it is not an accepted push."""
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
    if data.get("detail-type") != "ECR Image Action" or data.get("source") != "aws.ecr":
        raise InvalidEvent(
            "not_an_image_action",
            f"detail-type {str(data.get('detail-type'))[:80]!r} from {str(data.get('source'))[:80]!r} "
            "is not an ECR Image Action",
        )
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidEvent("wrong_shape", f"{where}: {first['msg']}") from None
    detail = envelope.detail
    if detail.action_type != "PUSH" or detail.result != "SUCCESS":
        raise InvalidEvent(
            "not_a_successful_push",
            f"action-type {detail.action_type[:40]!r} with result {detail.result[:40]!r} is not a successful push",
        )
    if envelope.account not in accounts:
        raise InvalidEvent("account_not_allowed", f"account {envelope.account} is not in NINKIK_AWS_ACCOUNT_IDS")
    if envelope.region not in regions:
        raise InvalidEvent("region_not_allowed", f"region {envelope.region} is not in NINKIK_AWS_REGIONS")
    return ImagePushed(
        event_id=envelope.id,
        account=envelope.account,
        region=envelope.region,
        repository=detail.repository_name,
        digest=detail.image_digest,
        tag=detail.image_tag,
        time=envelope.time,
    )
