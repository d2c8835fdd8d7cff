"""`ninkik-tasks check`: is the configuration, Redis, the queue, ECR and ninkik's API as the setup guide says?"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import httpx
import redis
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from . import brokers, indexes, tls
from .backfill import LIMIT, LISTING_STATEMENT
from .config import Settings
from .ecr import DENIED, INSPECTOR_FIX, INSPECTOR_STATEMENT, error_code, error_message
from .errors import ConfigError, PermanentError, TransientError
from .inventory import Inventory, Known, Registry
from .tenants import Directory, load_tenants_file, split

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
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
    yield from _brokers(settings)
    if settings.sqs_queue_url:
        yield from _queue(settings, sqs())
    for account in settings.aws_account_ids:
        for region in settings.allowed_regions():
            yield from _registry(settings, ecr(region), account, region, http)
    yield from _ninkik(settings, http)


def _config(s: Settings) -> Iterator[Check]:
    try:
        s.require_ingest()
        s.require_tenant_directory()
    except ConfigError as exc:
        yield Check("FAIL", "config", str(exc))
        return
    yield Check("OK", "config", f"accounts {', '.join(s.aws_account_ids)}; regions {', '.join(s.allowed_regions())}")


LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _brokers(s: Settings) -> Iterator[Check]:
    """The broker (RabbitMQ or Redis), then Redis as result backend and records' store."""
    urls = [("NINKIK_RESULT_BACKEND", s.result_backend), ("NINKIK_REDIS_URL", s.redis_url)]
    try:
        kind = brokers.for_url(s.broker_url).__name__.rsplit(".", 1)[-1]
    except ConfigError as exc:
        yield Check("FAIL", "broker", str(exc))
        kind = ""
    if kind == "rabbitmq":
        yield from _rabbitmq(s)
    elif kind == "redis":
        urls.insert(0, ("NINKIK_BROKER_URL", s.broker_url))
    for name, url in urls:
        try:
            redis.Redis.from_url(
                url, socket_connect_timeout=3, socket_timeout=3, **tls.redis_client_options(url, s)
            ).ping()
        except redis.RedisError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                yield Check(
                    "FAIL",
                    "redis",
                    f"{name} ({_safe_url(url)}) presents a certificate that does not verify: set "
                    "NINKIK_TLS_CA_FILE to the CA that signed it (or fix the host name in the URL)",
                )
                continue
            yield Check(
                "FAIL", "redis", f"{name} ({_safe_url(url)}) does not answer: {exc}; start Redis or fix the URL"
            )
        else:
            yield Check("OK", "redis", f"{name} answers ({_safe_url(url)})")


def _rabbitmq(s: Settings) -> Iterator[Check]:
    from kombu.connection import Connection

    from .brokers import rabbitmq
    from .celery_app import QUEUES

    url = s.broker_url
    parsed = urlparse(url)
    host = parsed.hostname or "localhost"
    if (parsed.username or "guest") == "guest" and (parsed.password or "guest") == "guest" and host not in LOOPBACK:
        yield Check(
            "WARN",
            "broker",
            f"NINKIK_BROKER_URL logs in to {host} as guest/guest: RabbitMQ refuses guest from other hosts, "
            "and a well-known password is no password; create a user of its own (rabbitmqctl add_user)",
        )
    ssl: Any = tls.amqp_options(s) if parsed.scheme == "amqps" else False
    try:
        conn = Connection(url, connect_timeout=5, ssl=ssl)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        yield Check("FAIL", "broker", f"NINKIK_BROKER_URL ({_safe_url(url)}) is not a valid URL: {exc}")
        return
    try:
        conn.ensure_connection(max_retries=1)  # type: ignore[no-untyped-call]
    except Exception as exc:
        conn.release()  # type: ignore[no-untyped-call]
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            yield Check(
                "FAIL",
                "broker",
                f"NINKIK_BROKER_URL ({_safe_url(url)}) presents a certificate that does not verify: set "
                "NINKIK_TLS_CA_FILE to the CA that signed it (or fix the host name in the URL)",
            )
            return
        yield Check(
            "FAIL",
            "broker",
            f"NINKIK_BROKER_URL ({_safe_url(url)}) does not answer: {exc}; start RabbitMQ or fix the URL",
        )
        return
    names = [*QUEUES, rabbitmq.DEAD_LETTER_QUEUE]
    try:
        yield Check("OK", "broker", f"NINKIK_BROKER_URL answers (RabbitMQ {_server_version(conn)}, {_safe_url(url)})")
        types = _queue_types(s, parsed)
        if types is None:
            found = _passive(conn, names)
            missing = [name for name in names if not found[name]]
            how = "AMQP passive declare (the management API, port 15672, does not answer: the type is not checked)"
        else:
            missing = [name for name in names if name not in types]
            how = "management API"
            for name, kind in sorted(types.items()):
                if name in names and kind != "quorum":
                    yield Check(
                        "FAIL",
                        "broker",
                        f"queue {name} is a {kind} queue: ninkik-tasks declares quorum queues; delete it "
                        f"(rabbitmqctl delete_queue {name}, after draining it) and restart a worker to declare it",
                    )
        if missing:
            yield Check(
                "WARN",
                "broker",
                f"queues not declared yet: {', '.join(missing)} (a worker declares them when it starts)",
            )
        else:
            yield Check("OK", "broker", f"queues {', '.join(names)} exist ({how})")
    finally:
        conn.release()  # type: ignore[no-untyped-call]


