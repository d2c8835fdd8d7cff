"""Prometheus metrics: ingest's own counters, and the pipeline's outcomes counted cluster-wide in Redis."""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime

import redis
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .scanwait import oldest_wait

log = logging.getLogger(__name__)

# Ingest's metrics live in a registry of their own, served only by ingest: Flower imports the app (and so this
# module) and serves the default registry, where an all-zero copy would look like a stalled ingest.
INGEST = CollectorRegistry(auto_describe=True)
RECEIVED = Counter("ninkik_ingest_messages_received", "SQS messages received by this ingest", registry=INGEST)
ACCEPTED = Counter("ninkik_ingest_events_accepted", "Valid push events (new or duplicate)", registry=INGEST)
DUPLICATES = Counter("ninkik_ingest_duplicates", "Events dropped because their id was already handled", registry=INGEST)
REJECTED = Counter("ninkik_ingest_rejected", "Messages refused, by reason", ["reason"], registry=INGEST)
IGNORED = Counter(
    "ninkik_ingest_ignored",
    "Well-formed AWS events that are not pushes, dropped, by reason",
    ["reason"],
    registry=INGEST,
)
QUARANTINED = Counter(
    "ninkik_ingest_quarantined", "Messages recorded in the quarantine (once per message)", registry=INGEST
)
CHAINS = Counter("ninkik_ingest_chains_started", "Chains queued for new events", registry=INGEST)
DELETED = Counter("ninkik_ingest_messages_deleted", "Messages deleted from SQS after handling", registry=INGEST)
POLL_ERRORS = Counter(
    "ninkik_ingest_poll_errors", "Polls that failed (Redis, broker or SQS unavailable)", registry=INGEST
)
QUEUE_UP = Gauge(
    "ninkik_ingest_queue_up",
    "1 while the queue's last poll worked, 0 while it fails (refused, gone, throttled, unreachable)",
    ["account", "queue"],
    registry=INGEST,
)
QUEUE_LAST_POLL = Gauge(
    "ninkik_ingest_queue_last_poll_timestamp_seconds",
    "When the queue's last successful poll ended (Unix time)",
    ["account", "queue"],
    registry=INGEST,
)
DELETING = Gauge(
    "ninkik_ingest_delete_enabled",
    "1 when handled messages are deleted, 0 when DeleteMessage is denied",
    registry=INGEST,
)
POLL_SECONDS = Histogram(
    "ninkik_ingest_poll_seconds",
    "Duration of one ReceiveMessage long poll",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 25),
    registry=INGEST,
)
DELETING.set(1)
LAST_LOOP = Gauge(
    "ninkik_ingest_last_loop_timestamp_seconds",
    "When ingest's poll loop last ran (Unix time): the liveness file's time (docs/health.md)",
    registry=INGEST,
)
ECR_BUDGET = Gauge(
    "ninkik_ecr_calls_per_second_limit",
    "NINKIK_ECR_CALLS_PER_SECOND: the ECR budget the workers share, per region (0: no limit)",
    registry=INGEST,
)


