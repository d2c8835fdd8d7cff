"""Scan lag: how long after a scan finishes its findings reach ninkik, and how many ECR reads that costs.

    .venv/bin/python bench/scan_lag.py                     # durations, then 10, 100 and 1,000 waiting images
    .venv/bin/python bench/scan_lag.py --quick --no-write  # shorter scans, for trying it out
    .venv/bin/python bench/scan_lag.py --no-durations --counts 100,1000 --scan-events  # with the second rule
    .venv/bin/python bench/scan_lag.py --no-durations --counts 1000 --late-after 60  # new pushes during a burst

Each run starts redis-server, bench/fast_aws.py (canned SQS and ECR answers; a scan answers IN_PROGRESS
until the time the bench gave it), the ninkik stand-in in this process, one `ninkik-tasks ingest` and one
`celery -A ninkik_tasks worker` (the pool and concurrency of workers/entrypoint.sh), with the default
scan poll (NINKIK_SCAN_POLL_SECONDS=5) and ECR budget (NINKIK_ECR_CALLS_PER_SECOND=20). It sends one push
event per image, makes each image's scan finish at its own time after the event, and measures:
- lag: the POST's arrival at the stand-in minus the moment the scan finished (scans that outlast
  NINKIK_SCAN_WAIT_SECONDS are reported NOT_SCANNED and counted apart);
- ECR calls per image by API, and status reads per 5 s of scanning;
- the most ECR calls in any one-second window, against the limit: as the limiter let them go (its log of
  departures in Redis, by Redis's clock, read every 0.2 s) and as they arrived at the emulator;
- the worker's threads and peak RSS (its process tree) while the waits run;
- on stderr: DescribeImages' images per call, when the new pushes were described and first read, and which ECR
  calls went out while they waited.
With `--scan-events` the bench also sends each image's "ECR Image Scan" event (docs/operations.md's second
rule) the moment its scan finishes, as EventBridge would, and before the pushes one scan event of an image
nobody waits for, as a rule that has been working leaves ingest having seen one lately: waits are then read
at the safety-net pace (NINKIK_SCAN_SAFETY_POLL_SECONDS, docs/pipeline.md). Figures go to bench/RESULTS.md
(`--no-write` skips that).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402
from pipeline import entrypoint_defaults, machine  # noqa: E402
from pipeline_run import PRODUCTS, TENANT, TENANTS, bench_env, start_emulator  # noqa: E402

from ninkik_tasks import local  # noqa: E402
from ninkik_tasks.config import Settings  # noqa: E402
from ninkik_tasks.local.standin import Received, Standin  # noqa: E402
from ninkik_tasks.ratelimit import GUARD_SECONDS, departures_key  # noqa: E402
from ninkik_tasks.scanwait import seen_key  # noqa: E402
from ninkik_tasks.stages import ecr_limit_key  # noqa: E402

POLL = 5.0
LIMIT = 20


@dataclass
class Run:
    """One run's images (digest -> scan seconds after its event) and what came of them."""

    name: str
    scans: dict[str, float]
    wait: int
    late: dict[str, float] = field(default_factory=dict)  # digest -> seconds after the others its event is sent
    scan_events: bool = False  # each scan's "ECR Image Scan" event on the queue as it finishes
    sent_at: float = 0.0
    received: dict[str, Received] = field(default_factory=dict)
    calls: list[tuple[float, str, str]] = field(default_factory=list)  # as they arrived at the emulator
    describes: list[tuple[float, list[str]]] = field(default_factory=list)  # each DescribeImages: when, which images
    departures: list[float] = field(default_factory=list)  # as the limiter let them go, Redis's clock
    threads: int = 0
    rss_mib: float = 0.0

    def finished(self, digest: str) -> float:
        """When the image's scan finished."""
        return self.sent_at + self.late.get(digest, 0.0) + self.scans[digest]

    def lags(self, digests: list[str]) -> list[float]:
        """Seconds from each scan's end to its report."""
        return sorted(self.received[d].at - self.finished(d) for d in digests if d in self.received)

    def detail(self) -> str:
        """DescribeImages' batch sizes, and when the new pushes were described and first read (after their event)."""
        sizes = Counter(len(d) for _, d in self.describes)
        described = [min(t for t, ds in self.describes if d in ds) - self.sent_at - s for d, s in self.late.items()]
        read = [
            min(t for t, a, dd in self.calls if dd == d and a == "DescribeImageScanFindings") - self.sent_at - s
            for d, s in self.late.items()
        ]
        # What the ECR budget carried while the new pushes waited: first reads, reads again, DescribeImages.
        begin = self.sent_at + min(self.late.values(), default=0.0)
        end = begin + max(read, default=0.0)
        firsts: dict[str, float] = {}
        for t, a, d in sorted(self.calls):
            if a == "DescribeImageScanFindings":
                firsts.setdefault(d, t)
        burst_read = max((t for d, t in firsts.items() if d not in self.late), default=self.sent_at) - self.sent_at
        meanwhile = Counter(
            "first reads" if a == "DescribeImageScanFindings" and firsts[d] == t else a
            for t, a, d in self.calls
            if begin <= t < end
        )
        return (
            f"{self.name}: {len(self.describes)} DescribeImages, images per call {dict(sorted(sizes.items()))}; "
            f"new pushes described {min(described, default=0):.1f}-{max(described, default=0):.1f} s and first "
            f"read {min(read, default=0):.1f}-{max(read, default=0):.1f} s after their event; ECR calls meanwhile "
            f"({end - begin:.0f} s): {dict(meanwhile)}; the burst's last first read {burst_read:.0f} s after it"
        )

    def row(self) -> list[str]:
        done = [d for d, s in self.scans.items() if s < self.wait - 60 and d not in self.late]
        lags = self.lags(done)
        new = self.lags(list(self.late))
        first_reads = sorted(
            min(t for t, a, dd in self.calls if dd == d and a == "DescribeImageScanFindings")
            - (self.sent_at + self.late[d])
            for d in self.late
        )
        late = [d for d, s in self.scans.items() if s >= self.wait]
        not_scanned = sum(1 for d in late if self.received[d].body["scan"]["status"] == "NOT_SCANNED")
        by_api = Counter(action for _, action, digest in self.calls if digest in self.scans)
        reads = [
            sum(1 for _, a, d in self.calls if d == digest and a == "DescribeImageScanFindings") for digest in done
        ]
        per_5s = sum(reads) / max(1.0, sum(self.scans[d] for d in done) / POLL)
        arrivals = [t for t, _, _ in self.calls]
        missed = len(arrivals) - len(self.departures)
        seen = f"; {len(self.departures)} departures seen of {len(arrivals)} calls" if missed else ""
        return [
            self.name,
            str(len(self.scans)),
            f"{pct(lags, 50):.1f} / {pct(lags, 95):.1f} / {max(lags, default=0):.1f}",
            f"{max(first_reads):.1f} / {max(new):.1f}" if self.late else "",
            f"{not_scanned} of {len(late)}",
            ", ".join(f"{api} {per_image(n, len(self.scans))}" for api, n in sorted(by_api.items())),
            f"{per_5s:.2f}",
            f"{peak_per_second(self.departures, 1)} / {peak_per_second(arrivals, 1)}; "
            f"{peak_per_second(arrivals, 5) / 5:.1f} (limit {LIMIT}){seen}",
            str(self.threads),
            f"{self.rss_mib:.0f}",
        ]


