"""The broker modules: chosen by URL scheme; the Redis transport survives a lost connection with tasks in hand."""

from __future__ import annotations

import contextlib
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from celery import Celery
from conftest import TENANT_A, Stack, celery_worker, make_broker
from kombu import Connection, Message, Queue

from ninkik_tasks import brokers, celery_app, local
from ninkik_tasks.brokers import rabbitmq
from ninkik_tasks.brokers import rabbitmq as rabbitmq_broker
from ninkik_tasks.brokers import redis as redis_broker
from ninkik_tasks.celery_app import CONTROL_QUEUE, NINKIK_QUEUE, QUEUES
from ninkik_tasks.config import Settings
from ninkik_tasks.errors import ConfigError
from ninkik_tasks.events import ImagePushed


@pytest.mark.parametrize(
    ("url", "module"),
    [
        ("redis://127.0.0.1:6379/0", redis_broker),
        ("rediss://cache.example:6380/0", redis_broker),
        ("amqp://guest:guest@127.0.0.1:5672//", rabbitmq),
        ("amqps://user:pw@b-1.mq.eu-central-1.amazonaws.com:5671", rabbitmq),
    ],
)
def test_the_scheme_chooses_the_broker(url: str, module: object) -> None:
    assert brokers.for_url(url) is module


def test_an_unknown_scheme_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="amqp:// or amqps:// .* redis:// or rediss://"):
        brokers.for_url("sqs://")


def test_redis_countdowns_stay_under_a_quarter_of_the_visibility_timeout() -> None:
    settings = Settings(broker_visibility_timeout=40, retry_backoff_max_seconds=300)
    assert redis_broker.countdown_cap(settings) == 10


@pytest.mark.parametrize("visibility", [40, 240, 3600])
def test_redis_holds_stay_under_the_visibility_timeout_and_the_default_bound_is_five_minutes(visibility: int) -> None:
    settings = Settings(broker_visibility_timeout=visibility, retry_backoff_max_seconds=10**6)
    # A hold: a wait for a pool slot (one run) + a countdown + the run itself.
    hold = redis_broker.run_limit(settings) + redis_broker.countdown_cap(settings) + redis_broker.run_limit(settings)
    assert hold < visibility
    options = redis_broker.celery_config(settings, ["ninkik.notify"])
    assert options["task_annotations"]["ninkik.notify"]["time_limit"] == redis_broker.run_limit(settings)
    assert options["broker_transport_options"]["unacked_restore_throttle"] == 1
    assert redis_broker.restore_bound(settings) == visibility + redis_broker.sweep_interval(settings) + (
        redis_broker.mutex_expire(settings)
    )
    assert redis_broker.restore_bound(Settings()) <= 300  # the documented default bound


def test_rabbitmq_countdowns_are_at_least_the_second_native_delayed_delivery_needs() -> None:
    settings = Settings(broker_url="amqp://127.0.0.1//")
    assert rabbitmq.countdown_floor(settings) >= 1 and rabbitmq.countdown_cap(settings) == 300
    queue = rabbitmq.task_queues(["q"])[0]
    assert queue.exchange.type == "topic" and queue.queue_arguments["x-queue-type"] == "quorum"


def _redis_dies_with_a_task_in_hand(tmp_path: Path, transport: str | None) -> str:
    """A worker meeting a Redis restart: a task taken and not acknowledged, Redis gone, the consumer cleaning up.

    Where Celery's consumer gets to (worker log of a failed test_redis_restarted_mid_run, 2026-12-01):
    Connection.collect() has detached the transport (its client is None) while the channel holding the task
    is still open, and Connection.close() then closes that channel through maybe_close_channel. Returns
    the Redis URL, with Redis back up.
    """
    data = tmp_path / "redis-data"
    proc, base = local.start_redis(tmp_path, data_dir=data)
    url = f"{base}/0"
    conn = Connection(url, transport=transport)
    held: list[Message] = []
    queue = Queue("held")  # type: ignore[no-untyped-call]
    conn.Consumer(queue, callbacks=[lambda _body, message: held.append(message)], accept=["json"]).consume()
    conn.Producer().publish({"n": 1}, routing_key="held", declare=[queue], serializer="json")
    conn.drain_events(timeout=5)
    assert len(held) == 1
    channel = held[0].channel
    proc.stop()
    try:
        channel.connection.client = None  # what collect() leaves
        conn.maybe_close_channel(channel)  # ignores connection errors, as on a lost connection
    finally:
        local.start_redis(tmp_path, port=int(base.rsplit(":", 1)[1]), data_dir=data)
    return url


