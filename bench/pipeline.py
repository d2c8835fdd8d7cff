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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import profile_top
import psutil
import results
from pipeline_run import (
    CeleryFloorResult,
    FloorResult,
    IngestResult,
    Load,
    Result,
    RunFailed,
    Setup,
    celery_floor,
    floor,
    ingest_alone,
    pct,
    run,
)
from rich.console import Console
from rich.table import Table

from ninkik_tasks import local
from ninkik_tasks.console import console as make_console

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = results.RESULTS
ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"
EMULATOR = "moto 5.2.5 server (slow: ~200-300 ECR calls/s here)"
FAST = "bench/fast_aws.py (canned answers, real HTTP)"
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
    current: list[tuple[str, str]] = field(default_factory=list)  # (row, figure) for RESULTS.md's table of them


def end_to_end(r: Result, number: str = "1") -> Section:
    emulator = EMULATOR if r.setup.emulator == "moto" else FAST
    s = Section(
        f"{number}. End-to-end: {r.events} events, worker defaults ({r.setup.label}), AWS = {emulator}",
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
        ["CPU ms per event: emulator / redis-server", f"{per_event(r, 'emulator')} / {per_event(r, 'redis')}"],
        ["CPU ms per event: this script (feeder, ninkik stand-in)", per_event(r, "bench")],
        ["Redis commands per event (all clients: broker, results, records)", redis_per_event(r)],
        ["machine CPU busy, all cores (of which processes not ours)", f"{r.busy:.0%} ({r.others:.0%})"],
        ["retries / failures / POSTs not answered 201 (duplicates)", r.anomalies],
        ["peak RSS MiB: ingest", mib(r.rss.get("ingest"))],
        [
            "peak RSS MiB: worker main process / largest pool process",
            f"{mib(r.rss.get('worker'))} / {mib(r.rss.get('pool'))}",
        ],
        ["memory MiB of all worker processes together (PSS, after the run)", mib(r.worker_pss)],
        ["peak RSS MiB: emulator / redis-server", f"{mib(r.rss.get('emulator'))} / {mib(r.rss.get('redis'))}"],
    ]
    s.notes.append("Latency: from the bench's SendMessageBatch call to the stand-in receiving the POST.")
    where = f"{number}. End-to-end on {'moto' if r.setup.emulator == 'moto' else 'the fast stand-in'} ({r.setup.label})"
    s.current += [
        (f"{where}: events/s", f"{r.rate:.1f}"),
        (f"{where}: latency ms p50 / p95 / p99, paced", f"{ms(r.paced_latency)} at {r.paced_rate:.0f} events/s"),
        (
            f"{where}: CPU ms per event, ingest + workers",
            f"{ours(r) * 1000:.1f} ({per_event(r, 'ingest')} + {per_event(r, 'workers')})",
        ),
        (f"{where}: Redis commands per event", redis_per_event(r).split(" (")[0]),
    ]
    return s


def brokers_section(results: list[Result]) -> Section:
    """Scenario 7: the same run on the Redis broker and on RabbitMQ, side by side."""
    s = Section(
        f"7. Brokers side by side: {results[0].events} events, worker defaults, AWS = {EMULATOR}",
        ["figure", *("RabbitMQ 3.10 (quorum queues)" if r.setup.broker == "rabbitmq" else "Redis" for r in results)],
    )

    def row(name: str, value: Callable[[Result], str]) -> None:
        s.rows.append([name, *(r.error or value(r) if not r.error else r.error for r in results)])

    row("events/s (first send to last POST)", lambda r: f"{r.rate:.1f}")
    row("latency ms p50 / p95 / p99, paced", lambda r: f"{ms(r.paced_latency)} at {r.paced_rate:.0f}/s")
    row("latency ms p50 / p95 / p99, saturated", lambda r: ms(r.latency))
    row("CPU ms per event: ingest", lambda r: per_event(r, "ingest"))
    row("CPU ms per event: workers (main + pool processes)", lambda r: per_event(r, "workers"))
    row("CPU ms per event: redis-server", lambda r: per_event(r, "redis"))
    row("CPU ms per event: rabbitmq-server", lambda r: per_event(r, "broker") if r.setup.broker == "rabbitmq" else "-")
    row("machine CPU busy, all cores", lambda r: f"{r.busy:.0%}")
    row("retries / failures / POSTs not answered 201", lambda r: r.anomalies)
    row(
        "peak RSS MiB: rabbitmq-server / redis-server",
        lambda r: f"{mib(r.rss.get('broker'))} / {mib(r.rss.get('redis'))}",
    )
    row("memory MiB of all worker processes (PSS)", lambda r: mib(r.worker_pss))
    s.notes.append(
        "Same machine, same emulator, same worker; on RabbitMQ Redis still holds results, records and the limiter. "
        "RabbitMQ's figures include publisher confirms and quorum-queue writes to disk."
    )
    if not any(r.error for r in results):
        names = " / ".join(r.setup.broker for r in results)
        s.current += [
            (f"7. Brokers on moto, {names}: events/s", " / ".join(f"{r.rate:.1f}" for r in results)),
            (
                f"7. Brokers on moto, {names}: workers' CPU ms per event",
                " / ".join(per_event(r, "workers") for r in results),
            ),
        ]
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
        if zero.rate:
            s.current.append(
                (
                    f"2. {delay_ms:.0f} ms per call on moto, {zero.setup.label}: events/s at 0 / {delay_ms:.0f} ms",
                    f"{zero.rate:.1f} / {slow.rate:.1f} ({slow.rate / zero.rate:.0%} kept)",
                )
            )
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
    if results and not any(r.error for r in results):
        counts = " / ".join(str(r.setup.workers) for r in results)
        s.current.append(
            (
                f"3. Scaling on moto, {delay_ms:.0f} ms per call, {results[0].setup.pool} "
                f"x{results[0].setup.concurrency}: events/s with {counts} worker processes",
                " / ".join(f"{r.rate:.1f}" for r in results),
            )
        )
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


