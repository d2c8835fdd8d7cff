"""Repository names, product choice, and the tenant directory (file, and API through a real Redis cache)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from ninkik_tasks import local
from ninkik_tasks.errors import PermanentError, TransientError
from ninkik_tasks.local import wait_for
from ninkik_tasks.local.standin import Standin
from ninkik_tasks.tenants import Directory, Product, RepositoryName, Tenant, load_tenants_file, pick_product, split

TOKEN = "tenants-test-token-8Jw2"
TENANT_A = "3f2c1a9e-8d4b-4c6e-9a7f-2b1d0e5c4a83"
TENANT_B = "b7e4d2c1-5a9f-4e3b-8c6d-1f0a2e4b6c8d"
UNKNOWN = "00000000-1111-4222-8333-444444444444"
A_SHOP = "aaaaaaaa-0000-4000-8000-000000000001"
A_WEB = "aaaaaaaa-0000-4000-8000-000000000002"
B_WEB = "bbbbbbbb-0000-4000-8000-000000000001"
TENANTS = [
    {"uuid": TENANT_A, "name": "Acme", "products": [{"uuid": A_SHOP, "name": "Shop"}, {"uuid": A_WEB, "name": "web"}]},
    # B also has a product called "web": a repository must never be matched to the other tenant's product.
    {"uuid": TENANT_B, "name": "Bolt", "products": [{"uuid": B_WEB, "name": "web"}]},
]


# split


@pytest.mark.parametrize(
    ("repository", "product", "component"),
    [
        (f"{TENANT_A}/web", "web", ""),
        (f"{TENANT_A}/web/api", "web", "api"),
        (f"{TENANT_A}/web/sub/path", "web", "sub/path"),
        (f"{TENANT_A}/{A_WEB}", A_WEB, ""),
        (f"{TENANT_A}/my-product", "my-product", ""),
        (f"{TENANT_A}/my_product.v2", "my_product.v2", ""),
        (f"{TENANT_A}/my__product/a-b/c.d", "my__product", "a-b/c.d"),
    ],
)
def test_split_accepts(repository: str, product: str, component: str) -> None:
    assert split(repository) == RepositoryName(tenant=TENANT_A, product=product, component=component)


@pytest.mark.parametrize(
    "repository",
    [
        "web",
        TENANT_A,
        "library/nginx",
        f"{TENANT_A}/Web",
        f"{TENANT_A.upper()}/web",
        f"{{{TENANT_A}}}/web",
        f"{TENANT_A[:-1]}/web",
        f"{TENANT_A.replace('-', '')}/web",
        f"{TENANT_A}/../web",
        f"{TENANT_A}/web/../api",
        f"{TENANT_A}/./web",
        f"{TENANT_A}/web/./api",
        f"{TENANT_A}//web",
        f"{TENANT_A}/web//api",
        f"{TENANT_A}/web/",
        f"/{TENANT_A}/web",
        f"{TENANT_A}/wéb",
        f"{TENANT_A}/web/ąpi",
        f"{TENANT_A}/web\n",
        f" {TENANT_A}/web",
        f"{TENANT_A}/-web",
        f"{TENANT_A}/web-",
        f"{TENANT_A}/.web",
        f"{TENANT_A}/web.",
        f"{TENANT_A}/we..b",
        f"{TENANT_A}/_web",
        f"{TENANT_A}/we b",
        f"{TENANT_A}/web:latest",
        f"{TENANT_A}/web@sha256",
        f"{TENANT_A}/",
    ],
)
def test_split_refuses(repository: str) -> None:
    with pytest.raises(PermanentError) as caught:
        split(repository)
    assert caught.value.reason == "repository_format"


# pick_product


def tenant(*products: tuple[str, str]) -> Tenant:
    return Tenant(uuid=TENANT_A, name="Acme", products=[Product(uuid=u, name=n) for u, n in products])


def test_pick_by_uuid() -> None:
    acme = tenant((A_SHOP, "shop"), (A_WEB, "web"))
    assert pick_product(acme, A_WEB).name == "web"


def test_pick_by_uuid_the_directory_wrote_in_uppercase() -> None:
    acme = tenant((A_SHOP.upper(), "shop"))
    assert pick_product(acme, A_SHOP).name == "shop"


def test_pick_by_exact_name() -> None:
    assert pick_product(tenant((A_SHOP, "shop"), (A_WEB, "web")), "web").uuid == A_WEB


def test_pick_by_unique_name_in_another_case() -> None:
    assert pick_product(tenant((A_SHOP, "Shop"), (A_WEB, "web")), "shop").uuid == A_SHOP


def test_exact_name_beats_case_insensitive() -> None:
    assert pick_product(tenant((A_SHOP, "Web"), (A_WEB, "web")), "web").uuid == A_WEB


@pytest.mark.parametrize(
    "products",
    [
        [(A_SHOP, "Web"), (A_WEB, "WEB")],
        [(A_SHOP, "web"), (A_WEB, "web")],
    ],
    ids=["case-insensitive", "exact"],
)
def test_ambiguous_name(products: list[tuple[str, str]]) -> None:
    with pytest.raises(PermanentError) as caught:
        pick_product(tenant(*products), "web")
    assert caught.value.reason == "unknown_product"
    assert "ambiguous" in str(caught.value)


@pytest.mark.parametrize("segment", ["api", B_WEB, "we"])
def test_absent_product(segment: str) -> None:
    with pytest.raises(PermanentError) as caught:
        pick_product(tenant((A_SHOP, "shop"), (A_WEB, "web")), segment)
    assert caught.value.reason == "unknown_product"


def test_tenant_without_products() -> None:
    with pytest.raises(PermanentError) as caught:
        pick_product(Tenant(uuid=TENANT_A), "web")
    assert caught.value.reason == "unknown_product"


# Directory


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A real redis-server of this module's own."""
    proc, url = local.start_redis(tmp_path_factory.mktemp("tenants-redis"))
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
        proc.stop()


