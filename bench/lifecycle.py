"""Registry lifecycle: how long from ECR's DELETE event to ninkik's DELETE, and what the lifecycle sweep costs.

    .venv/bin/python bench/lifecycle.py                       # 200 images, 100 deleted with events at 5 a second
    .venv/bin/python bench/lifecycle.py --images 50 --no-write

Starts redis-server, bench/fast_aws.py (canned SQS and ECR answers), the ninkik stand-in in this process, one
`ninkik-tasks ingest` and one `celery -A ninkik_tasks worker` (the pool and concurrency of
workers/entrypoint.sh), with the default settings. It pushes `--images` images (push events) and waits for their
reports; then deletes half of them from the emulated registry and sends their "ECR Image Action" DELETE events
at `--rate` a second, measuring per image the time from the event's send to ninkik's DELETE (p50 / p95 / max).
Then the lifecycle sweep (`ninkik-tasks backfill --lifecycle --wait`) over the repository, which the emulator
lists with `--listed` images (ninkik has the other half of the pushed ones; a quarter of those deleted without an
event): its DescribeImages calls per 1,000 images listed, the images it found gone, and its wall time at the
default ECR budget's rescan share. Figures go to bench/RESULTS.md (`--no-write` skips that).
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402
from pipeline import entrypoint_defaults, machine  # noqa: E402
from pipeline_run import PRODUCTS, TENANT, TENANTS, bench_env, start_emulator  # noqa: E402
from scan_lag import pct  # noqa: E402

from ninkik_tasks import local  # noqa: E402
from ninkik_tasks.local.standin import Received, Standin  # noqa: E402


def run(images: int, rate: float, listed: int, work: Path) -> dict[str, Any]:
    """One run; the figures."""
    work.mkdir(parents=True, exist_ok=True)
    reported: set[str] = set()
    lock = threading.Lock()

    def on_receive(r: Received) -> None:
        with lock:
            reported.add(r.body["image"]["digest"])

    token = secrets.token_urlsafe(16)
    standin = Standin(TENANTS, token, on_receive=on_receive).start()
    procs: list[local.Proc] = []
    try:
        redis_proc, redis_url = local.start_redis(work)
        procs.append(redis_proc)
        aws_proc, aws_url = start_emulator("fast", work)
        procs.append(aws_proc)
        sqs = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x", region_name=local.REGION).client(
            "sqs", endpoint_url=aws_url
        )
        queue_url = sqs.create_queue(QueueName="lifecycle")["QueueUrl"]
        pool, concurrency = entrypoint_defaults()
        env = bench_env(aws_url, redis_url, queue_url, NINKIK_API_URL=standin.url, NINKIK_API_TOKEN=token)
        celery = [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "worker", "--loglevel", "WARNING"]
        procs.append(local.Proc("worker", [*celery, "--pool", pool, "--concurrency", str(concurrency)], work, env))
        procs.append(local.Proc("ingest", [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], work, env))
        repository = f"{TENANT}/{PRODUCTS[0]}"
        digests = [f"sha256:{uuid.uuid4().hex * 2}" for _ in range(images)]
        send(sqs, queue_url, [local.push_event(repository, d, None) for d in digests])
        local.wait_for(lambda: len(reported) == images, 180, "every push's report", interval=0.5)

        # Deleted, with their events.
        deleted, kept = digests[: images // 2], digests[images // 2 :]
        httpx.post(f"{aws_url}/_gone", json=deleted).raise_for_status()
        sent_at: dict[str, float] = {}
        began = time.time()
        for i, digest in enumerate(deleted):
            time.sleep(max(0.0, began + i / rate - time.time()))
            event = local.push_event(repository, digest, None)
            event["detail"]["action-type"] = "DELETE"
            sent_at[digest] = time.time()
            sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))

        def removed() -> dict[str, float]:
            return {r.digest: r.at for r in standin.removed if r.digest in sent_at}

        local.wait_for(lambda: len(removed()) == len(deleted), 180, "every DELETE", interval=0.5)
        lags = sorted(at - sent_at[d] for d, at in removed().items())

        # The sweep: the repository lists `listed` images, ninkik has `kept`; a quarter of those deleted silently.
        silent = kept[: len(kept) // 4]
        others = [f"sha256:{uuid.uuid4().hex * 2}" for _ in range(max(0, listed - len(kept)))]
        httpx.post(f"{aws_url}/_images", json={repository: kept + others}).raise_for_status()
        httpx.post(f"{aws_url}/_gone", json=silent).raise_for_status()
        calls_before = len(httpx.get(f"{aws_url}/_calls").json()["calls"])
        swept_at = time.time()
        cli = [sys.executable, "-m", "ninkik_tasks.cli", "backfill", "--lifecycle", "--repository", repository]
        done = subprocess.run([*cli, "--wait"], env=env, capture_output=True, text=True, timeout=600, check=True)
        counts = json.loads(done.stdout.splitlines()[-1])
        sweep_seconds = time.time() - swept_at
        local.wait_for(
            lambda: {r.digest for r in standin.removed} >= set(silent), 180, "the swept images' DELETEs", interval=0.5
        )
        calls = httpx.get(f"{aws_url}/_calls").json()["calls"][calls_before:]
        pages = sum(1 for _, action, digest in calls if action == "DescribeImages" and digest == "")
        return {
            "images": images,
            "rate": rate,
            "lag": (pct(lags, 50), pct(lags, 95), max(lags)),
            "listed": len(kept) - len(silent) + len(others),
            "held": len(kept),
            "pages": pages,
            "counts": counts,
            "sweep_seconds": sweep_seconds,
        }
    finally:
        for proc in reversed(procs):
            proc.stop()
        standin.stop()


def send(sqs: Any, queue_url: str, bodies: list[dict[str, Any]]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(bodies[start : start + 10])]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0, help="DELETE events a second")
    parser.add_argument("--listed", type=int, default=10_000, help="images the repository lists in the sweep")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ninkik-lifecycle-"))
    f = run(args.images, args.rate, args.listed, work)
    p50, p95, most = f["lag"]
    per_thousand = f["pages"] / max(1, f["listed"]) * 1000
    c = f["counts"]
    table = "\n".join(
        [
            "| images | DELETE events per s | event to ninkik's DELETE p50 / p95 / max (s) | sweep: images listed / "
            "ninkik has | DescribeImages calls (per 1,000 listed) | found gone / changed | sweep wall time (s) |",
            "|---|---|---|---|---|---|---|",
            f"| {f['images']} | {f['rate']:g} | {p50:.2f} / {p95:.2f} / {most:.2f} | {f['listed']} / {f['held']} | "
            f"{f['pages']} ({per_thousand:.2f}) | {c['gone']} / {c['changed']} | {f['sweep_seconds']:.1f} |",
        ]
    )
    print(table)
    if not args.no_write:
        command = " ".join([".venv/bin/python", *sys.argv])
        header = (
            f"## Registry lifecycle ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
            f"`{command}` on {machine()}; default settings, one worker as workers/entrypoint.sh runs it, "
            "bench/fast_aws.py."
        )
        rows = [
            (f"DELETE event to ninkik's DELETE, {f['images'] // 2} images at {f['rate']:g}/s", f"p50 / p95 / max "
             f"{p50:.2f} / {p95:.2f} / {most:.2f} s"),
            ("Lifecycle sweep, DescribeImages calls per 1,000 images listed", f"{per_thousand:.2f} "
             f"({f['pages']} calls for {f['listed']} images; {f['sweep_seconds']:.1f} s)"),
        ]  # fmt: skip
        results.record(rows, command, header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
