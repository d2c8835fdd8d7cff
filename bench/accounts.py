"""The chain across 3 accounts, each at its own ECR budget, against one account at the same total rate.

    .venv/bin/python bench/accounts.py                          # budget 6 calls/s, 120 events, paced at 6/s
    .venv/bin/python bench/accounts.py --budget 6 --events 30 --rate 6 --configs 1,3 --no-write

NINKIK_ECR_CALLS_PER_SECOND is per account and region (ECR counts its quotas that way), so three accounts should
go about three times as fast as one when the budget binds. Starts redis-server, moto's server and the ninkik
stand-in (in this process); in moto, three accounts reached through AssumeRole, each with its own queue and 10
repositories of images with a finished scan (moto puts what an assumed role creates in the role's account, as
tests/test_many_accounts.py does). Then, for each configuration, it writes an accounts file (each account's role
and queue; the processes assume the roles from the base identity, as a deployment does), starts one `ninkik-tasks
ingest` and one worker (workers/entrypoint.sh's pool and concurrency), all with NINKIK_ECR_CALLS_PER_SECOND at
`--budget` (`1x3`: one account at three times it), and measures two phases, the events spread evenly over the
configuration's accounts, each sent to its own account's queue:

- saturated: `--events` events, at most 20 per account not yet notified: events/s from the first send to the last
  POST, and each account's ECR calls per second (the workers' own count, ninkik_ecr_calls_total);
- paced: `--events` more at `--rate` events/s in all, the same rate for every configuration: events/s delivered,
  ECR calls per image (where a backlog builds up, one DescribeImages describes several images of a repository)
  and the latency of each image from its event sent to the stand-in receiving its report (p50 / p95 / max).

The scans are final at the push (moto): the budget's use is one DescribeImageScanFindings per image and a share of
a DescribeImages (batched per repository). Figures go to bench/RESULTS.md (`--no-write` skips).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import redis
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402
from pipeline import entrypoint_defaults, machine  # noqa: E402
from pipeline_run import QUEUES, TENANTS, Arrivals, RunFailed, alive, bench_env, pct, pinged, seed  # noqa: E402

from ninkik_tasks import local  # noqa: E402
from ninkik_tasks.local.standin import Standin  # noqa: E402

ACCOUNTS = ("111111111111", "222222222222", "333333333333")
WARMUP = 10  # events per account first, not counted: AssumeRole, clients, the tenant lookup
WINDOW = 20  # per account: events sent and not yet notified in the saturated phase (the limiter's queue stays short)
STALL = 60.0  # seconds without a notification before a run is given up


def role(account: str) -> str:
    return f"arn:aws:iam::{account}:role/ninkik-tasks"


@dataclass
class Account:
    """One emulated account: its clients (as its role), its queue, its images not used yet."""

    id: str
    ecr: Any
    sqs: Any
    queue: str
    images: list[tuple[str, str]]

    def take(self, count: int) -> list[tuple[str, str, str]]:
        """(account, repository, digest) of `count` images no run has used."""
        taken, self.images = self.images[:count], self.images[count:]
        if len(taken) < count:
            raise RunFailed(f"account {self.id}: {count} images wanted, {len(taken)} left")
        return [(self.id, repository, digest) for repository, digest in taken]


@dataclass
class Config:
    """A configuration: how many accounts, each at what budget."""

    accounts: int
    budget: float

    @property
    def label(self) -> str:
        plural = "s" if self.accounts > 1 else ""
        return f"{self.accounts} account{plural} at {self.budget:g} ECR calls/s each"


def organization(aws_url: str, images: dict[str, int]) -> dict[str, Account]:
    """The accounts, each made as its role: a queue and `images[account]` images with a finished scan."""
    base = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=local.REGION)
    sts = base.client("sts", endpoint_url=aws_url)
    out = {}
    for account, count in images.items():
        creds = sts.assume_role(RoleArn=role(account), RoleSessionName="bench-setup")["Credentials"]
        session = boto3.session.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=local.REGION,
        )
        ecr, sqs = session.client("ecr", endpoint_url=aws_url), session.client("sqs", endpoint_url=aws_url)
        queue = sqs.create_queue(QueueName="ecr-docker-push", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        assert f"/{account}/" in queue, queue  # the role's account, not the base identity's
        out[account] = Account(account, ecr, sqs, queue, seed(ecr, count))
    return out


def interleave(groups: list[list[tuple[str, str, str]]]) -> list[tuple[str, str, str]]:
    """The accounts' images taken in turn, so that each phase spreads its events evenly over the accounts."""
    return [image for batch in zip(*groups, strict=True) for image in batch]


