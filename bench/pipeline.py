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
calls/s on 2 cores and shares them with everything else here. One run's machinery is in pipeline_run.py;
this file holds the scenarios and the tables, printed and appended to bench/RESULTS.md.

    .venv/bin/python bench/pipeline.py [--events 300] [--delay-ms 30]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from pipeline_run import Load, Result, RunFailed, Setup, pct, run
from rich.console import Console
from rich.table import Table

from ninkik_tasks import local

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"
EMULATOR = "moto 5.2.5 server (slow: ~200-300 ECR calls/s here)"
MIB = 1024 * 1024


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
        ["memory MiB of all worker processes together (PSS, after the run)", mib(r.worker_pss)],
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
            "worker memory MiB (PSS, all)",
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
                mib(slow.worker_pss),
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
            "worker memory MiB (PSS, all)",
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
                mib(r.worker_pss),
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
    packages = {"celery": "celery", "kombu": "kombu", "moto": "moto", "boto3": "boto3", "redis-py": "redis"}
    versions = ", ".join(f"{label} {importlib.metadata.version(name)}" for label, name in packages.items())
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
    load = Load(args.events, args.warmup, args.window, args.stall, Path(args.work) if args.work else None)
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
            return run(setup, load, console.log)
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
