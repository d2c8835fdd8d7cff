"""The ninkik images API: render the body (pure), send it, classify the answer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from .errors import PermanentError, TransientError
from .findings import Report
from .tenants import Match


def idempotency_key(match: Match, report: Report) -> str:
    """Stable for the same tenant, repository, digest and report; different when any changes."""
    material = "\n".join((match.tenant, report.image.repository, report.image.digest, report.fingerprint()))
    return hashlib.sha256(material.encode()).hexdigest()


def render(report: Report, source: str) -> dict[str, Any]:
    """The JSON body of the POST, as DESIGN.md's contract has it."""
    body = report.model_dump(mode="json")
    rendered = {"source": source, "image": body["image"], "scan": body["scan"]}
    if report.index is not None:  # an image index: fields added, none changed (single-platform consumers read on)
        rendered["index"] = body["index"]
    for finding in rendered["scan"]["findings"]:
        if finding.get("platforms") is None:
            finding.pop("platforms", None)
    return rendered


def images_url(api_url: str, match: Match) -> str:
    """Where a tenant's product receives image reports."""
    return f"{api_url.rstrip('/')}/api/v1/tenants/{match.tenant}/products/{match.product}/images"


def image_url(api_url: str, match: Match, digest: str) -> str:
    """One image of a tenant's product (what DELETE removes)."""
    return f"{images_url(api_url, match)}/{digest}"


def send(http: httpx.Client, url: str, token: str, key: str, body: dict[str, Any] | str) -> int:
    """POST one report (`body` rendered, or already as JSON); returns the status when done, raises TransientError or
    PermanentError otherwise."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key, "Content-Type": "application/json"}
    content = (body if isinstance(body, str) else json.dumps(body)).encode()
    return _answered(lambda: http.post(url, content=content, headers=headers))


def remove(http: httpx.Client, url: str, token: str, key: str) -> int:
    """DELETE one image; `2xx` and `404` (ninkik has no such image) are done, other answers as a report's."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    return _answered(lambda: http.delete(url, headers=headers), done=(404,))


def _answered(call: Callable[[], httpx.Response], done: tuple[int, ...] = (409,)) -> int:
    """The status of a call ninkik answered as done; TransientError or PermanentError otherwise."""
    try:
        response = call()
    except httpx.TimeoutException:
        raise TransientError("ninkik did not answer in time") from None
    except httpx.HTTPError as exc:
        raise TransientError(f"ninkik unreachable: {type(exc).__name__}") from None
    status = response.status_code
    if 200 <= status < 300 or status in done:
        return status
    if status == 429:
        raise TransientError("ninkik answered 429", retry_after=retry_after(response.headers.get("Retry-After")))
    if status >= 500:
        raise TransientError(f"ninkik answered {status}")
    raise PermanentError(f"http_{status}", f"ninkik answered {status}: {response.text[:200]}")


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
