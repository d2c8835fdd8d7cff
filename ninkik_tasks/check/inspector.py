"""`check` of Amazon Inspector's coverage view: whether the identity may call inspector2:ListCoverage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..coverage.inspector import ECR_IMAGE, SCOPE, STATEMENT
from ..ecr import DENIED, error_code
from .line import Check


def coverage_permission(client: Any, account: str, region: str) -> Iterator[Check]:
    """One ListCoverage call of one result: granted, or what `coverage` shows without it."""
    where = f"account {account} in {region}"
    try:
        client.list_coverage(
            maxResults=1, filterCriteria={"resourceType": [{"comparison": "EQUALS", "value": ECR_IMAGE}]}
        )
    except ClientError as exc:
        code = error_code(exc)
        if code in DENIED:
            yield Check(
                "INFO",
                "inspector",
                f"{where}: inspector2:ListCoverage is not granted: `coverage` shows ECR's scan statuses only; for "
                f"Amazon Inspector's reason per image add {STATEMENT} ({SCOPE})",
            )
            return
        yield Check("INFO", "inspector", f"{where}: inspector2:ListCoverage could not be asked ({code or exc})")
        return
    except BotoCoreError as exc:
        yield Check("INFO", "inspector", f"{where}: Amazon Inspector does not answer ({exc})")
        return
    yield Check(
        "OK",
        "inspector",
        f"{where}: inspector2:ListCoverage is granted: `coverage` adds Amazon Inspector's reason per image ({SCOPE})",
    )