def redis_per_event(r: Result) -> str:
    """Commands per event, then the five most frequent, e.g. `61.2 (evalsha 9.0, ...)`."""
    if not r.events or not r.redis_commands:
        return "-"
    total = sum(r.redis_commands.values()) / r.events
    top = sorted(r.redis_commands.items(), key=lambda kv: -kv[1])[:6]
    return f"{total:.1f} (" + ", ".join(f"{name} {calls / r.events:.1f}" for name, calls in top) + ")"


def ours(r: Result) -> float:
    """CPU seconds per event of ingest and the workers together."""
    return (r.cpu.get("ingest", 0.0) + r.cpu.get("workers", 0.0)) / r.events if r.events else 0.0


def against_floor(r: Result, floors: list[FloorResult], celery: CeleryFloorResult | None = None) -> Section:
    s = Section(
        f"4. Against the floor: the same AWS calls and POSTs by a plain loop (bench/floor.py), AWS = {FAST}",
        [
            "run",
            "events/s",
            "CPU ms/event (ours)",
            "emulator CPU ms/event",
            "Redis commands/event",
            "throughput / threaded floor",
            "CPU / floor",
        ],
    )
    threaded = next((f for f in floors if f.threads and not f.error), None)
    for f in floors:
        label = f"floor, threads x{f.threads}" if f.threads else "floor, sequential"
        if f.error:
            s.rows.append([label, f.error])
            continue
        if f.retries:
            s.notes.append(f"{label}: {f.retries} POSTs sent again after a connection error (as the chain would).")
        s.current.append(
            (
                f"4. The {label} (fast stand-in): events/s, CPU ms per image",
                f"{f.rate:.1f}, {f.cpu / f.images * 1000:.2f}",
            )
        )
        s.rows.append(
            [
                label,
                f"{f.rate:.1f}",
                f"{f.cpu / f.images * 1000:.2f}",
                f"{f.emulator_cpu / f.images * 1000:.2f}",
                "",
                "",
                "",
            ]
        )
    base_rate = threaded.rate if threaded else 0.0
    base_cpu = threaded.cpu / threaded.images if threaded else 0.0
    if celery is not None:
        label = f"Celery alone: 4 no-op tasks, {celery.pool} x{celery.concurrency}"
        if celery.error:
            s.rows.append([label, celery.error])
        else:
            s.rows.append(
                [
                    label,
                    f"{celery.rate:.1f}",
                    f"{celery.cpu_per_chain * 1000:.2f}",
                    "-",
                    f"{celery.redis_commands / celery.chains:.1f}" if celery.chains else "-",
                    f"{celery.rate / base_rate:.0%}" if base_rate else "-",
                    f"{celery.cpu_per_chain / base_cpu:.1f}x" if base_cpu else "-",
                ]
            )
    if r.error:
        s.rows.append(["pipeline", r.error])
    else:
        s.rows.append(
            [
                f"pipeline: ingest + {r.setup.label}",
                f"{r.rate:.1f}",
                f"{ours(r) * 1000:.2f}",
                per_event(r, "emulator"),
                f"{sum(r.redis_commands.values()) / r.events:.1f}" if r.events and r.redis_commands else "-",
                f"{r.rate / base_rate:.0%}" if base_rate else "-",
                f"{ours(r) / base_cpu:.1f}x" if base_cpu else "-",
            ]
        )
    s.notes.append(
        "CPU (ours): the loop's own process for the floor; ingest plus all worker processes for the pipeline "
        "(redis-server, the emulator and the in-process ninkik stand-in are not counted in either)."
    )
    if celery is not None and not celery.error and celery.chains:
        s.notes.append(
            "Celery alone (bench/celery_floor.py): the chain's four tasks with the project's Celery settings, "
            "events on, tasks that do nothing; its CPU is the publisher's "
            f"({celery.publish_per_chain * 1000:.2f} ms per chain, what ingest pays to start one) "
            f"plus the worker's ({(celery.cpu_per_chain - celery.publish_per_chain) * 1000:.2f} ms). "
            "It is what four tasks per image cost before any work."
        )
        if r.worker_main_cpu and celery.worker_main_cpu and r.events:
            main, main_alone = r.worker_main_cpu / r.events * 1000, celery.worker_main_cpu / celery.chains * 1000
            workers = r.cpu.get("workers", 0.0) / r.events * 1000
            alone = celery.worker_cpu / celery.chains * 1000
            s.notes.append(
                f"Worker CPU ms per event, main thread (receiving, acks, flushing task events) + the others (the "
                f"tasks, publishing the next step): pipeline {main:.2f} + {workers - main:.2f}, Celery alone "
                f"{main_alone:.2f} + {alone - main_alone:.2f}."
            )
        publisher, worker = celery.publish_per_chain * 1000, (celery.cpu_per_chain - celery.publish_per_chain) * 1000
        s.current.append(
            (
                f"4. Celery alone (4 no-op tasks, {celery.pool} x{celery.concurrency}): events/s, CPU ms per chain",
                f"{celery.rate:.1f}, {publisher + worker:.2f} (publisher {publisher:.2f} + worker {worker:.2f})",
            )
        )
    return s


