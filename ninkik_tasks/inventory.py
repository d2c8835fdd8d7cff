"""The repositories ninkik-tasks knows of by name, per registry: remembered from push events, read by sweeps.

Under the setup guide's ECR policy (scoped to `repository/${TENANT_UUID}/*`) the registry cannot be listed, so a
sweep has to name every repository it reads; a repository seen in an event is one it can name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from . import accounts
from .config import Settings
from .errors import ConfigError, PermanentError
from .tenants import REPOSITORY, Directory, load_tenants_file, split

if TYPE_CHECKING:
    from .stages import Services

log = logging.getLogger(__name__)


class Inventory:
    """Redis sets under one namespace: `repositories:<account>:<region>` and the tenants they belong to."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.namespace = namespace

    def key(self, account: str, region: str) -> str:
        """The set of one registry's known repositories."""
        return f"{self.namespace}:repositories:{account}:{region}"

    @property
    def tenants_key(self) -> str:
        """The set of tenants whose repositories were seen in events."""
        return f"{self.namespace}:tenants:seen"

    def remember(self, repositories: Iterable[tuple[str, str, str]]) -> None:
        """Remember (account, region, repository) triples of ninkik repositories; others are left out."""
        pipe = self.r.pipeline(transaction=False)
        added = False
        for account, region, repository in repositories:
            try:
                tenant = split(repository).tenant
            except PermanentError:
                continue
            pipe.sadd(self.key(account, region), repository)
            pipe.sadd(self.tenants_key, tenant)
            added = True
        if added:
            pipe.execute()

    def known(self, account: str, region: str) -> set[str]:
        """Every repository of the registry seen so far."""
        return {str(name) for name in self.r.smembers(self.key(account, region))}

    def tenants(self) -> set[str]:
        """Every tenant whose repositories were seen in events."""
        return {str(t) for t in self.r.smembers(self.tenants_key)}

    def forget(self, account: str, region: str, repository: str) -> None:
        """A repository that is gone (an event will bring it back if it is created again)."""
        self.r.srem(self.key(account, region), repository)


@dataclass(frozen=True)
class Registry:
    """One account's registry in one region."""

    account: str
    region: str

    def astuple(self) -> tuple[str, str]:
        """(account, region)."""
        return self.account, self.region


def registries(settings: Settings, account: str | None = None) -> list[Registry]:
    """Every registry to read: each account (or the one given) in each of its regions."""
    listed = accounts.of(settings)
    if not listed:
        raise ConfigError("NINKIK_AWS_ACCOUNT_IDS is not set: set it to the accounts whose registries to read")
    if account is not None:
        listed = [a for a in listed if a.id == account]
        if not listed:
            raise ConfigError(f"account {account} is not configured: name one of {', '.join(accounts.by_id(settings))}")
    if not any(a.regions for a in listed):
        raise ConfigError("no AWS region known: set NINKIK_AWS_REGIONS or AWS_REGION to the region of your registries")
    return [Registry(a.id, region) for a in listed for region in a.regions]


@dataclass
class Known:
    """The repositories a sweep can name when the registry cannot be listed.

    For each tenant: its products' repositories (by UUID and by name, from the tenant directory), those seen in
    push events (the inventory), and those the operator named (NINKIK_REPOSITORIES). The tenants are
    NINKIK_TENANT_UUIDS, the tenants file's and those seen in events.
    """

    inventory: Inventory
    directory: Callable[[], Directory]
    tenants: set[str] = field(default_factory=set)
    named: tuple[str, ...] = ()

    @classmethod
    def of(cls, svc: Services) -> Known:
        """What this deployment knows, from its settings, tenant directory and Redis."""
        s = svc.settings
        tenants = set(s.tenant_uuids)
        if s.tenants_file:
            tenants |= set(load_tenants_file(s.tenants_file))
        return cls(Inventory(svc.redis, s.redis_namespace), svc.directory, tenants, tuple(s.repositories))

    def all_tenants(self) -> set[str]:
        """Every tenant whose repositories a sweep without --tenant names."""
        owners = set()
        for name in self.named:
            with suppress(PermanentError):
                owners.add(split(name).tenant)
        return self.tenants | self.inventory.tenants() | owners

    def names(self, registry: Registry, tenant: str) -> list[str]:
        """The repositories of `tenant` in `registry` a sweep can name (none for a tenant ninkik does not know).

        Only the known tenant's names are read: a chain for any other would end at tenant matching anyway, and
        names remembered from events of unknown tenants get no AWS call.
        """
        directory_tenant = self.directory().tenant(tenant)
        if directory_tenant is None:
            log.info("tenant %s is not known to ninkik: none of its repositories is read", tenant)
            return []
        names = {n for n in self.inventory.known(registry.account, registry.region) if n.startswith(f"{tenant}/")}
        names |= {n for n in self.named if n.startswith(f"{tenant}/")}
        for product in directory_tenant.products:
            for segment in (product.uuid.lower(), product.name.lower()):
                candidate = f"{tenant}/{segment}"
                if REPOSITORY.fullmatch(candidate):
                    names.add(candidate)
        return sorted(names)
