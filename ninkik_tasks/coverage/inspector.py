"""Amazon Inspector's view of coverage: inspector2:ListCoverage's scanStatus per ECR image, where granted.

ListCoverage has no resource-level permissions: it is granted on Resource "*" or not at all, and then lists the
coverage of every resource Inspector covers in the account (EC2 instances and Lambda functions too), not only a
tenant's repositories. Only ECR images are asked for (filterCriteria resourceType), and only those ninkik
holds are counted.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..ecr import DENIED, error_code, error_message

log = logging.getLogger(__name__)
# The client is botocore's inspector2 (boto3-stubs[inspector2] is not a dependency: typed as Any).

ECR_IMAGE = "AWS_ECR_CONTAINER_IMAGE"
STATEMENT = '{"Effect": "Allow", "Action": "inspector2:ListCoverage", "Resource": "*"}'
SCOPE = (
    'Resource "*" only: ListCoverage cannot be scoped to a repository, and lists the coverage of every resource '
    "Inspector covers in the account"
)
PAGE_SIZE = 200  # the most ListCoverage returns per call
# arn:aws:ecr:<region>:<account>:repository/<name>/sha256:<hex>, as Inspector names an ECR image
_IMAGE_ARN = re.compile(
    r"^arn:aws[a-z-]*:ecr:[^:]*:\d{12}:repository/(?P<repository>.+)/(?P<digest>sha256:[0-9a-f]{64})$"
)


@dataclass
class InspectorView:
    """What ListCoverage said of one registry's ECR images."""

    status: str  # "read", "not granted: ...", "not read: ..."
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)  # (repository, digest) -> scanStatus.reason


def image_of(resource: dict[str, Any]) -> tuple[str, str] | None:
    """(repository, digest) of a covered ECR image, None for any other resource."""
    if resource.get("resourceType") != ECR_IMAGE:
        return None
    match = _IMAGE_ARN.fullmatch(str(resource.get("resourceId", "")))
    if match is None:
        return None
    named = ((resource.get("resourceMetadata") or {}).get("ecrRepository") or {}).get("name")
    return str(named or match["repository"]), match["digest"]


def reason_of(resource: dict[str, Any]) -> str:
    """The resource's scanStatus.reason (its statusCode when no reason is given)."""
    status = resource.get("scanStatus") or {}
    return str(status.get("reason") or status.get("statusCode") or "UNKNOWN")


def list_coverage(client: Any, account: str) -> InspectorView:
    """Every ECR image of `account` that Inspector covers in the client's region, with its reason."""
    criteria: Any = {
        "resourceType": [{"comparison": "EQUALS", "value": ECR_IMAGE}],
        "accountId": [{"comparison": "EQUALS", "value": account}],
    }
    view = InspectorView("read")
    try:
        pages = client.get_paginator("list_coverage").paginate(
            filterCriteria=criteria, PaginationConfig={"PageSize": PAGE_SIZE}
        )
        for page in pages:
            for resource in page.get("coveredResources", []):
                image = image_of(dict(resource))
                if image is not None:
                    view.reasons[image] = reason_of(dict(resource))
    except ClientError as exc:
        code = error_code(exc)
        if code in DENIED:
            return InspectorView(f"not granted: {code}: {error_message(exc)}"[:300])
        log.warning("inspector2:ListCoverage of %s failed: %s: %s", account, code, error_message(exc))
        return InspectorView(f"not read: {code or 'error'}")
    except BotoCoreError as exc:
        log.warning("inspector2:ListCoverage of %s failed: %s", account, exc)
        return InspectorView(f"not read: {type(exc).__name__}")
    return view