@pytest.fixture(scope="module")
def standin() -> Iterator[Standin]:
    server = Standin(TENANTS, TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0) as client:
        yield client


@pytest.fixture
def api(cache: redis.Redis, standin: Standin, http: httpx.Client) -> Directory:
    """A directory on the stand-in, with a cache namespace of its own."""
    standin.reset()
    return Directory(cache, f"test-{uuid.uuid4().hex[:8]}", http=http, api_url=standin.url + "/", token=TOKEN)


@pytest.mark.parametrize("form", ["list", "object"])
def test_tenants_file(tmp_path: Path, cache: redis.Redis, form: str) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(TENANTS if form == "list" else {"tenants": TENANTS}))
    directory = Directory(cache, "file-test", tenants_file=path)
    match = directory.match(f"{TENANT_A}/shop/api")
    assert (match.tenant, match.product, match.product_name, match.component) == (TENANT_A, A_SHOP, "Shop", "api")
    assert directory.match(f"{TENANT_B}/web").product == B_WEB
    assert directory.tenant(UNKNOWN) is None
    assert cache.keys("file-test:*") == []


def test_tenants_file_with_uppercase_uuids(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps([{"uuid": TENANT_A.upper(), "products": [{"uuid": A_WEB, "name": "web"}]}]))
    assert set(load_tenants_file(path)) == {TENANT_A}


def test_api_answer_is_cached(api: Directory, standin: Standin, cache: redis.Redis) -> None:
    first = api.match(f"{TENANT_A}/shop")
    assert (first.tenant, first.product, first.product_name) == (TENANT_A, A_SHOP, "Shop")
    assert standin.tenant_lookups == 1
    assert api.match(f"{TENANT_A}/web/api").product == A_WEB
    assert api.tenant(TENANT_A) == Tenant.model_validate(TENANTS[0])
    assert standin.tenant_lookups == 1
    assert 0 < cache.ttl(f"{api.namespace}:tenant:{TENANT_A}") <= api.cache_seconds


