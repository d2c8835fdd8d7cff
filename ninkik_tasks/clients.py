"""boto3, Redis and HTTP clients, made lazily once per process and dropped in a forked child.

Every AWS client acts for one account (accounts.py) and is made from that account's session: the process's own
identity, a named profile, or a role assumed through botocore's own AssumeRole machinery and refreshed before it
expires (RoleCredentials).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import boto3
import botocore.session
import httpx
import redis
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ProfileNotFound

from . import tls
from .accounts import Account, queue_region
from .config import Settings
from .errors import ConfigError, IdentityUnavailable
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sts import STSClient

# botocore's "standard" mode retries throttling codes and 5xx with backoff and jitter;
# what still fails after these attempts becomes a Celery retry (TransientError).
AWS_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 4},
    connect_timeout=5,
    read_timeout=30,
    max_pool_connections=20,
)

log = logging.getLogger(__name__)

_cache: dict[Any, Any] = {}
_making = threading.RLock()  # per_process: the pool's threads, asking at once, get one
T = TypeVar("T")


def _reset_after_fork() -> None:
    global _making
    _cache.clear()
    _making = threading.RLock()


os.register_at_fork(after_in_child=_reset_after_fork)


def per_process(key: Hashable, make: Callable[[], T]) -> T:
    """What `make` returns, made once per process under `key` (a forked child makes its own)."""
    if key not in _cache:
        with _making:
            if key not in _cache:
                _cache[key] = make()
    made: T = _cache[key]
    return made


# botocore renews temporary credentials 15 min before they expire (10 min: every caller waits for it). A role
# session of an hour gets just that; a shorter one (duration_seconds, or an emulator's) the same share of it.
REFRESH_SHARE_OF_HOUR = 3600.0
# What AWS answers when the role cannot be assumed with this identity (trust policy, ExternalId, role gone).
ASSUME_REFUSED = {"AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "ExpiredToken", "NoSuchEntity"}


class RoleCredentials(DeferredRefreshableCredentials):
    """An account's role session: assumed on first use with botocore's AssumeRoleCredentialFetcher over the
    process's own credentials, renewed by botocore before it expires; refusals become IdentityUnavailable."""

    def __init__(self, account: Account, base: botocore.session.Session) -> None:
        super().__init__(refresh_using=self._fetch, method="assume-role")
        self.account = account
        self._base = base
        self._fetcher: AssumeRoleCredentialFetcher | None = None
        self._lifetime = REFRESH_SHARE_OF_HOUR

    def refresh_needed(self, refresh_in: int | None = None) -> bool:
        """botocore's advisory and mandatory windows, scaled to the session's lifetime (below an hour)."""
        if refresh_in:
            refresh_in = int(refresh_in * min(1.0, self._lifetime / REFRESH_SHARE_OF_HOUR))
        return bool(super().refresh_needed(refresh_in))

    def _fetch(self) -> dict[str, Any]:
        a = self.account
        assert a.role_arn
        try:
            if self._fetcher is None:
                source = self._base.get_credentials()
                if source is None:
                    raise NoCredentialsError()
                region = a.regions[0] if a.regions else None

                def create(service_name: str, **kwargs: Any) -> Any:  # STS in the account's first region
                    return self._base.create_client(service_name, region_name=region, config=AWS_CONFIG, **kwargs)

                self._fetcher = AssumeRoleCredentialFetcher(
                    client_creator=create,
                    source_credentials=source,
                    role_arn=a.role_arn,
                    extra_args={
                        "RoleSessionName": a.session_name,
                        "DurationSeconds": a.duration_seconds,
                        **({"ExternalId": a.external_id} if a.external_id else {}),
                    },
                    expiry_window_seconds=0,  # this object decides when to renew (refresh_needed)
                )
            fetched: dict[str, Any] = self._fetcher.fetch_credentials()
        except NoCredentialsError:
            raise IdentityUnavailable(
                a.id,
                f"account {a.id}: no credentials of this process to assume {a.role_arn} with: give the process an "
                "identity (IRSA service account, instance profile, AWS_PROFILE or keys)",
                permanent=True,
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
            fix = "let this process's identity assume it: the role's trust policy and its ExternalId (docs/accounts.md)"
            raise IdentityUnavailable(
                a.id,
                f"account {a.id}: role {a.role_arn} cannot be assumed ({code}: {message}): {fix}",
                permanent=code in ASSUME_REFUSED,
            ) from None
        except BotoCoreError as exc:
            raise IdentityUnavailable(a.id, f"account {a.id}: sts:AssumeRole failed: {exc}") from None
        expiry = datetime.fromisoformat(str(fetched["expiry_time"]).replace("Z", "+00:00"))
        self._lifetime = max(1.0, (expiry - datetime.now(UTC)).total_seconds())
        log.info("account %s: assumed %s until %s", a.id, a.role_arn, expiry.isoformat(timespec="seconds"))
        return fetched


class _Given(CredentialProvider):
    """A credential provider that answers with the credentials it was made with."""

    METHOD = "ninkik-tasks"

    def __init__(self, credentials: RoleCredentials) -> None:
        super().__init__()
        self.credentials = credentials

    def load(self) -> RoleCredentials:
        """The credentials."""
        return self.credentials


def session(account: Account) -> boto3.session.Session:
    """This process's AWS session for `account`: its role (assumed from the process's own identity), its profile,
    or the process's own identity."""
    return per_process(("session", account), lambda: _session(account))


def _session(account: Account) -> boto3.session.Session:
    if account.role_arn:
        own = botocore.session.Session()
        assumed = botocore.session.Session()
        given = _Given(RoleCredentials(account, own))
        assumed.register_component("credential_provider", CredentialResolver([given]))
        return boto3.session.Session(botocore_session=assumed)
    if account.profile:
        try:
            return boto3.session.Session(profile_name=account.profile)
        except ProfileNotFound:
            raise ConfigError(
                f"account {account.id}: profile {account.profile} is not in the AWS config or credentials files "
                "(AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE): add it or fix the profile's name"
            ) from None
    return boto3.session.Session()


def ecr(
    account: Account,
    region: str,
    limiter: RateLimiter | None = None,
    lane: str = "",
    count: Callable[[], None] | None = None,
) -> ECRClient:
    """This process's ECR client for `account` in `region` (one per `lane`: its limiter's waiting rule); with a
    limiter, every HTTP attempt waits for its slot; `count` is called for every HTTP attempt."""

    def make() -> ECRClient:
        made = session(account).client("ecr", region_name=region, config=AWS_CONFIG)
        if limiter is not None:
            made.meta.events.register("before-send.ecr", limiter.before_send)
        if count is not None:
            made.meta.events.register("before-send.ecr", lambda **_: count())
        log.info("ECR of %s in %s: calls go to %s", account.id, region, made.meta.endpoint_url)
        return made

    return per_process(("ecr", account, region, lane), make)


def inspector2(account: Account, region: str) -> Any:
    """This process's Amazon Inspector client for `account` in `region` (coverage's ListCoverage, `check`)."""
    return per_process(
        ("inspector2", account, region),
        lambda: session(account).client("inspector2", region_name=region, config=AWS_CONFIG),
    )


def sts(account: Account, region: str | None) -> STSClient:
    """This process's STS client for `account` (`check` asks it who it is)."""
    return per_process(
        ("sts", account, region), lambda: session(account).client("sts", region_name=region, config=AWS_CONFIG)
    )


# An answer 5 s later than ingest's long poll (NINKIK_SQS_WAIT_SECONDS) means the endpoint is stuck. No botocore
# retries: ingest's own loop retries with backoff and logs every failed attempt, and SIGTERM is never held
# up by attempts it cannot see.
SQS_READ_TIMEOUT_MARGIN = 5


def sqs_config(settings: Settings, queues: int = 1) -> Config:
    """The SQS client's bounds: one attempt, read timeout just above the long poll, a connection for each of the
    `queues` it long-polls at once (and a few for deletes)."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=settings.sqs_wait_seconds + SQS_READ_TIMEOUT_MARGIN,
        max_pool_connections=max(4, 2 * queues),
    )


def sqs(settings: Settings, account: Account, queue_url: str) -> SQSClient:
    """This process's SQS client for a queue of `account`, in the queue's region (its URL's, else AWS_REGION /
    AWS_DEFAULT_REGION, else the account's first)."""
    region = queue_region(queue_url, settings.aws_region or (account.regions[0] if account.regions else None))
    if not region:
        raise ConfigError(f"the queue URL {queue_url} names no region: set AWS_REGION to the queue's region")
    key = ("sqs", account, region, settings.sqs_wait_seconds)
    if key not in _cache:
        default = settings.aws_region or (account.regions[0] if account.regions else None)
        queues = sum(1 for url in account.queues if queue_region(url, default) == region)
        made = session(account).client("sqs", region_name=region, config=sqs_config(settings, queues))
        log.debug("SQS in %s: calls go to %s", region, made.meta.endpoint_url)  # ingest says it as it polls
        _cache[key] = made
    client: SQSClient = _cache[key]
    return client


def is_aws(url: str) -> bool:
    """Whether a URL is one of AWS's own hosts (regional, FIPS, dual-stack, the legacy queue host, VPC endpoints)."""
    host = (urlparse(url).hostname or "").lower()
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws"))


def queue_endpoint_mismatch(queue_url: str, endpoint_url: str) -> str | None:
    """One line when the queue URL and the endpoint SQS calls really go to disagree (AWS and an emulator)."""
    if is_aws(queue_url) and not is_aws(endpoint_url):
        return (
            f"NINKIK_SQS_QUEUE_URL is an AWS queue ({queue_url}) but SQS calls go to {endpoint_url}: unset "
            "AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_SQS to reach AWS, or set the queue URL of that endpoint"
        )
    if not is_aws(queue_url) and is_aws(endpoint_url):
        parsed = urlparse(queue_url)
        return (
            f"NINKIK_SQS_QUEUE_URL is not an AWS queue ({queue_url}) but SQS calls go to AWS ({endpoint_url}): set "
            f"AWS_ENDPOINT_URL_SQS (or AWS_ENDPOINT_URL) to {parsed.scheme}://{parsed.netloc}, or set the queue "
            "URL that `aws sqs get-queue-url --queue-name ecr-docker-push` prints"
        )
    return None


def redis_client(settings: Settings) -> redis.Redis:
    """This process's Redis client for ninkik-tasks' own records."""
    key = ("redis", settings.redis_url)
    if key not in _cache:
        _cache[key] = redis.Redis.from_url(
            settings.redis_url,
            **tls.redis_client_options(settings.redis_url, settings),
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry_on_timeout=True,
        )
    client: redis.Redis = _cache[key]
    return client


def http(settings: Settings) -> httpx.Client:
    """This process's HTTP client for the ninkik API, verifying its certificate against NINKIK_API_CA_FILE when set."""
    key = ("http", settings.api_url, settings.api_ca_file)
    if key not in _cache:
        timeout = httpx.Timeout(settings.http_timeout_seconds, connect=min(5.0, settings.http_timeout_seconds))
        verify: ssl.SSLContext | bool = True
        if settings.api_ca_file:
            verify = ssl.create_default_context(cafile=str(settings.api_ca_file))
        _cache[key] = httpx.Client(timeout=timeout, headers={"User-Agent": "ninkik-tasks"}, verify=verify)
    client: httpx.Client = _cache[key]
    return client