def send(accounts: dict[str, Account], images: list[tuple[str, str, str]], arrivals: Arrivals) -> None:
    """Each image's push event, to its own account's queue (10 per call, one call per account)."""
    now = time.time()
    for account, acc in accounts.items():
        mine = [(repository, digest) for owner, repository, digest in images if owner == account]
        for start in range(0, len(mine), 10):
            batch = mine[start : start + 10]
            for _, digest in batch:
                arrivals.sent[digest] = now
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(local.push_event(repository, digest, account=account))}
                for i, (repository, digest) in enumerate(batch)
            ]
            acc.sqs.send_message_batch(QueueUrl=acc.queue, Entries=entries)


def wait_all(arrivals: Arrivals, count: int, procs: list[local.Proc]) -> None:
    """Until `count` of the expected images are notified; RunFailed after STALL s without one."""
    done, progress_at = -1, time.monotonic()
    with arrivals.cond:
        while arrivals.done < count:
            if arrivals.done > done:
                done, progress_at = arrivals.done, time.monotonic()
            if time.monotonic() - progress_at > STALL:
                raise RunFailed(f"no notification for {STALL:.0f} s ({arrivals.done} of {count} arrived)")
            arrivals.cond.wait(0.2)
            alive(procs)


def saturated(
    accounts: dict[str, Account], images: list[tuple[str, str, str]], arrivals: Arrivals, procs: list[local.Proc]
) -> tuple[float, float]:
    """Send with at most WINDOW unanswered per account; (first send, last POST)."""
    arrivals.expect([d for _, _, d in images])
    window = WINDOW * len(accounts)
    sent, first = 0, time.time()
    while sent < len(images):
        with arrivals.cond:
            while sent - arrivals.done + len(accounts) > window:
                arrivals.cond.wait(0.2)
                alive(procs)
        batch = images[sent : sent + len(accounts)]  # one image per account
        send(accounts, batch, arrivals)
        sent += len(batch)
    wait_all(arrivals, len(images), procs)
    return first, max(arrivals.received[d] for _, _, d in images)


def paced(
    accounts: dict[str, Account],
    images: list[tuple[str, str, str]],
    rate: float,
    arrivals: Arrivals,
    procs: list[local.Proc],
) -> tuple[float, float]:
    """Send one event every 1/`rate` s, in turn over the accounts, then wait for all; (first send, last POST)."""
    arrivals.expect([d for _, _, d in images])
    began, first = time.monotonic(), time.time()
    for i, (account, repository, digest) in enumerate(images):
        pause = began + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        arrivals.sent[digest] = time.time()
        acc = accounts[account]
        body = json.dumps(local.push_event(repository, digest, account=account))
        acc.sqs.send_message(QueueUrl=acc.queue, MessageBody=body)
    wait_all(arrivals, len(images), procs)
    return first, max(arrivals.received[d] for _, _, d in images)


def ecr_calls(client: redis.Redis) -> dict[str, int]:
    """account -> the workers' ECR HTTP attempts so far (PipelineStats' `ecr_call:<account>:<region>`)."""
    stats = client.hgetall("ninkik:stats")
    out: dict[str, int] = {}
    for key, value in stats.items():
        if str(key).startswith("ecr_call:"):
            account = str(key).split(":")[1]
            out[account] = out.get(account, 0) + int(value)
    return out


