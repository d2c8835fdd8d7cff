"""Celery's own cost: the chain's four tasks with the project's Celery settings, doing nothing.

Same app configuration (ninkik_tasks.celery_app.celery_config), the same task names, queues and options
(the first three store no result); the first task gets a push event as the real chain does, each task
passes its argument on (the real steps add the match, the image and the report's key), and the last
counts itself in Redis. bench/celery_floor.py runs a worker on this module.

These tasks' arguments and results are shown as Celery does by default: a repr of each message, computed at every
publish and every step. The pipeline's tasks name their image instead and cut their results' repr at 256 characters
(pipeline.py): that part of Celery's work is still done here and no longer by the pipeline.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

from ninkik_tasks.celery_app import AWS_QUEUE, NINKIK_QUEUE, celery_config
from ninkik_tasks.config import get_settings

DONE_KEY = "bench:noop:done"

app = Celery("noop_chain")
app.conf.update({k: v for k, v in celery_config(get_settings()).items() if k != "beat_schedule"})
_counter = redis.Redis.from_url(os.environ["NINKIK_REDIS_URL"])


@app.task(name="ninkik.match_tenant", ignore_result=True, queue=NINKIK_QUEUE)
def match_tenant(event: dict[str, Any]) -> dict[str, Any]:
    return {"event": event}


@app.task(name="ninkik.describe_image", ignore_result=True, queue=AWS_QUEUE)
def describe_image(msg: dict[str, Any]) -> dict[str, Any]:
    return msg


@app.task(name="ninkik.fetch_scan_findings", ignore_result=True, queue=AWS_QUEUE)
def fetch_scan_findings(msg: dict[str, Any]) -> dict[str, Any]:
    return msg


@app.task(name="ninkik.notify", queue=NINKIK_QUEUE)
def notify(msg: dict[str, Any]) -> dict[str, Any]:
    _counter.incr(DONE_KEY)
    return {"outcome": "notified"}
