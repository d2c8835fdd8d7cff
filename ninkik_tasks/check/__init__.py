"""`ninkik-tasks check`: is the configuration, Redis, the queue, ECR and ninkik's API as the setup guide says?"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx

from ..config import Settings
from ..errors import ConfigError
from ..tenants import load_tenants_file
from .aws import queue, registry
from .line import Check
from .stores import broker_and_redis

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_sqs import SQSClient


NO_SUCH_TENANT = "00000000-0000-4000-8000-000000000000"
TOKEN_FIX = "set it to the bearer token ninkik gave for this system"


def run(
    settings: Settings,
    sqs: Callable[[], SQSClient],
    ecr: Callable[[str], ECRClient],
    http: httpx.Client,
) -> Iterator[Check]:
    """Every check, in the order an operator would fix them."""
    yield from _config(settings)
    yield from broker_and_redis(settings)
    if settings.sqs_queue_url:
        yield from queue(settings, sqs())
    for account in settings.aws_account_ids:
        for region in settings.allowed_regions():
            yield from registry(settings, ecr(region), account, region, http)
    yield from _ninkik(settings, http)


def _config(s: Settings) -> Iterator[Check]:
    try:
        s.require_ingest()
        s.require_tenant_directory()
    except ConfigError as exc:
        yield Check("FAIL", "config", str(exc))
        return
    yield Check("OK", "config", f"accounts {', '.join(s.aws_account_ids)}; regions {', '.join(s.allowed_regions())}")


def _ninkik(s: Settings, http: httpx.Client) -> Iterator[Check]:
    if s.tenants_file:
        try:
            tenants = load_tenants_file(s.tenants_file)
        except (OSError, ValueError) as exc:
            yield Check("FAIL", "tenants", f"NINKIK_TENANTS_FILE {s.tenants_file} cannot be read: {exc}")
        else:
            yield Check("OK", "tenants", f"NINKIK_TENANTS_FILE lists {len(tenants)} tenants")
    if not s.api_url:
        return
    token = s.api_token.get_secret_value().strip() if s.api_token else ""
    if not token:  # never an empty bearer header: ninkik (or any HTTP stack) refuses it before reading the URL
        yield Check("FAIL", "ninkik", f"NINKIK_API_TOKEN is not set: {TOKEN_FIX}")
        return
    url = f"{s.api_url.rstrip('/')}/api/v1/tenants/{NO_SUCH_TENANT}"
    try:
        response = http.get(url, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        yield Check(
            "FAIL",
            "ninkik",
            f"NINKIK_API_URL {s.api_url} does not answer ({reason}): check the URL and the network path",
        )
        return
    if response.status_code in (401, 403):
        yield Check("FAIL", "ninkik", f"ninkik refuses NINKIK_API_TOKEN ({response.status_code}): set a valid token")
    elif response.status_code in (200, 404):
        yield Check("OK", "ninkik", f"API at {s.api_url} answers and accepts the token")
    else:
        yield Check("FAIL", "ninkik", f"API at {s.api_url} answered {response.status_code} to a tenant lookup")
