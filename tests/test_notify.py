"""notify.send against a real ninkik stand-in; Retry-After; the idempotency key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from ninkik_tasks import local
from ninkik_tasks.errors import PermanentError, TransientError
from ninkik_tasks.findings import Finding, Image, Report, Scan
from ninkik_tasks.local.standin import Standin
from ninkik_tasks.notify import idempotency_key, images_url, render, retry_after, send
from ninkik_tasks.tenants import Match

TOKEN = "notify-test-token-Qp4r"
TENANT = "3f2c1a9e-8d4b-4c6e-9a7f-2b1d0e5c4a83"
OTHER_TENANT = "b7e4d2c1-5a9f-4e3b-8c6d-1f0a2e4b6c8d"
PRODUCT = "aaaaaaaa-0000-4000-8000-000000000002"
REPOSITORY = f"{TENANT}/web"
DIGEST = "sha256:9b2a1e7c4f0d83a65e2c7b1d4f9e0a3c6b8d2e5f7a1c4b9e3d6f0a2c5e8b1d4f"
MATCH = Match(tenant=TENANT, product=PRODUCT, product_name="web", component="")
TIMEOUT = 0.5  # seconds: the client's, kept short so that a slow stand-in is quick to detect


def make_report(status: str = "COMPLETE", digest: str = DIGEST, repository: str = REPOSITORY) -> Report:
    finding = Finding(
        id="CVE-2026-0001",
        severity="HIGH",
        package="openssl",
        version="3.0.1",
        fixed_version="3.0.2",
        score=7.5,
        title="CVE-2026-0001 in openssl",
        uri="https://nvd.nist.gov/vuln/detail/CVE-2026-0001",
    )
    return Report(
        image=Image(
            registry_id="123456789012",
            region="eu-central-1",
            repository=repository,
            digest=digest,
            tags=["1.2.3"],
            pushed_at=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
            size_bytes=123,
        ),
        scan=Scan(
            type="BASIC",
            status=status,
            completed_at=datetime(2026, 11, 27, 10, 2, tzinfo=UTC),
            severity_counts={"HIGH": 1},
            findings=[finding],
        ),
    )


REPORT = make_report()


@pytest.fixture(scope="module")
def standin() -> Iterator[Standin]:
    server = Standin([{"uuid": TENANT, "name": "Acme", "products": [{"uuid": PRODUCT, "name": "web"}]}], TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def http(standin: Standin) -> Iterator[httpx.Client]:
    standin.reset()
    with httpx.Client(timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def url(standin: Standin) -> str:
    return images_url(standin.url, MATCH)


def post(http: httpx.Client, url: str, token: str = TOKEN, report: Report = REPORT) -> int:
    return send(http, url, token, idempotency_key(MATCH, report), render(report, "push"))


# send


def test_created(http: httpx.Client, url: str, standin: Standin) -> None:
    assert post(http, url) == 201
    [received] = standin.received
    assert (received.tenant, received.product, received.key) == (TENANT, PRODUCT, idempotency_key(MATCH, REPORT))
    assert received.body == json.loads(json.dumps(render(REPORT, "push")))
    assert received.body["source"] == "push"
    assert received.body["image"]["digest"] == DIGEST
    assert received.body["scan"]["findings"][0]["id"] == "CVE-2026-0001"


def test_duplicate_key_is_done(http: httpx.Client, url: str, standin: Standin) -> None:
    assert post(http, url) == 201
    assert post(http, url) == 409
    assert len(standin.received) == 1
    assert [status for status, _ in standin.attempts] == [201, 409]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(http: httpx.Client, url: str, standin: Standin, status: int) -> None:
    standin.answer_next(status)
    with pytest.raises(TransientError) as caught:
        post(http, url)
    assert caught.value.retry_after is None
    assert str(status) in str(caught.value)
    assert standin.received == []


def test_too_many_requests_honours_retry_after(http: httpx.Client, url: str, standin: Standin) -> None:
    standin.answer_next(429)
    with pytest.raises(TransientError) as caught:
        post(http, url)
    assert caught.value.retry_after == 1.0


@pytest.mark.parametrize("status", [400, 403, 404, 413, 422])
def test_other_client_errors_are_permanent(http: httpx.Client, url: str, standin: Standin, status: int) -> None:
    standin.answer_next(status)
    with pytest.raises(PermanentError) as caught:
        post(http, url)
    assert caught.value.reason == f"http_{status}"


def test_unknown_product_is_permanent(http: httpx.Client, standin: Standin) -> None:
    elsewhere = images_url(standin.url, MATCH.model_copy(update={"product": "bbbbbbbb-0000-4000-8000-000000000009"}))
    with pytest.raises(PermanentError) as caught:
        post(http, elsewhere)
    assert caught.value.reason == "http_404"


def test_slow_answer_is_transient(http: httpx.Client, url: str, standin: Standin) -> None:
    standin.answer_next(201, delay=TIMEOUT * 2)
    with pytest.raises(TransientError) as caught:
        post(http, url)
    assert "in time" in str(caught.value)
    # Let the stand-in finish the late answer here, so that it cannot land in another test's records.
    local.wait_for(lambda: standin.attempts, TIMEOUT * 10, "the stand-in's late answer")
    assert standin.received == []


def test_wrong_token_is_permanent(http: httpx.Client, url: str, standin: Standin) -> None:
    with pytest.raises(PermanentError) as caught:
        post(http, url, token="not-the-token")
    assert caught.value.reason == "http_401"
    assert standin.received == []


def test_connection_refused_is_transient(http: httpx.Client) -> None:
    closed = images_url(f"http://127.0.0.1:{local.free_port()}", MATCH)
    with pytest.raises(TransientError) as caught:
        post(http, closed)
    assert "unreachable" in str(caught.value)


def test_token_is_not_in_the_error(http: httpx.Client, url: str, standin: Standin) -> None:
    standin.answer_next(400)
    with pytest.raises(PermanentError) as caught:
        post(http, url)
    assert TOKEN not in str(caught.value)


# retry_after


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        ("120", 120.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-5", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert retry_after(value) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    value = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    seconds = retry_after(value)
    assert seconds is not None
    assert 85 <= seconds <= 90


# idempotency_key


def test_idempotency_key_is_stable() -> None:
    assert idempotency_key(MATCH, make_report()) == idempotency_key(MATCH, make_report())
    later = make_report().model_copy(
        update={"scan": make_report().scan.model_copy(update={"completed_at": datetime(2026, 12, 1, tzinfo=UTC)})}
    )
    assert idempotency_key(MATCH, later) == idempotency_key(MATCH, make_report())


def test_idempotency_key_differs_per_tenant_repository_digest_and_report() -> None:
    keys = {
        idempotency_key(MATCH, REPORT),
        idempotency_key(MATCH.model_copy(update={"tenant": OTHER_TENANT}), REPORT),
        idempotency_key(MATCH, make_report(repository=f"{TENANT}/web/api")),
        idempotency_key(MATCH, make_report(digest="sha256:" + "0" * 64)),
        idempotency_key(MATCH, make_report(status="FAILED")),
    }
    assert len(keys) == 5
