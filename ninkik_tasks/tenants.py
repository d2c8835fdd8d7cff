"""Repository name -> tenant and product, through ninkik's tenant directory (API or file), cached."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, PermanentError, TransientError

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"^(?P<tenant>{_UUID})/(?P<product>{_COMPONENT})(?P<path>(?:/{_COMPONENT})*)$")


class Product(BaseModel):
    """A product of a tenant."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    uuid: str
    name: str


class Tenant(BaseModel):
    """A tenant as ninkik's API describes it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    uuid: str
    name: str = ""
    products: list[Product] = []


class Match(BaseModel):
    """Where an image's report goes."""

    model_config = ConfigDict(frozen=True)
    tenant: str
    product: str
    product_name: str
    component: str


class RepositoryName(BaseModel):
    """A repository name split by the `${TENANT_UUID}/${PRODUCT}[/...]` convention."""

    model_config = ConfigDict(frozen=True)
    tenant: str
    product: str
    component: str


def split(repository: str) -> RepositoryName:
    """Split a repository name; PermanentError('repository_format') if it is not a ninkik repository."""
    match = REPOSITORY.fullmatch(repository)
    if match is None:
        raise PermanentError(
            "repository_format",
            f"repository {repository[:300]!r} does not follow ${{TENANT_UUID}}/${{PRODUCT}}",
        )
    return RepositoryName(tenant=match["tenant"], product=match["product"], component=match["path"].lstrip("/"))


def pick_product(tenant: Tenant, segment: str) -> Product:
    """The tenant's product named by `segment` (its UUID or its internal name), else PermanentError."""
    for product in tenant.products:
        if product.uuid.lower() == segment:
            return product
    by_name = [p for p in tenant.products if p.name == segment]
    if not by_name:
        # ECR names are lowercase; accept a product whose name differs only in case, if unambiguous.
        by_name = [p for p in tenant.products if p.name.lower() == segment]
    if len(by_name) == 1:
        return by_name[0]
    reason = "ambiguous product name" if by_name else "no such product"
    raise PermanentError("unknown_product", f"tenant {tenant.uuid} has {reason} {segment!r}")


class Directory:
    """Looks tenants up in ninkik's API or in a JSON file, caching answers (negative ones too) in Redis, and in the
    process for what is left of each answer's time in Redis (no answer is older than `cache_seconds` either way)."""

    def __init__(
        self,
        cache: redis.Redis,
        namespace: str,
        *,
        http: httpx.Client | None = None,
        api_url: str | None = None,
        token: str | None = None,
        tenants_file: Path | None = None,
        cache_seconds: int = 300,
    ) -> None:
        self.cache = cache
        self.namespace = namespace
        self.http = http
        self.api_url = api_url.rstrip("/") if api_url else None
        self.token = token
        self.tenants_file = tenants_file
        self.cache_seconds = cache_seconds
        # uuid -> (until when, monotonic; the answer): a Redis round trip and a parse per image were the match step
        self._held: dict[str, tuple[float, Tenant | None]] = {}

    def tenant(self, uuid: str) -> Tenant | None:
        """The tenant, or None if ninkik does not know it."""
        if self.tenants_file is not None:
            return load_tenants_file(self.tenants_file).get(uuid)
        now = time.monotonic()
        held = self._held.get(uuid)
        if held is not None and now < held[0]:
            return held[1]
        key = f"{self.namespace}:tenant:{uuid}"
        pipe = self.cache.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        cached, left_ms = pipe.execute()
        if isinstance(cached, str):
            tenant = None if cached == "null" else Tenant.model_validate_json(cached)
            self._hold(uuid, tenant, now, left_ms / 1000)
            return tenant
        tenant = self._fetch(uuid)
        self.cache.set(key, tenant.model_dump_json() if tenant else "null", ex=self.cache_seconds)
        self._hold(uuid, tenant, now, self.cache_seconds)
        return tenant

    def _hold(self, uuid: str, tenant: Tenant | None, now: float, seconds: float) -> None:
        if seconds <= 0:
            return
        if len(self._held) >= HELD_TENANTS:  # many tenants (or unknown UUIDs): drop the answers whose time is over
            self._held = {k: v for k, v in self._held.items() if now < v[0]}
            if len(self._held) >= HELD_TENANTS:
                return
        self._held[uuid] = (now + seconds, tenant)

    def _fetch(self, uuid: str) -> Tenant | None:
        assert self.http is not None and self.api_url is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = self.http.get(f"{self.api_url}/api/v1/tenants/{uuid}", headers=headers)
        except httpx.HTTPError as exc:
            raise TransientError(f"tenant lookup failed: {type(exc).__name__}") from None
        if response.status_code == 404:
            return None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"tenant lookup answered {response.status_code}")
        if response.status_code in (401, 403):
            why = "NINKIK_API_TOKEN is not set" if not self.token else "ninkik refuses NINKIK_API_TOKEN"
            raise PermanentError("tenant_lookup", f"tenant lookup answered {response.status_code}: {why}")
        if response.status_code != 200:
            raise PermanentError("tenant_lookup", f"tenant lookup answered {response.status_code}")
        try:
            tenant = Tenant.model_validate_json(response.content)
        except ValidationError:
            raise PermanentError("tenant_lookup", "tenant lookup answered a body of the wrong shape") from None
        if tenant.uuid.lower() != uuid:
            raise PermanentError("tenant_lookup", f"tenant lookup for {uuid} answered tenant {tenant.uuid}")
        return tenant

    def match(self, repository: str) -> Match:
        """The tenant and product a repository reports to; PermanentError if there is none."""
        name = split(repository)
        tenant = self.tenant(name.tenant)
        if tenant is None:
            raise PermanentError("unknown_tenant", f"tenant {name.tenant} is not known to ninkik")
        product = pick_product(tenant, name.product)
        return Match(tenant=name.tenant, product=product.uuid, product_name=product.name, component=name.component)


HELD_TENANTS = 10_000  # the most tenant answers a process holds (each is a few hundred bytes)

TENANTS_FILE_FORMS = (
    'a JSON list of tenants [{"uuid": ..., "name": ..., "products": [{"uuid": ..., "name": ...}]}], '
    'or {"tenants": [...]} holding that list'
)


def load_tenants_file(path: Path) -> dict[str, Tenant]:
    """Read a tenant directory file (a list of tenants, or {"tenants": [...]}); ConfigError in one line if not."""
    where = f"NINKIK_TENANTS_FILE {path}"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror or exc}): fix the path or its permissions") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{where} is not valid JSON ({exc}): fix it; the accepted forms are {TENANTS_FILE_FORMS}"
        ) from None
    items = data.get("tenants") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError(f"{where} has the wrong shape: the accepted forms are {TENANTS_FILE_FORMS}")
    try:
        tenants = [Tenant.model_validate(item) for item in items]
    except ValidationError as exc:
        first = exc.errors()[0]
        at = "tenant " + ".".join(str(part) for part in first["loc"]) if first["loc"] else "a tenant"
        raise ConfigError(f"{where}: {at}: {first['msg']}: the accepted forms are {TENANTS_FILE_FORMS}") from None
    return {tenant.uuid.lower(): tenant for tenant in tenants}
