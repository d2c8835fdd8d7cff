"""The images of one repository described together: one DescribeImages for many pushes, a per-image fallback.

On the real stack (redis-server, moto behind a proxy counting the calls, ingest and a worker), and with
botocore's Stubber for the answers moto cannot give (an image left out of the answer) on redis-server.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from conftest import TENANT_A, TENANT_B, Stack, celery_worker, ingest, own_broker_db
from faultproxy import FaultProxy

from ninkik_tasks import gathering, local
from ninkik_tasks.clients import AWS_CONFIG
from ninkik_tasks.errors import PermanentError, TransientError
from ninkik_tasks.events import ImagePushed
from ninkik_tasks.findings import Image
from ninkik_tasks.gathering import DescriptionPending, Gathering, gathered_image, member, where_of
from ninkik_tasks.local import wait_for

REPOSITORY = f"{TENANT_A}/shop"


def _images(call: Any) -> list[str]:
    return [i.get("imageDigest") for i in call.params.get("imageIds") or []]


def test_a_burst_in_a_few_repositories_costs_one_describe_per_repository(stack: Stack) -> None:
    """60 pushes in 3 repositories, sent at once: DescribeImages once or twice per repository (the images its
    first describe step finds waiting, NINKIK_SCAN_FIRST_READ_SECONDS after the first push), each image notified
    once. A 4th repository holds an image deleted before its event: moto refuses that batch as a whole, so its
    images are described one by one; the others are notified, the deleted one ends as image_gone."""
    proxy = FaultProxy(stack.moto_url).start()
    env = stack.env(
        broker_db=own_broker_db(),
        AWS_ENDPOINT_URL_ECR=proxy.url,
        NINKIK_SCAN_FIRST_READ_SECONDS="2",
        NINKIK_BROKER_VISIBILITY_TIMEOUT="600",
    )
    queue_url = stack.new_queue()
    stack.standin.reset()
    burst = {f"{TENANT_A}/shop": 20, f"{TENANT_A}/web": 20, f"{TENANT_B}/web": 20}
    run = uuid.uuid4().hex[:6]
    pushed = [(r, stack.push(r, f"{run}-{i}"), f"{run}-{i}") for r, n in burst.items() for i in range(n)]
    fallback = f"{TENANT_A}/shop/api"
    survivors = [(fallback, stack.push(fallback, f"{run}-f{i}"), f"{run}-f{i}") for i in range(4)]
    gone = stack.push(fallback, f"{run}-gone")
    stack.ecr.batch_delete_image(repositoryName=fallback, imageIds=[{"imageDigest": gone}])
    events = [local.push_event(r, d, t) for r, d, t in [*pushed, *survivors, (fallback, gone, f"{run}-gone")]]
    worker = celery_worker(stack, env, "gathering", concurrency=8, pool="threads")
    feeder = ingest(stack, env, queue_url, name="ingest-gathering")
    try:
        for start in range(0, len(events), 10):
            entries = [{"Id": str(i), "MessageBody": json.dumps(e)} for i, e in enumerate(events[start : start + 10])]
            stack.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[arg-type]
        digests = [d for _, d, _ in [*pushed, *survivors]]
        wait_for(lambda: all(stack.received_for(d) for d in digests), 60, "every image's report")
        # The deleted image: removed from ninkik (which never had it: 404), not reported.
        wait_for(lambda: [r.digest for r in stack.standin.removed] == [gone], 30, "the deleted image's removal")
        assert all(len(stack.received_for(d)) == 1 for d in digests)
        assert not stack.received_for(gone)
        describes = [c for c in proxy.calls if c.action == "DescribeImages"]
        for repository in burst:
            calls = [c for c in describes if c.params["repositoryName"] == repository]
            assert 1 <= len(calls) <= 2, [len(_images(c)) for c in calls]
            assert sorted(d for c in calls for d in _images(c)) == sorted(d for r, d, _ in pushed if r == repository)
        # The deleted image's repository: its batch refused as a whole, then one call per image.
        calls = [c for c in describes if c.params["repositoryName"] == fallback]
        assert [len(_images(c)) for c in calls if len(_images(c)) > 1] == [5]
        assert sorted(d for c in calls if len(_images(c)) == 1 for d in _images(c)) == sorted([*digests[-4:], gone])
    finally:
        feeder.stop()
        worker.stop()
        proxy.stop()


# Stubber: what AWS may answer that moto does not (an image left out of an answer), on redis-server.

ACCOUNT = "123456789012"
REGION = "eu-central-1"
DIGESTS = [f"sha256:{c * 64}" for c in "abc"]  # c: deleted since its push


@pytest.fixture
def ecr() -> Iterator[Any]:
    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("ecr", config=AWS_CONFIG)
    with Stubber(client) as stub:
        client.stub = stub
        yield client
        stub.assert_no_pending_responses()


@pytest.fixture
def waiting(stack: Stack) -> Gathering:
    """A Gathering of its own on redis-server, the three images registered as their matched chains do."""
    return _waiting(stack)


def _waiting(stack: Stack, **timings: float) -> Gathering:
    made = Gathering(stack.records, f"t-{uuid.uuid4().hex[:8]}", **timings)
    made.register((where_of(event), member(event.digest, event.event_id)) for event in _events())
    return made


def _events() -> list[ImagePushed]:
    return [
        ImagePushed(
            event_id=f"event-{i}",
            account=ACCOUNT,
            region=REGION,
            repository=REPOSITORY,
            digest=digest,
            tag=f"v{i}",
            time=datetime(2026, 12, 3, 6, 0, tzinfo=UTC),
        )
        for i, digest in enumerate(DIGESTS)
    ]


def _params(digests: list[str]) -> dict[str, Any]:
    return {"registryId": ACCOUNT, "repositoryName": REPOSITORY, "imageIds": [{"imageDigest": d} for d in digests]}


def _details(digests: list[str]) -> dict[str, Any]:
    return {
        "imageDetails": [
            {
                "registryId": ACCOUNT,
                "repositoryName": REPOSITORY,
                "imageDigest": d,
                "imageTags": [f"v{DIGESTS.index(d)}"],
                "imagePushedAt": datetime(2026, 12, 3, 6, 0, tzinfo=UTC),
                "imageManifestMediaType": "application/vnd.docker.distribution.manifest.v2+json",
            }
            for d in digests
        ]
    }


def _not_found(stub: Stubber, digests: list[str]) -> None:
    # moto's answer over HTTP to DescribeImages with one id gone among several (moto 5.2.5, checked).
    message = (
        f"The image with imageId {{imageDigest:'{DIGESTS[2]}', imageTag:'null'}} does not exist within the "
        f"repository with name '{REPOSITORY}' in the registry with id '{ACCOUNT}'"
    )
    stub.add_client_error("describe_images", "ImageNotFoundException", message, 400, expected_params=_params(digests))


def test_the_step_that_describes_a_batch_keeps_its_own_image_and_leaves_the_others_theirs(
    ecr: Any, waiting: Gathering
) -> None:
    """The claiming step's own description is its answer at once: nothing kept in Redis for it to take back (two
    round trips per batch); each other image's is kept for its chain, and no image stays claimed."""
    a, b, c = _events()
    ecr.stub.add_response("describe_images", _details(DIGESTS), _params(DIGESTS))
    turns: list[Any] = []
    turn = waiting.turn

    def counted(*args: Any, **kwargs: Any) -> Any:
        turns.append(turn(*args, **kwargs))
        return turns[-1]

    waiting.turn = counted  # type: ignore[method-assign]
    assert gathered_image(waiting, ecr, b).tags == ["v1"]
    assert len(turns) == 1 and turns[0].batch is not None  # one turn: it claimed the batch, and kept its own
    where = where_of(b)
    kept = {e.digest: waiting.r.get(waiting._description_key(where, member(e.digest, e.event_id))) for e in (a, b, c)}
    assert kept[b.digest] is None and kept[a.digest] and kept[c.digest]
    assert waiting.r.zcard(waiting._key("claimed", where)) == 0 and waiting.waiting(where) == 0
    assert gathered_image(waiting, ecr, a).tags == ["v0"]  # no call: taken from Redis
    assert gathered_image(waiting, ecr, c).tags == ["v2"]