def ingest_section(results: list[IngestResult]) -> Section:
    s = Section(
        f"5. Ingest alone: SQS receive to chain queued in Redis, no workers, AWS = {FAST}",
        ["DeleteMessage", "messages", "messages/s", "CPU ms/message", "peak RSS MiB"],
    )
    for r in results:
        label = "denied (the guide's policy)" if r.deny_delete else "allowed"
        if r.error:
            s.rows.append([label, str(r.messages), r.error])
            continue
        s.rows.append([label, str(r.messages), f"{r.rate:.0f}", f"{r.cpu / r.messages * 1000:.2f}", mib(r.rss)])
    s.notes.append("From the first ReceiveMessage the stand-in answered to the last chain seen in Redis (5 ms polls).")
    if results and not any(r.error for r in results):
        s.current.append(
            (
                "5. Ingest alone on the fast stand-in: messages/s, DeleteMessage "
                + " / ".join("denied" if r.deny_delete else "allowed" for r in results),
                " / ".join(f"{r.rate:.0f}" for r in results),
            )
        )
    return s


def backfill_section(images: int) -> tuple[Section, dict[str, float]]:
    """bench/backfill.py in a subprocess (moto), its figures parsed from what it prints."""
    s = Section(f"6. Backfill: {images} images, AWS = {EMULATOR}", ["figure", "value"])
    done = subprocess.run(
        [sys.executable, str(BENCH / "backfill.py"), "--images", str(images)], capture_output=True, text=True
    )
    rate = re.search(r"(\d+) images/s", done.stdout)
    peak = re.search(r"peak ([\d.]+) MiB", done.stdout)
    if done.returncode or not rate or not peak:
        s.rows.append(["failed", (done.stdout + done.stderr).strip()[-200:]])
        return s, {}
    s.rows += [["images/s, chains started", rate.group(1)], ["backfill task's peak RSS MiB", peak.group(1)]]
    s.current.append(
        (f"6. Backfill of {images} images on moto: images/s, peak RSS MiB", f"{rate.group(1)}, {peak.group(1)}")
    )
    return s, {"rate": float(rate.group(1)), "rss": float(peak.group(1))}


