"""TLS to the broker and Redis (amqps://, rediss://): the server's certificate is always verified.

Verified against NINKIK_TLS_CA_FILE when set (a private CA, say), else the system's trust store (Amazon MQ
and ElastiCache certificates). The same options reach the broker, the result backend, ninkik-tasks' own
Redis client, RedBeat and Flower (Flower reads Celery's broker_use_ssl).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlparse

from .config import Settings


def _scheme(url: str) -> str:
    return urlparse(url).scheme.lower()


def redis_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS arguments for a rediss:// URL (Celery and RedBeat take the same keys)."""
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.tls_ca_file:
        options["ssl_ca_certs"] = str(settings.tls_ca_file)
    return options


def amqp_options(settings: Settings) -> dict[str, Any]:
    """py-amqp's TLS arguments for an amqps:// URL; kombu fills server_hostname from the URL (SNI, host check)."""
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    if settings.tls_ca_file:
        options["ca_certs"] = str(settings.tls_ca_file)
    return options


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's TLS settings for whichever of the broker, result backend and RedBeat's Redis use TLS."""
    out: dict[str, Any] = {}
    broker = _scheme(settings.broker_url)
    if broker == "rediss":
        out["broker_use_ssl"] = redis_options(settings)
    elif broker == "amqps":
        out["broker_use_ssl"] = amqp_options(settings)
    if _scheme(settings.result_backend) == "rediss":
        out["redis_backend_use_ssl"] = redis_options(settings)
    # RedBeat falls back to broker_use_ssl, which is py-amqp's on RabbitMQ: always give it its own.
    out["redbeat_redis_use_ssl"] = redis_options(settings) if _scheme(settings.redis_url) == "rediss" else {}
    return out


def redis_client_options(url: str, settings: Settings) -> dict[str, Any]:
    """Extra arguments of redis.Redis.from_url for `url` (none unless it is rediss://)."""
    return redis_options(settings) if _scheme(url) == "rediss" else {}
