"""Coverage: the counts of what ninkik holds (holdings.py) per account, region, tenant and product, the gauge beat
stores and ingest's /metrics serves, Amazon Inspector's ListCoverage merged in, and `check`'s line about it.

moto implements no inspector2 ListCoverage: its answers are given with botocore's Stubber, which checks each
against the service model, in AWS's published samples (tests/aws/SOURCES) and the API reference's syntax.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import redis
from botocore.stub import Stubber
from conftest import PRODUCT_A1, TENANT_A, TENANT_B, Stack, own_broker_db

from ninkik_tasks import local
from ninkik_tasks.check.inspector import coverage_permission
from ninkik_tasks.coverage.counts import SCANNED, Coverage, ecr_scan_statuses, read, reasons
from ninkik_tasks.coverage.gauge import STATES, load, recount, series, state_of
from ninkik_tasks.coverage.inspector import list_coverage
from ninkik_tasks.holdings import Holding, Holdings
from ninkik_tasks.inventory import Registry
from ninkik_tasks.metrics import PipelineCollector, PipelineStats

SAMPLES = Path(__file__).parent / "aws" / "inspector"
ACCOUNT, REGION = local.ACCOUNT, local.REGION
NOW = 1_800_000_000.0
# One image of each state a report can carry, in tenant A; tenant B has a scanned and an unscanned repository.
STATUSES = [*ecr_scan_statuses(), "NOT_SCANNED", "INDEX_UNREAD"]


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def holding(scan: str, tenant: str, product: str, observed: float = NOW, **extra: Any) -> Holding:
    return Holding(key=f"k-{scan}", observed=observed, tags=["1.0"], scan=scan, tenant=tenant, product=product, **extra)


def tenant_a_and_b() -> dict[str, dict[str, Holding]]:
    """repository -> digest -> Holding."""
    shop = f"{TENANT_A}/shop"
    held = {
        shop: {
            digest(i): holding(s, TENANT_A, PRODUCT_A1, NOW - i, scan_type="ENHANCED" if s == "ACTIVE" else "BASIC")
            for i, s in enumerate(STATUSES)
        }
    }
    held[shop][digest(99)] = Holding(observed=NOW, gone=True)  # a removed image: not counted
    held[f"{TENANT_B}/web"] = {digest(200): holding("COMPLETE", TENANT_B, "web")}
    # no scan came for any image of this one (scan on push off)
    held[f"{TENANT_B}/web/api"] = {digest(201 + i): holding("NOT_SCANNED", TENANT_B, "web") for i in range(2)}
    return held


def counted(held: dict[str, dict[str, Holding]]) -> Coverage:
    coverage = Coverage()
    for repository, images in held.items():
        coverage.add_repository(ACCOUNT, REGION, repository, images)
    return coverage


def test_every_scan_status_ecr_defines_is_a_reason_or_scanned() -> None:
    assert {"UNSUPPORTED_IMAGE", "SCAN_ELIGIBILITY_EXPIRED", "LIMIT_EXCEEDED", "IMAGE_SIZE_EXCEEDED"} <= set(reasons())
    assert set(ecr_scan_statuses()) - set(SCANNED) <= set(reasons())
    assert {"NOT_SCANNED", "INDEX_UNREAD"} <= set(reasons()) and not set(SCANNED) & set(reasons())
    assert {state_of(s) for s in [*STATUSES, "SOMETHING_NEW", ""]} <= set(STATES)


def test_counts_per_tenant_and_product_with_every_reason() -> None:
    coverage = counted(tenant_a_and_b())
    a = coverage.groups[(ACCOUNT, REGION, TENANT_A, PRODUCT_A1)].as_dict()
    assert a["repositories"] == 1 and a["images"] == len(STATUSES) and a["scanned"] == 2
    assert a["not_scanned_by_reason"] == {r: 1 for r in reasons() if r != "OTHER"}
    assert a["enhanced"] == 1 and a["repositories_without_scanned_image"] == 0
    assert a["monitoring_ends_within_14_days"] is None  # not known from what is recorded: said, not invented
    b = coverage.groups[(ACCOUNT, REGION, TENANT_B, "web")].as_dict()
    assert (b["repositories"], b["images"], b["scanned"], b["not_scanned"]) == (2, 3, 1, 2)
    assert b["repositories_without_scanned_image"] == 1 and b["not_scanned_by_reason"] == {"NOT_SCANNED": 2}


def test_the_gauge_names_the_top_tenants_and_adds_up_the_others() -> None:
    coverage = counted(tenant_a_and_b())
    full = series(coverage, top=20)
    assert full[(ACCOUNT, REGION, TENANT_A, "scanned")] == 2
    assert full[(ACCOUNT, REGION, TENANT_A, "quota")] == 2  # LIMIT_EXCEEDED, IMAGE_SIZE_EXCEEDED
    assert full[(ACCOUNT, REGION, TENANT_B, "no_scan")] == 2
    assert len(full) == 2 * len(STATES)  # every state of every tenant, zeros too
    bounded = series(coverage, top=1)  # A has the most images not scanned: named; B is `other`
    assert {k[2] for k in bounded} == {TENANT_A, "other"}
    assert bounded[(ACCOUNT, REGION, "other", "no_scan")] == 2
    assert sum(bounded.values()) == sum(full.values())


# ListCoverage (Stubber: moto has none)


def ecr_image(repository: str, image: str, reason: str, code: str = "ACTIVE") -> dict[str, Any]:
    """A covered ECR image in the API reference's Response Syntax (CoveredResource)."""
    return {
        "accountId": ACCOUNT,
        "resourceId": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repository}/{image}",
        "resourceType": "AWS_ECR_CONTAINER_IMAGE",
        "scanType": "PACKAGE",
        "scanStatus": {"statusCode": code, "reason": reason},
        "resourceMetadata": {
            "ecrRepository": {"name": repository, "scanFrequency": "CONTINUOUS_SCAN"},
            "ecrImage": {"tags": ["1.0"], "imagePulledAt": "2026-11-01T00:00:00Z", "inUseCount": 0},
        },
    }


