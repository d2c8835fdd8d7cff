"""ninkik shows the registry as it is now: deleted, untagged, moved and swept images (lifecycle.py, holdings.py).

Real parts: moto's ECR over HTTP (it deletes images with batch_delete_image and moves a tag to the image that is
pushed with it), ingest, the shared Celery worker, the stand-in playing ninkik, redis-server. The records' scripts
are also checked alone, against redis-server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TENANT_A, Pipeline, Stack, celery_worker, ingest, own_broker_db
from faultproxy import FaultProxy
from test_backfill import cli

from ninkik_tasks import local
from ninkik_tasks.holdings import Holding, Holdings
from ninkik_tasks.idempotency import Records
from ninkik_tasks.local import wait_for


def lifecycle_event(repository: str, digest: str, action: str, tag: str | None = None) -> dict[str, Any]:
    """An "ECR Image Action" of another action type, in the shape of AWS's samples (tests/aws/events)."""
    event = local.push_event(repository, digest, tag)
    event["detail"]["action-type"] = action
    if action == "UPDATE_STORAGE_CLASS":
        event["detail"]["target-storage-class"] = "ARCHIVE"
    return event


def reported(stack: Stack, digest: str, tags: list[str]) -> bool:
    """ninkik has the image with exactly these tags now."""
    held = stack.standin.holds(digest)
    return held is not None and held["image"]["tags"] == tags


def removals(stack: Stack, digest: str) -> list[int]:
    return [r.status for r in stack.standin.removed if r.digest == digest]


def push_reported(pipeline: Pipeline, repository: str, tag: str) -> str:
    stack = pipeline.stack
    digest = stack.push(repository, tag)
    stack.send(pipeline.queue_url, local.push_event(repository, digest, tag))
    wait_for(lambda: reported(stack, digest, [tag]), 60, f"the report of {tag}")
    return digest


def add_tag(pipeline: Pipeline, repository: str, digest: str, tag: str, tags: list[str]) -> None:
    """Push the image again with another tag (as `docker push` of the same image does), until ninkik has `tags`."""
    stack = pipeline.stack
    image = stack.ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    stack.ecr.put_image(repositoryName=repository, imageManifest=image["images"][0]["imageManifest"], imageTag=tag)
    stack.send(pipeline.queue_url, local.push_event(repository, digest, tag))
    wait_for(lambda: reported(stack, digest, tags), 60, f"the report with {tags}")


# The records alone


def test_what_ninkik_has_orders_reports_and_removals_by_observation(stack: Stack) -> None:
    ns = f"held-{uuid.uuid4().hex[:8]}"
    records, holdings = Records(stack.records, ns), Holdings(stack.records, ns)
    where = ("123456789012", "eu-central-1", f"{TENANT_A}/web")
    held_key, tags_key = holdings.key(*where), holdings.tags_key(*where)
    old, new = "sha256:" + "a" * 64, "sha256:" + "b" * 64

    def report(digest: str, key: str, observed: float, tags: list[str]) -> tuple[str, list[str]]:
        holding = Holding(key=key, observed=observed, tags=tags, scan="COMPLETE", tenant=TENANT_A, product="web")
        records.put_report(key, "{}", ttl=60)
        start = records.begin_send(key, "task", 60, (held_key, digest, observed))
        if start.state != "ours":
            return start.state, []
        return "sent", records.end_send(key, "task", 60, None, (held_key, tags_key, digest, holding))

    assert report(old, "k-old", 100.0, ["1.0"]) == ("sent", [])
    # A push that takes the tag: the image that had it in ninkik is named, to be reported again.
    assert report(new, "k-new", 200.0, ["1.0", "latest"]) == ("sent", [old])
    assert stack.records.hgetall(tags_key) == {"1.0": new, "latest": new}
    # A report observed before what ninkik has now is stale, whatever it says.
    assert report(new, "k-older", 150.0, ["1.0"]) == ("stale", [])
    assert report(new, "k-new", 250.0, ["1.0", "latest"]) == ("sent", [])  # the same report: nothing to send
    # Removed: the tags leave the map, and a report observed before the removal stays out.
    assert holdings.begin_remove(*where, new, 300.0, "task", 60) == "ours"
    holdings.end_remove(*where, new, 300.0, "task", records.key("reported", "x"))
    assert stack.records.hgetall(tags_key) == {}
    assert holdings.begin_remove(*where, new, 310.0, "task", 60) == "removed"
    assert report(new, "k-new", 290.0, ["1.0", "latest"]) == ("stale", [])
    # Pushed again later: reported again although its report was sent before the removal.
    assert report(new, "k-new", 400.0, ["1.0", "latest"]) == ("sent", [])
    assert not holdings.get(*where, new).gone  # type: ignore[union-attr]
    assert holdings.begin_remove(*where, new, 350.0, "task", 60) == "stale"  # a removal observed before it


