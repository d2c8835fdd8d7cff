"""The RabbitMQ broker (the production choice): quorum queues, confirms, delayed delivery, dead letters.

Each of the chain's queues is a durable quorum queue bound to a topic exchange of its own name (Celery
5.5+'s native delayed delivery routes a countdown through the broker's `celery_delayed_*` exchanges, which
it cannot do for direct exchanges), with a delivery limit: a message delivered that many times without
being acknowledged (a task that keeps killing its worker) is dead-lettered, at least once, to
DEAD_LETTER_QUEUE, where every worker's DeadLetters step records it in `ninkik-tasks failures list`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from celery import bootsteps
from kombu.entity import Exchange, Queue
from kombu.message import Message
from kombu.messaging import Consumer

from ..config import Settings

log = logging.getLogger(__name__)

# RabbitMQ 4.0+ sets 20 on every quorum queue by default; 3.x has no limit unless the queue says so.
DELIVERY_LIMIT = 20
DEAD_LETTER_EXCHANGE = "ninkik-dead-letter"
DEAD_LETTER_QUEUE = "ninkik-dead-letter"
# Native delayed delivery rounds a countdown down to whole seconds and refuses one under a second.
COUNTDOWN_MIN = 1.0


# Amazon MQ for RabbitMQ: b-<id>.mq.<region>.amazonaws.com (amqps://, port 5671); its management API is
# https on port 443 of the same host.
_AMAZON_MQ_HOST = re.compile(r"\.mq\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")


def management_url(settings: Settings) -> str:
    """RabbitMQ's management API: NINKIK_BROKER_MANAGEMENT_URL, else the broker's host (https on Amazon MQ,
    else http on port 15672)."""
    if settings.broker_management_url:
        return settings.broker_management_url
    parsed = urlparse(settings.broker_url.split(";")[0])
    host = parsed.hostname or "localhost"
    if parsed.scheme == "amqps" and _AMAZON_MQ_HOST.search(host):
        return f"https://{host}"
    return f"http://{host}:15672"


def queue_arguments() -> dict[str, Any]:
    """The arguments every chain queue is declared with (they must match on every declaration)."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        # at-least-once (RabbitMQ 3.10+) keeps a message until the dead-letter queue confirms it;
        # it needs reject-publish overflow (there is no length limit, so nothing is ever rejected).
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def task_queues(names: Sequence[str]) -> list[Queue]:
    """One durable quorum queue per name, on a topic exchange of the same name, routing key = name."""
    return [
        Queue(  # type: ignore[no-untyped-call]
            name,
            Exchange(name, type="topic", durable=True),  # type: ignore[no-untyped-call]
            routing_key=name,
            durable=True,
            queue_arguments=queue_arguments(),
        )
        for name in names
    ]


def dead_letter_queue() -> Queue:
    """Where messages over the delivery limit go: a quorum queue on a fanout exchange."""
    return Queue(  # type: ignore[no-untyped-call]
        DEAD_LETTER_QUEUE,
        Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True),  # type: ignore[no-untyped-call]
        routing_key="#",
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def celery_config(
    settings: Settings, chain_tasks: Sequence[str] = (), sweep_tasks: Sequence[str] = ()
) -> dict[str, Any]:
    """The Celery settings that belong to RabbitMQ (no time limits: an unacked message never expires)."""
    return {
        # A publish (the next step of a chain, a retry) returns only once the broker has it.
        "broker_transport_options": {"confirm_publish": True},
        # A dead peer (a worker host gone, a NAT dropping the connection) is noticed within two beats;
        # its unacknowledged messages go back to the queue then.
        "broker_heartbeat": settings.broker_heartbeat_seconds,
        # Countdowns wait in the broker's delay queues (quorum), not in a worker's memory.
        "broker_native_delayed_delivery_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
    }


def countdown_cap(settings: Settings) -> float:
    """The longest retry countdown: RabbitMQ has no visibility timeout, so the configured backoff cap."""
    return float(settings.retry_backoff_max_seconds)


def countdown_floor(settings: Settings) -> float:
    """The shortest retry countdown the broker's delayed delivery takes (whole seconds, at least one)."""
    return COUNTDOWN_MIN


