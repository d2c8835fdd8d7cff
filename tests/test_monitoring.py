"""A real Prometheus (Debian's 2.42) scrapes a real stack on RabbitMQ (ingest, a worker, beat, Flower, RabbitMQ's
rabbitmq_prometheus plugin, redis_exporter) and evaluates a copy of deploy/prometheus/alerts.yml with short
`for:` and range windows: nothing fires on a healthy run, each scenario fires the alert it names, every metric
family the rules and the dashboard use is exposed, and every dashboard query returns data.

One Prometheus and one stack for the module; the scenarios run in file order, each putting the stack back."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from conftest import CI, TENANT_A, Broker, Stack, celery_worker, ingest, make_broker
from test_alerts import DASHBOARD, RULES, SCRAPE, alerts, dashboard_queries

from ninkik_tasks import local
from ninkik_tasks.config import Settings
from ninkik_tasks.coverage.gauge import recount
from ninkik_tasks.holdings import Holdings
from ninkik_tasks.local import wait_for

SCRAPE_SECONDS = 1
WINDOW = "10s"  # every range window of the rules, shortened
FOR = "3s"  # every `for:`, shortened
# Thresholds in seconds that are windows too: (as written, shortened), each must be in the rule file.
# A healthy loop's timestamp, as Prometheus sees it, is up to one loop (beat ticks every 5 s at most), one copy to
# Redis (every 5 s, health/export.py) and one scrape old: 20 s, not a window's 10, keeps a healthy run quiet.
THRESHOLDS = {  # as written after `time() - `: the shortened bound
    "ninkik_ingest_last_loop_timestamp_seconds > 120": 20,
    "ninkik_worker_last_loop_timestamp_seconds > 120": 20,
    "max(ninkik_beat_last_loop_timestamp_seconds) > 120": 20,
    "min(ninkik_reconcile_watermark_timestamp_seconds) > 900": 12,
}
RECONCILE_SECONDS = 5  # NINKIK_RECONCILE_INTERVAL_SECONDS here; the rule's 900 s is three runs of 300 s
AUTH = ("ops", "flower-pw")


def shortened(text: str) -> str:
    """The rule file with short windows and `for:` (thresholds that are windows too, by name)."""
    for written, bound in THRESHOLDS.items():
        assert f"time() - {written}" in text, f"the rule file no longer says {written!r}: update THRESHOLDS"
        text = text.replace(f"time() - {written}", f"time() - {written.rsplit(' > ', 1)[0]} > {bound}")
    text = re.sub(r"\[\d+[smhd]\]", f"[{WINDOW}]", text)
    text = re.sub(r"offset \d+[smhd]", f"offset {WINDOW}", text)
    return re.sub(r"(?m)^(\s+for:) \S+$", rf"\1 {FOR}", text)


def prometheus_binary() -> str:
    """Debian's prometheus (package prometheus, which .ci/run installs)."""
    found = shutil.which("prometheus")
    if found is None or shutil.which("prometheus-redis-exporter") is None:
        message = "prometheus or prometheus-redis-exporter is not installed (apt-get install prometheus "
        message += "prometheus-redis-exporter): monitoring tests skipped"
        if CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return found


@dataclass
class Monitored:
    """The stack under watch and the Prometheus watching it."""

    stack: Stack
    broker: Broker
    env: dict[str, str]
    queue_url: str
    procs: dict[str, local.Proc]
    targets: dict[str, str]  # job -> scrape URL
    url: str  # Prometheus

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; raises on a PromQL error."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def alerts(self, state: str = "firing") -> set[str]:
        """Names of the alerts in `state` (firing, pending)."""
        answer = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        return {a["labels"]["alertname"] for a in answer["data"]["alerts"] if a["state"] == state}

    def firing(self, name: str) -> list[dict[str, str]]:
        """The labels of each firing alert called `name`."""
        answer = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        found: list[dict[str, str]] = [
            a["labels"] for a in answer["data"]["alerts"] if a["state"] == "firing" and a["labels"]["alertname"] == name
        ]
        return found

    def wait_firing(self, name: str, timeout: float = 60, **labels: str) -> None:
        """Until `name` fires (with `labels`, if given)."""
        wait_for(
            lambda: any(labels.items() <= alert.items() for alert in self.firing(name)),
            timeout,
            f"{name} {labels or ''} to fire",
            interval=0.5,
        )

    def start_worker(self) -> None:
        """The stack's worker (again)."""
        self.procs["worker"] = celery_worker(self.stack, self.env, f"mon{uuid.uuid4().hex[:4]}", pool="threads")

    def start_ingest(self, **overrides: str) -> None:
        """The stack's ingest (again), on the same metrics port."""
        env = {**self.env, **overrides}
        if overrides:
            self.procs["ingest"] = local.Proc(
                "ingest-mon",
                [sys.executable, "-m", "ninkik_tasks.cli", "ingest"],
                self.stack.work,
                {**env, "NINKIK_SQS_QUEUE_URL": self.queue_url},
            )
        else:
            self.procs["ingest"] = ingest(self.stack, env, self.queue_url, name="ingest-mon")

    def push(self, tag: str, tenant: str = TENANT_A) -> str:
        """An image pushed and its event sent."""
        digest = self.stack.push(f"{tenant}/shop", tag)
        self.stack.send(self.queue_url, local.push_event(f"{tenant}/shop", digest, tag))
        return digest


