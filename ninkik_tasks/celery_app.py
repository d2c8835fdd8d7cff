"""The Celery app and its configuration, built from Settings; queue names. No tasks here."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery, signals

from . import brokers, startup, tls
from .brokers import rabbitmq
from .config import Settings, get_settings
from .errors import ConfigError
from .health import worker as worker_health
from .schedule import beat_schedule

# One queue per kind of work, so operators can scale each with `-Q`.
AWS_QUEUE = "ninkik-aws"  # describe_image, fetch_scan_findings: ECR calls
NINKIK_QUEUE = "ninkik-api"  # match_tenant, notify: ninkik API calls
CONTROL_QUEUE = "ninkik-control"  # backfill, reconcile, rescan, coverage
QUEUES = (AWS_QUEUE, NINKIK_QUEUE, CONTROL_QUEUE)
CONTROL_TASKS = ("ninkik.backfill", "ninkik.reconcile", "ninkik.rescan", "ninkik.coverage")
CHAIN_TASKS = ("ninkik.match_tenant", "ninkik.describe_image", "ninkik.fetch_scan_findings", "ninkik.notify")

log = logging.getLogger(__name__)

# Beat wakes at least this often; a second beat waits for the lock and retries it this often too.
BEAT_MAX_INTERVAL = 5
# A beat that died without releasing its lock is replaced after this long.
BEAT_LOCK_SECONDS = 30


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that do not lose work (late acks, requeue on worker loss, prefetch 1), and the broker's own."""
    broker = brokers.for_url(settings.broker_url)
    return dict(
        **broker.celery_config(settings, CHAIN_TASKS, CONTROL_TASKS),
        **tls.celery_config(settings),
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        result_expires=settings.result_expires_seconds,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        redis_socket_timeout=30,
        redis_socket_connect_timeout=5,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Redis restarting must not break a chain between two steps: publishing the next step (or a
        # retry) and storing a result wait for Redis to come back, for about two minutes.
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 60, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
        result_backend_always_retry=True,
        result_backend_max_retries=60,
        result_backend_max_sleep_between_retries_ms=2000,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        # Celery's consumer whose reconnection loop keeps the liveness file fresh (docs/health.md).
        worker_consumer="ninkik_tasks.health.worker:Consumer",
        # Each Redis write per task is paid four times per image (the profile in bench/RESULTS.md): the
        # three intermediate steps store no result (the next step gets it in its message, Flower gets
        # it from the task-succeeded event) and only the backfill stores STARTED. Failures are stored
        # all the same, so `celery result <id>` explains a failed step.
        task_track_started=False,
        task_store_errors_even_if_ignored=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        result_extended=True,
        task_queues=broker.task_queues(QUEUES),  # quorum queues on RabbitMQ, plain lists on Redis
        task_default_queue=NINKIK_QUEUE,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        timezone="UTC",
        # Beat is a singleton: RedBeat keeps the schedule in Redis and runs it only while holding a
        # lock there, so a second `celery beat` started by mistake waits instead of doubling every run.
        beat_schedule=beat_schedule(settings, CONTROL_QUEUE),
        # Routed by name too: `celery call` sends by name from a process that has not imported the tasks.
        task_routes={name: {"queue": CONTROL_QUEUE} for name in CONTROL_TASKS},
        # RedBeat's scheduler with beat's liveness and readiness files (docs/health.md).
        beat_scheduler="ninkik_tasks.health.beat:Scheduler",
        beat_max_loop_interval=BEAT_MAX_INTERVAL,
        redbeat_redis_url=settings.redis_url,
        redbeat_redis_options={"retry_period": 60, "socket_timeout": 10, "socket_connect_timeout": 5},
        redbeat_key_prefix=f"{settings.redis_namespace}:beat:",
        redbeat_lock_timeout=BEAT_LOCK_SECONDS,
    )


def _configuration() -> dict[str, Any]:
    """Celery's configuration, read when Celery first needs it: the whole configuration is validated then, since
    `celery -A ninkik_tasks worker` (beat, flower) reads it to parse its options, before any start-up signal. Under
    a command line a bad setting is one line and exit 2."""
    import click

    context = click.get_current_context(silent=True)
    try:
        settings = get_settings()
        startup.validate(settings)
        if context is not None and context.info_name == "flower":  # `celery -A ninkik_tasks flower` too
            from . import flower

            problem = flower.refusal(context.args or sys.argv[sys.argv.index("flower") + 1 :], os.environ)
            if problem:
                raise ConfigError(problem)
        return celery_config(settings)
    except ConfigError as exc:
        if context is None:
            raise  # a caller of the library: it handles ConfigError itself
        startup.refuse(exc)


def _worker_starts(**_: Any) -> None:
    startup.warn_unknown()


def _beat_starts(sender: Any, **_: Any) -> None:
    settings = get_settings()
    startup.warn_unknown()
    # RedBeat's own beat_init handler (connected after this one) blocks until it holds the lock: say so.
    lock = getattr(getattr(sender, "scheduler", None), "lock_key", None)
    if lock:
        from .clients import redis_client

        holder = redis_client(settings).exists(lock)
        if holder:
            log.warning(
                "another celery beat holds the schedule's lock (%s in NINKIK_REDIS_URL): this one stands by and "
                "takes over within %d s of that one stopping (%d s if it dies without releasing it), and logs it",
                lock,
                BEAT_MAX_INTERVAL,
                BEAT_LOCK_SECONDS + BEAT_MAX_INTERVAL,
            )


def _process_ends(**_: Any) -> None:
    # A prefork pool's child ends with os._exit (no atexit): the counts it holds are written now.
    from .metrics import flush_held

    flush_held()


def make_app() -> Celery:
    """The app; settings are read on first use, so importing the package never fails or does I/O."""
    app = Celery("ninkik_tasks", include=["ninkik_tasks.pipeline"])
    app.add_defaults(_configuration)
    signals.celeryd_init.connect(_worker_starts, weak=False)
    signals.beat_init.connect(_beat_starts, weak=False)
    signals.worker_process_shutdown.connect(_process_ends, weak=False)
    # Records RabbitMQ's dead letters (tasks over the delivery limit) as failures; nothing on Redis.
    app.steps["consumer"].add(rabbitmq.DeadLetters)
    app.steps["worker"].add(rabbitmq.Declare)  # every queue exists before delayed delivery binds them
    app.steps["worker"].add(worker_health.Liveness)  # liveness and readiness files (docs/health.md)
    app.steps["consumer"].add(worker_health.Consuming)
    return app


app = make_app()
