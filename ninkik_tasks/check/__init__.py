"""`ninkik-tasks check`: is the configuration, Redis, the queue, ECR and ninkik's API as the setup guide says?"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import suppress

import httpx
import redis

from .. import accounts, clients
from ..accounts import Account
from ..config import Settings, unknown_variables
from ..errors import ConfigError, IdentityUnavailable, PermanentError
from ..freshness import KINDS as EVENT_KINDS
from ..freshness import LastSeen
from ..inventory import Inventory
from ..startup import API_PATH, api_url_mistake
from ..tenants import load_tenants_file, split
from .aws import CONFUSED_DEPUTY, WrongAccount, identity, queue, registry
from .inspector import coverage_permission
from .line import Check
from .stores import broker_and_redis, records_client

NO_SUCH_TENANT = "00000000-0000-4000-8000-000000000000"
MAX_LOOKUPS = 5
TOKEN_FIX = "set it to the bearer token ninkik gave for this system"


def run(settings: Settings, http: httpx.Client, environ: Mapping[str, str] | None = None) -> Iterator[Check]:
    """Every check, in the order an operator would fix them."""
    yield from _config(settings, os.environ if environ is None else environ)
    yield from broker_and_redis(settings)
    tenants = _known_tenants(settings)  # tenant -> where it is named: the lookup is proven on one of them
    for account in _accounts(settings):
        yield from account_block(settings, account, http, tenants)
    yield from _ninkik(settings, http, tenants)
    yield from events_seen(settings)


def _accounts(s: Settings) -> list[Account]:
    try:
        return accounts.of(s)
    except ConfigError:
        return []  # said by _config


def account_block(s: Settings, account: Account, http: httpx.Client, tenants: dict[str, str]) -> Iterator[Check]:
    """One account: its identity resolves to it, each of its queues answers, and its registries are readable, as
    that identity. A failing account is named with its fix; the others are checked all the same."""
    yield Check("INFO", "account", f"account {account.id}: read as {account.describe_identity()}")
    if account.role_arn and not account.external_id:
        yield Check(
            "WARN",
            "account",
            f"account {account.id}: role {account.role_arn} is assumed without an ExternalId: fine inside one's own "
            "organization; a role another party assumes needs one in its trust policy (external_id), see "
            f"{CONFUSED_DEPUTY}",
        )
    queues = [(url, clients.sqs(s, account, url)) for url in account.queues]  # ConfigError: a queue of no region
    try:
        yield from identity(clients.sts(account, account.regions[0] if account.regions else s.aws_region), account)
        for url, sqs in queues:
            yield from queue(s, sqs, url)
        for region in account.regions:
            yield from registry(s, clients.ecr(account, region), account.id, region, http, tenants)
            yield from coverage_permission(clients.inspector2(account, region), account.id, region)
    except IdentityUnavailable as exc:
        yield Check("FAIL", "account", str(exc))
    except WrongAccount:
        pass  # said by identity()


def _config(s: Settings, environ: Mapping[str, str]) -> Iterator[Check]:
    for line in unknown_variables(environ):
        yield Check("WARN", "config", line)
    try:
        s.require_ingest()
        s.require_tenant_directory()
    except ConfigError as exc:
        yield Check("FAIL", "config", str(exc), setting=True)
        return
    listed = accounts.of(s)
    regions = sorted({r for a in listed for r in a.regions})
    yield Check("OK", "config", f"accounts {', '.join(a.id for a in listed)}; regions {', '.join(regions)}")


def _known_tenants(s: Settings) -> dict[str, str]:
    """Tenants this deployment names (settings, the tenants file, pushes remembered in Redis): tenant -> where."""
    out = {tenant: "NINKIK_TENANT_UUIDS" for tenant in s.tenant_uuids}
    for name in s.repositories:
        with suppress(PermanentError):
            out.setdefault(split(name).tenant, "NINKIK_REPOSITORIES")
    if s.tenants_file:
        with suppress(ConfigError):  # said by _ninkik
            out.update({tenant: "NINKIK_TENANTS_FILE" for tenant in load_tenants_file(s.tenants_file)})
    with suppress(redis.RedisError):  # said by broker_and_redis
        client = records_client(s)
        for tenant in Inventory(client, s.redis_namespace).tenants():
            out.setdefault(tenant, "a push event received earlier")
    return out


def events_seen(s: Settings, now: float | None = None) -> Iterator[Check]:
    """When ingest last saw each kind of event, per account and region: shows whether each EventBridge rule works."""
    try:
        client = records_client(s)
        seen = {(a.id, r): LastSeen(client, s.redis_namespace).get(a.id, r) for a in _accounts(s) for r in a.regions}
    except redis.RedisError:
        return  # said by broker_and_redis
    now = time.time() if now is None else now
    for (account, region), kinds in seen.items():
        said = ", ".join(
            f"{kind} {_ago(now - kinds[kind])}" if kind in kinds else f"{kind} never" for kind in EVENT_KINDS
        )
        yield Check("INFO", "events", f"{account}/{region} last seen by ingest: {said}")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0, round(seconds))} s ago"
    if seconds < 7200:
        return f"{round(seconds / 60)} min ago"
    return f"{round(seconds / 3600)} h ago" if seconds < 172800 else f"{round(seconds / 86400)} days ago"


def _ninkik(s: Settings, http: httpx.Client, tenants: dict[str, str]) -> Iterator[Check]:
    if s.tenants_file:
        try:
            tenants_in_file = load_tenants_file(s.tenants_file)
        except ConfigError as exc:
            yield Check("FAIL", "tenants", str(exc), setting=True)
        else:
            yield Check("OK", "tenants", f"NINKIK_TENANTS_FILE lists {len(tenants_in_file)} tenants")
    if not s.api_url:
        return
    mistake = api_url_mistake(s.api_url)
    if mistake:
        yield Check("FAIL", "ninkik", mistake, setting=True)
        return
    token = s.api_token.get_secret_value().strip() if s.api_token else ""
    if not token:  # never an empty bearer header: ninkik (or any HTTP stack) refuses it before reading the URL
        yield Check("FAIL", "ninkik", f"NINKIK_API_TOKEN is not set: {TOKEN_FIX}", setting=True)
        return
    # A tenant ninkik knows proves the lookup path: a tenant that does not exist answers 404 on a wrong URL too.
    # The first few known ones are tried (one may be a mistake of its own, said by the registry check).
    tried: list[str] = []
    for tenant in sorted(tenants)[:MAX_LOOKUPS] or [NO_SUCH_TENANT]:
        url = f"{s.api_url.rstrip('/')}{API_PATH}/tenants/{tenant}"
        try:
            response = http.get(url, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                yield Check(
                    "FAIL",
                    "ninkik",
                    f"NINKIK_API_URL {s.api_url} presents a certificate that does not verify ({reason}): set "
                    "NINKIK_API_CA_FILE to the CA that signed it (or fix the host name in the URL)",
                )
                return
            yield Check(
                "FAIL",
                "ninkik",
                f"NINKIK_API_URL {s.api_url} does not answer ({reason}): check the URL and the network path",
            )
            return
        status = response.status_code
        if status in (401, 403):
            yield Check("FAIL", "ninkik", f"ninkik refuses NINKIK_API_TOKEN ({status}): set a valid token")
            return
        if status == 200:
            yield Check("OK", "ninkik", f"API at {s.api_url} answers, accepts the token and knows tenant {tenant}")
            return
        if status != 404:
            yield Check("FAIL", "ninkik", f"API at {s.api_url} answered {status} to the lookup of tenant {tenant}")
            return
        tried.append(tenant)
    if not tenants:
        yield Check(
            "WARN",
            "ninkik",
            f"API at {s.api_url} answers, but the tenant lookup is not proven: no tenant is known to look up (a "
            "made-up one answers 404 at a wrong URL too); set NINKIK_TENANT_UUIDS to a tenant of this deployment",
        )
        return
    named = "; ".join(f"{tenant} ({tenants[tenant]})" for tenant in tried)
    yield Check(
        "FAIL",
        "ninkik",
        f"ninkik answers 404 for every tenant it was asked for, at {s.api_url.rstrip('/')}{API_PATH}/tenants/: "
        f"{named}; every push of them would end as unknown_tenant: set NINKIK_API_URL to ninkik's base URL (the "
        "one its web pages use, without /api/v1), or create the tenants in ninkik",
        setting=True,
    )
