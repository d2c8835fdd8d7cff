"""ninkik-tasks: ingest, dev, and the operator's views of quarantine, failures and coverage."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from .coverage.command import command as coverage_command
from .errors import ConfigError, InvalidFilter
from .explain import explain, redis_full
from .flower import command as flower_command
from .health.probe import health_command


class _Group(click.Group):
    """Every command's expected errors become one line on stderr with the fix; a traceback only for a bug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors and Ctrl-C, as click prints them
        except Exception as exc:
            line = explain(exc)
            if line is None:
                import traceback

                traceback.print_exc()
                click.echo(
                    "ninkik-tasks: this is a bug in ninkik-tasks: please report it, with the traceback above", err=True
                )
                sys.exit(70)
            click.echo(f"ninkik-tasks: {line}", err=True)
            sys.exit(2 if isinstance(exc, (ConfigError, InvalidFilter)) else 1)


_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _entry_id(entry_id: str, journal: str) -> str:
    """The id as given if it is a Redis stream id, else ConfigError pointing at the list."""
    if not _STREAM_ID.fullmatch(entry_id):
        raise ConfigError(
            f"{entry_id!r} is not a {journal} id (they look like 1796156572460-0): see `ninkik-tasks {journal} list`"
        )
    return entry_id


@click.group(cls=_Group)
@click.version_option(package_name="ninkik-tasks")
def main() -> None:
    """ECR pushes to ninkik security findings, through Celery."""


@main.command()
def ingest() -> None:
    """Poll every account's queue (NINKIK_SQS_QUEUE_URL, or NINKIK_ACCOUNTS_FILE's) and start a chain for every new
    ECR push event."""
    from . import accounts, clients, logs, metrics, startup
    from .config import get_settings
    from .idempotency import Records
    from .ingest import Ingest, poll_all
    from .pipeline import start_all
    from .records import quarantine

    settings = get_settings()
    logs.configure(settings)
    startup.prepare(settings)
    settings.require_ingest()
    redis = clients.redis_client(settings)
    metrics.serve(
        settings.metrics_port,
        metrics.PipelineStats(redis, settings.redis_namespace),
        settings.metrics_address,
        settings.ecr_calls_per_second,
    )
    records, journal = Records(redis, settings.redis_namespace), quarantine(redis, settings.redis_namespace)
    pollers = [
        Ingest(
            settings=settings,
            sqs=clients.sqs(settings, account, queue_url),
            records=records,
            quarantine=journal,
            start=start_all,
            queue=queue_url,
            account=account.id,
        )
        for account, queue_url in accounts.queues(settings)
    ]
    poll_all(pollers)


@main.command()
def check() -> None:
    """Check configuration, Redis, the SQS queue, ECR and ninkik's API; exit 0 only if all needed works."""
    from . import check as checks
    from . import clients
    from .config import get_settings

    settings = get_settings()
    code = 0
    for result in checks.run(settings, clients.http(settings)):
        click.echo(result.line())
        if result.level == "FAIL":
            code = 2 if result.setting or code == 2 else 1
    sys.exit(code)


def _journal(name: str) -> Any:
    from . import clients, records
    from .config import get_settings

    settings = get_settings()
    return getattr(records, name)(clients.redis_client(settings), settings.redis_namespace)


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("none")
        return
    from rich.table import Table

    from .console import console

    # The id is what `replay` and `retry` take: never cut or wrapped; the other columns give way.
    widest = max((len(str(row.get(columns[0], ""))) for row in rows), default=0)
    table = Table()
    table.add_column(columns[0], no_wrap=True, min_width=widest)
    for column in columns[1:]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row.get(c, ""))[:200] for c in columns))
    console().print(table)


@main.group()
def quarantine() -> None:
    """Queue messages that ingest refused (bad JSON, wrong shape, accounts not allowed ...)."""