def _server_version(conn: Any) -> str:
    properties = getattr(conn.connection, "server_properties", {}) or {}
    version = properties.get("version", "?")
    return version.decode() if isinstance(version, bytes) else str(version)


def _queue_types(s: Settings, parsed: Any) -> dict[str, str] | None:
    """Queue name -> type in the broker URL's vhost, from the management API; None if it does not answer."""
    from urllib.parse import quote, unquote

    base = s.broker_management_url or f"http://{parsed.hostname or 'localhost'}:15672"
    vhost = unquote(parsed.path[1:]) if parsed.path not in ("", "/") else "/"
    try:
        answer = httpx.get(
            f"{base.rstrip('/')}/api/queues/{quote(vhost, safe='')}",
            auth=(unquote(parsed.username or "guest"), unquote(parsed.password or "guest")),
            timeout=5,
        )
        answer.raise_for_status()
        return {q["name"]: q.get("type", "classic") for q in answer.json()}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _passive(conn: Any, names: list[str]) -> dict[str, bool]:
    found = {}
    for name in names:
        channel = conn.channel()
        try:
            channel.queue_declare(name, passive=True)
            found[name] = True
        except conn.channel_errors:
            found[name] = False
        finally:
            with contextlib.suppress(Exception):
                channel.close()
    return found


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


