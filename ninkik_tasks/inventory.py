"""The repositories ninkik-tasks knows of by name, per registry: remembered from push events, read by sweeps.

Under the setup guide's ECR policy (scoped to `repository/${TENANT_UUID}/*`) the registry cannot be listed, so a
sweep has to name every repository it reads; a repository seen in an event is one it can name.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from .errors import PermanentError
from .tenants import split


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
