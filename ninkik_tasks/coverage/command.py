"""`ninkik-tasks coverage`: per account, region, tenant and product, the images scanned and why the others are not."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..config import Settings
    from ..filters import Filters
    from .counts import Coverage


@click.command("coverage")
@click.option("--tenant", help="Only this tenant's repositories (its UUID).")
@click.option("--account", help="Only this AWS account's registries (one of the configured accounts).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (its shape: docs/operations.md#coverage).")
@click.option(
    "--inspector/--no-inspector",
    default=True,
    show_default=True,
    help="Merge Amazon Inspector's reason per image (inspector2:ListCoverage, where granted).",
)
@click.option(
    "--refresh",
    is_flag=True,
    help="Also queue a re-read of the selection at the sweeps' pace (the lifecycle sweep); shows the counts as now.",
)
def command(tenant: str | None, account: str | None, as_json: bool, inspector: bool, refresh: bool) -> None:
    """What ninkik holds of every image, counted: scanned, and not scanned by reason (no ECR call)."""
    from .. import clients
    from ..accounts import accepted
    from ..config import get_settings
    from ..filters import validate
    from ..holdings import Holdings
    from ..inventory import registries
    from .counts import read

    settings = get_settings()
    filters = validate(tenant, tenant_known=lambda _: True, account=account, accounts=accepted(settings)[0])
    selected = registries(settings, filters.account)
    client = clients.redis_client(settings)
    coverage = read(Holdings(client, settings.redis_namespace), selected, filters.tenant)
    if refresh:
        _refresh(filters, coverage)
    if inspector:
        _merge_inspector(settings, coverage)
    now = time.time()
    if as_json:
        click.echo(json.dumps(coverage.as_json(now), indent=2))
    else:
        _table(coverage, now)


def _refresh(filters: Filters, coverage: Coverage) -> None:
    """Queue a re-read of the selection at the sweeps' pace: the lifecycle sweep (`ninkik.lifecycle`: the images
    whose tags or status changed are reported again, deleted ones removed, each Holding with them), on the
    repositories ninkik holds of the tenant when one is given; a backfill of a tenant of whom none is held.
    """
    from .. import pipeline

    names = sorted({repository for (_, _, repository, _) in coverage.images}) if filters.tenant else None
    # A tenant of whom nothing is held yet: the lifecycle sweep compares what is held, a backfill finds the images.
    if names != []:
        kwargs: dict[str, Any] = {"account": filters.account, "repositories": names}
        result = pipeline.lifecycle.apply_async(kwargs=kwargs, retry=False)
        what = "lifecycle sweep"
    else:
        kwargs = {"tenant": filters.tenant, **({"account": filters.account} if filters.account else {})}
        result = pipeline.backfill.apply_async(kwargs=kwargs, retry=False)
        what = "backfill"
    click.echo(
        f"refresh queued: {what} {result.id}; the counts below are those recorded before it: run `coverage` again "
        f"once it is done (`celery -A ninkik_tasks result {result.id}`)",
        err=True,
    )


def _merge_inspector(settings: Settings, coverage: Coverage) -> None:
    from .. import accounts, clients
    from .inspector import list_coverage

    by_id = accounts.by_id(settings)
    for (account, region), view in coverage.views.items():
        read = list_coverage(clients.inspector2(by_id[account], region), account)
        view.inspector = read.status
        coverage.merge_inspector(account, region, read.reasons)


def _table(coverage: Coverage, now: float) -> None:
    from rich.table import Table

    from ..console import console
    from .counts import MONITORING_END_UNKNOWN, iso

    out = console()
    for view in (coverage.views[k] for k in sorted(coverage.views)):
        shown = "ECR's scan statuses as reported to ninkik"
        if view.name == "ecr+inspector":
            shown += ", with Amazon Inspector's reason per image (inspector2:ListCoverage)"
        else:
            shown += f" (Amazon Inspector's view: {view.inspector})"
        out.print(f"{view.account}/{view.region}: {shown}", highlight=False)
    totals = coverage.totals()
    if not coverage.groups:
        out.print("no image recorded yet (the chains record each image ninkik accepts a report of)")
        return
    out.print(
        f"recorded between {totals['oldest_observed']} and {totals['newest_observed']} (now {iso(now)}): "
        "counts are as fresh as those observations",
        highlight=False,
    )
    table = Table()
    for column in ("account", "region", "tenant", "product"):
        table.add_column(column, no_wrap=True)
    for column in ("repos", "images", "scanned", "not scanned", "repos without a scan", "enhanced"):
        table.add_column(column, justify="right")
    table.add_column("not scanned, by reason", overflow="fold")
    table.add_column("Inspector", overflow="fold")
    for g in coverage.rows():
        row = g.as_dict()
        table.add_row(
            g.account,
            g.region,
            g.tenant,
            g.product,
            str(g.repositories),
            str(g.images),
            str(g.scanned),
            str(row["not_scanned"]),
            str(g.repositories_without_scan),
            str(g.enhanced),
            ", ".join(f"{r} {n}" for r, n in row["not_scanned_by_reason"].items()),
            ", ".join(f"{r} {n}" for r, n in row["inspector_reasons"].items()),
        )
    out.print(table)
    out.print(
        f"total: {totals['images']} images in {totals['repositories']} repositories, {totals['scanned']} scanned, "
        f"{totals['not_scanned']} not scanned; {MONITORING_END_UNKNOWN}",
        highlight=False,
    )
