"""Finding-event lag: how long after Amazon Inspector's first "Inspector2 Finding" event of a change the changed
findings reach ninkik, and how many ECR reads a burst of such events costs.

    .venv/bin/python bench/finding_lag.py                        # 50 images, bursts of 10 events, 2 images a second
    .venv/bin/python bench/finding_lag.py --images 20 --no-write

Starts redis-server, bench/fast_aws.py (canned SQS and ECR answers), the ninkik stand-in in this process, one
`ninkik-tasks ingest` and one `celery -A ninkik_tasks worker` (the pool and concurrency of
workers/entrypoint.sh), with the default settings (NINKIK_FINDING_REFRESH_SECONDS=10, the default ECR budget).
It pushes the images and waits for their reports; then, image after image at `--rate` a second, adds a CVE to
the image's findings (as Inspector's database changing) and sends `--burst` "Inspector2 Finding" events for it
within a second (local.finding_event, AWS's sample's shape), as Inspector sends one per finding. It measures,
per image, the time from its first finding event's send to the arrival of its refreshed report (p50 / p95 /
max), the reports and the DescribeImageScanFindings calls per image the events caused. Figures go to
bench/RESULTS.md (`--no-write` skips that).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
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


def run(images: int, burst: int, rate: float, work: Path) -> dict[str, Any]:
    """One run; the figures."""
    work.mkdir(parents=True, exist_ok=True)
    received: dict[str, list[Received]] = defaultdict(list)
    lock = threading.Lock()

    def on_receive(r: Received) -> None:
        with lock:
            received[r.body["image"]["digest"]].append(r)

    def reported(n: int) -> int:
        with lock:
            return sum(1 for reports in received.values() if len(reports) >= n)

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
        queue_url = sqs.create_queue(QueueName="finding-lag")["QueueUrl"]
        pool, concurrency = entrypoint_defaults()
        env = bench_env(
            aws_url, redis_url, queue_url, NINKIK_API_URL=standin.url, NINKIK_API_TOKEN=token, NINKIK_LOG_LEVEL="INFO"
        )
        celery = [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "worker", "--loglevel", "WARNING"]
        procs.append(local.Proc("worker", [*celery, "--pool", pool, "--concurrency", str(concurrency)], work, env))
        procs.append(local.Proc("ingest", [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], work, env))
        digests = [f"sha256:{uuid.uuid4().hex * 2}" for _ in range(images)]
        repositories = {d: f"{TENANT}/{PRODUCTS[i % len(PRODUCTS)]}" for i, d in enumerate(digests)}
        for start in range(0, images, 10):
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(local.push_event(repositories[d], d, None))}
                for i, d in enumerate(digests[start : start + 10])
            ]
            sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        local.wait_for(lambda: reported(1) == images, 120, "every push's report", interval=0.5)
        calls_before = len(httpx.get(f"{aws_url}/_calls").json()["calls"])
        first_event: dict[str, float] = {}
        for i, digest in enumerate(digests):
            time.sleep(max(0.0, i / rate - (time.time() - first_event.get(digests[0], time.time()))))
            cve = f"CVE-2026-{9000 + i}"
            httpx.post(f"{aws_url}/_findings", json={digest: [cve]}).raise_for_status()
            bodies = [local.finding_event(repositories[digest], digest, cve) for _ in range(burst)]
            first_event[digest] = time.time()
            for start in range(0, burst, 10):
                entries = [
                    {"Id": str(n), "MessageBody": json.dumps(b)} for n, b in enumerate(bodies[start : start + 10])
                ]
                sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        local.wait_for(lambda: reported(2) == images, 300, "every refreshed report", interval=0.5)
        time.sleep(15)  # a bench, not a test: room for a second read of a burst (there is none to wait on)
        calls = httpx.get(f"{aws_url}/_calls").json()["calls"][calls_before:]
        with lock:
            lags = sorted(received[d][1].at - first_event[d] for d in digests)
            reports = sum(len(received[d]) - 1 for d in digests)
        reads = sum(1 for _, action, d in calls if action == "DescribeImageScanFindings" and d in first_event)
        describes = sum(1 for _, action, d in calls if action == "DescribeImages" and d in first_event)
        return {
            "images": images,
            "burst": burst,
            "rate": rate,
            "lag": (pct(lags, 50), pct(lags, 95), max(lags)),
            "reports": reports / images,
            "reads": reads / images,
            "describes": describes / images,
        }
    finally:
        for proc in reversed(procs):
            proc.stop()
        standin.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--burst", type=int, default=10, help="finding events per image, sent within a second")
    parser.add_argument("--rate", type=float, default=2.0, help="images whose findings change, per second")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ninkik-finding-lag-"))
    figures = run(args.images, args.burst, args.rate, work)
    p50, p95, most = figures["lag"]
    table = "\n".join(
        [
            "| images | events per image (within 1 s) | images changed per s | first event to refreshed report "
            "p50 / p95 / max (s) | new reports per image | DescribeImageScanFindings / DescribeImages per image |",
            "|---|---|---|---|---|---|",
            f"| {figures['images']} | {figures['burst']} | {figures['rate']:g} | {p50:.1f} / {p95:.1f} / {most:.1f} | "
            f"{figures['reports']:.2f} | {figures['reads']:.2f} / {figures['describes']:.2f} |",
        ]
    )
    print(table)
    if not args.no_write:
        header = (
            f"## Finding-event lag ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
            f"`{' '.join(['.venv/bin/python', *sys.argv])}` on {machine()}; NINKIK_FINDING_REFRESH_SECONDS 10 "
            "(the default), one worker as workers/entrypoint.sh runs it, bench/fast_aws.py."
        )
        row = f"Finding-event lag, {figures['images']} images x {figures['burst']} events within 1 s"
        figure = (
            f"p50 / p95 / max {p50:.1f} / {p95:.1f} / {most:.1f} s; per image {figures['reports']:.2f} reports, "
            f"{figures['reads']:.2f} DescribeImageScanFindings, {figures['describes']:.2f} DescribeImages"
        )
        results.record([(row, figure)], " ".join([".venv/bin/python", *sys.argv]), header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