def test_a_call_refused_for_one_gone_image_falls_back_to_one_call_per_image(ecr: Any, waiting: Gathering) -> None:
    """moto, and AWS for all its reference says, refuses the whole call when one of the ids is gone: each image
    then gets a call of its own, and only the gone one ends its chain."""
    a, b, gone = _events()
    _not_found(ecr.stub, DIGESTS)
    ecr.stub.add_response("describe_images", _details([a.digest]), _params([a.digest]))
    ecr.stub.add_response("describe_images", _details([b.digest]), _params([b.digest]))
    _not_found(ecr.stub, [gone.digest])
    assert gathered_image(waiting, ecr, a).tags == ["v0"]
    assert gathered_image(waiting, ecr, b).tags == ["v1"]
    with pytest.raises(PermanentError) as ended:
        gathered_image(waiting, ecr, gone)
    assert ended.value.reason == "image_gone"


def test_an_image_left_out_of_the_answer_is_described_alone(ecr: Any, waiting: Gathering) -> None:
    """Should AWS answer with the images it found and leave the gone one out (the response has no `failures`
    field, unlike BatchGetImage's), the two found cost nothing more and the gone one gets its own call."""
    a, b, gone = _events()
    ecr.stub.add_response("describe_images", _details([a.digest, b.digest]), _params(DIGESTS))
    _not_found(ecr.stub, [gone.digest])
    with pytest.raises(PermanentError) as ended:
        gathered_image(waiting, ecr, gone)  # the last to come claims the batch as well as any
    assert ended.value.reason == "image_gone"
    assert gathered_image(waiting, ecr, b).digest == b.digest
    assert gathered_image(waiting, ecr, a).digest == a.digest