def test_a_lost_connection_with_a_task_in_hand_does_not_crash_and_keeps_the_task(tmp_path: Path) -> None:
    url = _redis_dies_with_a_task_in_hand(tmp_path, redis_broker.TRANSPORT)
    # Redis was down at the restore: the message waits in kombu's unacked set for the visibility sweep.
    assert redis.Redis.from_url(url).hlen("unacked") == 1


def test_kombus_own_redis_transport_still_crashes_there(tmp_path: Path) -> None:
    """Pins the upstream bug (kombu 5.7.0, like celery/kombu#582): when this stops failing, delete
    brokers.redis.Channel and its transport."""
    with pytest.raises(AttributeError, match="hostname"):
        _redis_dies_with_a_task_in_hand(tmp_path, None)


# RabbitMQ: the queues as declared by a real worker on a real rabbitmq-server, and the delivery limit.
def _management(node: local.RabbitMQ, path: str) -> Any:
    answer = httpx.get(f"{node.management_url}/api/{path}", auth=("guest", "guest"), timeout=10)
    answer.raise_for_status()
    return answer.json()


def test_rabbitmq_queues_are_durable_quorum_queues_on_topic_exchanges(stack: Stack, rabbitmq: local.RabbitMQ) -> None:
    broker = make_broker(stack, "rabbitmq", rabbitmq)
    vhost = quote(broker.url.rsplit("/", 1)[1], safe="")
    proc = celery_worker(stack, broker.env(), "quorum")
    try:
        queues = {q["name"]: q for q in _management(rabbitmq, f"queues/{vhost}")}
        for name in (*QUEUES, rabbitmq_broker.DEAD_LETTER_QUEUE):
            assert queues[name]["type"] == "quorum" and queues[name]["durable"], queues.get(name)
        for name in QUEUES:
            assert queues[name]["arguments"]["x-delivery-limit"] == rabbitmq_broker.DELIVERY_LIMIT
            assert queues[name]["arguments"]["x-dead-letter-strategy"] == "at-least-once"
        exchanges = {e["name"]: e["type"] for e in _management(rabbitmq, f"exchanges/{vhost}")}
        assert all(exchanges[name] == "topic" for name in QUEUES), exchanges
        # Native delayed delivery is set up (countdowns wait in the broker) and nothing was skipped.
        assert exchanges.get("celery_delayed_27") == "topic" and "celery_delayed_delivery" in exchanges
        bound = {b["source"] for b in _management(rabbitmq, f"queues/{vhost}/{QUEUES[0]}/bindings")}
        assert QUEUES[0] in bound
        assert "direct exchange" not in proc.output()
    finally:
        proc.stop()