COLUMNS = [
    "run",
    "images",
    "lag after scan p50 / p95 / max (s)",
    "10 new pushes among the waits: first read / lag, max (s)",
    "NOT_SCANNED when the wait ran out",
    "ECR calls per image",
    "status reads per 5 s of scanning",
    "peak ECR calls in 1 s, sent / arrived; per s over 5 s",
    "worker threads",
    "worker RSS MiB",
]


def per_image(calls: int, images: int) -> str:
    """Calls per image: one decimal, three below 0.1 (DescribeImages, one call for many images)."""
    value = calls / images
    return f"{value:.1f}" if value >= 0.1 else f"{value:.3f}"


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def peak_per_second(times: list[float], window: float) -> int:
    """The most calls in any `window` seconds."""
    times = sorted(times)
    peak = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


class Departures:
    """The limiter's departures, as its log in Redis holds them: each stays there a window (1.1 s) after it
    left, so reading the log every 0.2 s sees them all."""

    def __init__(self, client: redis.Redis) -> None:
        # The departures' log of the emulator region's ECR limiter (bench_env leaves the namespace its default).
        namespace = Settings.model_fields["redis_namespace"].default
        self.key = departures_key(ecr_limit_key(namespace, local.ACCOUNT, local.REGION))
        self.client, self.seen = client, dict[bytes, float]()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while not self.stopping.wait(0.2):
            self._read_once()

    def _read_once(self) -> None:
        for member, score in self.client.zrange(self.key, 0, -1, withscores=True):
            self.seen[member] = score / 1e6

    def start(self) -> Departures:
        self.thread.start()
        return self

    def stop(self) -> list[float]:
        self.stopping.set()
        self.thread.join(5)
        self._read_once()
        return sorted(self.seen.values())


