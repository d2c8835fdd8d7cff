"""Ingest with many queues: how fast one busy queue is read while the others wait in idle long polls.

    .venv/bin/python bench/queues.py                      # 1, 10 and 100 queues, 1000 messages on the busy one
    .venv/bin/python bench/queues.py --queues 1,10 --messages 500 --no-write

Starts redis-server and moto's server, then for each count of queues: creates them (one account, the emulator's),
puts `--messages` push events on the first (the busy one), writes an accounts file listing all of them and starts
one `ninkik-tasks ingest` (NINKIK_SQS_WAIT_SECONDS 20, the default: the idle queues wait in long polls). No worker
runs: the chains are queued in Redis, ingest's own work is what is measured. Figures, from ingest's /metrics and
psutil: the busy queue's messages per second from its first message received to its last, ingest's CPU
(milliseconds per message while draining, and % of a core over `--idle` seconds once drained, when only idle
long polls remain) and its threads. moto's server answers every queue (its long polls are its own loops: its CPU
is reported, as it shares the machine's cores with ingest). Figures go to bench/RESULTS.md (`--no-write` skips).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402
from pipeline import machine  # noqa: E402
from pipeline_run import TENANT, bench_env  # noqa: E402

from ninkik_tasks import local  # noqa: E402


def received(metrics_url: str) -> float:
    """ninkik_ingest_messages_received_total of ingest's /metrics (0 before it serves)."""
    try:
        text = httpx.get(metrics_url, timeout=2).text
    except httpx.HTTPError:
        return 0.0
    match = re.search(r"^ninkik_ingest_messages_received_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def run(
    count: int, messages: int, idle: float, work: Path, aws_url: str, redis_url: str, moto: psutil.Process
) -> dict[str, Any]:
    """One ingest polling `count` queues, the first one busy; its figures."""
    session = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=local.REGION)
    sqs = session.client("sqs", endpoint_url=aws_url)
    tag = uuid.uuid4().hex[:6]
    queues = [sqs.create_queue(QueueName=f"q{count}-{tag}-{i}")["QueueUrl"] for i in range(count)]
    for start in range(0, messages, 10):
        events = [local.push_event(f"{TENANT}/app", f"sha256:{uuid.uuid4().hex * 2}") for _ in range(10)]
        entries = [{"Id": str(n), "MessageBody": json.dumps(e)} for n, e in enumerate(events[: messages - start])]
        sqs.send_message_batch(QueueUrl=queues[0], Entries=entries)
    accounts = work / f"accounts-{count}.json"
    accounts.write_text(json.dumps({"accounts": [{"id": local.ACCOUNT, "regions": [local.REGION], "queues": queues}]}))
    port = local.free_port()
    env = bench_env(aws_url, redis_url, queues[0], NINKIK_ACCOUNTS_FILE=str(accounts), NINKIK_METRICS_PORT=str(port))
    for one_account in ("NINKIK_SQS_QUEUE_URL", "NINKIK_AWS_ACCOUNT_IDS"):
        del env[one_account]
    env["NINKIK_HEALTH_DIR"] = str(work / f"health-{count}")
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    proc = local.Proc(f"ingest-{count}", [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], work, env)
    try:
        ingest = psutil.Process(proc.popen.pid)
        first = local.wait_for(lambda: received(metrics_url) > 0, 120, "the busy queue's first batch", interval=0.02)
        began, cpu_began, moto_began = time.monotonic(), sum(ingest.cpu_times()[:2]), sum(moto.cpu_times()[:2])
        first_count = received(metrics_url)
        local.wait_for(lambda: received(metrics_url) >= messages, 300, "every message received", interval=0.02)
        took = time.monotonic() - began
        cpu_drain = sum(ingest.cpu_times()[:2]) - cpu_began
        moto_drain = sum(moto.cpu_times()[:2]) - moto_began
        assert first
        cpu_idle_began, moto_idle_began = sum(ingest.cpu_times()[:2]), sum(moto.cpu_times()[:2])
        time.sleep(idle)  # a bench, not a test: the idle cost is measured over a span
        cpu_idle = sum(ingest.cpu_times()[:2]) - cpu_idle_began
        moto_idle = sum(moto.cpu_times()[:2]) - moto_idle_began
        threads = ingest.num_threads()
        rss = ingest.memory_info().rss / 2**20
        assert proc.alive() and "Traceback" not in proc.output(), proc.output()[-3000:]
    finally:
        proc.stop()
    counted = messages - first_count
    return {
        "queues": count,
        "messages": messages,
        "rate": counted / took,
        "cpu_ms": 1000 * cpu_drain / messages,
        "cpu_drain_pct": 100 * cpu_drain / took,
        "moto_drain_pct": 100 * moto_drain / took,
        "cpu_idle_pct": 100 * cpu_idle / idle,
        "moto_idle_pct": 100 * moto_idle / idle,
        "threads": threads,
        "rss": rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", default="1,10,100", help="counts of queues, one run each")
    parser.add_argument("--messages", type=int, default=1000, help="push events on the busy queue")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle long polls measured once drained")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-queues-"))
    procs: list[local.Proc] = []
    rows = []
    try:
        redis_proc, redis_url = local.start_redis(work)
        procs.append(redis_proc)
        moto_proc, aws_url = local.start_moto(work)
        procs.append(moto_proc)
        for count in (int(c) for c in args.queues.split(",")):
            rows.append(run(count, args.messages, args.idle, work, aws_url, redis_url, psutil.Process(moto_proc.pid)))
            print(rows[-1], flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()
    table = "\n".join(
        [
            "| queues (1 busy) | busy queue messages/s | ingest CPU ms per message | ingest / moto CPU % draining | "
            f"ingest / moto CPU % idle ({args.idle:g} s) | ingest threads | ingest RSS MiB |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {r['queues']} | {r['rate']:.0f} | {r['cpu_ms']:.2f} | {r['cpu_drain_pct']:.0f} / "
                f"{r['moto_drain_pct']:.0f} | {r['cpu_idle_pct']:.1f} / {r['moto_idle_pct']:.0f} | {r['threads']} | "
                f"{r['rss']:.0f} |"
                for r in rows
            ),
        ]
    )
    print(table)
    if not args.no_write:
        command = " ".join([".venv/bin/python", *sys.argv])
        header = (
            f"## Ingest with many queues ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
            f"`{command}` on {machine()}; moto's server, one account, {args.messages} push events on the busy "
            "queue, the others empty in long polls of 20 s (NINKIK_SQS_WAIT_SECONDS), no worker."
        )
        figures = [
            (
                f"Ingest, {r['queues']} queues (1 busy, moto): busy queue messages/s, CPU, threads",
                f"{r['rate']:.0f}/s; {r['cpu_ms']:.2f} ms per message; idle {r['cpu_idle_pct']:.1f}% of a core; "
                f"{r['threads']} threads",
            )
            for r in rows
        ]
        results.record(figures, command, header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