def run(
    config: Config,
    accounts: dict[str, Account],
    events: int,
    rate: float,
    work: Path,
    aws_url: str,
    redis_url: str,
    standin: Standin,
    token: str,
    arrivals: Arrivals,
) -> dict[str, Any]:
    """One ingest and one worker reading the configuration's accounts; both phases' figures."""
    mine = {a: accounts[a] for a in ACCOUNTS[: config.accounts]}
    per_account = events // config.accounts
    listed = [
        {"id": a, "regions": [local.REGION], "queues": [acc.queue], "role_arn": role(a), "external_id": f"bench-{a}"}
        for a, acc in mine.items()
    ]
    name = f"{config.accounts}x{config.budget:g}"
    accounts_file = work / f"accounts-{name}.json"
    accounts_file.write_text(json.dumps({"accounts": listed}))
    env = bench_env(
        aws_url,
        redis_url,
        next(iter(mine.values())).queue,
        NINKIK_ACCOUNTS_FILE=str(accounts_file),
        NINKIK_API_URL=standin.url,
        NINKIK_API_TOKEN=token,
        NINKIK_ECR_CALLS_PER_SECOND=f"{config.budget:g}",
        NINKIK_HEALTH_DIR=str(work / f"health-{name}"),
    )
    for one_account in ("NINKIK_SQS_QUEUE_URL", "NINKIK_AWS_ACCOUNT_IDS"):
        del env[one_account]
    pool, concurrency = entrypoint_defaults()
    worker = local.Proc(
        f"worker-{name}",
        [
            *[sys.executable, "-m", "celery", "-A", "ninkik_tasks", "worker"],
            *[f"--pool={pool}", f"--concurrency={concurrency}", f"--queues={QUEUES}"],
            *[f"--hostname={name}@%h", "-E"],  # as workers/entrypoint.sh runs it
        ],
        work,
        env,
    )
    ingest = local.Proc(f"ingest-{name}", [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], work, env)
    procs = [ingest, worker]
    try:
        local.wait_for(lambda: "polling" in ingest.output() or not ingest.alive(), 60, "ingest to poll")
        probe = Celery(broker=env["NINKIK_BROKER_URL"])
        local.wait_for(lambda: not worker.alive() or f"{name}@" in pinged(probe), 90, "the worker")
        alive(procs)
        stats = redis.Redis.from_url(f"{redis_url}/2", decode_responses=True)
        warmup = interleave([acc.take(WARMUP) for acc in mine.values()])
        saturated(mine, warmup, arrivals, procs)
        load = interleave([acc.take(per_account) for acc in mine.values()])
        time.sleep(1.5)  # the warmup's last counts written (metrics.PipelineStats.soon: within a second)
        calls_before = ecr_calls(stats)
        first, last = saturated(mine, load, arrivals, procs)
        time.sleep(1.5)  # the phase's last counts written
        calls = {a: n - calls_before.get(a, 0) for a, n in ecr_calls(stats).items() if a in mine}
        steady = interleave([acc.take(per_account) for acc in mine.values()])
        calls_before = ecr_calls(stats)
        paced_first, paced_last = paced(mine, steady, rate, arrivals, procs)
        time.sleep(1.5)
        paced_calls = sum(n - calls_before.get(a, 0) for a, n in ecr_calls(stats).items() if a in mine)
        latency = arrivals.latencies([d for _, _, d in steady])
        reports = Counter(r.body["image"]["digest"] for r in standin.received)
        assert all(reports[d] == 1 for _, _, d in load + steady), "an image not notified exactly once"
        assert "Traceback" not in ingest.output() + worker.output(), (ingest.output() + worker.output())[-3000:]
    finally:
        ingest.stop()
        worker.stop()
    took = last - first
    row = {
        "config": config.label,
        "accounts": config.accounts,
        "budget": config.budget,
        "events": len(load),
        "rate": len(load) / took,
        "calls_per_account": {a: n / took for a, n in sorted(calls.items())},
        "calls_per_image": sum(calls.values()) / len(load),
        "paced_events": len(steady),
        "paced_rate": len(steady) / (paced_last - paced_first),
        "paced_calls_per_image": paced_calls / len(steady),
        "p50": pct(latency, 50),
        "p95": pct(latency, 95),
        "max": max(latency),
    }
    print(row, flush=True)
    return row