TIMINGS: dict[str, float] = {}  # alert -> seconds to fire, printed at the end of the module


@pytest.fixture(scope="module")
def monitored(stack: Stack, rabbitmq: local.RabbitMQ, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """ingest, a worker, beat, Flower, redis_exporter and Prometheus on the session's Redis, moto and RabbitMQ."""
    binary = prometheus_binary()
    work = tmp_path_factory.mktemp("monitoring")
    broker = make_broker(stack, "rabbitmq", rabbitmq)
    ports = {name: local.free_port() for name in ("ingest", "flower", "redis", "prometheus")}
    env = broker.env(
        NINKIK_REDIS_NAMESPACE=f"mon{uuid.uuid4().hex[:6]}",  # counters, watermarks and beat's lock of its own
        NINKIK_METRICS_PORT=str(ports["ingest"]),
        NINKIK_METRICS_ADDRESS="127.0.0.1",
        NINKIK_SQS_WAIT_SECONDS="1",
        NINKIK_RECONCILE_INTERVAL_SECONDS=str(RECONCILE_SECONDS),
        NINKIK_RECONCILE_FIRST_LOOKBACK_SECONDS="1",  # not every image the session's moto holds
        NINKIK_RECONCILE_OVERLAP_SECONDS="0",
        FLOWER_BASIC_AUTH=":".join(AUTH),
    )
    queue_url = stack.new_queue()
    vhost = broker.url.rsplit("/", 1)[1]
    targets = {
        "ninkik-ingest": f"http://127.0.0.1:{ports['ingest']}/metrics",
        "ninkik-flower": f"http://127.0.0.1:{ports['flower']}/metrics",
        "rabbitmq": f"{rabbitmq.prometheus_url}/metrics",
        "rabbitmq-detailed": f"{rabbitmq.prometheus_url}/metrics/detailed"
        "?family=queue_coarse_metrics&family=queue_consumer_count",
        "redis": f"http://127.0.0.1:{ports['redis']}/metrics",
    }
    (work / "alerts.yml").write_text(shortened(RULES.read_text()))
    (work / "flower-password").write_text(AUTH[1])
    config = yaml.safe_load(SCRAPE.read_text())
    config["global"] = {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"}
    for job in config["scrape_configs"]:  # the shipped jobs, pointed at this stack
        url = httpx.URL(targets[job["job_name"]])
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"{url.host}:{url.port}"]}]
        job["scrape_timeout"] = f"{SCRAPE_SECONDS}s"
        if "basic_auth" in job:
            job["basic_auth"]["password_file"] = str(work / "flower-password")
        if job["job_name"] == "rabbitmq-detailed":  # this test's vhost only: the node is shared by the session
            job["params"]["vhost"] = [vhost]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    procs: dict[str, local.Proc] = {}
    made = Monitored(stack, broker, env, queue_url, procs, targets, f"http://127.0.0.1:{ports['prometheus']}")
    try:
        procs["redis-exporter"] = local.Proc(
            "redis-exporter",
            [
                "prometheus-redis-exporter",
                "-redis.addr",
                stack.redis_url,
                "-web.listen-address",
                f"127.0.0.1:{ports['redis']}",
            ],
            work,
        )
        made.start_worker()
        made.start_ingest()
        procs["beat"] = local.Proc(
            "beat-mon", [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "beat"], work, env
        )
        procs["flower"] = local.Proc(
            "flower-mon",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "ninkik_tasks",
                "flower",
                "--address=127.0.0.1",
                f"--port={ports['flower']}",
                "--purge_offline_workers=600",
            ],
            work,
            env,
        )
        procs["prometheus"] = local.Proc(
            "prometheus",
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            ],
            work,
        )
        wait_for(lambda: httpx.get(f"{made.url}/-/ready", timeout=2).status_code == 200, 30, "Prometheus ready")
        yield made
    finally:
        for proc in procs.values():
            proc.stop()
        if TIMINGS:
            print("\nalerts fired (seconds after the scenario began):", TIMINGS)


