"""One run of bench/pipeline.py: its own processes, the events fed in, what they cost, everything stopped.

A run starts redis-server, moto's server, the ninkik stand-in (in this process), optionally
bench/delay_proxy.py in front of moto, `ninkik-tasks ingest` and one or more `celery -A ninkik_tasks
worker` processes; puts the images in the emulated ECR; sends their push events to SQS; and times each
POST the stand-in receives. CPU times and peak RSS are read with psutil, per process, by role.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil
import redis
from celery import Celery

from ninkik_tasks import local
from ninkik_tasks.local.standin import Received, Standin

PROXY = Path(__file__).resolve().parent / "delay_proxy.py"
FAST_AWS = Path(__file__).resolve().parent / "fast_aws.py"
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
QUEUES = "ninkik-aws,ninkik-api,ninkik-control"
TENANT = "7d3c2b1a-0f9e-4d8c-8b7a-6f5e4d3c2b1a"
PRODUCTS = [f"product-{i}" for i in range(10)]
TENANTS = [{"uuid": TENANT, "name": "Bench", "products": [{"uuid": str(uuid.uuid4()), "name": p} for p in PRODUCTS]}]


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
    emulator: str = "moto"  # or "fast": bench/fast_aws.py, canned answers, for our own cost
    broker: str = "redis"  # or "rabbitmq": a rabbitmq-server node of the run's own (Redis keeps results)

    @property
    def label(self) -> str:
        """e.g. `prefork x8`, `2 x threads x16`."""
        workers = f"{self.workers} x " if self.workers > 1 else ""
        broker = " on RabbitMQ" if self.broker == "rabbitmq" else ""
        return f"{workers}{self.pool} x{self.concurrency}{broker}"


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
    worker_pss: float = 0.0  # bytes, all worker processes, at the end of the measured phase
    worker_main_cpu: float = 0.0  # CPU seconds of the first worker's main thread (threads pool: its event loop)
    redis_commands: dict[str, int] = field(default_factory=dict)  # command -> calls in the measured phase
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


@dataclass(frozen=True)
class Load:
    """How many events a run sends, and how."""

    events: int  # counted
    warmup: int  # sent first, not counted: client creation, tenant lookup, first imports
    window: int  # most events sent and not yet notified (keeps the SQS queue shallow)
    stall: float  # seconds without a notification before the run is given up
    work: Path | None = None  # where each run's logs go (a new temporary directory by default)
    profile: Path | None = None  # py-spy profiles of ingest and the worker in scenario 4a's measured phase


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
                    if role == "broker":  # rabbitmq-server's Erlang VM and its port helpers
                        yield from (("broker", child) for child in main.children(recursive=True))
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

    def worker_pss(self) -> float:
        """Proportional set size of all worker processes together: their memory, shared pages counted once."""
        total = 0.0
        for role, proc in self.processes():
            if role in ("worker", "pool"):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    total += proc.memory_full_info().pss
        return total

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


def main_thread_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process's main thread: a threads-pool worker's event loop (receiving, acks, flushing task
    events), where its other threads run the tasks (bench/celery_floor.py measures Celery alone's the same way)."""
    return next((t.user_time + t.system_time for t in proc.threads() if t.id == proc.pid), 0.0)


def redis_calls(server: redis.Redis) -> Counter[str]:
    """Calls of each command redis-server has answered so far (INFO commandstats), all clients and databases."""
    stats = server.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def busy(before: Any, after: Any) -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine, all cores, between two psutil.cpu_times() readings."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (after.iowait - before.iowait)
    return total - idle, total


