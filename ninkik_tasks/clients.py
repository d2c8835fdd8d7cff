"""boto3, Redis and HTTP clients, made lazily once per process and dropped in a forked child."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import boto3
import httpx
import redis
from botocore.config import Config

from . import tls
from .config import Settings
from .errors import ConfigError
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient
    from mypy_boto3_sqs import SQSClient

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


def ecr(
    region: str, limiter: RateLimiter | None = None, lane: str = "", count: Callable[[], None] | None = None
) -> ECRClient:
    """This process's ECR client for `region` (one per `lane`: its limiter's waiting rule); with a limiter,
    every HTTP attempt waits for its slot; `count` is called for every HTTP attempt."""
    key = ("ecr", region, lane)
    if key not in _cache:
        made = boto3.session.Session().client("ecr", region_name=region, config=AWS_CONFIG)
        if limiter is not None:
            made.meta.events.register("before-send.ecr", limiter.before_send)
        if count is not None:
            made.meta.events.register("before-send.ecr", lambda **_: count())
        log.info("ECR in %s: calls go to %s", region, made.meta.endpoint_url)
        _cache[key] = made
    client: ECRClient = _cache[key]
    return client


# An answer 5 s later than ingest's long poll (NINKIK_SQS_WAIT_SECONDS) means the endpoint is stuck. No botocore
# retries: ingest's own loop retries with backoff and logs every failed attempt, and SIGTERM is never held
# up by attempts it cannot see.
SQS_READ_TIMEOUT_MARGIN = 5


def sqs_config(settings: Settings) -> Config:
    """The SQS client's bounds: one attempt, read timeout just above the long poll."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=settings.sqs_wait_seconds + SQS_READ_TIMEOUT_MARGIN,
        max_pool_connections=4,
    )


def sqs(settings: Settings) -> SQSClient:
    """This process's SQS client, in the queue's region (its URL's, else AWS_REGION / AWS_DEFAULT_REGION)."""
    region = settings.queue_region()
    if not region:
        raise ConfigError(
            f"the queue URL {settings.sqs_queue_url} names no region: set AWS_REGION to the queue's region"
        )
    key = ("sqs", region, settings.sqs_wait_seconds)
    if key not in _cache:
        made = boto3.session.Session().client("sqs", region_name=region, config=sqs_config(settings))
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