def up_everywhere(m: Monitored) -> bool:
    """Every job scraped, and up."""
    ups = {r["metric"]["job"]: r["value"][1] for r in m.query("up")}
    return set(ups) == set(m.targets) and set(ups.values()) == {"1"}


def test_a_healthy_run_fires_nothing(monitored: Monitored) -> None:
    m = monitored
    wait_for(lambda: up_everywhere(m), 60, "every target up")
    digests = [m.push(f"healthy-{i}") for i in range(3)]
    # a quiet outcome, one: counted (the dashboard shows failures by reason), alerting nobody
    m.push("unknown", tenant="deadbeef-0000-4000-8000-000000000000")
    m.push(f"{digests[0].replace(':', '-')}.sig")  # a cosign signature: skipped, quietly
    wait_for(lambda: all(m.stack.received_for(d) for d in digests), 60, "the healthy pushes' notifications")
    wait_for(lambda: m.query("ninkik_reconcile_watermark_timestamp_seconds"), 60, "a reconcile's watermark")
    wait_for(lambda: m.query("flower_worker_online == 1"), 60, "Flower to see the worker")
    wait_for(lambda: m.query("ninkik_pipeline_notified_total >= 3"), 30, "the notifications in Prometheus")
    # Start-up is over (the shortened `for:` lets absences of the first seconds fire): from the moment no alert
    # is active, none may fire for longer than a window.
    wait_for(lambda: not (m.alerts() | m.alerts("pending")), 60, "start-up's alerts to resolve", interval=0.5)
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 8:
        assert not (m.alerts() | m.alerts("pending")), "an alert on a healthy stack"
        time.sleep(0.5)


def test_workers_gone_while_pushes_wait(monitored: Monitored) -> None:
    """Expects NinkikQueueWithoutConsumer (the chain's queue) and NinkikNoWorkers (Flower)."""
    m = monitored
    began = time.monotonic()
    m.procs["worker"].stop()
    m.push("while-no-worker")
    for name in ("NinkikQueueWithoutConsumer", "NinkikNoWorkers"):
        m.wait_firing(name, 60)
        TIMINGS[name] = time.monotonic() - began
    m.start_worker()


def test_ninkik_answers_503(monitored: Monitored) -> None:
    """Expects NinkikApiFailing."""
    m = monitored
    began = time.monotonic()
    m.stack.standin.answer_next(503, times=1000)
    digest = m.push("while-503")
    try:
        m.wait_firing("NinkikApiFailing", 60)
        TIMINGS["NinkikApiFailing"] = time.monotonic() - began
    finally:
        m.stack.standin.reset()
    wait_for(lambda: m.stack.received_for(digest), 60, "the notification once ninkik answers")


def test_ninkik_refuses_a_report(monitored: Monitored) -> None:
    """Expects NinkikChainsFailing (ninkik answered 400: the chain ends, recorded)."""
    m = monitored
    began = time.monotonic()
    assert not m.firing("NinkikChainsFailing")
    m.stack.standin.answer_next(400)
    m.push("refused")
    m.wait_firing("NinkikChainsFailing", 60, stage="notify", reason="http_400")
    TIMINGS["NinkikChainsFailing"] = time.monotonic() - began


def test_ingest_cannot_reach_sqs(monitored: Monitored) -> None:
    """Expects NinkikIngestPollsFailing."""
    m = monitored
    began = time.monotonic()
    m.procs["ingest"].stop()
    m.start_ingest(AWS_ENDPOINT_URL_SQS=f"http://127.0.0.1:{local.free_port()}")  # nothing listens there
    try:
        m.wait_firing("NinkikIngestPollsFailing", 90)
        TIMINGS["NinkikIngestPollsFailing"] = time.monotonic() - began
    finally:
        m.procs["ingest"].stop()
        m.start_ingest()


def test_events_quarantined(monitored: Monitored) -> None:
    """Expects NinkikEventsQuarantined."""
    m = monitored
    began = time.monotonic()
    m.stack.send(m.queue_url, "not json at all")
    m.wait_firing("NinkikEventsQuarantined", 60)
    TIMINGS["NinkikEventsQuarantined"] = time.monotonic() - began


def test_beat_stopped(monitored: Monitored) -> None:
    """Expects NinkikBeatDown (its loop's series is gone) and NinkikReconcileStale (the watermark's age)."""
    m = monitored
    began = time.monotonic()
    m.procs["beat"].stop()
    for name in ("NinkikBeatDown", "NinkikReconcileStale"):
        m.wait_firing(name, 90)
        TIMINGS[name] = time.monotonic() - began