# One run
def run(setup: Setup, load: Load, log: Callable[[str], None]) -> Result:
    """Start everything for `setup`, feed the events, measure, stop everything."""
    result = Result(setup)
    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-", dir=load.work))
    result.logs = work
    arrivals = Arrivals()
    with contextlib.ExitStack() as stack:
        redis_proc, redis_url = local.start_redis(work)
        stack.callback(redis_proc.stop)
        rabbit = local.start_rabbitmq(work) if setup.broker == "rabbitmq" else None
        if rabbit is not None:
            stack.callback(rabbit.remove)
        emulator_proc, emulator_url = start_emulator(setup.emulator, work)
        stack.callback(emulator_proc.stop)
        token = secrets.token_urlsafe(16)
        standin = Standin(TENANTS, token, on_receive=arrivals.on_receive).start()
        stack.callback(standin.stop)
        if setup.delay:
            standin.answer_next(0, times=10**7, delay=setup.delay)  # status 0: answer normally, after the delay
        aws_url = emulator_url
        if setup.proxy:
            port = local.free_port()
            proxy_args = [sys.executable, str(PROXY), "--target", emulator_url, "--port", str(port)]
            proxy = local.Proc("proxy", [*proxy_args, "--delay", str(setup.delay)], work)
            stack.callback(proxy.stop)
            aws_url = f"http://127.0.0.1:{port}"
            local.wait_for(lambda: httpx.get(f"{aws_url}/moto-api/").status_code < 500, 30, "the delay proxy")

        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=local.REGION
        )
        # The bench plays ECR and EventBridge: it talks to moto directly, never through the proxy.
        ecr = session.client("ecr", endpoint_url=emulator_url)
        sqs = session.client("sqs", endpoint_url=emulator_url)
        queue_url = sqs.create_queue(QueueName="ecr-docker-push", Attributes={"MessageRetentionPeriod": "60"})[
            "QueueUrl"
        ]
        count = load.warmup + load.events + setup.paced
        images = seed(ecr, count) if setup.emulator == "moto" else canned_images(count)
        env = bench_env(
            aws_url,
            redis_url,
            queue_url,
            NINKIK_API_URL=standin.url,
            NINKIK_API_TOKEN=token,
            # Measure what the workers can do, not the shared ECR limit (when there is one, it caps the
            # whole cluster at that many calls per second whatever the workers).
            NINKIK_ECR_CALLS_PER_SECOND="0",
            **({"NINKIK_BROKER_URL": rabbit.url} if rabbit is not None else {}),
        )
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
            "emulator": [emulator_proc.pid],
            "redis": [redis_proc.pid],
            "broker": [rabbit.proc.pid] if rabbit is not None and rabbit.proc is not None else [],
            "bench": [os.getpid(), *([proxy.pid] if setup.proxy else [])],  # feeder, stand-in, proxy
        }
        with Watch(roles) as watch:
            warmup, measured, paced = (
                images[: load.warmup],
                images[load.warmup : load.warmup + load.events],
                images[load.warmup + load.events :],
            )
            feed(sqs, queue_url, warmup, arrivals, load.window, procs, load.stall)
            spying = contextlib.ExitStack()
            if load.profile is not None and setup.emulator == "fast":
                spying.enter_context(profiled(load.profile, {"ingest": ingest.pid, "worker": workers[0].pid}))
            server = redis.Redis.from_url(redis_url)
            main = psutil.Process(workers[0].pid)
            before, machine_before, calls = watch.cpu(), psutil.cpu_times(), redis_calls(server)
            main_before = main_thread_cpu(main)
            with spying:
                first, last = feed(sqs, queue_url, measured, arrivals, load.window, procs, load.stall)
            result.worker_main_cpu = main_thread_cpu(main) - main_before
            result.cpu = cpu_used(before, watch.cpu())
            result.redis_commands = (redis_calls(server) - calls) + Counter()  # the info command's own call: 1
            result.worker_pss = watch.worker_pss()
            busy_seconds, all_seconds = busy(machine_before, psutil.cpu_times())
            ours = sum(v for role, v in result.cpu.items() if role != "workers")  # "workers" = worker + pool
            result.busy = busy_seconds / all_seconds
            result.others = max(0.0, busy_seconds - ours) / all_seconds
            result.events, result.seconds = len(measured), last - first
            result.latency = arrivals.latencies([d for _, d in measured])
            if paced:
                result.paced_rate = max(1.0, result.rate / 2)
                feed_paced(sqs, queue_url, paced, arrivals, result.paced_rate, procs, load.stall)
                result.paced_latency = arrivals.latencies([d for _, d in paced])
        result.rss = dict(watch.peak)
        stats = redis.Redis.from_url(f"{redis_url}/2", decode_responses=True).hgetall("ninkik:stats")
        result.retries = sum(int(v) for k, v in stats.items() if k.startswith("retry:"))
        result.failures = sum(int(v) for k, v in stats.items() if k.startswith("failure:"))
        result.repeated_posts = sum(1 for status, _ in standin.attempts if status != 201)
        log(
            f"{setup.label:<22} delay {setup.delay * 1000:>3.0f} ms{' (proxy)' if setup.proxy else '        '}  "
            f"{result.rate:7.1f} events/s  p50 {pct(result.latency, 50) * 1000:6.0f} ms"
        )
    return result