class PipelineStats:
    """Outcome counters of the chain, shared by every worker through one Redis hash."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.namespace = namespace
        self.key = f"{namespace}:stats"
        self._pending: collections.Counter[str] = collections.Counter()  # soon(): not written yet
        self._latency_sum = 0.0
        self._flushing: threading.Timer | None = None
        self._lock = threading.Lock()

    def incr(self, kind: str, *labels: str) -> None:
        """Count one outcome now, e.g. incr("failure", "notify", "http_400") (with what soon() holds)."""
        self.soon(kind, *labels)
        self.flush()

    def soon(self, kind: str, *labels: str, latency: float | None = None) -> None:
        """Count one frequent outcome (an ECR call, a report notified): written with this process's next incr, or
        FLUSH_SECONDS later at most, so that many share a round trip. With `latency`, also one push's seconds
        from ECR's push to ninkik's acceptance (the histogram)."""
        with self._lock:
            self._pending[":".join((kind, *labels))] += 1
            if latency is not None:
                # Only the bucket it falls in: the collector adds them up (cumulative, as Prometheus wants them).
                bound = next((b for b in LATENCY_BUCKETS if latency <= b), None)
                if bound is not None:
                    self._pending[f"latency_in:{bound:g}"] += 1
                self._pending["latency_count"] += 1
                self._latency_sum += max(latency, 0.0)
            if self._flushing is None:
                self._flushing = threading.Timer(FLUSH_SECONDS, self.flush)
                self._flushing.daemon = True
                self._flushing.start()
                _holding.add(self)

    def flush(self) -> None:
        """Write what soon() holds, in one round trip."""
        with self._lock:
            pending, latency_sum = self._pending, self._latency_sum
            self._pending, self._latency_sum = collections.Counter(), 0.0
            if self._flushing is not None and self._flushing is not threading.current_thread():
                self._flushing.cancel()
            self._flushing = None
        if not pending:
            return
        try:
            pipe = self.r.pipeline(transaction=False)
            for field, n in pending.items():
                pipe.hincrby(self.key, field, n)
            if latency_sum:
                pipe.hincrbyfloat(self.key, "latency_sum", latency_sum)
            pipe.execute()
        except redis.RedisError:  # counting must never fail the work it counts
            log.debug("could not count %s", dict(pending))

    def read(self) -> dict[str, float]:
        """Every counter."""
        return {str(k): float(v) for k, v in self.r.hgetall(self.key).items()}

    def _forget(self) -> None:
        # In a forked child: the counts held are the parent's to write, its timer and lock's holder are not here.
        self._pending, self._latency_sum = collections.Counter(), 0.0
        self._flushing, self._lock = None, threading.Lock()


# This process's PipelineStats that held counts: a process that ends normally writes them (atexit; a prefork pool's
# child ends with os._exit and writes them on Celery's worker_process_shutdown: celery_app.py).
_holding: weakref.WeakSet[PipelineStats] = weakref.WeakSet()


def flush_held() -> None:
    """Write the counts every PipelineStats of this process holds (PipelineStats.soon), each in one round trip."""
    for stats in list(_holding):
        stats.flush()


def _forget_after_fork() -> None:
    for stats in list(_holding):
        stats._forget()
    _holding.clear()


atexit.register(flush_held)
os.register_at_fork(after_in_child=_forget_after_fork)


FLUSH_SECONDS = 1.0  # the longest a count of PipelineStats.soon waits in its process to share a round trip
# Push to notification, in seconds: a scan takes seconds to minutes, NINKIK_SCAN_WAIT_SECONDS bounds the wait.
LATENCY_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


# kind -> (metric name, help, label names)
PIPELINE_METRICS = {
    "notified": ("ninkik_pipeline_notified", "Reports ninkik accepted, by scan status", ["scan_status"]),
    "already_sent": ("ninkik_pipeline_already_sent", "Reports not sent again because ninkik has them", ["how"]),
    "failure": ("ninkik_pipeline_failures", "Chains ended without a notification", ["stage", "reason"]),
    "retry": ("ninkik_pipeline_retries", "Retries scheduled, by stage", ["stage"]),
    "skipped": (
        "ninkik_pipeline_skipped",
        "Manifests not reported: artifacts that are not images, manifests reported in their index",
        ["reason"],
    ),
    "lifecycle": (
        "ninkik_pipeline_lifecycle",
        "Images ninkik heard of again because the registry changed: removed, rereported (tags or status), "
        "superseded (a later observation won), by what changed",
        ["outcome", "change"],
    ),
    "usage": ("ninkik_usage_reports", "Usage reports (100 images each) sent by the lifecycle sweep", ["outcome"]),
    "held": ("ninkik_pipeline_held", "Untagged images held for an index that may list them", ["kind"]),
    "ecr_call": (
        "ninkik_ecr_calls",
        "ECR HTTP attempts by the workers (retries and pages included), by account and region",
        ["account", "region"],
    ),
}


class PipelineCollector(Collector):
    """Exposes PipelineStats on scrape (cluster-wide: with several ingests, aggregate with max)."""

    def __init__(self, stats: PipelineStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        """One metric family per kind of outcome, the push-to-notify histogram, and state read from Redis."""
        try:
            values = self.stats.read()
            state = self._state()
        except redis.RedisError:
            return
        for kind, (name, doc, labels) in PIPELINE_METRICS.items():
            family = CounterMetricFamily(name, doc, labels=labels)
            for field, value in values.items():
                parts = field.split(":")
                if parts[0] == kind and len(parts) == len(labels) + 1:
                    family.add_metric(parts[1:], value)
            yield family
        buckets, below = [], 0.0
        for b in LATENCY_BUCKETS:
            below += values.get(f"latency_in:{b:g}", 0.0)
            # latency_bucket: the cumulative counts workers wrote before 2026-12 (every bucket at or above).
            buckets.append((f"{b:g}", below + values.get(f"latency_bucket:{b:g}", 0.0)))
        count = values.get("latency_count", 0.0)
        latency = HistogramMetricFamily(
            "ninkik_pipeline_push_to_notify_seconds", "From ECR's push to ninkik's acceptance of the report (pushes)"
        )
        latency.add_metric([], [*buckets, ("+Inf", count)], values.get("latency_sum", 0.0))
        yield latency
        yield from state

    def _state(self) -> list[Metric]:
        r, ns = self.stats.r, self.stats.namespace
        marks = GaugeMetricFamily(
            "ninkik_reconcile_watermark_timestamp_seconds",
            "When the last successful reconcile of each registry began (Unix time): beat and reconcile are running",
            labels=["account", "region"],
        )
        for key in sorted(str(k) for k in r.scan_iter(match=f"{ns}:watermark:*", count=500)):
            value = r.get(key)
            if isinstance(value, str):
                _, account, region = key.rsplit(":", 2)
                marks.add_metric([account, region], datetime.fromisoformat(value).timestamp())
        waiting = GaugeMetricFamily(
            "ninkik_scans_waiting",
            "Images whose scan has not finished, re-read until it does, by account and region",
            labels=["account", "region"],
        )
        oldest = GaugeMetricFamily(
            "ninkik_scan_wait_oldest_seconds",
            "How long the longest scan wait has lasted, by account and region",
            labels=["account", "region"],
        )
        now = time.time()
        for key in sorted(str(k) for k in r.scan_iter(match=f"{ns}:scanwait:*:*", count=500)):
            # A region's set from before waits were per account (`{ns}:scanwait:{region}`) has no colon in its tail:
            # not matched; it expires within minutes of the upgrade (docs/upgrading.md).
            account, region = key.removeprefix(f"{ns}:scanwait:").split(":", 1)
            if r.type(key) == "zset":
                waiting.add_metric([account, region], float(r.zcard(key)))
                age = oldest_wait(r, ns, account, region, now)
                if age is not None:
                    oldest.add_metric([account, region], age)
        return [marks, waiting, oldest, *coverage_families(r, ns)]


def coverage_families(r: redis.Redis, namespace: str) -> list[Metric]:
    """The coverage gauge as beat's `ninkik.coverage` last stored it (coverage/gauge.py: its bound), and its age."""
    from .coverage import gauge

    values, computed = gauge.load(r, namespace)
    images = GaugeMetricFamily(
        "ninkik_coverage_images",
        "Images ninkik holds, by account, region, tenant (the top by images not scanned, else `other`) and scan state",
        labels=["account", "region", "tenant", "state"],
    )
    for labels in sorted(values):
        images.add_metric(list(labels), values[labels])
    when = GaugeMetricFamily(
        "ninkik_coverage_computed_timestamp_seconds", "When ninkik.coverage last counted the Holdings (Unix time)"
    )
    if computed is not None:
        when.add_metric([], computed)
    return [images, when]