def test_worker_frozen(monitored: Monitored) -> None:
    """Expects NinkikWorkerStuck naming the frozen process (SIGSTOP: alive to the orchestrator, its loop stopped)."""
    m = monitored
    worker = m.procs["worker"]
    process = f"{socket.gethostname()}/{worker.pid}"
    began = time.monotonic()
    worker.send(signal.SIGSTOP)
    try:
        m.wait_firing("NinkikWorkerStuck", 60, process=process)
        TIMINGS["NinkikWorkerStuck"] = time.monotonic() - began
    finally:
        worker.send(signal.SIGCONT)
    wait_for(lambda: not m.firing("NinkikWorkerStuck"), 60, "NinkikWorkerStuck to resolve once the worker runs")


def exposed_families(m: Monitored) -> set[str]:
    """Every metric family in the stack's expositions (a family with no sample yet still has its # TYPE)."""
    names: set[str] = set()
    for job, url in m.targets.items():
        text = httpx.get(url, auth=AUTH if job == "ninkik-flower" else None, timeout=10).text
        names |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    return names


def used_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (ours and the exporters'), as written."""
    words = set(re.findall(r"(?<![\w$\"{])([a-z_][a-z0-9_]*)(?=\s*[{\[)]|\s*$|\s*[<>=!+*/-])", expr))
    return {w for w in words if w.startswith(("ninkik_", "flower_", "rabbitmq_", "redis_"))}


def family_of(name: str) -> set[str]:
    """The names its family may have in an exposition."""
    base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
    return {name, base, f"{base}_total"}


def test_every_metric_the_rules_and_the_dashboard_use_is_exposed(monitored: Monitored) -> None:
    exposed = exposed_families(monitored)
    # Flower 2.2 serves /metrics to anyone (its basic auth guards the UI and the API): prometheus.yml says so
    assert httpx.get(monitored.targets["ninkik-flower"], timeout=10).status_code == 200
    used = {n for rule in alerts() for n in used_metrics(rule["expr"])}
    used |= {n for _, expr in dashboard_queries() for n in used_metrics(expr)}
    assert {"ninkik_ingest_poll_errors_total", "rabbitmq_detailed_queue_consumers", "redis_up"} <= used
    missing = {n for n in used if not family_of(n) & exposed}
    assert not missing, f"used but exposed by nothing: {sorted(missing)}"


def test_every_dashboard_query_runs_and_returns_data(monitored: Monitored) -> None:
    m = monitored
    # a scan still running, so the scans-waiting panel has a region to show
    digest = m.stack.push(f"{TENANT_A}/shop", "scanning", status="IN_PROGRESS")
    m.stack.send(m.queue_url, local.push_event(f"{TENANT_A}/shop", digest, "scanning"))
    wait_for(lambda: m.query("ninkik_scan_wait_oldest_seconds > 0"), 60, "a scan waiting, and its age")
    # an image deleted since its push, so the registry-changes panel has a removal to show
    gone = m.stack.push(f"{TENANT_A}/shop", "deleted")
    m.stack.ecr.batch_delete_image(repositoryName=f"{TENANT_A}/shop", imageIds=[{"imageDigest": gone}])
    m.stack.send(m.queue_url, local.push_event(f"{TENANT_A}/shop", gone, "deleted"))
    wait_for(lambda: m.query("rate(ninkik_pipeline_lifecycle_total[5m])"), 60, "the removal counted, scraped twice")
    # A reported image is held (the report step records it), counted as beat's ninkik.coverage counts it (beat was
    # stopped by test_beat_stopped), so the coverage panel has a count to show.
    namespace = m.env["NINKIK_REDIS_NAMESPACE"]
    done = m.push("covered")
    holdings = Holdings(m.stack.records, namespace)
    held = wait_for(lambda: holdings.get(local.ACCOUNT, local.REGION, f"{TENANT_A}/shop", done), 60, "its report")
    assert held.scan == "COMPLETE"
    settings = Settings(redis_namespace=namespace, aws_account_ids=[local.ACCOUNT], aws_regions=[local.REGION])
    recount(m.stack.records, settings)
    wait_for(lambda: m.query('ninkik_coverage_images{state="scanned"} > 0'), 60, "the coverage gauge")
    variables = {
        "$__rate_interval": "5m",  # the whole run: every counter moved in it
        "$__interval": f"{SCRAPE_SECONDS}s",
        "$__range": "10m",
        "$ingest_job": "ninkik-ingest",
        "$flower_job": "ninkik-flower",
        "$rabbitmq_detailed_job": "rabbitmq-detailed",
        "$account": ".*",  # every account (the dashboard's "All")
    }
    assert "${datasource}" in DASHBOARD.read_text()
    empty = []
    for title, expr in dashboard_queries():
        for variable, value in variables.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: a variable the test does not know: {expr}"
        if not m.query(expr):  # raises on a PromQL error
            empty.append(f"{title}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
