"""ninkik-tasks: ECR pushes to ninkik security findings, through Celery. `celery -A ninkik_tasks` finds `app`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .celery_app import app

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # The app is made on first use, so `ninkik-tasks health` (a probe run every few seconds) imports no Celery.
    if name == "app":
        from .celery_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
