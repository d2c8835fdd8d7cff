"""`ninkik-tasks health worker|ingest|beat [--ready]`: the orchestrator's probe, from the health files alone.

Cheap by design: it imports neither Celery nor the settings object (pydantic, botocore), so the two settings
it needs are read by click from the same variables the Settings fields have (docs/health.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import DEFAULT_DIR, DEFAULT_MAX_AGE_SECONDS, KINDS, check


@click.command("health")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--ready", is_flag=True, help="Readiness: also require that the process does its job now.")
@click.option(
    "--dir",
    "directory",
    envvar="NINKIK_HEALTH_DIR",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the processes keep their files (NINKIK_HEALTH_DIR).",
)
@click.option(
    "--max-age",
    envvar="NINKIK_HEALTH_MAX_AGE_SECONDS",
    default=DEFAULT_MAX_AGE_SECONDS,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds after which a loop that has not run is stuck (NINKIK_HEALTH_MAX_AGE_SECONDS).",
)
def health_command(kind: str, ready: bool, directory: Path, max_age: float) -> None:
    """Exit 0 if this host's KIND process is alive (and with --ready, ready), else 1; one line says why."""
    verdict = check(kind, directory, max_age, ready=ready)
    click.echo(verdict.line, err=not verdict.ok)
    sys.exit(0 if verdict.ok else 1)
