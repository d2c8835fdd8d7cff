"""ninkik-tasks: ECR pushes to ninkik security findings, through Celery. `celery -A ninkik_tasks` finds `app`."""

from __future__ import annotations

from .celery_app import app

__all__ = ["app"]