# Events


def test_an_image_deleted_by_digest_or_by_its_last_tag_is_removed_from_ninkik(pipeline: Pipeline) -> None:
    stack, repository = pipeline.stack, f"{TENANT_A}/web/del-{uuid.uuid4().hex[:6]}"
    digest = push_reported(pipeline, repository, "1.0")
    stack.ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    stack.send(pipeline.queue_url, lifecycle_event(repository, digest, "DELETE"))
    wait_for(lambda: removals(stack, digest) == [204], 60, "ninkik's DELETE")
    assert stack.standin.holds(digest) is None
    # The same event redelivered, and a second DELETE event of it: nothing more reaches ninkik.
    stack.send(pipeline.queue_url, lifecycle_event(repository, digest, "DELETE", "1.0"))
    other = push_reported(pipeline, repository, "2.0")  # a later chain through the same worker: the first is done
    assert removals(stack, digest) == [204] and stack.standin.holds(other) is not None
    # Deleted by its last tag: the image goes with it (ECR's event names the tag and the digest).
    stack.ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageTag": "2.0"}])
    stack.send(pipeline.queue_url, lifecycle_event(repository, other, "DELETE", "2.0"))
    wait_for(lambda: removals(stack, other) == [204], 60, "ninkik's DELETE of the image deleted by its tag")
    assert stack.standin.holds(other) is None


def test_deleting_one_of_two_tags_reports_the_image_with_the_other(pipeline: Pipeline) -> None:
    stack, repository = pipeline.stack, f"{TENANT_A}/web/tags-{uuid.uuid4().hex[:6]}"
    digest = push_reported(pipeline, repository, "1.0")
    add_tag(pipeline, repository, digest, "stable", ["1.0", "stable"])

    stack.ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageTag": "1.0"}])
    stack.send(pipeline.queue_url, lifecycle_event(repository, digest, "DELETE", "1.0"))
    wait_for(lambda: reported(stack, digest, ["stable"]), 60, "the report with the tag it keeps")
    assert removals(stack, digest) == []
    last = stack.received_for(digest)[-1].body
    assert (last["source"], last["image"]["status"]) == ("lifecycle", "ACTIVE")


def test_a_tag_moved_by_a_push_reports_the_image_that_lost_it(pipeline: Pipeline) -> None:
    stack, repository = pipeline.stack, f"{TENANT_A}/web/move-{uuid.uuid4().hex[:6]}"
    first = push_reported(pipeline, repository, "1.0")
    # A second tag keeps the first image in moto once `1.0` moves: moto deletes an image whose last tag moves to
    # another (ECR keeps it, untagged; the chain would remove it in moto's case, as DescribeImages says it is gone).
    add_tag(pipeline, repository, first, "build-1", ["1.0", "build-1"])
    # `web:1.0` pushed again as another image: ECR moves the tag; no event names the first image.
    second = push_reported(pipeline, repository, "1.0")
    wait_for(lambda: reported(stack, first, ["build-1"]), 60, "the first image reported without the tag")
    assert reported(stack, second, ["1.0"])
    moved = stack.received_for(first)[-1]
    assert moved.body["source"] == "lifecycle"
    assert moved.at - stack.received_for(second)[0].at < 60  # in the same minute


def test_a_delete_event_before_the_push_chain_ends_leaves_no_report(pipeline: Pipeline) -> None:
    stack, repository = pipeline.stack, f"{TENANT_A}/web/race-{uuid.uuid4().hex[:6]}"
    seed = uuid.uuid4().hex
    digest = local.push_image(stack.ecr, repository, seed, "1.0")
    # The push event and the deletion's arrive together; the push chain reads the image after its first-read
    # delay, by when it is gone: whichever chain comes first, ninkik ends with no report of it.
    stack.ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    stack.send(pipeline.queue_url, local.push_event(repository, digest, "1.0"))
    stack.send(pipeline.queue_url, lifecycle_event(repository, digest, "DELETE", "1.0"))
    wait_for(lambda: removals(stack, digest) == [404], 60, "the removal")
    # The same image pushed again later: reported again.
    assert local.push_image(stack.ecr, repository, seed, "1.0") == digest
    local.set_scan_result(stack.moto_url, stack.ecr, repository, digest)
    stack.send(pipeline.queue_url, local.push_event(repository, digest, "1.0"))
    wait_for(lambda: reported(stack, digest, ["1.0"]), 60, "the report of the image pushed again")


def test_a_delete_that_ninkik_answers_with_5xx_is_retried(pipeline: Pipeline) -> None:
    stack, repository = pipeline.stack, f"{TENANT_A}/web/retry-{uuid.uuid4().hex[:6]}"
    digest = push_reported(pipeline, repository, "1.0")
    stack.ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    stack.standin.answer_next(503, times=2)
    stack.send(pipeline.queue_url, lifecycle_event(repository, digest, "DELETE"))
    wait_for(lambda: removals(stack, digest) == [204], 90, "the DELETE after two 503s")
    assert [status for status, _ in stack.standin.attempts if status == 503] == [503, 503]