class HeartbeatCollector(Collector):
    """The last loop of every worker and beat, from the keys they keep in Redis (health/export.py), on scrape."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.match = f"{namespace}:health:*"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """ninkik_worker_last_loop_timestamp_seconds and ninkik_beat_..., one series per process (host/pid)."""
        families = {
            kind: GaugeMetricFamily(
                f"ninkik_{kind}_last_loop_timestamp_seconds",
                f"When each {kind} process's loop last ran (Unix time): its liveness file's time (docs/health.md)",
                labels=["process"],
            )
            for kind in ("worker", "beat")
        }
        try:
            keys = sorted(str(k) for k in self.r.scan_iter(match=self.match, count=500))
            values = self.r.mget(keys) if keys else []
        except redis.RedisError:
            return
        for key, value in zip(keys, values, strict=True):
            _, kind, host, pid = key.rsplit(":", 3)
            if kind in families and value is not None:
                families[kind].add_metric([f"{host}/{pid}"], float(value))
        yield from families.values()


def serve(port: int, stats: PipelineStats, address: str = "0.0.0.0", ecr_calls_per_second: float = 0.0) -> None:
    """Serve /metrics on `port` (0: not at all)."""
    if not port:
        return
    ECR_BUDGET.set(ecr_calls_per_second)
    INGEST.register(PipelineCollector(stats))
    INGEST.register(HeartbeatCollector(stats.r, stats.namespace))
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # as on the default registry
        INGEST.register(collector)
    try:
        start_http_server(port, addr=address, registry=INGEST)
    except OSError as exc:
        log.warning("metrics not served: port %d: %s (set NINKIK_METRICS_PORT)", port, exc)
        return
    log.info("metrics on :%d/metrics", port)
