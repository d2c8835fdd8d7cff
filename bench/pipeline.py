"""Benchmark: push events through ingest -> chain -> ninkik stand-in; throughput, latency, CPU and memory.

Three scenarios in one invocation; every run starts its own redis-server, moto server, ninkik stand-in
(in this process), `ninkik-tasks ingest` and `celery -A ninkik_tasks worker` processes, and stops them.

1. End-to-end, with the worker defaults of workers/entrypoint.sh, AWS calls straight to moto.
2. Latency-bound: every AWS call goes through bench/delay_proxy.py, which waits `--delay-ms` before
   forwarding it, and the stand-in waits as long before answering each POST. Each worker pool runs
   with 0 ms and with the delay through the same proxy; "kept" is the second rate over the first.
3. Scaling: 1, 2 and 4 worker processes with the pool that did best in 2, with the delay.

Events are fed in batches of 10 while fewer than `--window` are sent and not yet notified, so the SQS
queue stays shallow (moto's SQS slows down as it grows). The first `--warmup` events of each run (client
creation, tenant lookup) are not counted. The figures are the emulator's: moto answers about 200-300 ECR
calls/s on 2 cores and shares them with everything else here.

    .venv/bin/python bench/pipeline.py [--events 300] [--delay-ms 30]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil
import redis
from celery import Celery
from rich.console import Console
from rich.table import Table

from ninkik_tasks import local
from ninkik_tasks.standin import Received, Standin

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROXY = BENCH / "delay_proxy.py"
RESULTS = BENCH / "RESULTS.md"
ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"
QUEUES = "ninkik-aws,ninkik-api,ninkik-control"
TENANT = "7d3c2b1a-0f9e-4d8c-8b7a-6f5e4d3c2b1a"
PRODUCTS = [f"product-{i}" for i in range(10)]
TENANTS = [{"uuid": TENANT, "name": "Bench", "products": [{"uuid": str(uuid.uuid4()), "name": p} for p in PRODUCTS]}]
EMULATOR = "moto 5.2.5 server (slow: ~200-300 ECR calls/s here)"
MIB = 1024 * 1024


class RunFailed(Exception):
    """A run stalled or one of its processes died."""


@dataclass(frozen=True)
class Setup:
    """One run: the worker pool, how many worker processes, the added delay."""

    pool: str
    concurrency: int
    workers: int = 1
    delay: float = 0.0
    proxy: bool = False  # AWS through the delay proxy, also at 0 ms, so both sides of a ratio pay for it
    paced: int = 0  # events sent afterwards at half the measured rate: latency without a backlog

    @property
    def label(self) -> str:
        """e.g. `prefork x8`, `2 x threads x16`."""
        workers = f"{self.workers} x " if self.workers > 1 else ""
        return f"{workers}{self.pool} x{self.concurrency}"


@dataclass
class Result:
    """What one run measured."""

    setup: Setup
    events: int = 0
    seconds: float = 0.0
    latency: list[float] = field(default_factory=list)  # seconds, send -> POST received, under load
    paced_rate: float = 0.0
    paced_latency: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds in the measured phase
    rss: dict[str, float] = field(default_factory=dict)  # role -> peak resident bytes of one process
    busy: float = 0.0  # share of all cores' time the machine was busy in the measured phase
    others: float = 0.0  # the part of it spent in processes this run did not start
    retries: int = 0  # chain steps retried (ninkik:stats), failures recorded, POSTs answered other than 201
    failures: int = 0
    repeated_posts: int = 0
    error: str | None = None
    logs: Path | None = None

    @property
    def anomalies(self) -> str:
        """retries / failures / POSTs not answered 201, e.g. `0 / 0 / 0`."""
        return f"{self.retries} / {self.failures} / {self.repeated_posts}"

    @property
    def rate(self) -> float:
        """Events per second, first send to last POST."""
        return self.events / self.seconds if self.seconds else 0.0


# The ninkik side: every accepted POST is timed here
class Arrivals:
    """Send and POST-received times by image digest, and a condition to wait on."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.received: dict[str, float] = {}
        self.cond = threading.Condition()
        self.wanted: set[str] = set()
        self.done = 0

    def on_receive(self, r: Received) -> None:
        digest = r.body["image"]["digest"]
        with self.cond:
            self.received.setdefault(digest, r.at)
            if digest in self.wanted:
                self.done += 1
                self.wanted.discard(digest)
            self.cond.notify_all()

    def expect(self, digests: list[str]) -> None:
        with self.cond:
            self.wanted = set(digests) - set(self.received)
            self.done = len(digests) - len(self.wanted)

    def latencies(self, digests: list[str]) -> list[float]:
        return [self.received[d] - self.sent[d] for d in digests]