# The sweep


def test_the_sweep_removes_what_was_deleted_without_an_event_and_sends_usage(pipeline: Pipeline) -> None:
    stack, repository = pipeline.stack, f"{TENANT_A}/web/sweep-{uuid.uuid4().hex[:6]}"
    kept = push_reported(pipeline, repository, "kept")
    deleted = push_reported(pipeline, repository, "deleted")
    retagged = push_reported(pipeline, repository, "old")
    stack.ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageDigest": deleted}])  # no event
    # Another tag on it, with no event (a rule that routes pushes only is not the cause here: moto sends none).
    image = stack.ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageDigest": retagged}])
    stack.ecr.put_image(repositoryName=repository, imageManifest=image["images"][0]["imageManifest"], imageTag="new")
    began = time.time()
    # By hand, as an operator runs it; beat sends the same task daily (for every repository ninkik has images in).
    ran = cli(stack.env(), "backfill", "--lifecycle", "--repository", repository, "--wait")
    assert ran.returncode == 0, ran.stderr
    counts = json.loads(ran.stdout.splitlines()[-1])
    assert (counts["images"], counts["listed"], counts["gone"], counts["changed"]) == (3, 2, 1, 1)
    assert counts["calls"] == 1  # one DescribeImages for up to 1,000 images
    wait_for(lambda: removals(stack, deleted) == [204], 60, "the swept image's DELETE")
    wait_for(lambda: reported(stack, retagged, ["new", "old"]), 60, "the swept image's report with both tags")
    assert stack.standin.holds(kept) is not None and stack.received_for(retagged)[-1].body["source"] == "lifecycle"
    [usage] = [u for u in stack.standin.usage if any(i["repository"] == repository for i in u["images"])]
    assert sorted(i["digest"] for i in usage["images"]) == sorted([kept, retagged])
    assert set(usage["images"][0]) == {
        "registry_id", "region", "repository", "digest", "last_pulled_at", "in_use_count", "last_in_use_at"
    }  # fmt: skip
    assert time.time() - began < 60


# Archive and restore: moto knows no archive; the proxy the tests use for statuses moto lacks (tests/faultproxy.py)
# gives DescribeImages the image's status and DescribeImageScanFindings IMAGE_ARCHIVED, as ECR does.


@pytest.fixture(scope="module")
def archive(stack: Stack) -> Iterator[tuple[Pipeline, FaultProxy]]:
    proxy = FaultProxy(stack.moto_url).start()
    env = stack.env(broker_db=own_broker_db(), AWS_ENDPOINT_URL_ECR=proxy.url)
    queue_url = stack.new_queue()
    worker = celery_worker(stack, env, "lifecycle")
    feeder = ingest(stack, env, queue_url, name="ingest-lifecycle")
    yield Pipeline(stack, queue_url, feeder), proxy
    feeder.stop()
    worker.stop()
    proxy.stop()


def test_an_archived_image_is_reported_archived_then_active_once_restored(
    archive: tuple[Pipeline, FaultProxy],
) -> None:
    lane, proxy = archive
    stack, repository = lane.stack, f"{TENANT_A}/web/archive-{uuid.uuid4().hex[:6]}"
    digest = push_reported(lane, repository, "1.0")
    first = stack.standin.holds(digest)
    assert first is not None and first["image"]["status"] == "ACTIVE"

    proxy.statuses[digest] = "ARCHIVED"
    stack.send(lane.queue_url, lifecycle_event(repository, digest, "UPDATE_STORAGE_CLASS"))
    wait_for(lambda: (stack.standin.holds(digest) or {}).get("image", {}).get("status") == "ARCHIVED", 60, "archived")
    archived = stack.standin.holds(digest)
    assert archived is not None and archived["scan"]["status"] == "IMAGE_ARCHIVED"
    assert (archived["source"], archived["image"]["tags"]) == ("lifecycle", ["1.0"])

    # Restored: the report is the first one again; ninkik gets it under a key of its own (not dropped as a repeat).
    del proxy.statuses[digest]
    restore = lifecycle_event(repository, digest, "UPDATE_STORAGE_CLASS")
    restore["detail"]["target-storage-class"] = "STANDARD"
    stack.send(lane.queue_url, restore)
    wait_for(lambda: (stack.standin.holds(digest) or {}).get("image", {}).get("status") == "ACTIVE", 60, "restored")
    keys = [r.key for r in stack.received_for(digest)]
    assert len(keys) == 3 == len(set(keys))
    assert removals(stack, digest) == []
