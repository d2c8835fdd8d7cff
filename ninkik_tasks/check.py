"""`ninkik-tasks check`: is the configuration, Redis, the queue, ECR and ninkik's API as the setup guide says?"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

import httpx
import redis
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .config import Settings
from .ecr import DENIED, error_code
from .errors import ConfigError
from .tenants import load_tenants_file

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_ecr.type_defs import ImageIdentifierTypeDef
    from mypy_boto3_sqs import SQSClient

Level = Literal["OK", "WARN", "FAIL"]
NO_SUCH_TENANT = "00000000-0000-4000-8000-000000000000"
TOKEN_FIX = "set it to the bearer token ninkik gave for this system"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    level: Level
    what: str
    message: str

    def line(self) -> str:
        """The line as printed."""
        return f"{self.level:<4} {self.what}: {self.message}"


def run(
    settings: Settings,
    sqs: Callable[[], SQSClient],
    ecr: Callable[[str], ECRClient],
    http: httpx.Client,
) -> Iterator[Check]:
    """Every check, in the order an operator would fix them."""
    yield from _config(settings)
    yield from _redis(settings)
    if settings.sqs_queue_url:
        yield from _queue(settings, sqs())
    for account in settings.aws_account_ids:
        for region in settings.allowed_regions():
            yield from _registry(ecr(region), account, region)
    yield from _ninkik(settings, http)


def _config(s: Settings) -> Iterator[Check]:
    try:
        s.require_ingest()
        s.require_tenant_directory()
    except ConfigError as exc:
        yield Check("FAIL", "config", str(exc))
        return
    yield Check("OK", "config", f"accounts {', '.join(s.aws_account_ids)}; regions {', '.join(s.allowed_regions())}")


def _redis(s: Settings) -> Iterator[Check]:
    for name, url in (
        ("NINKIK_BROKER_URL", s.broker_url),
        ("NINKIK_RESULT_BACKEND", s.result_backend),
        ("NINKIK_REDIS_URL", s.redis_url),
    ):
        try:
            redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
        except redis.RedisError as exc:
            yield Check(
                "FAIL", "redis", f"{name} ({_safe_url(url)}) does not answer: {exc}; start Redis or fix the URL"
            )
        else:
            yield Check("OK", "redis", f"{name} answers ({_safe_url(url)})")


def _queue(s: Settings, sqs: SQSClient) -> Iterator[Check]:
    url = s.sqs_queue_url
    assert url
    name = url.rstrip("/").rsplit("/", 1)[-1]
    try:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    except NoCredentialsError:
        yield Check("FAIL", "aws", "no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        return
    except ClientError as exc:
        yield Check("FAIL", "sqs", _denied_or(exc, "sqs:GetQueueAttributes", f"queue {url}"))
        return
    except BotoCoreError as exc:
        yield Check("FAIL", "sqs", f"cannot reach SQS for {url}: {exc}")
        return
    retention = int(attributes.get("MessageRetentionPeriod", "0"))
    visibility = attributes.get("VisibilityTimeout", "?")
    yield Check("OK", "sqs", f"queue {name} found (visibility timeout {visibility} s)")
    if retention <= 300:
        yield Check(
            "WARN",
            "sqs",
            f"retention is {retention} s: an ingest outage longer than that loses events "
            "and relies on reconciliation to find the pushes",
        )
    if "RedrivePolicy" not in attributes:
        yield Check("OK", "sqs", "no dead-letter queue: bad messages are quarantined by ingest instead")
    try:
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=0, WaitTimeSeconds=0)
    except ClientError as exc:
        yield Check("FAIL", "sqs", _denied_or(exc, "sqs:ReceiveMessage", f"queue {url}"))
    else:
        yield Check("OK", "sqs", "sqs:ReceiveMessage is granted")
    try:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="ninkik-tasks-check")
    except ClientError as exc:
        if error_code(exc) in DENIED:
            yield Check(
                "WARN",
                "sqs",
                "sqs:DeleteMessage is not granted: messages will be redelivered until they "
                "expire; add it to the policy to cut SQS traffic",
            )
            return
    yield Check("OK", "sqs", "sqs:DeleteMessage is granted: handled messages are deleted")


def _registry(ecr: ECRClient, account: str, region: str) -> Iterator[Check]:
    where = f"registry {account} in {region}"
    try:
        answer = ecr.describe_repositories(registryId=account, maxResults=100)
    except ClientError as exc:
        yield Check("FAIL", "ecr", _denied_or(exc, "ecr:DescribeRepositories", where))
        return
    except BotoCoreError as exc:
        yield Check("FAIL", "ecr", f"cannot reach ECR for {where}: {exc}")
        return
    names = [r["repositoryName"] for r in answer.get("repositories", [])]
    if not names:
        yield Check(
            "WARN",
            "ecr",
            f"{where} has no repository this user can see: create "
            "${TENANT_UUID}/${PRODUCT} repositories as the setup guide says",
        )
        return
    yield Check("OK", "ecr", f"{where}: ecr:DescribeRepositories is granted ({len(names)} repositories seen)")
    probe: ImageIdentifierTypeDef = {"imageDigest": "sha256:" + "0" * 64}
    for action, call in (
        (
            "ecr:DescribeImages",
            lambda: ecr.describe_images(registryId=account, repositoryName=names[0], imageIds=[probe]),
        ),
        (
            "ecr:DescribeImageScanFindings",
            lambda: ecr.describe_image_scan_findings(registryId=account, repositoryName=names[0], imageId=probe),
        ),
    ):
        try:
            call()
        except ClientError as exc:
            if error_code(exc) in DENIED:
                yield Check(
                    "FAIL", "ecr", f"{action} is not granted on {names[0]}: add it to the ECR policy of the setup guide"
                )
                continue
        yield Check("OK", "ecr", f"{action} is granted")


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


def _denied_or(exc: ClientError, action: str, where: str) -> str:
    code = error_code(exc)
    if code in DENIED:
        return f"{action} is not granted on {where}: attach the setup guide's policy to this IAM user"
    if code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
        return f"{where} does not exist: set NINKIK_SQS_QUEUE_URL to what `aws sqs get-queue-url` prints"
    return f"{action} on {where} failed: {code}"


def _safe_url(url: str) -> str:
    parsed = urlparse(url)
    return url.replace(f":{parsed.password}@", ":***@") if parsed.password else url