def execute(run: Run, work: Path, log: Any) -> Run:
    """Start the processes, send the events, wait for every report, stop everything."""
    work.mkdir(parents=True, exist_ok=True)
    procs: list[local.Proc] = []
    arrived = threading.Event()

    def on_receive(r: Received) -> None:
        run.received.setdefault(r.body["image"]["digest"], r)
        if len(run.received) == len(run.scans):
            arrived.set()

    token = secrets.token_urlsafe(16)
    standin = Standin(TENANTS, token, on_receive=on_receive).start()
    try:
        redis_proc, redis_url = local.start_redis(work)
        procs.append(redis_proc)
        aws_proc, aws_url = start_emulator("fast", work)
        procs.append(aws_proc)
        departures = Departures(redis.Redis.from_url(f"{redis_url}/2")).start()
        sqs = boto3.session.Session(
            aws_access_key_id="x", aws_secret_access_key="x", region_name=local.REGION
        ).client("sqs", endpoint_url=aws_url)
        queue_url = sqs.create_queue(QueueName=f"scan-lag-{run.name}")["QueueUrl"]
        pool, concurrency = entrypoint_defaults()
        env = bench_env(
            aws_url,
            redis_url,
            queue_url,
            NINKIK_API_URL=standin.url,
            NINKIK_API_TOKEN=token,
            # fast_aws says every image was pushed 60 s before DescribeImages: the wait is counted from there.
            NINKIK_SCAN_WAIT_SECONDS=str(run.wait + 60),
            NINKIK_LOG_LEVEL="WARNING",
            NINKIK_SCAN_FIRST_READ_SECONDS="5",  # the default, which bench_env turns off for bench/pipeline.py
        )
        celery = [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "worker", "--loglevel", "WARNING"]
        worker = local.Proc("worker", [*celery, "--pool", pool, "--concurrency", str(concurrency)], work, env)
        procs.append(worker)
        procs.append(local.Proc("ingest", [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], work, env))
        time.sleep(3)  # let the worker connect before the clock starts (a bench, not a test)
        if run.scan_events:
            # The second rule has been working: ingest saw a scan event of this account and region lately.
            nobody = f"sha256:{uuid.uuid4().hex * 2}"
            send(sqs, queue_url, [nobody], {nobody: f"{TENANT}/{PRODUCTS[0]}"}, local.scan_event)
            records = redis.Redis.from_url(f"{redis_url}/2")
            namespace = Settings.model_fields["redis_namespace"].default
            seen = seen_key(namespace, local.ACCOUNT, local.REGION)
            local.wait_for(lambda: records.hget(seen, "image_scan"), 30, "ingest to see a scan event")
        digests = list(run.scans)
        repositories = {d: f"{TENANT}/{PRODUCTS[i % len(PRODUCTS)]}" for i, d in enumerate(digests)}
        run.sent_at = time.time()
        httpx.post(f"{aws_url}/_scans", json={d: run.finished(d) for d in run.scans}).raise_for_status()
        send(sqs, queue_url, [d for d in digests if d not in run.late], repositories)
        if run.scan_events:
            threading.Thread(target=send_scan_events, args=(sqs, queue_url, run, repositories), daemon=True).start()
        if run.late:
            # New pushes while the others wait: the first reads must not queue behind the waits.
            time.sleep(max(0.0, run.sent_at + min(run.late.values()) - time.time()))
            send(sqs, queue_url, list(run.late), repositories)
        deadline = time.monotonic() + run.wait + 300
        while not arrived.wait(2):
            tree = [worker.popen.pid, *(c.pid for c in psutil.Process(worker.pid).children(recursive=True))]
            with_threads = [psutil.Process(p) for p in tree if psutil.pid_exists(p)]
            run.threads = max(run.threads, sum(p.num_threads() for p in with_threads))
            run.rss_mib = max(run.rss_mib, sum(p.memory_info().rss for p in with_threads) / 2**20)
            dead = [p.name for p in procs if not p.alive()]
            if dead or time.monotonic() > deadline:
                missing = f"{len(run.received)} of {len(digests)} reported"
                raise SystemExit(f"{run.name}: {dead or 'timed out'}; {missing}; logs in {work}")
            log(f"{run.name}: {len(run.received)} of {len(digests)} reported")
        answer = httpx.get(f"{aws_url}/_calls").json()
        run.calls = [tuple(c) for c in answer["calls"]]  # type: ignore[misc]
        run.describes = [(t, digests) for t, digests in answer["describes"]]
        log(run.detail())
        run.departures = departures.stop()
        return run
    finally:
        for proc in reversed(procs):
            proc.stop()
        standin.stop()


