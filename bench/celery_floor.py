"""Celery's floor: N chains of bench/noop_chain.py's four do-nothing tasks through one worker.

What four Celery tasks per image cost on this machine before the pipeline does any work: the publisher's
CPU per chain (what ingest pays to start one) and the worker's (main and pool processes), with the pool,
concurrency and events (-E) that workers/entrypoint.sh uses. Run by bench/pipeline.py (scenario 4):

    python bench/celery_floor.py --pool threads --concurrency 16 --chains 2000

prints {"chains", "seconds", "publish_cpu", "worker_cpu", "worker_main_cpu", "redis_commands"} as one JSON line (the
last counts the wait for the chains' end too: a few polls). `--profile DIR`: py-spy records the worker into
DIR/celery.txt, as bench/pipeline.py --profile does the pipeline's worker (it passes its DIR on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

from ninkik_tasks import local

BENCH = Path(__file__).resolve().parent


def cpu(proc: psutil.Process) -> float:
    total = float(sum(proc.cpu_times()[:2]))
    return total + sum(sum(child.cpu_times()[:2]) for child in proc.children(recursive=True))


def main_thread_cpu(proc: psutil.Process) -> float:
    """CPU seconds of the process's main thread: with the threads pool, the worker's event loop (receiving, acks,
    flushing task events); its other threads run the tasks."""
    return next((t.user_time + t.system_time for t in proc.threads() if t.id == proc.pid), 0.0)


def redis_calls(server: redis.Redis) -> int:
    """Commands redis-server has answered so far, all clients and databases (INFO commandstats)."""
    return sum(int(v["calls"]) for v in server.info("commandstats").values())


def spying(directory: Path | None, pid: int) -> contextlib.AbstractContextManager[None]:
    """py-spy on the worker while the chains run, as bench/pipeline.py --profile does on the pipeline's."""
    if directory is None:
        return contextlib.nullcontext()
    from pipeline_run import profiled

    return profiled(directory, {"celery": pid})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chains", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--work", type=Path, help="directory for logs (default: a new temporary one)")
    parser.add_argument("--profile", type=Path, help="py-spy records the worker into DIR/celery.txt (collapsed stacks)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-noop-", dir=args.work))
    redis_proc, redis_url = local.start_redis(work)
    env = {**os.environ, **local.stack_env(redis_url, "http://127.0.0.1:1/000000000000/none")}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")])
    os.environ.update(env)
    sys.path.insert(0, str(BENCH))
    worker = local.Proc(
        "worker",
        [
            *[sys.executable, "-m", "celery", "-A", "noop_chain", "worker", "-E", "--hostname=noop@%h"],
            *[f"--pool={args.pool}", f"--concurrency={args.concurrency}", "--queues=ninkik-aws,ninkik-api"],
        ],
        work,
        env,
    )
    try:
        import noop_chain as noop
        from celery import chain

        counter = redis.Redis.from_url(env["NINKIK_REDIS_URL"])
        local.wait_for(lambda: noop.app.control.ping(timeout=0.5) or not worker.alive(), 60, "the worker")

        def run(chains: int) -> None:
            for i in range(chains):
                event = local.push_event(f"{local.ACCOUNT}/bench", f"sha256:{i:064x}", None)
                chain(
                    noop.match_tenant.s(event), noop.describe_image.s(), noop.fetch_scan_findings.s(), noop.notify.s()
                ).apply_async(add_to_parent=False)

        run(20)  # warm-up: connections, imports
        local.wait_for(lambda: int(counter.get(noop.DONE_KEY) or 0) >= 20, 60, "the warm-up chains")
        me, pool = psutil.Process(), psutil.Process(worker.pid)
        with spying(args.profile, worker.pid):
            mine, theirs, main, began = sum(me.cpu_times()[:2]), cpu(pool), main_thread_cpu(pool), time.monotonic()
            calls = redis_calls(counter)
            run(args.chains)
            publish_cpu = sum(me.cpu_times()[:2]) - mine
            want = 20 + args.chains
            local.wait_for(lambda: int(counter.get(noop.DONE_KEY) or 0) >= want, args.timeout, "the chains")
            seconds, worker_cpu = time.monotonic() - began, cpu(pool) - theirs
            worker_main_cpu = main_thread_cpu(pool) - main
        commands = redis_calls(counter) - calls
    finally:
        worker.stop()
        redis_proc.stop()
    figures = {
        "chains": args.chains,
        "seconds": seconds,
        "publish_cpu": publish_cpu,
        "worker_cpu": worker_cpu,
        "worker_main_cpu": worker_main_cpu,
        "redis_commands": commands,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