@quarantine.command("list")
@click.option("--count", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with the raw bodies.")
def quarantine_list(count: int, as_json: bool) -> None:
    """The newest quarantined messages."""
    _print_rows(_journal("quarantine").list(count), as_json, ["id", "at", "reason", "error", "message_id"])


@quarantine.command("replay")
@click.argument("entry_id")
def quarantine_replay(entry_id: str) -> None:
    """Run a quarantined message through ingest again (after fixing what refused it)."""
    from . import clients
    from .accounts import accepted
    from .config import get_settings
    from .errors import IgnoredEvent, InvalidEvent
    from .events import parse
    from .idempotency import Records
    from .pipeline import start

    settings = get_settings()
    entry = _journal("quarantine").get(_entry_id(entry_id, "quarantine"))
    if entry is None:
        raise ConfigError(f"no quarantined message {entry_id}: see `ninkik-tasks quarantine list`")
    allowed_accounts, allowed_regions = accepted(settings)
    try:
        pushed = parse(
            entry["body"],
            accounts=allowed_accounts,
            regions=allowed_regions,
            max_bytes=settings.max_message_bytes,
        )
    except InvalidEvent as exc:
        raise ConfigError(f"still refused ({exc.reason}): {exc}") from None
    except IgnoredEvent as exc:  # quarantined before such events were dropped instead
        raise ConfigError(f"not a push ({exc.reason}): {exc}; there is nothing to replay") from None
    result = start(pushed)
    Records(clients.redis_client(settings), settings.redis_namespace).mark_events(
        [pushed.event_id], settings.event_dedupe_seconds
    )
    click.echo(f"replayed {entry_id}: chain {result.id} for {pushed.repository}@{pushed.digest}")


@main.group()
def failures() -> None:
    """Images whose chain ended without a notification, with the reason."""


@failures.command("list")
@click.option("--count", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def failures_list(count: int, as_json: bool) -> None:
    """The newest chains that ended without a notification."""
    columns = ["id", "at", "account", "stage", "reason", "repository", "digest", "message"]
    _print_rows(_journal("failures").list(count), as_json, columns)


@failures.command("retry")
@click.argument("entry_id")
def failures_retry(entry_id: str) -> None:
    """Run the chain again for a failed image (after fixing the cause: a tenant, a permission, ninkik)."""
    from datetime import UTC, datetime

    from .events import ImagePushed
    from .pipeline import start

    entry = _journal("failures").get(_entry_id(entry_id, "failures"))
    if entry is None:
        raise ConfigError(f"no failure {entry_id}: see `ninkik-tasks failures list`")
    pushed = ImagePushed(
        event_id=f"retry:{entry_id}:{entry['event_id']}",
        account=entry["account"],
        region=entry["region"],
        repository=entry["repository"],
        digest=entry["digest"],
        time=datetime.now(UTC),
        source=entry.get("source", "push"),
        change=entry.get("change") or None,
    )
    result = start(pushed)
    click.echo(f"retrying {entry['repository']}@{entry['digest']}: chain {result.id}")


@main.command()
@click.option("--tenant", help="Only this tenant's repositories (its UUID).")
@click.option(
    "--repository", multiple=True, help="Only this repository (TENANT_UUID/PRODUCT[/...]); may be given more than once."
)
@click.option("--since", help="Only images pushed at or after this ISO-8601 date or time (UTC unless given).")
@click.option("--account", help="Only this AWS account's registries (one of the configured accounts).")
@click.option("--wait", is_flag=True, help="Show progress until it is done (Ctrl-C stops waiting, not the backfill).")
@click.option(
    "--lifecycle",
    is_flag=True,
    help="Run the lifecycle sweep instead: what ninkik has against the registry (gone removed, changed reported "
    "again, usage sent); takes --account and --repository.",
)
def backfill(
    tenant: str | None,
    repository: tuple[str, ...],
    since: str | None,
    account: str | None,
    wait: bool,
    lifecycle: bool,
) -> None:
    """Queue a backfill: start the chain for every image in the registries, or only the filtered ones."""
    if lifecycle:
        _lifecycle(tenant, list(repository), since, account, wait)
        return
    from .accounts import accepted
    from .config import get_settings
    from .errors import PermanentError, TransientError
    from .filters import validate
    from .pipeline import backfill as backfill_task
    from .stages import services

    svc = services(get_settings())
    try:
        filters = validate(
            tenant,
            list(repository) or None,
            since,
            tenant_known=lambda t: svc.directory().tenant(t) is not None,
            account=account,
            accounts=accepted(svc.settings)[0],
        )
    except (TransientError, PermanentError) as exc:
        raise ConfigError(f"cannot check the tenant with ninkik: {exc}") from None
    try:
        result = backfill_task.apply_async(kwargs=filters.as_kwargs(), retry=False)
    except RuntimeError as exc:  # Celery's result backend says RuntimeError when Redis is down
        if redis_full(exc):
            raise
        reason = " ".join(str(exc).split())
        raise ConfigError(f"cannot queue the backfill (NINKIK_BROKER_URL, NINKIK_RESULT_BACKEND): {reason}") from None
    if not wait:
        click.echo(result.id)
        click.echo(
            f"backfill queued: follow it with `celery -A ninkik_tasks result {result.id}` or in Flower (Tasks)",
            err=True,
        )
        return
    sys.exit(_watch_backfill(result))


def _lifecycle(tenant: str | None, repositories: list[str], since: str | None, account: str | None, wait: bool) -> None:
    from .accounts import accepted
    from .config import get_settings
    from .pipeline import lifecycle as lifecycle_task

    if tenant or since:
        raise ConfigError("--lifecycle compares every image ninkik has: --tenant and --since do not apply to it")
    if account and account not in accepted(get_settings())[0]:
        raise ConfigError(f"--account {account} is not one of the configured accounts")
    kwargs = {"account": account, "repositories": repositories or None}
    try:
        result = lifecycle_task.apply_async(kwargs=kwargs, retry=False)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"cannot queue the sweep (NINKIK_BROKER_URL, NINKIK_RESULT_BACKEND): {reason}") from None
    click.echo(result.id)
    if wait:
        click.echo(json.dumps(result.get(), sort_keys=True))


def _watch_backfill(result: Any) -> int:
    import signal
    import time

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .console import console as make_console

    console = make_console(stderr=True)
    # Ctrl-C (SIGINT) stops the waiting, also where a shell started this with SIGINT ignored (a job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,  # the spinner line goes once it is done: `done:` is the last word
        ) as bar:
            # The id goes out once Ctrl-C is ours to handle: a Ctrl-C right after it stops the waiting alone.
            click.echo(result.id)
            row = bar.add_task("queued, waiting for a worker on ninkik-control", total=None)
            while not result.ready():
                if result.state == "PROGRESS" and isinstance(result.info, dict):
                    counts = result.info
                    bar.update(
                        row,
                        description=(
                            f"{counts['repositories']} repositories, {counts['images']} images, "
                            f"{counts['chains_started']} chains started"
                        ),
                    )
                elif result.state == "STARTED":
                    bar.update(row, description="started, listing repositories")
                time.sleep(0.5)
    except KeyboardInterrupt:
        console.print(
            f"stopped waiting: backfill {result.id} keeps running (see Flower, or "
            f"`celery -A ninkik_tasks result {result.id}`)"
        )
        return 130
    if result.failed():
        console.print(f"backfill {result.id} failed: {result.result}")
        return 1
    summary = result.result
    click.echo(
        f"done: {summary['repositories']} repositories, {summary['images']} images, "
        f"{summary['chains_started']} chains started in {summary['seconds']} s"
    )
    for unreachable in summary.get("unreachable") or []:
        click.echo(f"not read: {unreachable}")
    if summary.get("by_name"):
        click.echo(f"registry not listable ({', '.join(summary['by_name'])}): {summary.get('limit', '')}")
    return 0


@main.command()
@click.option("--until-done", is_flag=True, help="Exit once every demo image was notified (for a smoke test).")
@click.option("--flower-port", default=5555, show_default=True, help="Flower's port (another if taken).")
@click.option(
    "--broker",
    type=click.Choice(["redis", "rabbitmq"]),
    default="redis",
    show_default=True,
    help="Celery's broker: the bundled Redis, or a local rabbitmq-server (when installed) as in production.",
)
def dev(until_done: bool, flower_port: int, broker: str) -> None:
    """Run the whole system on this machine: emulated AWS, a bundled Redis, a ninkik stand-in."""
    from .local.dev import run

    sys.exit(run(until_done=until_done, flower_port=flower_port, broker=broker))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--tenants-file", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--token", envvar="NINKIK_API_TOKEN", required=True, help="Bearer token it accepts.")
@click.pass_context
def standin(ctx: click.Context, /, **_: Any) -> None:
    """Run the local ninkik stand-in (tenant directory + receiver)."""
    from .local.standin import serve

    ctx.forward(serve)


main.add_command(coverage_command, "coverage")
main.add_command(flower_command, "flower")
main.add_command(health_command, "health")

if __name__ == "__main__":
    main()
