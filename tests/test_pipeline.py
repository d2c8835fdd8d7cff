"""End to end on real processes: SQS event -> ingest -> worker chain -> one POST to the ninkik stand-in."""

from __future__ import annotations

import json
import re

import httpx
from conftest import PRODUCT_A1, PRODUCT_A2, PRODUCT_B1, TENANT_A, TENANT_B, TOKEN, Pipeline, Stack, ingest

from ninkik_tasks import local
from ninkik_tasks.local import wait_for
from ninkik_tasks.metrics import LATENCY_BUCKETS


def test_events_for_several_tenants_become_one_post_each(pipeline: Pipeline, worker: local.Proc) -> None:
    stack = pipeline.stack
    images = {
        # product by UUID, tagged, basic findings
        "a1": (
            f"{TENANT_A}/{PRODUCT_A1}",
            "1.2.3",
            TENANT_A,
            PRODUCT_A1,
            dict(
                findings=[
                    local.basic_finding("CVE-2026-0001", "HIGH", "openssl", "3.0.1"),
                    local.basic_finding("CVE-2026-0002", "LOW", "zlib", "1.2.11"),
                ]
            ),
        ),
        # product by internal name, untagged, enhanced findings
        "a2": (
            f"{TENANT_A}/web",
            None,
            TENANT_A,
            PRODUCT_A2,
            dict(enhanced=[local.enhanced_finding("CVE-2026-1234", "CRITICAL", "log4j-core", "2.14.1", "2.17.1")]),
        ),
        # another tenant with a product of the same name, and a component path
        "b1": (f"{TENANT_B}/web/api", "latest", TENANT_B, PRODUCT_B1, dict(findings=[])),
    }
    digests = {}
    for name, (repository, tag, _, _, scan) in images.items():
        digests[name] = stack.push(repository, tag, **scan)
        stack.send(pipeline.queue_url, local.push_event(repository, digests[name], tag))

    wait_for(lambda: all(stack.received_for(d) for d in digests.values()), 60, "three notifications")
    for name, (repository, tag, tenant, product, _) in images.items():
        [received] = stack.received_for(digests[name])
        body = received.body
        assert (received.tenant, received.product) == (tenant, product)
        assert body["source"] == "push"
        assert body["image"]["repository"] == repository
        assert body["image"]["registry_id"] == local.ACCOUNT
        assert body["image"]["region"] == local.REGION
        assert body["image"]["tags"] == ([tag] if tag else [])
        assert body["image"]["pushed_at"] and body["image"]["size_bytes"] > 0
        assert body["image"]["manifest_media_type"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert len(received.key) == 64
    a1 = stack.received_for(digests["a1"])[0].body["scan"]
    assert (a1["type"], a1["status"]) == ("BASIC", "COMPLETE")
    assert a1["severity_counts"] == {"HIGH": 1, "LOW": 1}
    assert {f["id"]: f["package"] for f in a1["findings"]} == {"CVE-2026-0001": "openssl", "CVE-2026-0002": "zlib"}
    a2 = stack.received_for(digests["a2"])[0].body["scan"]
    assert a2["type"] == "ENHANCED" and a2["severity_counts"] == {"CRITICAL": 1}
    assert a2["findings"][0]["fixed_version"] == "2.17.1"
    assert stack.received_for(digests["b1"])[0].body["scan"]["findings"] == []
    # Every POST was authenticated (the stand-in answers 401 otherwise) and none was repeated.
    keys = [key for _, key in stack.standin.attempts]
    assert len(set(keys)) == len(keys)
    assert all(stack.received_for(d)[0].key != TOKEN for d in digests.values())
    # The worker's log: one line per image's outcome; Celery's own per task (received, succeeded) only at DEBUG.
    notified = {d: rf"notified \(.*digest={d}" for d in digests.values()}
    wait_for(lambda: all(re.search(line, worker.output()) for line in notified.values()), 10, "the notified lines")
    # (A retry's line stays at INFO: the shared worker has those of other tests.)
    steps = "match_tenant|describe_image|fetch_scan_findings|notify"
    assert not re.search(rf"Task ninkik\.({steps})\[[^\]]+\] (received|succeeded)", worker.output())


def test_bad_input_is_recorded_and_never_posted(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    unknown_tenant = "deadbeef-0000-4000-8000-000000000000"
    cases = {
        "unknown_tenant": f"{unknown_tenant}/shop",
        "unknown_product": f"{TENANT_A}/no-such-product",
        "repository_format": "my-team/hello-world",
    }
    digests = {}
    for reason, repository in cases.items():
        digests[reason] = stack.push(repository, "1.0")
        stack.send(pipeline.queue_url, local.push_event(repository, digests[reason], "1.0"))
    foreign = local.push_event(f"{TENANT_A}/shop", "sha256:" + "f" * 64, account="999999999999")
    stack.send(pipeline.queue_url, foreign)
    stack.send(pipeline.queue_url, "this is not json {")
    stack.send(
        pipeline.queue_url,
        json.dumps({"detail-type": "ECR Image Action", "source": "aws.ecr", "detail": {"repository-name": 42}}),
    )
    # A good event after all the bad ones is still delivered: ingest kept going.
    good = stack.push(f"{TENANT_A}/shop", "ok")
    stack.send(pipeline.queue_url, local.push_event(f"{TENANT_A}/shop", good, "ok"))

    wait_for(lambda: stack.received_for(good), 60, "the good event's notification")

    def chain_failures() -> dict[str, dict[str, str]]:
        return {f["digest"]: f for f in stack.failures() if f["digest"] in digests.values()}

    failed = wait_for(lambda: len(chain_failures()) == 3 and chain_failures(), 30, "three recorded chain ends")
    for reason, digest in digests.items():
        assert failed[digest]["reason"] == reason
        # The chain ended at tenant matching: no ECR call was made for it.
        assert failed[digest]["stage"] == "match_tenant"
        assert not stack.received_for(digest)
    reasons = {q["reason"] for q in stack.quarantined() if q.get("message_id")}
    assert {"account_not_allowed", "not_json", "wrong_shape"} <= reasons
    not_json = next(q for q in stack.quarantined() if q["body"] == "this is not json {")
    assert not_json["reason"] == "not_json" and not_json["at"]
    assert pipeline.ingest.alive()


def test_an_image_deleted_since_the_push_is_removed_not_reported(pipeline: Pipeline) -> None:
    # DescribeImages finds no such image: the chain tells ninkik to remove it (404: ninkik never had it, done)
    # instead of recording a failure (docs/operations.md#deleted-archived-and-retagged-images).
    stack = pipeline.stack
    repository = f"{TENANT_B}/web"
    digest = stack.push(repository, "gone")
    stack.ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    stack.send(pipeline.queue_url, local.push_event(repository, digest, "gone"))
    wait_for(lambda: [r.status for r in stack.standin.removed if r.digest == digest] == [404], 30, "the removal")
    [removal] = [r for r in stack.standin.removed if r.digest == digest]
    assert removal.tenant == TENANT_B
    assert not stack.received_for(digest)
    assert not [f for f in stack.failures() if f["digest"] == digest]


def test_the_cli_lists_quarantine_and_failures(pipeline: Pipeline) -> None:
    import subprocess
    import sys

    stack = pipeline.stack
    stack.send(pipeline.queue_url, "<xml>not an event</xml>")
    wait_for(lambda: any(q["body"] == "<xml>not an event</xml>" for q in stack.quarantined()), 30, "quarantine")
    env = stack.env()
    out = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "quarantine", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert any(row["body"] == "<xml>not an event</xml>" and row["reason"] == "not_json" for row in json.loads(out))
    out = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "failures", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert isinstance(json.loads(out), list)


def test_ingest_metrics_move_after_a_run(stack: Stack, worker: local.Proc) -> None:
    port = local.free_port()
    queue_url = stack.new_queue()
    proc = ingest(stack, stack.env(NINKIK_METRICS_PORT=str(port)), queue_url, name="ingest-metrics")
    try:
        digest = stack.push(f"{TENANT_A}/shop", "metrics")
        stack.send(queue_url, local.push_event(f"{TENANT_A}/shop", digest, "metrics"))
        stack.send(queue_url, "{{ not json")
        wait_for(lambda: stack.received_for(digest), 30, "the notification")

        def sample(name: str, labels: str = "", text: str | None = None) -> float:
            text = text or httpx.get(f"http://127.0.0.1:{port}/metrics").text
            for line in text.splitlines():
                if line.startswith(f"{name}{{{labels}}} " if labels else f"{name} "):
                    return float(line.split()[-1])
            return 0.0

        wait_for(lambda: sample("ninkik_ingest_rejected_total", 'reason="not_json"') == 1, 30, "the rejection")
        assert sample("ninkik_ingest_messages_received_total") == 2
        assert sample("ninkik_ingest_chains_started_total") == 1
        assert sample("ninkik_ingest_quarantined_total") == 1
        assert sample("ninkik_ingest_delete_enabled") == 1
        assert sample("ninkik_ingest_poll_seconds_count") >= 1
        # Pipeline outcomes are counted in Redis by the workers, across all of them.
        notified = 'scan_status="COMPLETE"'  # counted by each worker process, written a second later at most
        wait_for(lambda: sample("ninkik_pipeline_notified_total", notified) >= 1, 10, "the notification counted")
        ecr_calls = f'account="{local.ACCOUNT}",region="{local.REGION}"'
        wait_for(lambda: sample("ninkik_ecr_calls_total", ecr_calls) >= 2, 10, "DescribeImages and the scan counted")
        # Push to notification: a cumulative histogram, every push in +Inf, each bucket at least the one before.
        # (The counts are the session's, the shared worker's: the notified count above may be another test's.)
        last = f'le="{LATENCY_BUCKETS[-1]:g}"'
        wait_for(lambda: sample("ninkik_pipeline_push_to_notify_seconds_bucket", last) >= 1, 10, "this push's latency")
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics").text  # one: other tests' pushes keep coming
        pushes = sample("ninkik_pipeline_push_to_notify_seconds_count", text=scrape)
        assert pushes >= 1 and sample("ninkik_pipeline_push_to_notify_seconds_bucket", 'le="+Inf"', scrape) == pushes
        bucket = "ninkik_pipeline_push_to_notify_seconds_bucket"
        buckets = [sample(bucket, f'le="{b:g}"', scrape) for b in LATENCY_BUCKETS]
        assert buckets == sorted(buckets) and 1 <= buckets[-1] <= pushes  # this one took under an hour
    finally:
        proc.stop()


def test_each_step_shows_its_image_where_celery_would_repr_its_message() -> None:
    """Flower, the task events and Celery's log lines show each step's arguments as the image they concern; a step's
    result (the next step's message) is shown cut at 256 characters. Celery computed those reprs at every publish
    and every step: 0.05-0.2 ms each, eight per image (bench/RESULTS.md)."""
    from datetime import UTC, datetime

    from ninkik_tasks import pipeline
    from ninkik_tasks.config import Settings
    from ninkik_tasks.events import ImagePushed
    from ninkik_tasks.stages import describe

    pushed = ImagePushed(
        event_id="e-1",
        account=local.ACCOUNT,
        region=local.REGION,
        repository=f"{TENANT_A}/shop",
        digest="sha256:" + "a" * 64,
        time=datetime(2026, 12, 5, tzinfo=UTC),
    )
    steps = pipeline._chain(Settings(), pushed).tasks
    assert [step.options["argsrepr"] for step in steps] == [describe(pushed)] * 4
    assert "digest=sha256:" + "a" * 64 in describe(pushed) and f"repository={TENANT_A}/shop" in describe(pushed)
    shown = [step.type.resultrepr_maxsize for step in steps]
    assert shown[:3] == [256] * 3 and shown[3] >= 1024  # notify's result is small: shown whole


def test_the_chains_quiet_lines_make_no_log_record() -> None:
    """Celery's received and succeeded lines about the chain's steps are dropped before a LogRecord is made (a filter
    ran after findCaller and the record: 0.26 ms per image); a sweep's lines and warnings are written."""
    import logging

    from ninkik_tasks import logs
    from ninkik_tasks.celery_app import CHAIN_TASKS
    from ninkik_tasks.config import Settings

    made: list[logging.LogRecord] = []
    root, trace = logging.getLogger(), logging.getLogger("celery.app.trace")
    before = (root.handlers[:], root.level, trace.filters[:], trace.__class__)
    logs.configure(Settings(log_level="INFO"), quiet_tasks=CHAIN_TASKS)
    real = trace.makeRecord
    trace.makeRecord = lambda *a, **k: made.append(real(*a, **k)) or made[-1]  # type: ignore[method-assign]
    try:
        line = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"
        for name in (*CHAIN_TASKS, "ninkik.reconcile"):
            trace.info(line, {"name": name, "id": "t", "runtime": 0.1, "return_value": "{}"})
        trace.warning(line, {"name": "ninkik.notify", "id": "t", "runtime": 0.1, "return_value": "{}"})
    finally:
        del trace.makeRecord
        root.handlers[:], trace.filters[:], trace.__class__ = before[0], before[2], before[3]
        root.setLevel(before[1])
    assert [(r.levelno, r.args["name"]) for r in made] == [  # type: ignore[call-overload,index]
        (logging.INFO, "ninkik.reconcile"),
        (logging.WARNING, "ninkik.notify"),
    ]