def inspector_client() -> Any:
    return boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION).client(
        "inspector2"
    )


def test_list_coverage_as_aws_answers_merges_each_images_reason() -> None:
    client = inspector_client()
    ec2 = json.loads((SAMPLES / "list-coverage-awscli-ec2.json").read_text())
    lam = json.loads((SAMPLES / "list-coverage-awscli-lambda.json").read_text())
    shop = f"{TENANT_A}/shop"
    first = {**ec2, "coveredResources": [*ec2["coveredResources"], ecr_image(shop, digest(0), "SUCCESSFUL")]}
    first["nextToken"] = "page-2"
    second = {
        "coveredResources": [
            *lam["coveredResources"],
            ecr_image(shop, digest(5), "UNSUPPORTED_OS", "INACTIVE"),
            ecr_image(shop, digest(6), "SCAN_ELIGIBILITY_EXPIRED", "INACTIVE"),
            ecr_image(f"{TENANT_A}/other", digest(7), "PENDING_INITIAL_SCAN"),  # not held by ninkik: not counted
        ]
    }
    with Stubber(client) as stub:
        stub.add_response("list_coverage", first)  # Stubber checks each against botocore's model
        stub.add_response(
            "list_coverage",
            second,
            {
                "nextToken": "page-2",
                "maxResults": 200,
                "filterCriteria": {
                    "resourceType": [{"comparison": "EQUALS", "value": "AWS_ECR_CONTAINER_IMAGE"}],
                    "accountId": [{"comparison": "EQUALS", "value": ACCOUNT}],
                },
            },
        )
        view = list_coverage(client, ACCOUNT)
        stub.assert_no_pending_responses()
    assert view.status == "read"
    assert view.reasons == {
        (shop, digest(0)): "SUCCESSFUL",
        (shop, digest(5)): "UNSUPPORTED_OS",
        (shop, digest(6)): "SCAN_ELIGIBILITY_EXPIRED",
        (f"{TENANT_A}/other", digest(7)): "PENDING_INITIAL_SCAN",
    }
    coverage = counted(tenant_a_and_b())
    assert coverage.merge_inspector(ACCOUNT, REGION, view.reasons) == 3
    group = coverage.groups[(ACCOUNT, REGION, TENANT_A, PRODUCT_A1)].as_dict()
    assert group["inspector_reasons"] == {"SCAN_ELIGIBILITY_EXPIRED": 1, "SUCCESSFUL": 1, "UNSUPPORTED_OS": 1}


def test_list_coverage_refused_leaves_ecrs_view_and_check_says_so() -> None:
    client = inspector_client()
    message = f"User: arn:aws:iam::{ACCOUNT}:user/ninkik is not authorized to perform: inspector2:ListCoverage"
    with Stubber(client) as stub:
        stub.add_client_error("list_coverage", "AccessDeniedException", message, 403)
        stub.add_client_error("list_coverage", "AccessDeniedException", message, 403)
        view = list_coverage(client, ACCOUNT)
        [line] = coverage_permission(client, ACCOUNT, REGION)
    assert view.status.startswith("not granted: AccessDeniedException") and view.reasons == {}
    assert line.level == "INFO" and "inspector2:ListCoverage is not granted" in line.message
    assert '"Resource": "*"' in line.message and "cannot be scoped to a repository" in line.message
    with Stubber(client) as stub:
        stub.add_response("list_coverage", {"coveredResources": []})
        [line] = coverage_permission(client, ACCOUNT, REGION)
    assert line.level == "OK" and "is granted" in line.message


# Against a real Redis: the command, and the gauge on ingest's /metrics


def store(client: redis.Redis, namespace: str, held: dict[str, dict[str, Holding]]) -> None:
    holdings = Holdings(client, namespace)
    for repository, images in held.items():
        client.hset(holdings.key(ACCOUNT, REGION, repository), mapping={d: h.dump() for d, h in images.items()})