def dead_letter_record(body: Any, headers: dict[str, Any]) -> dict[str, str | None]:
    """The failure record for a dead-lettered Celery task message (protocol 2): stage, image, why."""
    task = str(headers.get("task") or "unknown")
    args: list[Any] = []
    if isinstance(body, list | tuple) and body and isinstance(body[0], list | tuple):
        args = list(body[0])
    first = args[0] if args and isinstance(args[0], dict) else {}
    event = first.get("event", first) if isinstance(first, dict) else {}
    match = first.get("match") if isinstance(first, dict) else None
    deaths = headers.get("x-death") or []
    death = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    reason = str(headers.get("x-first-death-reason") or death.get("reason") or "delivery_limit")
    queue = death.get("queue") or headers.get("x-first-death-queue")
    return {
        "stage": task.removeprefix("ninkik."),
        "reason": "delivery_limit" if reason == "delivery_limit" else f"dead_lettered_{reason}",
        "message": (
            f"dead-lettered by RabbitMQ ({reason}) from queue {queue}"
            f": delivered {DELIVERY_LIMIT}+ times without an acknowledgement (a task that keeps killing its worker?)"
        ),
        "source": event.get("source"),
        "event_id": event.get("event_id"),
        "account": event.get("account"),
        "region": event.get("region"),
        "repository": event.get("repository"),
        "digest": event.get("digest"),
        "tenant": match.get("tenant") if isinstance(match, dict) else None,
        "product": match.get("product") if isinstance(match, dict) else None,
        "task_id": str(headers.get("id") or ""),
    }


class Declare(bootsteps.StartStopStep):  # type: ignore[misc]
    """Declares every chain queue and the dead-letter queue when a worker starts, whatever its `-Q`.

    Celery's native delayed delivery binds every configured queue's exchange to its delivery exchange
    when a worker starts, and fails (CRITICAL, no delayed delivery for that worker) for an exchange
    nobody declared yet, as for a `-Q ninkik-control` worker started first. A worker step starts before
    the consumer (Celery starts the consumer last), so the exchanges exist by then.
    """

    def start(self, worker: Any) -> None:
        app = worker.app
        if not app.conf.task_queues or app.connection_for_write().transport.driver_type != "amqp":
            return
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=3)
                channel = conn.default_channel
                for queue in [*app.conf.task_queues, dead_letter_queue()]:
                    queue.bind(channel).declare()
        except Exception as exc:  # the broker not up yet: the consumer waits for it and declares its own
            log.warning("could not declare the queues at start (%s: %s)", type(exc).__name__, exc)


class DeadLetters(bootsteps.ConsumerStep):  # type: ignore[misc]
    """A worker's consumer of the dead-letter queue: each message becomes a failure record, then is acked.

    Only on RabbitMQ (on Redis there is no delivery limit and no dead-lettering).
    """

    def get_consumers(self, channel: Any) -> list[Consumer]:
        if getattr(channel.connection.client.transport, "driver_type", "") != "amqp":
            return []
        return [
            Consumer(  # type: ignore[no-untyped-call]
                channel, queues=[dead_letter_queue()], callbacks=[self.on_message], accept=["json"]
            )
        ]

    def on_message(self, body: Any, message: Message) -> None:
        from ..config import get_settings
        from ..stages import services

        try:
            if isinstance(body, bytes | str):
                body = json.loads(body)
            record = dead_letter_record(body, dict(message.headers or {}))
        except Exception as exc:  # a message that is not a task: still recorded, never redelivered forever
            record = {"stage": "unknown", "reason": "dead_lettered", "message": f"unreadable: {exc}"}
        try:
            svc = services(get_settings())
            svc.failures.add(**record)
            svc.stats.incr("failure", str(record.get("stage")), str(record.get("reason")))
        except Exception as exc:  # Redis restarting: keep the message for the next delivery
            log.warning("cannot record a dead-lettered task yet (%s): requeued", type(exc).__name__)
            message.requeue()  # type: ignore[no-untyped-call]
            return
        log.error(
            "%s ended the chain (%s): %s@%s task=%s",
            record.get("stage"),
            record.get("reason"),
            record.get("repository"),
            record.get("digest"),
            record.get("task_id"),
        )
        message.ack()  # type: ignore[no-untyped-call]