# Processes and their CPU and memory
class Watch:
    """Samples the resident memory of every process by role; CPU times on demand."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = roles  # role -> pids; a worker's pool processes are found as its children
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="watch")

    def processes(self) -> Iterator[tuple[str, psutil.Process]]:
        for role, pids in self.roles.items():
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    main = psutil.Process(pid)
                    yield role, main
                    if role == "worker":
                        for child in main.children(recursive=True):
                            yield "pool", child

    def cpu(self) -> dict[int, tuple[str, float]]:
        """pid -> (role, user + system CPU seconds so far)."""
        out: dict[int, tuple[str, float]] = {}
        for role, proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                out[proc.pid] = (role, t.user + t.system)
        return out

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for role, proc in self.processes():
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss = float(proc.memory_info().rss)
                    self.peak[role] = max(self.peak.get(role, 0.0), rss)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by role between two snapshots (`workers` = main and pool processes together)."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        delta = seconds - before.get(pid, (role, 0.0))[1]
        used[role] = used.get(role, 0.0) + delta
        if role in ("worker", "pool"):
            used["workers"] = used.get("workers", 0.0) + delta
    return used


def busy(before: Any, after: Any) -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine, all cores, between two psutil.cpu_times() readings."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (after.iowait - before.iowait)
    return total - idle, total


# One run
def run(setup: Setup, args: argparse.Namespace, console: Console) -> Result:
    """Start everything for `setup`, feed the events, measure, stop everything."""
    result = Result(setup)
    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-", dir=args.work))
    result.logs = work
    arrivals = Arrivals()
    with contextlib.ExitStack() as stack:
        redis_proc, redis_url = local.start_redis(work)
        stack.callback(redis_proc.stop)
        moto_proc, moto_url = local.start_moto(work)
        stack.callback(moto_proc.stop)
        token = secrets.token_urlsafe(16)
        standin = Standin(TENANTS, token, on_receive=arrivals.on_receive).start()
        stack.callback(standin.stop)
        if setup.delay:
            standin.answer_next(0, times=10**7, delay=setup.delay)  # status 0: answer normally, after the delay
        aws_url = moto_url
        if setup.proxy:
            port = local.free_port()
            proxy_args = [sys.executable, str(PROXY), "--target", moto_url, "--port", str(port)]
            proxy = local.Proc("proxy", [*proxy_args, "--delay", str(setup.delay)], work)
            stack.callback(proxy.stop)
            aws_url = f"http://127.0.0.1:{port}"
            local.wait_for(lambda: httpx.get(f"{aws_url}/moto-api/").status_code < 500, 30, "the delay proxy")

        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=local.REGION
        )
        # The bench plays ECR and EventBridge: it talks to moto directly, never through the proxy.
        ecr = session.client("ecr", endpoint_url=moto_url)
        sqs = session.client("sqs", endpoint_url=moto_url)
        queue_url = sqs.create_queue(QueueName="ecr-docker-push", Attributes={"MessageRetentionPeriod": "60"})[
            "QueueUrl"
        ]
        images = seed(ecr, args.warmup + args.events + setup.paced)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("NINKIK_", "AWS_"))},
            **local.aws_env(aws_url),
            "NINKIK_BROKER_URL": f"{redis_url}/0",
            "NINKIK_RESULT_BACKEND": f"{redis_url}/1",
            "NINKIK_REDIS_URL": f"{redis_url}/2",
            "NINKIK_SQS_QUEUE_URL": queue_url,
            "NINKIK_AWS_ACCOUNT_IDS": local.ACCOUNT,
            "NINKIK_AWS_REGIONS": local.REGION,
            "NINKIK_API_URL": standin.url,
            "NINKIK_API_TOKEN": token,
            "NINKIK_METRICS_PORT": "0",
            # Measure what the workers can do, not the shared ECR limit (when there is one, it caps the
            # whole cluster at that many calls per second whatever the workers).
            "NINKIK_ECR_CALLS_PER_SECOND": "0",
            "PYTHONUNBUFFERED": "1",
        }
        workers = []
        for n in range(setup.workers):
            name = f"w{n + 1}"
            proc = local.Proc(
                f"worker-{name}",
                [
                    *[sys.executable, "-m", "celery", "-A", "ninkik_tasks", "worker"],
                    *[f"--pool={setup.pool}", f"--concurrency={setup.concurrency}", f"--queues={QUEUES}"],
                    *[f"--hostname={name}@%h", "-E"],  # as workers/entrypoint.sh runs it
                ],
                work,
                env,
            )
            stack.callback(proc.stop)
            workers.append(proc)
        ingest = local.Proc("ingest", [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], work, env)
        stack.callback(ingest.stop)
        procs = [ingest, *workers]
        local.wait_for(lambda: "polling" in ingest.output() or not ingest.alive(), 60, "ingest to poll")
        probe = Celery(broker=env["NINKIK_BROKER_URL"])
        names = {f"w{n + 1}@" for n in range(setup.workers)}
        local.wait_for(lambda: all(not p.alive() for p in procs) or names <= pinged(probe), 90, "the workers")
        alive(procs)

        roles = {
            "ingest": [ingest.pid],
            "worker": [p.pid for p in workers],
            "moto": [moto_proc.pid],
            "redis": [redis_proc.pid],
            "bench": [os.getpid(), *([proxy.pid] if setup.proxy else [])],  # feeder, stand-in, proxy
        }
        with Watch(roles) as watch:
            warmup, measured, paced = (
                images[: args.warmup],
                images[args.warmup : args.warmup + args.events],
                images[args.warmup + args.events :],
            )
            feed(sqs, queue_url, warmup, arrivals, args.window, procs, args.stall)
            before, machine_before = watch.cpu(), psutil.cpu_times()
            first, last = feed(sqs, queue_url, measured, arrivals, args.window, procs, args.stall)
            result.cpu = cpu_used(before, watch.cpu())
            busy_seconds, all_seconds = busy(machine_before, psutil.cpu_times())
            ours = sum(v for role, v in result.cpu.items() if role != "workers")  # "workers" = worker + pool
            result.busy = busy_seconds / all_seconds
            result.others = max(0.0, busy_seconds - ours) / all_seconds
            result.events, result.seconds = len(measured), last - first
            result.latency = arrivals.latencies([d for _, d in measured])
            if paced:
                result.paced_rate = max(1.0, result.rate / 2)
                feed_paced(sqs, queue_url, paced, arrivals, result.paced_rate, procs, args.stall)
                result.paced_latency = arrivals.latencies([d for _, d in paced])
        result.rss = dict(watch.peak)
        stats = redis.Redis.from_url(f"{redis_url}/2", decode_responses=True).hgetall("ninkik:stats")
        result.retries = sum(int(v) for k, v in stats.items() if k.startswith("retry:"))
        result.failures = sum(int(v) for k, v in stats.items() if k.startswith("failure:"))
        result.repeated_posts = sum(1 for status, _ in standin.attempts if status != 201)
        console.log(
            f"{setup.label:<22} delay {setup.delay * 1000:>3.0f} ms{' (proxy)' if setup.proxy else '        '}  "
            f"{result.rate:7.1f} events/s  p50 {pct(result.latency, 50) * 1000:6.0f} ms"
        )
    return result


def seed(ecr: Any, count: int) -> list[tuple[str, str]]:
    """Put `count` images with a finished scan in 10 repositories of one tenant; (repository, digest) each."""
    repositories = [f"{TENANT}/{p}" for p in PRODUCTS]
    for name in repositories:
        ecr.create_repository(repositoryName=name)
    run_id = uuid.uuid4().hex

    def put(i: int) -> tuple[str, str]:
        repository = repositories[i % len(repositories)]
        answer = ecr.put_image(
            repositoryName=repository, imageManifest=local.manifest(f"{run_id}-{i}"), imageTag=f"v{i}"
        )
        digest = str(answer["image"]["imageId"]["imageDigest"])
        ecr.start_image_scan(repositoryName=repository, imageId={"imageDigest": digest})  # moto: COMPLETE at once
        return repository, digest

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(put, range(count)))


def feed(
    sqs: Any,
    queue_url: str,
    images: list[tuple[str, str]],
    arrivals: Arrivals,
    window: int,
    procs: list[local.Proc],
    stall: float,
) -> tuple[float, float]:
    """Send push events, 10 at a time, keeping at most `window` unanswered; (first send, last POST)."""
    arrivals.expect([d for _, d in images])
    sent, first, progress_at, done = 0, 0.0, time.monotonic(), 0
    while True:
        with arrivals.cond:
            if arrivals.done > done:
                done, progress_at = arrivals.done, time.monotonic()
            if done == len(images):
                break
            room = sent < len(images) and sent - done + 10 <= window
            if not room:
                arrivals.cond.wait(0.1)
        if room:
            batch = images[sent : sent + 10]
            now = time.time()
            first = first or now
            for _, digest in batch:
                arrivals.sent[digest] = now
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(local.push_event(repository, digest, None))}
                for i, (repository, digest) in enumerate(batch)
            ]
            sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            sent += len(batch)
            continue
        alive(procs)
        if time.monotonic() - progress_at > stall:
            raise RunFailed(f"no notification for {stall:.0f} s ({done} of {len(images)} arrived)")
    return first, max(arrivals.received[d] for _, d in images)


def feed_paced(
    sqs: Any,
    queue_url: str,
    images: list[tuple[str, str]],
    arrivals: Arrivals,
    rate: float,
    procs: list[local.Proc],
    stall: float,
) -> None:
    """Send one push event every 1/`rate` s, then wait for all of them."""
    arrivals.expect([d for _, d in images])
    began = time.monotonic()
    for i, (repository, digest) in enumerate(images):
        pause = began + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        arrivals.sent[digest] = time.time()
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(local.push_event(repository, digest, None)))
    deadline = time.monotonic() + stall
    with arrivals.cond:
        while arrivals.done < len(images):
            if time.monotonic() > deadline:
                raise RunFailed(f"paced events: {arrivals.done} of {len(images)} arrived in {stall:.0f} s")
            arrivals.cond.wait(0.2)
            alive(procs)


def alive(procs: list[local.Proc]) -> None:
    """RunFailed naming the first process that stopped."""
    for p in procs:
        if not p.alive():
            raise RunFailed(f"{p.name} stopped: {p.output()[-1500:]}")


def pinged(probe: Celery) -> set[str]:
    """Worker name prefixes (`w1@`) that answer a ping."""
    replies = probe.control.ping(timeout=0.5) or []
    return {host.split("@")[0] + "@" for reply in replies for host in reply}


# Figures
def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def ms(values: list[float]) -> str:
    return " / ".join(f"{pct(values, p) * 1000:.0f}" for p in (50, 95, 99)) if values else "-"


def mib(value: float | None) -> str:
    return f"{value / MIB:.0f}" if value else "-"


def per_event(result: Result, role: str) -> str:
    return f"{result.cpu.get(role, 0.0) / result.events * 1000:.1f}" if result.events else "-"


@dataclass
class Section:
    """One table: printed with rich and written to RESULTS.md the same."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def end_to_end(r: Result) -> Section:
    s = Section(
        f"1. End-to-end: {r.events} events, workers/entrypoint.sh defaults ({r.setup.label}), AWS = {EMULATOR}",
        ["figure", "value"],
    )
    if r.error:
        s.rows.append(["failed", r.error])
        return s
    s.rows += [
        ["events/s (first send to last POST)", f"{r.rate:.1f}"],
        [f"latency ms p50 / p95 / p99, paced at {r.paced_rate:.0f} events/s", ms(r.paced_latency)],
        ["latency ms p50 / p95 / p99, saturated (about window / rate: queueing)", ms(r.latency)],
        ["CPU ms per event: ingest", per_event(r, "ingest")],
        ["CPU ms per event: workers (main + pool processes)", per_event(r, "workers")],
        ["CPU ms per event: moto (emulator) / redis-server", f"{per_event(r, 'moto')} / {per_event(r, 'redis')}"],
        ["CPU ms per event: this script (feeder, ninkik stand-in)", per_event(r, "bench")],
        ["machine CPU busy, all cores (of which processes not ours)", f"{r.busy:.0%} ({r.others:.0%})"],
        ["retries / failures / POSTs not answered 201 (duplicates)", r.anomalies],
        ["peak RSS MiB: ingest", mib(r.rss.get("ingest"))],
        [
            "peak RSS MiB: worker main process / largest pool process",
            f"{mib(r.rss.get('worker'))} / {mib(r.rss.get('pool'))}",
        ],
        ["peak RSS MiB: moto / redis-server", f"{mib(r.rss.get('moto'))} / {mib(r.rss.get('redis'))}"],
    ]
    s.notes.append("Latency: from the bench's SendMessageBatch call to the stand-in receiving the POST.")
    return s


