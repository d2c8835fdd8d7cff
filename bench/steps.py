"""The chain's steps and ingest's handling of a batch, in one process: CPU and Redis round trips per image, by step.

No Celery: each image's match, describe, scan and notify step is called as its task calls it, one image after the
other, against redis-server, bench/fast_aws.py and the ninkik stand-in (this process), after 20 images of warm-up;
then ingest's `handle` for batches of 10 messages, its `start` only registering them for gathering (Celery's
publish is scenario 4's "Celery alone"). What the steps cost beyond their AWS calls and POST, without the
benchmark's other processes sharing the cores; bench/pipeline.py --profile shows them inside the worker.

    .venv/bin/python bench/steps.py [--images 300] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import json
import logging
import os
import pstats
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from redis.connection import AbstractConnection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_run import PRODUCTS, TENANT, TENANTS, bench_env, start_emulator  # noqa: E402

from ninkik_tasks import local  # noqa: E402
from ninkik_tasks.local.standin import Standin  # noqa: E402

T = TypeVar("T")
STEPS = ("ingest", "register", "match", "describe", "scan", "notify")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--profile", action="store_true", help="cProfile (CPU time) of the steps: the top 30")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-steps-"))
    redis_proc, redis_url = local.start_redis(work)
    aws_proc, aws_url = start_emulator("fast", work)
    token = secrets.token_urlsafe(16)
    standin = Standin(TENANTS, token).start()
    try:
        env = bench_env(aws_url, redis_url, f"{aws_url}/{local.ACCOUNT}/q", NINKIK_API_URL=standin.url)
        os.environ.update({**env, "NINKIK_API_TOKEN": token, "NINKIK_ECR_CALLS_PER_SECOND": "0"})
        run(args.images, args.profile)
    finally:
        standin.stop()
        aws_proc.stop()
        redis_proc.stop()


def run(images: int, profile: bool) -> None:
    from ninkik_tasks import gathering
    from ninkik_tasks.config import get_settings
    from ninkik_tasks.events import parse
    from ninkik_tasks.ingest import Ingest
    from ninkik_tasks.records import quarantine
    from ninkik_tasks.scans import scan_step
    from ninkik_tasks.stages import describe_step, match_tenant, notify_step, services

    logging.disable(logging.INFO)
    settings = get_settings()
    svc = services(settings)
    step = ["setup"]
    trips: Counter[str] = Counter()
    cpu: Counter[str] = Counter()
    send = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        trips[step[0]] += 1
        send(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    batched = "pushes" in inspect.signature(gathering.register).parameters  # older commits: one image a call

    def register(pushes: list[Any]) -> None:
        for batch in [pushes] if batched else [[p] for p in pushes]:
            gathering.register(svc.gathering, batch if batched else batch[0])

    def message(i: int) -> str:
        repository = f"{TENANT}/{PRODUCTS[i % len(PRODUCTS)]}"
        return json.dumps(local.push_event(repository, f"sha256:{os.urandom(32).hex()}", None))

    def pushed(count: int) -> list[Any]:
        allowed = {"accounts": {local.ACCOUNT}, "regions": {local.REGION}, "max_bytes": 262144}
        return [parse(message(i), **allowed) for i in range(count)]  # type: ignore[arg-type]

    def started(got: Any) -> Any:
        """Ingest's `start`: registers the pushes (a batch; on older commits one push a call), queues nothing."""
        register(got if isinstance(got, list) else [got])
        return [None] * len(got) if isinstance(got, list) else None

    profiler = cProfile.Profile(time.process_time) if profile else None

    def timed(name: str, call: Callable[[], T]) -> T:
        step[0] = name
        began = time.process_time()
        if profiler:
            profiler.enable()
        out = call()
        if profiler:
            profiler.disable()
        cpu[name] += time.process_time() - began
        step[0] = "setup"
        return out

    def chain(push: Any, measured: bool) -> None:
        call: Callable[[str, Callable[[], T]], T] = timed if measured else (lambda _, f: f())  # type: ignore[assignment]
        matched = call("match", lambda: match_tenant(svc, push))
        described = call("describe", lambda: describe_step(svc, matched))
        scanned = call("scan", lambda: scan_step(svc, described))
        call("notify", lambda: notify_step(svc, scanned, "bench"))

    for push in pushed(20):  # warm-up: clients, connections, the tenant lookup
        register([push])
        chain(push, measured=False)
    pushes = pushed(images)
    for batch in (pushes[i : i + 10] for i in range(0, images, 10)):
        timed("register", lambda batch=batch: register(batch))
    for push in pushes:
        chain(push, measured=True)
    getattr(svc.stats, "flush", lambda: None)()  # held counts (older commits wrote each at once)
    ingest = Ingest(
        settings,
        None,  # type: ignore[arg-type]
        svc.records,
        quarantine(svc.redis, settings.redis_namespace),
        start=started,
    )
    messages = [{"MessageId": str(i), "ReceiptHandle": str(i), "Body": message(i)} for i in range(images)]
    for received in (messages[i : i + 10] for i in range(0, images, 10)):
        timed("ingest", lambda received=received: ingest.handle(received))  # type: ignore[arg-type]
    for name in STEPS:
        print(f"{name:9s} {cpu[name] / images * 1000:6.3f} ms CPU  {trips[name] / images:5.2f} Redis round trips")
    chain_cpu = sum(cpu[n] for n in STEPS[1:]) / images * 1000
    print(f"{'chain':9s} {chain_cpu:6.3f} ms CPU  {sum(trips[n] for n in STEPS[1:]) / images:5.2f} Redis round trips")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
