"""Backfill filters: which images a sweep covers, checked and normalised from what an operator typed."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import InvalidFilter, PermanentError
from .tenants import split

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


@dataclass(frozen=True)
class Filters:
    """Which images a sweep covers; every field optional."""

    tenant: str | None = None
    repositories: tuple[str, ...] = ()
    since: datetime | None = None
    account: str | None = None  # one account's registries only (`backfill --account`)

    def as_kwargs(self) -> dict[str, str | list[str] | None]:
        """The filters as the backfill task's keyword arguments (JSON-friendly)."""
        return {
            "tenant": self.tenant,
            "repository": list(self.repositories) or None,
            "since": self.since.isoformat() if self.since else None,
            **({"account": self.account} if self.account else {}),
        }


def validate(
    tenant: object = None,
    repository: object = None,
    since: object = None,
    *,
    tenant_known: Callable[[str], bool],
    now: datetime | None = None,
    account: object = None,
    accounts: Collection[str] = (),
) -> Filters:
    """Check and normalise backfill filters; InvalidFilter with a one-line reason if one is unusable.

    `repository` is one name or a list of them (`backfill --repository` may be given more than once).
    """
    if tenant is not None:
        if not isinstance(tenant, str) or not _UUID.fullmatch(tenant.strip()):
            raise InvalidFilter(f"tenant {tenant!r} is not a UUID (like 3f1c9a52-5d0e-4b8a-9c7e-0a1b2c3d4e5f)")
        tenant = tenant.strip().lower()
    names: list[object] = (
        [] if repository is None else list(repository) if isinstance(repository, list | tuple) else [repository]
    )
    owners: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise InvalidFilter(f"repository {name!r} is not a repository name")
        try:
            owner = split(name).tenant
        except PermanentError:
            raise InvalidFilter(
                f"repository {name[:300]!r} is not a ninkik repository (${{TENANT_UUID}}/${{PRODUCT}}[/...])"
            ) from None
        if tenant is not None and owner != tenant:
            raise InvalidFilter(f"repository {name} belongs to tenant {owner}, not to tenant {tenant}")
        owners.add(owner)
    for uuid_ in sorted({t for t in (tenant, *owners) if t}):
        if not tenant_known(uuid_):
            raise InvalidFilter(f"tenant {uuid_} is not known to ninkik")
    when = None
    if since is not None:
        when = parse_since(since)
        if when > (now or datetime.now(UTC)):
            raise InvalidFilter(f"since {since!r} is in the future: no image would match")
    if account is not None and (not isinstance(account, str) or account.strip() not in accounts):
        listed = ", ".join(sorted(accounts)) or "none"
        raise InvalidFilter(f"account {account!r} is not one of the configured accounts ({listed})")
    repositories = tuple(dict.fromkeys(n for n in names if isinstance(n, str)))
    return Filters(
        tenant=tenant,
        repositories=repositories,
        since=when,
        account=account.strip() if isinstance(account, str) else None,
    )


def parse_since(value: object) -> datetime:
    """An ISO-8601 date or date-time as an aware UTC datetime (no offset means UTC)."""
    if not isinstance(value, str):
        raise InvalidFilter(f"since {value!r} is not an ISO-8601 date or time")
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidFilter(
            f"since {value[:80]!r} is not an ISO-8601 date or time (like 2026-11-01 or 2026-11-01T08:00:00Z)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