def pools(pairs: list[tuple[Result, Result]], delay_ms: float) -> Section:
    s = Section(
        f"2. Latency-bound: {delay_ms:.0f} ms added to every AWS call (proxy in front of moto) and every POST",
        [
            "pool",
            "events/s at 0 ms",
            f"events/s at {delay_ms:.0f} ms",
            "kept",
            "worker CPU ms/event",
            "machine CPU busy (not ours)",
            "peak RSS MiB main / pool process",
            "retries / failures / non-201",
        ],
    )
    for zero, slow in pairs:
        if zero.error or slow.error:
            s.rows.append([zero.setup.label, zero.error or f"{zero.rate:.1f}", slow.error or f"{slow.rate:.1f}"])
            continue
        s.rows.append(
            [
                zero.setup.label,
                f"{zero.rate:.1f}",
                f"{slow.rate:.1f}",
                f"{slow.rate / zero.rate:.0%}" if zero.rate else "-",
                f"{per_event(zero, 'workers')} / {per_event(slow, 'workers')}",
                f"{zero.busy:.0%} ({zero.others:.0%}) / {slow.busy:.0%} ({slow.others:.0%})",
                f"{mib(slow.rss.get('worker'))} / {mib(slow.rss.get('pool'))}",
                f"{zero.anomalies}, {slow.anomalies}",
            ]
        )
    s.notes.append(
        "Both columns go through the same proxy (0 ms and the delay), so the ratio is the delay's effect alone; "
        "the tenant lookup (GET, cached in Redis) and Redis itself are not delayed. "
        "Where a cell has two figures, the first is at 0 ms, the second with the delay."
    )
    if importlib.util.find_spec("gevent") is None:
        s.notes.append("gevent is not installed, so it was not measured (not added as a dependency).")
    return s