def send(
    sqs: Any,
    queue_url: str,
    digests: list[str],
    repositories: dict[str, str],
    event: Callable[[str, str], dict[str, Any]] | None = None,
) -> None:
    """One push event (or `event(repository, digest)`) per image, ten to a batch."""
    event = event or (lambda repository, digest: local.push_event(repository, digest, None))
    for start in range(0, len(digests), 10):
        entries = [
            {"Id": str(i), "MessageBody": json.dumps(event(repositories[d], d))}
            for i, d in enumerate(digests[start : start + 10])
        ]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def send_scan_events(sqs: Any, queue_url: str, run: Run, repositories: dict[str, str]) -> None:
    """Each image's "ECR Image Scan" event as its scan finishes (those due together in one batch)."""
    due = sorted(run.scans, key=run.finished)
    while due:
        time.sleep(max(0.0, run.finished(due[0]) - time.time()))
        ready = [d for d in due if run.finished(d) <= time.time()]
        due = due[len(ready) :]
        send(sqs, queue_url, ready, repositories, local.scan_event)


def durations(quick: bool) -> Run:
    """10 images with scans of 15 s to 10 min, two of them still running when the wait ends."""
    seconds = [15, 30, 60, 120, 180, 300, 420, 600] if not quick else [5, 10, 15, 20, 30, 40, 50, 60]
    wait = 660 if not quick else 90
    scans = {f"sha256:{uuid.uuid4().hex * 2}": float(s) for s in seconds}
    scans.update({f"sha256:{uuid.uuid4().hex * 2}": float(wait + 240) for _ in range(2)})
    return Run("scans of 15 s to 10 min" if not quick else "scans of 5-60 s", scans, wait)


def concurrent(count: int, quick: bool, scan_events: bool = False, late_after: float | None = None) -> Run:
    """`count` images waiting at once over 10 repositories, basic scans of 60-120 s."""
    low, high = (60, 120) if not quick else (20, 40)
    scans = {f"sha256:{uuid.uuid4().hex * 2}": random.uniform(low, high) for _ in range(count)}
    # Pushed while the others wait, after their own first reads: a DescribeImages and a first scan read each
    # (1,000 of them take 110 s of a 20 calls/s budget, which lets 18.2 a second leave: GUARD_SECONDS kept
    # for the way to AWS), so what the new pushes meet is the others' waits.
    rate = LIMIT / (1 + GUARD_SECONDS)
    # `late_after`: at a time of one's choosing instead, e.g. in the middle of the burst's first calls.
    after = late_after if late_after is not None else max(low + 5, 1.1 * count * 2 / rate)
    late = {f"sha256:{uuid.uuid4().hex * 2}": after for _ in range(10)}
    scans.update({digest: 10.0 for digest in late})
    name = f"{count} waiting at once" + (", scan events on the queue" if scan_events else "")
    name += f", new pushes at {late_after:.0f} s" if late_after is not None else ""
    return Run(name, scans, wait=900, late=late, scan_events=scan_events)


def markdown(runs: list[Run]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r.row()) + " |" for r in runs]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter scans and wait (about 5 minutes in all)")
    parser.add_argument("--counts", default="10,100,1000", help="waiting images of the concurrency runs")
    parser.add_argument("--no-durations", action="store_true", help="only the concurrency runs")
    parser.add_argument("--scan-events", action="store_true", help="send each scan's event as it finishes")
    parser.add_argument("--late-after", type=float, help="send the 10 new pushes this many seconds after the others")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ninkik-scan-lag-"))
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    plans = [] if args.no_durations else [durations(args.quick)]
    plans += [concurrent(int(c), args.quick, args.scan_events, args.late_after) for c in args.counts.split(",") if c]
    runs = [execute(plan, work / plan.name.replace(" ", "-").replace(",", ""), log) for plan in plans]
    table = markdown(runs)
    print(table)
    if not args.no_write:
        header = (
            f"## Scan lag ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
            f"`{' '.join(['.venv/bin/python', *sys.argv])}` on {machine()}; poll {POLL:.0f} s, "
            f"ECR budget {LIMIT} calls/s, one worker as workers/entrypoint.sh runs it, bench/fast_aws.py."
        )
        figures = []
        for run in runs:
            cells = dict(zip(COLUMNS, run.row(), strict=True))
            new = cells[COLUMNS[3]]
            figures.append(
                (
                    f"Scan lag: {run.name} ({len(run.scans)} images)",
                    f"lag after scan p50 / p95 / max {cells[COLUMNS[2]]} s"
                    + (f"; new pushes' first read / lag, max {new} s" if new else "")
                    + f"; {cells[COLUMNS[6]]} status reads per 5 s of scanning",
                )
            )
        results.record(figures, " ".join([".venv/bin/python", *sys.argv]), header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
