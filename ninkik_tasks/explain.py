"""One line for every error an operator can cause: what failed and how to fix it (None: a bug of ours)."""

from __future__ import annotations

from .errors import ConfigError, InvalidFilter

# Redis at maxmemory refuses writes ("OOM command not allowed when used memory > 'maxmemory'"); reads still work.
REDIS_FULL = "OOM command not allowed"


def redis_full(exc: BaseException) -> bool:
    """Whether exc (or what it wraps: kombu and Celery wrap redis-py's errors) is Redis refusing a write when full."""
    seen: BaseException | None = exc
    while seen is not None:
        if REDIS_FULL in str(seen) or type(seen).__name__ == "OutOfMemoryError":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def redis_full_line(reason: str = "") -> str:
    """The line for a Redis that refuses writes because it is full."""
    return (
        "Redis is full (maxmemory reached: it refuses every write, so no push can be recorded or queued): "
        "give it more memory (maxmemory) or free some; see `redis-cli info memory`"
        + (f" ({reason[:200]})" if reason else "")
    )


def explain(exc: Exception) -> str | None:
    """One line saying what failed and how to fix it, for every error an operator can cause; None for a bug."""
    import botocore.exceptions as aws
    import httpx
    import redis.exceptions as redis_errors
    from amqp.exceptions import AMQPError
    from kombu.exceptions import OperationalError

    reason = " ".join(str(exc).split())
    if isinstance(exc, (ConfigError, InvalidFilter)):
        return reason
    if redis_full(exc):
        return redis_full_line(reason)
    if isinstance(exc, redis_errors.ResponseError):
        return f"Redis refused a command ({reason}): is NINKIK_REDIS_URL ({_redis_urls()}) a Redis 7 server?"
    if isinstance(exc, redis_errors.RedisError):
        return (
            f"Redis does not answer ({reason}): start Redis or fix NINKIK_REDIS_URL ({_redis_urls()}), "
            "NINKIK_BROKER_URL or NINKIK_RESULT_BACKEND"
        )
    if isinstance(exc, (OperationalError, AMQPError)):
        return (
            f"the broker does not answer at NINKIK_BROKER_URL ({_redis_urls('broker_url')}): {reason}; "
            "start it or fix the URL"
        )
    if isinstance(exc, aws.NoRegionError):
        return "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION) to the region of the queue and registries"
    if isinstance(exc, (aws.NoCredentialsError, aws.PartialCredentialsError)):
        return (
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "for the ninkik IAM user of the setup guide"
        )
    if isinstance(exc, (aws.ConnectionError, aws.HTTPClientError)):
        return f"AWS does not answer ({reason}): check AWS_ENDPOINT_URL, AWS_REGION and the network path"
    if isinstance(exc, aws.ClientError):
        from .ecr import DENIED, error_code

        operation = getattr(exc, "operation_name", "the call")
        if error_code(exc) in DENIED:
            return f"AWS refused {operation}: it is not granted; attach the setup guide's policies to this IAM user"
        return f"AWS refused {operation}: {reason}"
    if isinstance(exc, aws.BotoCoreError):
        return f"AWS: {reason}"
    if isinstance(exc, httpx.HTTPError):
        return (
            f"ninkik's API (NINKIK_API_URL) failed: {type(exc).__name__}: {reason}; "
            "check the URL, NINKIK_API_TOKEN and the network path"
        )
    return None


def _redis_urls(field: str = "redis_url") -> str:
    from .config import get_settings, safe_url

    try:
        return safe_url(str(getattr(get_settings(), field)))
    except ConfigError:
        return "?"
