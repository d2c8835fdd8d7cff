"""The beat schedule: reconcile missed pushes, refresh findings, compare what ninkik has with the registries,
count coverage. Every entry expires, so stale runs are dropped.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .config import Settings


def beat_schedule(settings: Settings, queue: str) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule`; a run still queued when the next one is due is dropped, not run late."""
    entries = {
        "reconcile": ("ninkik.reconcile", settings.reconcile_interval_seconds),
        "rescan": ("ninkik.rescan", settings.rescan_interval_seconds),
        "lifecycle": ("ninkik.lifecycle", settings.lifecycle_interval_seconds),
        "coverage": ("ninkik.coverage", settings.coverage_interval_seconds),
    }
    return {
        name: {
            "task": task,
            "schedule": timedelta(seconds=interval),
            "options": {"queue": queue, "expires": interval},
        }
        for name, (task, interval) in entries.items()
    }