def targets(
    fast: Result | None,
    floors: list[FloorResult],
    ingests: list[IngestResult],
    kept: float | None,
    backfill: dict[str, float],
    celery: CeleryFloorResult | None = None,
) -> Section:
    s = Section("Targets (issues 6 and 31; 2 cores)", ["target", "measured", "met"])

    def add(name: str, value: float | None, fmt: str, ok: bool) -> None:
        s.rows.append(
            [name, "not run" if value is None else fmt.format(value), "-" if value is None else "yes" if ok else "no"]
        )
        if value is not None:
            s.current.append((f"Target: {name}", f"{fmt.format(value)}, {'met' if ok else 'not met'}"))

    threaded = next((f for f in floors if f.threads and not f.error), None)
    usable = fast is not None and not fast.error
    rate = fast.rate / threaded.rate if usable and threaded and threaded.rate else None
    add("end-to-end >= 50% of the threaded floor's events/s", rate, "{:.0%}", (rate or 0) >= 0.5)
    cpu = ours(fast) / (threaded.cpu / threaded.images) if usable and threaded else None  # type: ignore[arg-type]
    add("CPU per event <= 2x the floor's", cpu, "{:.1f}x", (cpu or 99) <= 2)
    ingest = min((r.rate for r in ingests if not r.error), default=None)
    add(
        "ingest >= 2,000 messages/s per process (slower of delete / no-delete)", ingest, "{:.0f}", (ingest or 0) >= 2000
    )
    p50 = pct(fast.paced_latency, 50) * 1000 if usable and fast and fast.paced_latency else None
    p99 = pct(fast.paced_latency, 99) * 1000 if usable and fast and fast.paced_latency else None
    add("latency p50 < 100 ms (paced, fast stand-in)", p50, "{:.0f} ms", (p50 or 1e9) < 100)
    add("latency p99 < 500 ms (paced, fast stand-in)", p99, "{:.0f} ms", (p99 or 1e9) < 500)
    add("30 ms per call keeps >= 80% of zero-delay events/s (default pool, moto)", kept, "{:.0%}", (kept or 0) >= 0.8)
    add("backfill >= 500 images/s", backfill.get("rate"), "{:.0f}", backfill.get("rate", 0) >= 500)
    add("backfill peak RSS < 200 MB", backfill.get("rss"), "{:.0f} MiB", backfill.get("rss", 1e9) < 190)
    alone = celery if celery is not None and not celery.error and celery.chains else None
    if usable and alone is not None and threaded and threaded.images:
        budget = alone.cpu_per_chain + threaded.cpu / threaded.images
        mine = ours(fast)  # type: ignore[arg-type]
        add(
            "CPU per event <= Celery alone + the floor's (same run)",
            mine * 1000,
            f"{{:.1f}} ms of {budget * 1000:.1f} ms",
            mine <= budget,
        )
    kept_rate = fast.rate / alone.rate if usable and fast and alone is not None and alone.rate else None
    add("end-to-end >= 80% of Celery alone's events/s (same run)", kept_rate, "{:.0%}", (kept_rate or 0) >= 0.8)
    if celery is not None and not celery.error and celery.publish_cpu and threaded and threaded.images:
        floor_cpu = threaded.cpu / threaded.images
        s.notes.append(
            f"What Celery alone allows (scenario 4): four no-op tasks per image cost "
            f"{celery.cpu_per_chain / floor_cpu:.1f}x the floor's CPU and run at "
            f"{celery.rate / threaded.rate:.0%} of its events/s; publishing one chain costs "
            f"{celery.publish_per_chain * 1000:.2f} ms, at most "
            f"{1 / celery.publish_per_chain:.0f} chains/s per ingest process before it receives, "
            "parses or dedupes anything."
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


def write_results(sections: list[Section], header: str, extra: list[str], command: str) -> None:
    """The sections' rows in RESULTS.md's table of current figures; the run's details appended below."""
    figures = [figure for s in sections for figure in s.current]
    details = "\n\n".join([header, markdown(sections).rstrip("\n"), *extra])
    results.record(figures, command, details)


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
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="which scenarios to run")
    parser.add_argument("--floor-events", type=int, default=1000, help="images through the floor (4)")
    parser.add_argument("--ingest-messages", type=int, default=5000, help="messages for ingest alone (5)")
    parser.add_argument("--backfill-images", type=int, default=5000, help="images for the backfill (6)")
    parser.add_argument("--stall", type=float, default=60.0, help="give a run up after this long without progress")
    parser.add_argument("--work", default=None, help="directory for logs (default: a new temporary one)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy (pip install py-spy) records ingest and the worker in scenario 4a into this directory; "
        "the top entries are printed (the run's figures then include py-spy's pauses)",
    )
    parser.add_argument("--no-write", action="store_true", help=f"do not append to {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    load = Load(args.events, args.warmup, args.window, args.stall, Path(args.work) if args.work else None, args.profile)
    scenarios = set(args.scenarios.split(","))
    delay = args.delay_ms / 1000
    console = make_console()  # a log of the run keeps its lines whole (the command, paths)
    # Ctrl-C and SIGTERM unwind through every run's ExitStack, which stops what the run started.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`&`)
    began = time.monotonic()
    sections: list[Section] = []

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
        pairs: list[tuple[Result, Result]] = []
        if "2" in scenarios:
            for pool, concurrency in parse_pools(args.pools):
                zero = attempt(Setup(pool, concurrency, proxy=True))
                slow = attempt(Setup(pool, concurrency, delay=delay, proxy=True))
                pairs.append((zero, slow))
                if not slow.error and (winner is None or slow.rate > winner.rate):
                    winner = slow
            sections.append(pools(pairs, args.delay_ms))
            if winner:
                sections[-1].notes.append(f"Best with {args.delay_ms:.0f} ms per call: {winner.setup.label}.")
        if "3" in scenarios:
            pool, concurrency = (winner.setup.pool, winner.setup.concurrency) if winner else entrypoint_defaults()
            runs = [
                attempt(Setup(pool, concurrency, workers=int(n), delay=delay, proxy=True))
                for n in args.scale.split(",")
            ]
            sections.append(scaling(runs, args.delay_ms))
        fast: Result | None = None
        floors: list[FloorResult] = []
        celery: CeleryFloorResult | None = None
        if "4" in scenarios:
            pool, concurrency = entrypoint_defaults()
            fast = attempt(Setup(pool, concurrency, paced=args.paced, emulator="fast"))
            sections.append(end_to_end(fast, "4a"))
            floors = [floor(threads, args.floor_events, load) for threads in (0, concurrency)]
            celery = celery_floor(pool, concurrency, args.floor_events, load)
            sections.append(against_floor(fast, floors, celery))
        ingests: list[IngestResult] = []
        if "5" in scenarios:
            ingests = [ingest_alone(args.ingest_messages, deny, load) for deny in (False, True)]
            sections.append(ingest_section(ingests))
        if "7" in scenarios:
            if local.rabbitmq_scripts() is None:
                console.log(
                    f"[yellow]scenario 7 skipped[/]: rabbitmq-server is not installed ({local.RABBITMQ_INSTALL})"
                )
            else:
                pool, concurrency = entrypoint_defaults()
                side = [
                    attempt(Setup(pool, concurrency, paced=args.paced, broker=broker))
                    for broker in ("redis", "rabbitmq")
                ]
                sections.append(brokers_section(side))
        backfill: dict[str, float] = {}
        if "6" in scenarios:
            section, backfill = backfill_section(args.backfill_images)
            sections.append(section)
        default = entrypoint_defaults()
        kept = next(
            (b.rate / a.rate for a, b in pairs if (a.setup.pool, a.setup.concurrency) == default and a.rate and b.rate),
            None,
        )
        sections.append(targets(fast, floors, ingests, kept, backfill, celery))
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: every process started was stopped")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stop_leftovers()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    elapsed = time.monotonic() - began
    show(console, sections)
    command = shlex.join(sys.orig_argv)
    console.print(f"{elapsed:.0f} s in all; command: {command}")
    profiles: list[str] = []
    if args.profile is not None:
        for name in ("ingest", "worker", "celery"):
            if (args.profile / f"{name}.txt").exists():
                profiles.append(profile_top.top(args.profile / f"{name}.txt"))
                console.print(profiles[-1], markup=False)
        workers = [("pipeline", args.profile / "worker.txt", fast.events if fast else 0)]
        workers.append(("Celery alone", args.profile / "celery.txt", celery.chains if celery else 0))
        if all(path.exists() and events for _, path, events in workers):
            profiles.append(profile_top.compare(workers))
            console.print(profiles[-1], markup=False)
    if not args.no_write:
        header = (
            f"## Pipeline, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"Machine: {machine()}.\n\nCommand: `{command}` ({elapsed / 60:.1f} min; "
            f"{args.events} events per run after {args.warmup} not counted, window {args.window})."
        )
        extra = ["### Profile of 4a (py-spy, samples holding the GIL)", *profiles] if profiles else []
        write_results(sections, header, extra, results.relative(command))
        console.print(f"written to {RESULTS}: its table of current figures, and this run's details")
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
