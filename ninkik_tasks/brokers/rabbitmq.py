"""The RabbitMQ broker (the production choice): its Celery settings and countdown cap."""

from __future__ import annotations

from typing import Any

from ..config import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings that belong to RabbitMQ."""
    return {}


def countdown_cap(settings: Settings) -> float:
    """The longest retry countdown: RabbitMQ has no visibility timeout, so the configured backoff cap."""
    return float(settings.retry_backoff_max_seconds)
