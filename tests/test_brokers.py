"""The broker modules: chosen by URL scheme; the Redis transport survives a lost connection with tasks in hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from kombu import Connection, Message, Queue

from ninkik_tasks import brokers, local
from ninkik_tasks.brokers import rabbitmq
from ninkik_tasks.brokers import redis as redis_broker
from ninkik_tasks.config import Settings
from ninkik_tasks.errors import ConfigError


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