def parse_configs(text: str, budget: float) -> list[Config]:
    """`1,3,1x3` -> one account at the budget, three at the budget, one at three times it."""
    out = []
    for item in text.split(","):
        count, _, times = item.strip().partition("x")
        out.append(Config(int(count), budget * (float(times) if times else 1.0)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=6.0, help="NINKIK_ECR_CALLS_PER_SECOND (per account)")
    parser.add_argument("--events", type=int, default=120, help="events in each phase, spread over the accounts")
    parser.add_argument("--rate", type=float, default=6.0, help="the paced phase's events per second, in all")
    parser.add_argument("--configs", default="1,3,1x3", help="accounts[xbudget multiple], one run each")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    configs = parse_configs(args.configs, args.budget)
    needed = {a: 0 for a in ACCOUNTS[: max(c.accounts for c in configs)]}
    for config in configs:
        for account in ACCOUNTS[: config.accounts]:
            needed[account] += WARMUP + 2 * (args.events // config.accounts)
    work = Path(tempfile.mkdtemp(prefix="ninkik-bench-accounts-"))
    arrivals = Arrivals()
    rows = []
    with contextlib.ExitStack() as stack:
        redis_proc, redis_url = local.start_redis(work)
        stack.callback(redis_proc.stop)
        moto_proc, aws_url = local.start_moto(work)
        stack.callback(moto_proc.stop)
        token = secrets.token_urlsafe(16)
        standin = Standin(TENANTS, token, on_receive=arrivals.on_receive).start()
        stack.callback(standin.stop)
        accounts = organization(aws_url, needed)
        print(f"logs in {work}", flush=True)
        for config in configs:
            rows.append(
                run(config, accounts, args.events, args.rate, work, aws_url, redis_url, standin, token, arrivals)
            )
    table = "\n".join(
        [
            "| configuration | saturated: events/s | ECR calls/s per account | ECR calls per image | "
            f"paced at {args.rate:g}/s in all: events/s delivered | ECR calls per image | latency p50 / p95 / max, s |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {r['config']} | {r['rate']:.1f} | "
                + " / ".join(f"{v:.1f}" for v in r["calls_per_account"].values())
                + f" | {r['calls_per_image']:.2f} | {r['paced_rate']:.1f} | {r['paced_calls_per_image']:.2f} | "
                f"{r['p50']:.2f} / {r['p95']:.2f} / {r['max']:.2f} |"
                for r in rows
            ),
        ]
    )
    print(table)
    if not args.no_write:
        command = results.relative(" ".join([".venv/bin/python", *sys.argv]))
        pool, concurrency = entrypoint_defaults()
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        header = (
            f"## Accounts: the chain across 3 accounts against one ({when})\n\n"
            f"`{command}` on {machine()}; moto's server, each account reached through AssumeRole with its own "
            f"queue; one ingest, one worker ({pool} x{concurrency}); {args.events} events per phase after "
            f"{WARMUP} per account not counted, spread evenly over the accounts. Saturated: at most {WINDOW} per "
            f"account not yet notified; paced: {args.rate:g} events/s in all, whatever the number of accounts."
        )
        figures = [
            (
                f"Accounts: {r['config']} (moto): events/s saturated; paced at {args.rate:g}/s in all: delivered/s, "
                "latency p50 / p95",
                f"{r['rate']:.1f}; {r['paced_rate']:.1f}/s, {r['p50']:.2f} / {r['p95']:.2f} s",
            )
            for r in rows
        ]
        results.record(figures, command, header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