@contextlib.contextmanager
def profiled(directory: Path, pids: dict[str, int]) -> Iterator[None]:
    """py-spy records each process (name -> pid) into DIRECTORY/<name>.txt (collapsed stacks) until the block ends.

    Only samples holding the GIL: CPU time, not waits. The figures of a profiled run are not comparable with
    others': py-spy pauses the process at each sample.
    """
    directory.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [PY_SPY, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--function", "--gil"]
            + ["--output", str(directory / f"{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name, pid in pids.items()
    ]
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        for spy in spies:
            spy.wait(30)


def bench_env(aws_url: str, redis_url: str, queue_url: str, **extra: str) -> dict[str, str]:
    """The environment of the ingest and worker processes a run starts."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NINKIK_", "AWS_"))},
        **local.aws_env(aws_url),
        **local.stack_env(redis_url, queue_url),
        "NINKIK_METRICS_PORT": "0",
        # The emulators' scans are done at the push: the chain's own cost, not the wait for a scan
        # (bench/scan_lag.py measures that with the defaults).
        "NINKIK_SCAN_FIRST_READ_SECONDS": "0",
        # The benchmark's images are untagged single images: the hold for an index that may list them
        # (NINKIK_UNTAGGED_HOLD_SECONDS) is not the chain's cost nor scan lag, and is counted apart.
        "NINKIK_UNTAGGED_HOLD_SECONDS": "0",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start_emulator(kind: str, work: Path, *extra: str) -> tuple[local.Proc, str]:
    """moto's server, or bench/fast_aws.py; the process and its URL."""
    if kind == "moto":
        return local.start_moto(work)
    port = local.free_port()
    proc = local.Proc("fast-aws", [sys.executable, str(FAST_AWS), "--port", str(port), *extra], work)
    url = f"http://127.0.0.1:{port}"
    local.wait_for(lambda: httpx.get(f"{url}/stats").status_code == 200, 30, "bench/fast_aws.py")
    return proc, url


def canned_images(count: int) -> list[tuple[str, str]]:
    """(repository, digest) for `count` images: bench/fast_aws.py knows every image without seeding."""
    return [(f"{TENANT}/{PRODUCTS[i % len(PRODUCTS)]}", f"sha256:{uuid.uuid4().hex * 2}") for i in range(count)]


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


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# Ingest alone: SQS receive -> chain queued in Redis, no workers
@dataclass
class IngestResult:
    messages: int
    deny_delete: bool
    seconds: float = 0.0
    cpu: float = 0.0  # ingest's CPU seconds from its first poll to the last chain queued
    rss: float = 0.0
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def ingest_alone(messages: int, deny_delete: bool, load: Load) -> IngestResult:
    """`messages` push events already in bench/fast_aws.py's queue; one ingest, no workers; time to queue them."""
    result = IngestResult(messages, deny_delete)
    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-ingest-", dir=load.work))
    with contextlib.ExitStack() as stack:
        redis_proc, redis_url = local.start_redis(work)
        stack.callback(redis_proc.stop)
        aws_proc, aws_url = start_emulator("fast", work, *(["--deny-delete"] if deny_delete else []))
        stack.callback(aws_proc.stop)
        session = boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name=local.REGION
        )
        sqs = session.client("sqs", endpoint_url=aws_url)
        queue_url = sqs.create_queue(QueueName="ecr-docker-push")["QueueUrl"]
        for start in range(0, messages, 10):
            batch = canned_images(min(10, messages - start))
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(local.push_event(repository, digest, None))}
                for i, (repository, digest) in enumerate(batch)
            ]
            sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        env = bench_env(aws_url, redis_url, queue_url)
        ingest = local.Proc("ingest", [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], work, env)
        stack.callback(ingest.stop)
        proc = psutil.Process(ingest.pid)
        broker = redis.Redis.from_url(f"{redis_url}/0")

        def queued() -> int:
            return sum(int(broker.llen(q)) for q in QUEUES.split(","))

        peak = 0.0
        try:
            local.wait_for(lambda: "polling" in ingest.output() or not ingest.alive(), 60, "ingest to poll")
            alive([ingest])
            t = proc.cpu_times()
            cpu_before = t.user + t.system
            deadline = time.monotonic() + load.stall
            while queued() < messages:
                peak = max(peak, float(proc.memory_info().rss))
                if time.monotonic() > deadline:
                    raise RunFailed(f"{queued()} of {messages} chains queued after {load.stall:.0f} s")
                alive([ingest])
                time.sleep(0.005)
            done = time.time()
            t = proc.cpu_times()
            result.cpu = t.user + t.system - cpu_before
            result.rss = max(peak, float(proc.memory_info().rss))
            first = httpx.get(f"{aws_url}/stats").json()["first_receive"]
            result.seconds = done - first
        except (RunFailed, TimeoutError) as exc:
            result.error = str(exc).splitlines()[0][:120]
    return result


