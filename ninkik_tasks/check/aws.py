"""`check` of AWS as the guide's policy allows it: the queue, then each registry's ECR."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import httpx
import redis
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .. import indexes
from ..accounts import Account
from ..backfill import LIMIT, LISTING_STATEMENT
from ..clients import queue_endpoint_mismatch
from ..config import Settings
from ..ecr import DENIED, INSPECTOR_FIX, INSPECTOR_STATEMENT, error_code, error_message
from ..errors import ConfigError, PermanentError, TransientError
from ..inventory import Inventory, Known, Registry
from ..tenants import Directory, load_tenants_file, split
from .line import Check
from .stores import records_client

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sts import STSClient


CONFUSED_DEPUTY = "https://docs.aws.amazon.com/IAM/latest/UserGuide/confused-deputy.html"


class WrongAccount(Exception):
    """The identity is another account's: nothing else of the account is checked with it."""


def identity(sts: STSClient, account: Account) -> Iterator[Check]:
    """sts:GetCallerIdentity (which needs no permission): the account's identity is that account's.
    IdentityUnavailable (a refused role) is raised as it is."""
    where = f"account {account.id}"
    try:
        answer = sts.get_caller_identity()
    except NoCredentialsError:
        fix = "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        yield Check("FAIL", "aws", f"{where}: no AWS credentials: {fix}")
        raise WrongAccount() from None
    except ClientError as exc:  # the queue and registry checks say what else fails
        yield Check("FAIL", "aws", f"{where}: sts:GetCallerIdentity failed: {error_code(exc)}: {error_message(exc)}")
        return
    except BotoCoreError as exc:
        yield Check("FAIL", "aws", f"{where}: cannot reach STS: {exc}")
        return
    who, arn = answer.get("Account", ""), answer.get("Arn", "")
    if who == account.id:
        yield Check("OK", "account", f"{where}: sts:GetCallerIdentity answers {who} ({arn})")
    elif account.identity == "default":
        # One identity for all accounts (the one-account settings): other registries are read across accounts.
        yield Check("INFO", "account", f"{where}: read across accounts as {arn} (account {who})")
    else:
        fix = "role_arn must be a role of the account" if account.role_arn else "the profile must hold its keys"
        line = f"{where}: its {account.identity} is {arn}, of account {who}: {fix}"
        yield Check("FAIL", "account", line, setting=True)
        raise WrongAccount()


def queue(s: Settings, sqs: SQSClient, url: str) -> Iterator[Check]:
    """A queue: it exists, can be read, and whether handled messages can be deleted."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    mismatch = queue_endpoint_mismatch(url, sqs.meta.endpoint_url)
    if mismatch:
        yield Check("FAIL", "sqs", mismatch, setting=True)
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
    yield Check("OK", "sqs", f"queue {name} found at {sqs.meta.endpoint_url} (visibility timeout {visibility} s)")
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


def registry(
    s: Settings, ecr: ECRClient, account: str, region: str, http: httpx.Client, tenants: dict[str, str]
) -> Iterator[Check]:
    """ECR as AWS evaluates the guide's policy: the listing, a named repository, an image, its findings.
    The tenants of the repositories it lists are added to `tenants` (tenant -> where it is named)."""
    where = f"registry {account} in {region}"
    yield Check("OK", "ecr", f"{where}: calls go to {ecr.meta.endpoint_url}")
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
                tenant = split(repository["repositoryName"]).tenant
                listed.append(repository["repositoryName"])
                tenants.setdefault(tenant, f"repository {repository['repositoryName']} in {where}")
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
        client = records_client(s)
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


def _denied_or(exc: ClientError, action: str, where: str) -> str:
    code = error_code(exc)
    if code in DENIED:
        return f"{action} is not granted on {where}: attach the setup guide's policy to this IAM user"
    if code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
        return f"{where} does not exist: set NINKIK_SQS_QUEUE_URL to what `aws sqs get-queue-url` prints"
    return f"{action} on {where} failed: {code}"