def coverage_command(stack: Stack, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = stack.env(NINKIK_REDIS_NAMESPACE=namespace)
    return subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "coverage", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_prints_json_and_a_table_of_what_is_recorded(stack: Stack) -> None:
    namespace = f"cov{uuid.uuid4().hex[:8]}"
    store(stack.records, namespace, tenant_a_and_b())
    done = coverage_command(stack, namespace, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert set(document) == {"generated_at", "source", "registries", "totals", "groups", "notes"}
    # moto has no ListCoverage: the command says it shows ECR's view
    [registry] = document["registries"]
    assert registry["view"] == "ecr" and registry["inspector"].startswith("not ")
    assert [(g["tenant"], g["product"]) for g in document["groups"]] == [(TENANT_A, PRODUCT_A1), (TENANT_B, "web")]
    totals = document["totals"]
    assert (totals["repositories"], totals["images"], totals["scanned"]) == (3, len(STATUSES) + 3, 3)
    assert totals["repositories_without_scanned_image"] == 1
    assert totals["oldest_observed"] < totals["newest_observed"]  # how fresh: the Holdings' observation times
    assert "not known from what is recorded" in document["notes"][0]

    only_b = coverage_command(stack, namespace, "--tenant", TENANT_B, "--no-inspector")
    assert only_b.returncode == 0, only_b.stderr
    assert TENANT_B in only_b.stdout and TENANT_A not in only_b.stdout
    assert "NOT_SCANNED 2" in only_b.stdout and "Amazon Inspector's view: not asked" in only_b.stdout
    wrong = coverage_command(stack, namespace, "--account", "999999999999")
    assert wrong.returncode == 2 and "not one of the configured accounts" in wrong.stderr


def test_the_gauge_beat_computes_is_served_on_scrape(stack: Stack) -> None:
    namespace = f"cov{uuid.uuid4().hex[:8]}"
    store(stack.records, namespace, tenant_a_and_b())
    from ninkik_tasks.config import Settings

    settings = Settings(
        redis_namespace=namespace, aws_account_ids=[ACCOUNT], aws_regions=[REGION], coverage_top_tenants=1
    )
    before = time.time()
    summary = recount(stack.records, settings)
    assert summary == {"series": 2 * len(STATES), "images": len(STATUSES) + 3, "not_scanned": len(STATUSES) + 3 - 3}
    values, computed = load(stack.records, namespace)
    assert computed is not None and computed >= before
    collected = {
        (m.name, tuple(sorted(s.labels.items()))): s.value
        for m in PipelineCollector(PipelineStats(stack.records, namespace)).collect()
        for s in m.samples
        if m.name.startswith("ninkik_coverage")
    }
    labels = {"account": ACCOUNT, "region": REGION}
    assert (
        collected[("ninkik_coverage_images", tuple(sorted({**labels, "tenant": "other", "state": "no_scan"}.items())))]
        == 2
    )
    assert (
        collected[("ninkik_coverage_images", tuple(sorted({**labels, "tenant": TENANT_A, "state": "expired"}.items())))]
        == 1
    )
    assert collected[("ninkik_coverage_computed_timestamp_seconds", ())] == computed
    assert len([k for k in collected if k[0] == "ninkik_coverage_images"]) == 2 * len(STATES)
    # The next count replaces the gauge at once: a tenant's images gone, its series go with them.
    stack.records.delete(Holdings(stack.records, namespace).key(ACCOUNT, REGION, f"{TENANT_A}/shop"))
    recount(stack.records, settings)
    assert {k[2] for k in load(stack.records, namespace)[0]} == {TENANT_B}
    assert read(Holdings(stack.records, namespace), [Registry(ACCOUNT, REGION)], TENANT_A).groups == {}


def test_refresh_queues_a_re_read_of_the_selection(stack: Stack) -> None:
    """On a broker of its own with no worker, the task is queued, not run: a backfill (nothing of B is held)."""
    db = own_broker_db()
    namespace = f"cov{uuid.uuid4().hex[:8]}"
    env = stack.env(db, NINKIK_REDIS_NAMESPACE=namespace)
    done = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "coverage", "--tenant", TENANT_B, "--refresh", "--no-inspector"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "refresh queued:" in done.stderr and "no image recorded yet" in done.stdout
    broker = redis.Redis.from_url(f"{stack.redis_url}/{db}")
    [message] = [json.loads(m) for m in broker.lrange("ninkik-control", 0, -1)]
    assert message["headers"]["task"] == "ninkik.backfill"
    assert f"'tenant': '{TENANT_B}'" in message["headers"]["kwargsrepr"]
    # A tenant of whom images are held: the lifecycle sweep of its repositories.
    held = Holding(key="k", observed=1.0, tags=["1"], scan="COMPLETE", tenant=TENANT_A, product="shop")
    stack.records.hset(
        Holdings(stack.records, namespace).key(ACCOUNT, REGION, f"{TENANT_A}/shop"), "sha256:" + "a" * 64, held.dump()
    )
    broker.delete("ninkik-control")
    again = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "coverage", "--tenant", TENANT_A, "--refresh", "--no-inspector"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    [message] = [json.loads(m) for m in broker.lrange("ninkik-control", 0, -1)]
    assert message["headers"]["task"] == "ninkik.lifecycle"
    assert f"'repositories': ['{TENANT_A}/shop']" in message["headers"]["kwargsrepr"]
