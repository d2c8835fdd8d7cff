"""The send records against a real redis-server: one worker sends a report, a redelivery never twice."""

from __future__ import annotations

import uuid

from conftest import Stack

from ninkik_tasks.idempotency import Records


def records(stack: Stack) -> Records:
    return Records(stack.records, f"test-{uuid.uuid4().hex[:8]}")


def test_a_report_is_sent_by_one_owner_then_never_again(stack: Stack) -> None:
    r = records(stack)
    r.put_report("k1", '{"findings": []}', ttl=60)

    first = r.begin_send("k1", "task-a", lock_ttl=60)
    assert (first.state, first.report) == ("ours", '{"findings": []}')
    assert r.begin_send("k1", "task-b", lock_ttl=60).state == "busy"
    # The same task redelivered after its worker died holds the lock already.
    assert r.begin_send("k1", "task-a", lock_ttl=60).state == "ours"

    r.end_send("k1", "task-a", sent_ttl=60, reported=("acct/region/repo@sha256:1", "stamp-1"))
    assert r.begin_send("k1", "task-b", lock_ttl=60).state == "sent"
    assert stack.records.exists(r.key("sending", "k1")) == 0
    assert 0 < stack.records.ttl(r.key("sent", "k1")) <= 60
    # What ninkik now has of the image, remembered in the same round trip (a rescan leaves it alone).
    assert r.reported(["acct/region/repo@sha256:1", "acct/region/repo@sha256:2"]) == ["stamp-1", None]


def test_a_failed_send_gives_the_lock_back_without_marking_it_sent(stack: Stack) -> None:
    r = records(stack)
    r.put_report("k2", "{}", ttl=60)
    assert r.begin_send("k2", "task-a", lock_ttl=60).state == "ours"
    r.end_send("k2", "task-b", sent_ttl=None)  # not the owner: the lock stays
    assert r.begin_send("k2", "task-b", lock_ttl=60).state == "busy"
    r.end_send("k2", "task-a", sent_ttl=None, reported=("acct/region/repo@sha256:3", "stamp-3"))
    assert r.begin_send("k2", "task-b", lock_ttl=60).state == "ours"
    assert stack.records.exists(r.key("sent", "k2")) == 0
    assert r.reported(["acct/region/repo@sha256:3"]) == [None]


def test_an_expired_report_is_ours_with_no_body(stack: Stack) -> None:
    start = records(stack).begin_send("gone", "task-a", lock_ttl=60)
    assert (start.state, start.report) == ("ours", None)
