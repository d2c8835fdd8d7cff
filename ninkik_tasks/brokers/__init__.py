"""One small module per Celery broker, chosen by the scheme of NINKIK_BROKER_URL.

Each module has the same functions: `celery_config(settings)` (its transport options and settings),
`task_queues(names)` (how the chain's queues are declared), `countdown_cap(settings)` and
`countdown_floor(settings)` (the longest and shortest retry countdown it can hold safely).
"""

from __future__ import annotations

from types import ModuleType
from urllib.parse import urlparse

from ..errors import ConfigError

SCHEMES = {"redis": "redis", "rediss": "redis", "amqp": "rabbitmq", "amqps": "rabbitmq", "pyamqp": "rabbitmq"}


def for_url(url: str) -> ModuleType:
    """The broker module for a broker URL (redis://, rediss://, amqp://, amqps://)."""
    scheme = urlparse(url).scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"NINKIK_BROKER_URL has the scheme {scheme or '(none)'!r}: use amqp:// or amqps:// (RabbitMQ) "
            "or redis:// or rediss:// (Redis)"
        )
    from . import rabbitmq, redis

    return redis if SCHEMES[scheme] == "redis" else rabbitmq