def test_a_throttled_batch_waits_again_and_a_dead_describer_is_taken_over(ecr: Any, stack: Stack) -> None:
    # A worker that claims a batch is taken for dead after 1 s here (CLAIM_SECONDS), a step waits 0.5 s for it.
    waiting = _waiting(stack, claim_seconds=1, hold_seconds=0.5)
    a, b, c = _events()
    ecr.stub.add_client_error("describe_images", "ThrottlingException", http_status_code=400)
    with pytest.raises(TransientError):
        gathered_image(waiting, ecr, a)
    assert waiting.waiting(where_of(a)) == 3  # the batch is back, for the next step to describe
    # A worker claims the batch and dies: the others wait for its answer (hold_seconds), come back later, then,
    # once its claim is older than claim_seconds, describe the batch again themselves.
    claimed = time.monotonic()
    assert waiting.turn(where_of(a), member(a.digest, a.event_id)).batch is not None
    with pytest.raises(DescriptionPending):
        gathered_image(waiting, ecr, b)
    ecr.stub.add_response("describe_images", _details(DIGESTS), _params(DIGESTS))
    taken = wait_for(lambda: _unless_pending(lambda: gathered_image(waiting, ecr, b)), 10, "the claim to be taken over")
    assert time.monotonic() - claimed >= 1  # not before the claim was a second old
    assert taken.digest == b.digest  # the dead worker's batch, all of it
    assert gathered_image(waiting, ecr, c).digest == c.digest
    assert gathered_image(waiting, ecr, a).digest == a.digest


def _unless_pending(step: Callable[[], Image]) -> Image | None:
    try:
        return step()
    except DescriptionPending:
        return None


def test_a_step_waits_for_the_call_another_worker_makes_for_its_image(ecr: Any, waiting: Gathering) -> None:
    """While another worker's DescribeImages holds the image, its step waits for that answer in the task (a call
    takes well under a second, its ECR budget wait up to 10 s) rather than going back to the broker every second."""
    a, b, c = _events()
    claimed = waiting.turn(where_of(a), member(a.digest, a.event_id)).batch
    assert claimed is not None and len(claimed) == 3  # "another worker" claims the three
    taken: list[Image] = []
    waiter = threading.Thread(target=lambda: taken.append(gathered_image(waiting, ecr, b)))  # no call: no stub
    waiter.start()
    waiter.join(1.0)  # it looks every POLL_SECONDS meanwhile; before, it went back to the broker at once
    assert waiter.is_alive() and not taken
    ecr.stub.add_response("describe_images", _details(DIGESTS), _params(DIGESTS))
    gathering.describe_batch(waiting, ecr, where_of(a), claimed)  # the other worker's call answers
    waiter.join(5)
    assert [i.digest for i in taken] == [b.digest]
    assert gathered_image(waiting, ecr, c).digest == c.digest


def test_only_pushes_to_ninkik_repositories_wait_to_be_described(stack: Stack) -> None:
    """A repository not named TENANT/PRODUCT gets no AWS call (its chain ends at matching), so it never waits; nor
    does a scan-complete event's image (its chain takes up the waiting chain's description), nor a sweep's image
    (its DescribeImages page described it: the chain takes it from its message)."""
    waits = Gathering(stack.records, f"t-{uuid.uuid4().hex[:8]}")
    pushed = _events()[0]
    listed = Image(registry_id=ACCOUNT, region=REGION, repository=REPOSITORY, digest=pushed.digest, tags=["v0"])
    for event in (
        pushed.model_copy(update={"repository": "hello-world"}),
        pushed.model_copy(update={"scan_finished": True}),
        pushed.model_copy(update={"source": "rescan", "listed": listed}),
    ):
        gathering.register(waits, [event])
        assert waits.waiting(where_of(event)) == 0
    gathering.register(waits, [pushed])
    gathering.register(waits, [pushed])  # ingest starting its chain again (redelivered before it was marked)
    assert waits.waiting(where_of(pushed)) == 1