def _registry(s: Settings, ecr: ECRClient, account: str, region: str, http: httpx.Client) -> Iterator[Check]:
    """ECR as AWS evaluates the guide's policy: the listing, a named repository, an image, its findings."""
    where = f"registry {account} in {region}"
    registry = Registry(account, region)
    listed: list[str] | None = None
    try:
        answer = ecr.describe_repositories(registryId=account, maxResults=100)
    except NoCredentialsError:
        yield Check("FAIL", "aws", "no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        return
    except ClientError as exc:
        if error_code(exc) not in DENIED:
            yield Check("FAIL", "ecr", _denied_or(exc, "ecr:DescribeRepositories", where))
            return
        statement = LISTING_STATEMENT.replace("<region>", region).replace("<account>", account)
        yield Check(
            "WARN",
            "ecr",
            f"{where}: ecr:DescribeRepositories on repository/* is not granted (the guide scopes ECR to "
            f"repository/${{TENANT_UUID}}/*), so sweeps name the repositories they know instead: {LIMIT}; "
            f"to let them list the registry, add {statement}",
        )
    except BotoCoreError as exc:
        yield Check("FAIL", "ecr", f"cannot reach ECR for {where}: {exc}")
        return
    else:
        listed = []
        for repository in answer.get("repositories", []):
            with suppress(PermanentError):
                split(repository["repositoryName"])
                listed.append(repository["repositoryName"])
        yield Check("OK", "ecr", f"{where}: ecr:DescribeRepositories is granted on the whole registry (listing works)")

    by_tenant = _names_by_tenant(s, http, registry, listed)
    for problem in by_tenant.pop("", []):
        yield Check("WARN", "tenants", problem)
    if not by_tenant:
        if listed is None:
            yield Check(
                "WARN",
                "ecr",
                f"{where}: no tenant is known, so sweeps have nothing to read: set NINKIK_TENANT_UUIDS "
                "(or NINKIK_TENANTS_FILE) to the tenants this deployment serves",
            )
        else:
            yield Check(
                "WARN",
                "ecr",
                f"{where} has no repository this user can see: create "
                "${TENANT_UUID}/${PRODUCT} repositories as the setup guide says",
            )
        return
    for tenant, names in sorted(by_tenant.items()):
        if not names:
            yield Check(
                "WARN",
                "ecr",
                f"tenant {tenant} has nothing to sweep in {where}: ninkik does not know it or it has no product, "
                "and no repository of it was seen in a push event or is in NINKIK_REPOSITORIES",
            )
    candidates = [name for names in by_tenant.values() for name in names]
    existing = None
    for name in candidates[:10]:
        try:
            ecr.describe_repositories(registryId=account, repositoryNames=[name])
        except ClientError as exc:
            if error_code(exc) == "RepositoryNotFoundException":
                continue
            if error_code(exc) in DENIED:
                tenant = name.split("/", 1)[0]
                yield Check(
                    "FAIL",
                    "ecr",
                    f"ecr:DescribeRepositories is not granted on {name}: attach the setup guide's ECR policy with "
                    f"Resource arn:aws:ecr:{region}:{account}:repository/{tenant}/* to this IAM user",
                )
                return
            yield Check("FAIL", "ecr", _denied_or(exc, "ecr:DescribeRepositories", name))
            return
        existing = name
        break
    if existing is None:
        yield Check(
            "WARN",
            "ecr",
            f"none of the {len(candidates)} repositories known by name exists in {where} yet: "
            "could not check ecr:DescribeImages and ecr:DescribeImageScanFindings",
        )
        return
    yield Check("OK", "ecr", f"ecr:DescribeRepositories is granted on {existing}")
    yield from _images(ecr, account, existing)


def _images(ecr: ECRClient, account: str, repository: str) -> Iterator[Check]:
    """DescribeImages on a repository, and the findings of one of its images (enhanced scanning or not)."""
    try:
        details = ecr.describe_images(registryId=account, repositoryName=repository, maxResults=10)["imageDetails"]
    except ClientError as exc:
        yield Check("FAIL", "ecr", _ecr_fix(exc, "ecr:DescribeImages", repository))
        return
    yield Check("OK", "ecr", f"ecr:DescribeImages is granted on {repository}")
    if not details:
        yield Check(
            "WARN",
            "ecr",
            f"{repository} has no image: could not tell whether enhanced scanning (Amazon Inspector) is on; if it "
            f"is, reading its findings needs {INSPECTOR_STATEMENT} added to the ECR policy",
        )
        return
    digest = details[0]["imageDigest"]
    granted, line = indexes.probe(ecr, account, ecr.meta.region_name, repository, digest)
    yield Check("OK" if granted else "WARN", "ecr", line)
    try:
        findings = ecr.describe_image_scan_findings(
            registryId=account, repositoryName=repository, imageId={"imageDigest": digest}, maxResults=1
        )
    except ClientError as exc:
        if error_code(exc) == "ScanNotFoundException":
            yield Check("OK", "ecr", f"ecr:DescribeImageScanFindings is granted on {repository}")
            yield Check(
                "WARN",
                "ecr",
                f"{repository}@{digest[:19]} has no scan: could not tell whether enhanced scanning (Amazon "
                f"Inspector) is on; if it is, reading its findings needs {INSPECTOR_STATEMENT} added to the ECR policy",
            )
            return
        yield Check("FAIL", "ecr", _ecr_fix(exc, "ecr:DescribeImageScanFindings", repository))
        return
    yield Check("OK", "ecr", f"ecr:DescribeImageScanFindings is granted on {repository}")
    body: Any = findings.get("imageScanFindings") or {}
    status = (findings.get("imageScanStatus") or {}).get("status", "")
    if body.get("enhancedFindings") or status in ENHANCED_STATUSES:
        yield Check(
            "OK",
            "ecr",
            "enhanced scanning (Amazon Inspector) is on and its findings are readable (inspector2:ListFindings)",
        )
    else:
        yield Check(
            "OK",
            "ecr",
            f"basic scanning findings are readable ({status or 'no status'}); enhanced scanning, if turned on, "
            f"needs {INSPECTOR_STATEMENT} added to the ECR policy",
        )


# Scan statuses only enhanced scanning gives (basic scanning's are COMPLETE, FAILED, ...).
ENHANCED_STATUSES = {"ACTIVE", "SCAN_ELIGIBILITY_EXPIRED", "FINDINGS_UNAVAILABLE"}


def _ecr_fix(exc: ClientError, action: str, repository: str) -> str:
    if error_code(exc) in DENIED:
        if "inspector2:" in error_message(exc):
            return INSPECTOR_FIX
        return f"{action} is not granted on {repository}: add it to the ECR policy of the setup guide"
    return f"{action} on {repository} failed: {error_code(exc)}"


def _names_by_tenant(
    s: Settings, http: httpx.Client, registry: Registry, listed: list[str] | None
) -> dict[str, list[str]]:
    """Tenant -> repositories sweeps would read ("" -> problems met on the way)."""
    out: dict[str, list[str]] = {}
    problems: list[str] = []
    if listed is not None:
        for name in listed:
            out.setdefault(split(name).tenant, []).append(name)
    try:
        client = redis.Redis.from_url(s.redis_url, decode_responses=True, socket_connect_timeout=3, socket_timeout=3)
        directory = Directory(
            client,
            s.redis_namespace,
            http=http,
            api_url=s.api_url,
            token=s.api_token.get_secret_value() if s.api_token else None,
            tenants_file=s.tenants_file,
            cache_seconds=s.tenant_cache_seconds,
        )
        known = Known(
            Inventory(client, s.redis_namespace), lambda: directory, set(s.tenant_uuids), tuple(s.repositories)
        )
        if s.tenants_file:
            with suppress(OSError, ValueError):
                known.tenants |= set(load_tenants_file(s.tenants_file))
        if listed is None:
            for tenant in sorted(known.all_tenants()):
                out[tenant] = known.names(registry, tenant)
    except (redis.RedisError, TransientError, PermanentError, ConfigError) as exc:
        problems.append(f"could not work out the repositories known by name: {exc}")
    if problems:
        out[""] = problems
    return out


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