def scaling(results: list[Result], delay_ms: float) -> Section:
    s = Section(
        f"3. Scaling: worker processes, {delay_ms:.0f} ms added per call",
        [
            "worker processes",
            "pool",
            "events/s",
            "x one worker",
            "worker CPU ms/event",
            "machine CPU busy (not ours)",
            "retries / failures / non-201",
        ],
    )
    base = next((r.rate for r in results if not r.error), 0.0)
    for r in results:
        if r.error:
            s.rows.append([str(r.setup.workers), r.setup.label, r.error, "", ""])
            continue
        s.rows.append(
            [
                str(r.setup.workers),
                f"{r.setup.pool} x{r.setup.concurrency}",
                f"{r.rate:.1f}",
                f"{r.rate / base:.2f}" if base else "-",
                per_event(r, "workers"),
                f"{r.busy:.0%} ({r.others:.0%})",
                r.anomalies,
            ]
        )
    return s


def show(console: Console, sections: list[Section]) -> None:
    for s in sections:
        table = Table(title=s.title, title_justify="left", caption="\n".join(s.notes), caption_justify="left")
        for c in s.columns:
            table.add_column(c, overflow="fold")
        for row in s.rows:
            table.add_row(*row)
        console.print(table)


def markdown(sections: list[Section]) -> str:
    out: list[str] = []
    for s in sections:
        out += [f"### {s.title}", "", "| " + " | ".join(s.columns) + " |", "|" + "---|" * len(s.columns)]
        out += ["| " + " | ".join(row + [""] * (len(s.columns) - len(row))) + " |" for row in s.rows]
        out += [""] + [f"{note}" for note in s.notes] + ([""] if s.notes else [])
    return "\n".join(out)