# The floor: the same calls by a plain loop (bench/floor.py), on bench/fast_aws.py
@dataclass
class FloorResult:
    threads: int
    images: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # the loop's own process
    emulator_cpu: float = 0.0
    retries: int = 0  # POSTs sent again after a TransientError (as the chain would retry them)
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def floor(threads: int, count: int, load: Load, delay: float = 0.0) -> FloorResult:
    """`count` images through bench/floor.py, sequentially (threads=0) or with a thread pool."""
    result = FloorResult(threads)
    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-floor-", dir=load.work))
    with contextlib.ExitStack() as stack:
        aws_proc, aws_url = start_emulator("fast", work)
        stack.callback(aws_proc.stop)
        token = secrets.token_urlsafe(16)
        standin = Standin(TENANTS, token).start()
        stack.callback(standin.stop)
        (work / "tenants.json").write_text(json.dumps(TENANTS))
        (work / "images.json").write_text(json.dumps(canned_images(count + 1)))
        emulator = psutil.Process(aws_proc.pid)
        before = sum(emulator.cpu_times()[:2])
        args = [sys.executable, str(Path(__file__).resolve().parent / "floor.py"), "--aws-url", aws_url]
        args += ["--api-url", standin.url, f"--token={token}", "--threads", str(threads)]
        args += ["--tenants", str(work / "tenants.json"), "--images", str(work / "images.json")]
        done = subprocess.run(args, capture_output=True, text=True, timeout=load.stall * 10)
        if done.returncode:
            result.error = (done.stderr.strip().splitlines() or ["floor.py failed"])[-1][:120]
            return result
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        result.images, result.seconds, result.cpu = figures["images"], figures["seconds"], figures["cpu"]
        result.retries = figures.get("retries", 0)
        result.emulator_cpu = sum(emulator.cpu_times()[:2]) - before  # includes the warm-up image
        if len(standin.received) != count + 1:
            result.error = f"the stand-in received {len(standin.received)} of {count + 1} POSTs"
    return result


# Celery's own cost: four do-nothing tasks per chain (bench/celery_floor.py)
@dataclass
class CeleryFloorResult:
    pool: str
    concurrency: int
    chains: int = 0
    seconds: float = 0.0
    publish_cpu: float = 0.0  # the publisher's CPU seconds (what ingest pays to start the chains)
    worker_cpu: float = 0.0  # the worker's main and pool processes
    worker_main_cpu: float = 0.0  # of which the main thread's (threads pool: the event loop)
    redis_commands: int = 0  # commands redis-server answered (broker, results, events) while the chains ran
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.chains / self.seconds if self.seconds else 0.0

    @property
    def publish_per_chain(self) -> float:
        return self.publish_cpu / self.chains if self.chains else 0.0

    @property
    def cpu_per_chain(self) -> float:
        return (self.publish_cpu + self.worker_cpu) / self.chains if self.chains else 0.0


def celery_floor(pool: str, concurrency: int, chains: int, load: Load) -> CeleryFloorResult:
    """`chains` chains of four no-op tasks through one worker with `pool` x `concurrency`."""
    result = CeleryFloorResult(pool, concurrency)
    args = [sys.executable, str(Path(__file__).resolve().parent / "celery_floor.py"), "--pool", pool]
    args += ["--concurrency", str(concurrency), "--chains", str(chains), "--timeout", str(load.stall)]
    args += ["--work", str(load.work)] if load.work else []
    args += ["--profile", str(load.profile)] if load.profile else []
    done = subprocess.run(args, capture_output=True, text=True, timeout=load.stall * 3)
    if done.returncode:
        result.error = (done.stderr.strip().splitlines() or ["celery_floor.py failed"])[-1][:120]
        return result
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    result.chains, result.seconds = figures["chains"], figures["seconds"]
    result.publish_cpu, result.worker_cpu = figures["publish_cpu"], figures["worker_cpu"]
    result.worker_main_cpu = figures.get("worker_main_cpu", 0.0)
    result.redis_commands = figures["redis_commands"]
    return result
