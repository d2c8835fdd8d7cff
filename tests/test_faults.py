"""Waiting for scans and ninkik's API failing, on the real chain (workers killed: test_reliability.py)."""

from __future__ import annotations

import pytest
from conftest import TENANT_A, TENANT_B, Pipeline, Stack

from ninkik_tasks import local
from ninkik_tasks.local import wait_for


def _retry_logged(worker: local.Proc, digest: str) -> bool:
    return any("fetch_scan_findings will retry" in line and digest in line for line in worker.output().splitlines())


def test_a_scan_that_starts_late_is_waited_for(pipeline: Pipeline, worker: local.Proc) -> None:
    stack = pipeline.stack
    repository = f"{TENANT_A}/shop"
    digest = stack.push(repository, "late", scan=False)  # no scan yet: ScanNotFoundException
    stack.send(pipeline.queue_url, local.push_event(repository, digest, "late"))
    wait_for(lambda: _retry_logged(worker, digest), 30, "the chain to wait for the scan")
    assert not stack.received_for(digest)
    local.set_scan_result(
        stack.moto_url,
        stack.ecr,
        repository,
        digest,
        findings=[local.basic_finding("CVE-2026-7777", "CRITICAL", "glibc", "2.36")],
    )
    [received] = wait_for(lambda: stack.received_for(digest), 30, "the notification")
    assert received.body["scan"]["status"] == "COMPLETE"
    assert received.body["scan"]["severity_counts"] == {"CRITICAL": 1}


def test_scan_outcomes_without_findings(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    repository = f"{TENANT_B}/web"
    never = stack.push(repository, "never", scan=False)
    # moto has no IN_PROGRESS phase of its own: this one is injected and never finishes.
    stuck = stack.push(repository, "stuck", status="IN_PROGRESS")
    failed = stack.push(repository, "failed", status="FAILED")
    for digest, tag in ((never, "never"), (stuck, "stuck"), (failed, "failed")):
        stack.send(pipeline.queue_url, local.push_event(repository, digest, tag))
    wait_for(lambda: all(stack.received_for(d) for d in (never, stuck, failed)), 60, "three notifications")
    for digest, scan_type, status in (
        (never, "NONE", "NOT_SCANNED"),
        (stuck, "NONE", "NOT_SCANNED"),
        (failed, "BASIC", "FAILED"),
    ):
        [received] = stack.received_for(digest)
        assert (received.body["scan"]["type"], received.body["scan"]["status"]) == (scan_type, status)
        assert received.body["scan"]["findings"] == []


def _attempts(stack: Stack, digest: str) -> list[int]:
    [received] = stack.received_for(digest) or [None]
    key = received.key if received else None
    return [status for status, k in stack.standin.attempts if k == key]


def test_ninkik_down_for_a_while_then_back(pipeline: Pipeline) -> None:
    stack = pipeline.stack
    repository = f"{TENANT_A}/web"
    stack.standin.answer_next(503, times=3)
    stack.standin.answer_next(429)
    stack.standin.answer_next(0, delay=3)  # accepted, but after the client's 2 s timeout
    digest = stack.push(repository, "flaky")
    stack.send(pipeline.queue_url, local.push_event(repository, digest, "flaky"))
    wait_for(lambda: stack.received_for(digest), 60, "delivery after recovery")
    [received] = stack.received_for(digest)
    # The timed-out attempt reached ninkik; its retry carried the same key and got 409: no duplicate.
    wait_for(lambda: _attempts(stack, digest)[-1:] == [409], 30, "the retry of the timed-out POST")
    assert _attempts(stack, digest) == [503, 503, 503, 429, 201, 409]
    assert not [f for f in stack.failures() if f["digest"] == digest]


@pytest.mark.parametrize("status", [400, 409])
def test_ninkik_permanent_answers(pipeline: Pipeline, status: int) -> None:
    stack = pipeline.stack
    repository = f"{TENANT_A}/shop"
    stack.standin.answer_next(status)
    digest = stack.push(repository, f"answer-{status}")
    stack.send(pipeline.queue_url, local.push_event(repository, digest, f"answer-{status}"))
    key = wait_for(lambda: next((k for s, k in stack.standin.attempts if s == status), None), 30, "the POST")
    # Another image through the same worker afterwards: any retry of the first would have happened by then.
    other = stack.push(repository, f"after-{status}")
    stack.send(pipeline.queue_url, local.push_event(repository, other, f"after-{status}"))
    wait_for(lambda: stack.received_for(other), 30, "the next image's notification")
    assert [s for s, k in stack.standin.attempts if k == key] == [status]
    failures = [f for f in stack.failures() if f["digest"] == digest]
    if status == 400:
        assert [(f["stage"], f["reason"]) for f in failures] == [("notify", "http_400")]
    else:  # ninkik already has it: done, and remembered as sent
        assert failures == []
        assert stack.records.exists(f"ninkik:sent:{key}")
