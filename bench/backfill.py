"""Benchmark: a backfill over N images (5,000 by default) in the emulator; its speed and its memory over time.

Starts redis-server and moto's server, puts N images in `--repositories` repositories, starts one Celery
worker that consumes only `ninkik-control` (so the chains it starts wait in Redis and do not compete with
it), queues `ninkik.backfill`, and samples the resident memory of the worker's pool process (the one
running the task) at every PROGRESS update. Memory is flat when the last sample is no higher than the
first ones beyond noise, whatever N is.

    .venv/bin/python bench/backfill.py [--images 5000] [--repositories 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import psutil
import redis
from celery import Celery

from ninkik_tasks import local


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repositories", type=int, default=50)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-"))
    redis_proc, redis_url = local.start_redis(work)
    moto_proc, moto_url = local.start_moto(work)
    procs = [redis_proc, moto_proc]
    try:
        ecr = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=local.REGION
        ).client("ecr", endpoint_url=moto_url)
        tenant = str(uuid.uuid4())
        names = [f"{tenant}/product-{r}" for r in range(args.repositories)]
        for name in names:
            ecr.create_repository(repositoryName=name)
        began = time.monotonic()

        def put(i: int) -> None:
            ecr.put_image(repositoryName=names[i % len(names)], imageManifest=local.manifest(f"bench-{i}"))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(args.images)))
        print(f"seeded {args.images} images in {len(names)} repositories in {time.monotonic() - began:.1f} s")

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("NINKIK_", "AWS_"))},
            **local.aws_env(moto_url),
            "NINKIK_BROKER_URL": f"{redis_url}/0",
            "NINKIK_RESULT_BACKEND": f"{redis_url}/1",
            "NINKIK_REDIS_URL": f"{redis_url}/2",
            "NINKIK_AWS_ACCOUNT_IDS": local.ACCOUNT,
            "NINKIK_AWS_REGIONS": local.REGION,
            "NINKIK_LOG_LEVEL": "WARNING",
        }
        worker = local.Proc(
            "worker",
            [
                *[sys.executable, "-m", "celery", "-A", "ninkik_tasks", "worker", "-Q", "ninkik-control"],
                *["--pool", "prefork", "--concurrency", "1", "--without-gossip", "--without-mingle"],
            ],
            work,
            env,
        )
        procs.append(worker)
        client = Celery(broker=env["NINKIK_BROKER_URL"], backend=env["NINKIK_RESULT_BACKEND"])
        local.wait_for(lambda: client.control.ping(timeout=0.5), 60, "the worker")
        [child] = local.wait_for(lambda: psutil.Process(worker.pid).children(), 30, "the pool process")

        def rss() -> float:
            return float(child.memory_info().rss) / 2**20

        baseline = rss()
        result = client.send_task("ninkik.backfill", queue="ninkik-control")
        samples: list[tuple[int, float]] = []
        while not result.ready():
            info = result.info if result.state == "PROGRESS" else None
            if isinstance(info, dict) and (not samples or samples[-1][0] != info["images"]):
                samples.append((int(info["images"]), rss()))
            time.sleep(0.05)
        summary = result.get()
        samples.append((int(summary["images"]), rss()))
        queued = redis.Redis.from_url(env["NINKIK_BROKER_URL"]).llen("ninkik-api")
    finally:
        for proc in reversed(procs):
            proc.stop()

    print(f"backfill: {summary['images']} images, {summary['chains_started']} chains started ({queued} queued)")
    print(f"          {summary['seconds']} s, {summary['images'] / summary['seconds']:.0f} images/s")
    print(f"pool process RSS: {baseline:.1f} MiB before the task, peak {max(m for _, m in samples):.1f} MiB")
    step = max(1, len(samples) // 10)
    print("images seen -> RSS (MiB): " + ", ".join(f"{n}: {m:.1f}" for n, m in samples[::step] + samples[-1:]))
    return 0 if summary["chains_started"] == args.images == queued else 1


if __name__ == "__main__":
    sys.exit(main())