def test_the_process_holds_an_answer_only_as_long_as_redis_does(
    api: Directory, standin: Standin, cache: redis.Redis
) -> None:
    """A lookup's answer serves the process's next images without a Redis round trip, and not beyond the time its
    Redis entry had left: no answer is older than NINKIK_TENANT_CACHE_SECONDS, in the process or in Redis."""
    api.cache_seconds = 1
    assert api.match(f"{TENANT_A}/shop").product == A_SHOP
    key = f"{api.namespace}:tenant:{TENANT_A}"
    cache.delete(key)  # were it read, the next match would ask ninkik again
    assert api.match(f"{TENANT_A}/web").product == A_WEB
    assert standin.tenant_lookups == 1
    wait_for(lambda: api.match(f"{TENANT_A}/web") and standin.tenant_lookups == 2, 5, "the held answer to expire")
    # Another process reads that answer from Redis and holds it for what its entry has left, under a second.
    other = Directory(cache, api.namespace, http=api.http, api_url=api.api_url, token=TOKEN, cache_seconds=1)
    assert other.match(f"{TENANT_A}/shop").product == A_SHOP
    lookups = standin.tenant_lookups  # 2, or 3 if the entry expired first on a slow machine
    wait_for(lambda: cache.get(key) is None, 5, "the Redis entry to expire")
    assert other.match(f"{TENANT_A}/shop") and standin.tenant_lookups == lookups + 1


def test_unknown_tenant_is_cached_negatively(api: Directory, standin: Standin) -> None:
    assert api.tenant(UNKNOWN) is None
    with pytest.raises(PermanentError) as caught:
        api.match(f"{UNKNOWN}/web")
    assert caught.value.reason == "unknown_tenant"
    assert standin.tenant_lookups == 1


def test_wrong_token_is_permanent_and_not_cached(api: Directory, standin: Standin, cache: redis.Redis) -> None:
    api.token = "not-the-token"
    with pytest.raises(PermanentError) as caught:
        api.match(f"{TENANT_A}/web")
    assert caught.value.reason == "tenant_lookup"
    assert cache.get(f"{api.namespace}:tenant:{TENANT_A}") is None
    api.token = TOKEN
    assert api.match(f"{TENANT_A}/web").product == A_WEB


def test_same_product_name_in_two_tenants_does_not_cross_over(api: Directory) -> None:
    assert api.match(f"{TENANT_A}/web").product == A_WEB
    assert api.match(f"{TENANT_B}/web").product == B_WEB
    # And again from the cache, in the other order.
    assert api.match(f"{TENANT_B}/web/api").product == B_WEB
    assert api.match(f"{TENANT_A}/web/api").product == A_WEB
    with pytest.raises(PermanentError) as caught:
        api.match(f"{TENANT_B}/shop")
    assert caught.value.reason == "unknown_product"


def test_unknown_product_of_a_known_tenant(api: Directory) -> None:
    with pytest.raises(PermanentError) as caught:
        api.match(f"{TENANT_A}/{B_WEB}")
    assert caught.value.reason == "unknown_product"


def test_repository_format_is_checked_before_any_lookup(api: Directory, standin: Standin) -> None:
    with pytest.raises(PermanentError) as caught:
        api.match("library/nginx")
    assert caught.value.reason == "repository_format"
    assert standin.tenant_lookups == 0


def test_api_down_is_transient(cache: redis.Redis, http: httpx.Client) -> None:
    closed = f"http://127.0.0.1:{local.free_port()}"
    directory = Directory(cache, f"test-{uuid.uuid4().hex[:8]}", http=http, api_url=closed, token=TOKEN)
    with pytest.raises(TransientError):
        directory.match(f"{TENANT_A}/web")
    assert cache.keys(f"{directory.namespace}:*") == []