def test_a_task_over_the_delivery_limit_is_dead_lettered_into_failures_list(
    stack: Stack, rabbitmq: local.RabbitMQ
) -> None:
    broker = make_broker(stack, "rabbitmq", rabbitmq)
    settings = Settings(broker_url=broker.url, result_backend=broker.result_backend, redis_url=f"{stack.redis_url}/2")
    # A worker that does not take the chain's queues: only its dead-letter consumer is of interest here.
    proc = celery_worker(stack, broker.env(), "dead-letters", queues=(CONTROL_QUEUE,))
    app = Celery("dead-letter-test")
    app.config_from_object(celery_app.celery_config(settings))
    event = local.push_event(f"{TENANT_A}/shop", "sha256:" + "d" * 64)
    pushed = ImagePushed(
        event_id=event["id"],
        account=local.ACCOUNT,
        region=local.REGION,
        repository=f"{TENANT_A}/shop",
        digest="sha256:" + "d" * 64,
        time=datetime.now(UTC),
    )
    task_id = app.send_task("ninkik.match_tenant", args=[pushed.model_dump(mode="json")], queue=NINKIK_QUEUE).id
    # What a task that keeps killing its worker looks like to the queue: delivered, never acknowledged,
    # returned. A consumer rejecting it stands in for the dying worker (the count is the broker's).
    deliveries = 0
    with Connection(broker.url) as conn:

        def give_back(_body: Any, message: Message) -> None:
            nonlocal deliveries
            deliveries += 1
            message.reject(requeue=True)  # type: ignore[no-untyped-call]

        queues = rabbitmq_broker.task_queues([NINKIK_QUEUE])
        with (
            conn.Consumer(queues, callbacks=[give_back], accept=["json"]),
            contextlib.suppress(TimeoutError, socket.timeout),
        ):
            while deliveries <= rabbitmq_broker.DELIVERY_LIMIT + 5:
                conn.drain_events(timeout=3)
    try:
        assert deliveries == rabbitmq_broker.DELIVERY_LIMIT + 1, deliveries
        record = local.wait_for(
            lambda: next((f for f in stack.failures() if f.get("task_id") == task_id), None),
            30,
            "the dead-lettered task in failures",
        )
        assert record["reason"] == "delivery_limit" and record["stage"] == "match_tenant"
        assert record["digest"] == pushed.digest and record["repository"] == pushed.repository
        # Started with -Q ninkik-control alone, it still set up delayed delivery for every queue.
        assert "Failed to setup delayed delivery" not in proc.output(), proc.output()[-3000:]
        app.close()
    finally:
        proc.stop()


@pytest.mark.parametrize("celery_style", [True, False], ids=["in-the-retrys-publish", "before-it"])
def test_a_retry_that_cannot_be_published_gives_the_message_back(
    monkeypatch: pytest.MonkeyPatch, celery_style: bool
) -> None:
    """The Redis broker's soft time limit can fire inside the retry itself (its publish waiting for a Redis that
    is gone, seen in the worker-host partition test), and any error of that publish makes Celery's task.retry
    raise Reject(requeue=False), which drops the message: requeued instead. A stub task stands in for Celery's
    (the real one's retry is what it mimics, celery/app/task.py): no real worker can be made to hit its limit at
    exactly that line."""
    from types import SimpleNamespace

    from celery.exceptions import Reject, SoftTimeLimitExceeded

    from ninkik_tasks import pipeline
    from ninkik_tasks.errors import TransientError

    def retry(**_: Any) -> None:
        if celery_style:
            raise Reject(SoftTimeLimitExceeded(), requeue=False)  # what task.retry does with its publish's error
        raise SoftTimeLimitExceeded()

    def step() -> None:
        raise TransientError("Redis unavailable")

    monkeypatch.setattr(pipeline, "get_settings", lambda: Settings(broker_url="redis://127.0.0.1:1/0"))
    monkeypatch.setattr(pipeline, "_svc", lambda: SimpleNamespace(stats=SimpleNamespace(incr=lambda *a: None)))
    task = SimpleNamespace(request=SimpleNamespace(retries=0, id="t-1"), retry=retry)
    pushed = ImagePushed(
        event_id="e-1",
        account="123456789012",
        region="eu-central-1",
        repository=f"{TENANT_A}/shop",
        digest="sha256:" + "a" * 64,
        time=datetime.now(UTC),
    )
    with pytest.raises(Reject) as raised:
        pipeline._run(task, "notify", pushed, None, step, None)  # type: ignore[arg-type]
    assert raised.value.requeue