def machine() -> str:
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    redis_version = subprocess.run([local.redis_server_binary(), "--version"], capture_output=True, text=True).stdout
    redis_v = re.search(r"v=(\S+)", redis_version)
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("celery", "kombu", "moto", "boto3", "redis")
    )
    return (
        f"{cores} cores ({model.group(1).strip() if model else 'unknown CPU'}), Python {platform.python_version()}, "
        f"{versions}, redis-server {redis_v.group(1) if redis_v else '?'}"
    )


def write_results(sections: list[Section], header: str, extra: list[str]) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nNewest sections last.\n"
    RESULTS.write_text(text.rstrip("\n") + "\n\n" + header + "\n\n" + markdown(sections) + "\n".join(extra) + "\n")


def entrypoint_defaults() -> tuple[str, int]:
    """The worker pool and concurrency workers/entrypoint.sh uses when nothing is set."""
    text = ENTRYPOINT.read_text()
    pool = re.search(r"NINKIK_WORKER_POOL:-([a-z]+)", text)
    concurrency = re.search(r"NINKIK_WORKER_CONCURRENCY:-(\d+)", text)
    return (pool.group(1) if pool else "prefork"), int(concurrency.group(1)) if concurrency else 8


def parse_pools(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        pool, _, concurrency = item.strip().partition(":")
        out.append((pool, int(concurrency)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300, help="events counted in each run")
    parser.add_argument("--warmup", type=int, default=20, help="events sent first in each run, not counted")
    parser.add_argument("--paced", type=int, default=100, help="events sent at half rate for latency (scenario 1)")
    parser.add_argument("--delay-ms", type=float, default=30.0, help="added to every AWS call and POST (2 and 3)")
    parser.add_argument("--window", type=int, default=60, help="most events sent and not yet notified")
    parser.add_argument(
        "--pools",
        default="prefork:2,prefork:8,threads:16" + (",gevent:64" if importlib.util.find_spec("gevent") else ""),
        help="pool:concurrency pairs compared in scenario 2",
    )
    parser.add_argument("--scale", default="1,2,4", help="worker process counts in scenario 3")
    parser.add_argument("--scenarios", default="1,2,3", help="which scenarios to run")
    parser.add_argument("--stall", type=float, default=60.0, help="give a run up after this long without progress")
    parser.add_argument("--work", default=None, help="directory for logs (default: a new temporary one)")
    parser.add_argument("--no-write", action="store_true", help=f"do not append to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    scenarios = set(args.scenarios.split(","))
    delay = args.delay_ms / 1000
    console = Console() if sys.stdout.isatty() else Console(width=150)
    # Ctrl-C and SIGTERM unwind through every run's ExitStack, which stops what the run started.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`&`)
    began = time.monotonic()
    sections: list[Section] = []
    summary: list[str] = []

    def attempt(setup: Setup) -> Result:
        try:
            return run(setup, args, console)
        except (RunFailed, TimeoutError) as exc:
            console.log(f"[red]{setup.label} failed[/]: {str(exc)[:2000]}")
            return Result(setup, error=str(exc).splitlines()[0][:120])

    try:
        if "1" in scenarios:
            pool, concurrency = entrypoint_defaults()
            sections.append(end_to_end(attempt(Setup(pool, concurrency, paced=args.paced))))
        winner: Result | None = None
        if "2" in scenarios:
            pairs = []
            for pool, concurrency in parse_pools(args.pools):
                zero = attempt(Setup(pool, concurrency, proxy=True))
                slow = attempt(Setup(pool, concurrency, delay=delay, proxy=True))
                pairs.append((zero, slow))
                if not slow.error and (winner is None or slow.rate > winner.rate):
                    winner = slow
            sections.append(pools(pairs, args.delay_ms))
            if winner:
                summary.append(f"Best with {args.delay_ms:.0f} ms per call: {winner.setup.label}.")
        if "3" in scenarios:
            pool, concurrency = (winner.setup.pool, winner.setup.concurrency) if winner else entrypoint_defaults()
            runs = [
                attempt(Setup(pool, concurrency, workers=int(n), delay=delay, proxy=True))
                for n in args.scale.split(",")
            ]
            sections.append(scaling(runs, args.delay_ms))
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: every process started was stopped")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stop_leftovers()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    not_done = (
        "Not done in this slice (issue 6): a fast bench-only ECR/SQS stand-in (every figure here is moto's, "
        "which is slow and shares the 2 cores), the no-Celery floor, ingest alone, and profiling."
    )
    elapsed = time.monotonic() - began
    sections[-1].notes += [*summary, not_done]
    show(console, sections)
    command = shlex.join(sys.orig_argv)
    console.print(f"{elapsed:.0f} s in all; command: {command}")
    if not args.no_write:
        header = (
            f"## Pipeline, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"Machine: {machine()}.\n\nCommand: `{command}` ({elapsed / 60:.1f} min; "
            f"{args.events} events per run after {args.warmup} not counted, window {args.window})."
        )
        write_results(sections, header, [])
        console.print(f"appended to {RESULTS}")
    return 0


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM: stop like Ctrl-C."""
    raise KeyboardInterrupt


def stop_leftovers() -> None:
    """Kill any child process a failed start-up left behind (ours only, by pid)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


if __name__ == "__main__":
    sys.exit(main())
