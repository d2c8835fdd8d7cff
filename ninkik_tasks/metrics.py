"""Prometheus metrics: ingest's own counters, and the pipeline's outcomes counted cluster-wide in Redis."""

from __future__ import annotations

import logging
from collections.abc import Iterator

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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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


class PipelineStats:
    """Outcome counters of the chain, shared by every worker through one Redis hash."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.namespace = namespace
        self.key = f"{namespace}:stats"

    def incr(self, kind: str, *labels: str) -> None:
        """Count one outcome, e.g. incr("notified", "COMPLETE") or incr("failure", "notify", "http_400")."""
        try:
            self.r.hincrby(self.key, ":".join((kind, *labels)), 1)
        except redis.RedisError:  # counting must never fail the work it counts
            log.debug("could not count %s %s", kind, labels)

    def read(self) -> dict[str, int]:
        """Every counter."""
        return {str(k): int(v) for k, v in self.r.hgetall(self.key).items()}


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
    "held": ("ninkik_pipeline_held", "Untagged images held for an index that may list them", ["kind"]),
}


class PipelineCollector(Collector):
    """Exposes PipelineStats on scrape (cluster-wide: with several ingests, aggregate with max)."""

    def __init__(self, stats: PipelineStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        """One metric family per kind of outcome."""
        try:
            values = self.stats.read()
        except redis.RedisError:
            return
        for kind, (name, doc, labels) in PIPELINE_METRICS.items():
            family = CounterMetricFamily(name, doc, labels=labels)
            for field, value in values.items():
                parts = field.split(":")
                if parts[0] == kind and len(parts) == len(labels) + 1:
                    family.add_metric(parts[1:], value)
            yield family


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


def serve(port: int, stats: PipelineStats, address: str = "0.0.0.0") -> None:
    """Serve /metrics on `port` (0: not at all)."""
    if not port:
        return
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
