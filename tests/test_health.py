"""Health probes and shutdown on real processes (docs/health.md): RabbitMQ, a Redis of this module's own.

The probes are `ninkik-tasks health KIND [--ready]` as an orchestrator runs them. The loops beat with a max
age of MAX_AGE seconds here (60 s in production); an orchestrator probing every PERIOD seconds and acting
after THRESHOLD failures is what "fails in time" is measured against.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery
from conftest import TENANT_A, TOKEN, Broker, Stack, make_broker

from ninkik_tasks import local
from ninkik_tasks.health import STOP_GRACE_SECONDS, Heartbeat, check
from ninkik_tasks.local import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAX_AGE = 3.0
PERIOD, THRESHOLD = 1.0, 3  # a Kubernetes-like probe: every second, acting after three failures in a row
REPOSITORY = f"{TENANT_A}/shop"


def probe(env: dict[str, str], kind: str, ready: bool = False) -> tuple[int, str]:
    """Run the probe command as an orchestrator would; (exit code, its line)."""
    argv = [str(BIN / "ninkik-tasks"), "health", kind, *(["--ready"] if ready else [])]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    return done.returncode, (done.stdout + done.stderr).strip()


def passes(env: dict[str, str], kind: str, ready: bool = False) -> bool:
    return probe(env, kind, ready)[0] == 0


# The probe's own reading of the files


def test_probe_reads_the_files_of_running_processes(tmp_path: Path) -> None:
    beat = Heartbeat(tmp_path, "worker", max_age=MAX_AGE).start()
    try:
        assert check("worker", tmp_path, MAX_AGE).ok
        assert not check("worker", tmp_path, MAX_AGE, ready=True).ok, "not ready before its consumer runs"
        beat.ready(True)
        assert check("worker", tmp_path, MAX_AGE, ready=True).ok
        assert not check("ingest", tmp_path, MAX_AGE).ok, "another kind's file is not this kind's"
        # A stopped loop: its file ages past the max age (checked at a later `now`, not by waiting).
        later = time.time() + MAX_AGE + 1
        verdict = check("worker", tmp_path, MAX_AGE, now=later)
        assert not verdict.ok and "stuck" in verdict.line
        # Inside a call that waits on a dependency, the helper thread keeps the file fresh.
        before = beat.alive_path.stat().st_mtime if beat.alive_path else 0.0
        with beat.waiting(30):
            wait_for(lambda: beat.alive_path and beat.alive_path.stat().st_mtime > before + 1, 10, "a helper beat")
        # A file left by a process that is gone is not read (a container restarted in place).
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = (
            tmp_path / beat.alive_path.name.replace(f"-{os.getpid()}.", f"-{dead.pid}.") if beat.alive_path else None
        )
        assert stale is not None
        stale.touch()
        os.utime(stale, (0, 0))
        assert check("worker", tmp_path, MAX_AGE).ok
    finally:
        beat.stop()
    assert [p.name for p in tmp_path.glob("worker-*")] == [stale.name], "a process leaving removes its files"
    assert not check("worker", tmp_path, MAX_AGE).ok


def test_a_call_past_its_bound_is_stuck(tmp_path: Path) -> None:
    """A loop blocked in one call is kept alive for the call's bound, then fails (no SIGSTOP: only the loop)."""
    max_age = 0.4
    beat = Heartbeat(tmp_path, "ingest", max_age=max_age).start()
    try:
        with beat.waiting(1.0):
            wait_for(lambda: not check("ingest", tmp_path, max_age).ok, 10, "the probe to fail past the bound")
            assert beat.alive_path is not None
            assert time.time() - beat.alive_path.stat().st_mtime > max_age
    finally:
        beat.stop()


def test_probe_is_cheap(tmp_path: Path) -> None:
    """No Celery, pydantic, botocore or Redis client is imported per probe; the CPU a probe costs, reported."""
    code = (
        "import sys\nfrom ninkik_tasks.cli import main\n"
        "try:\n    main(['health', 'worker'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'celery', 'kombu', 'pydantic', 'botocore', 'redis'}))"
    )
    env = {**os.environ, "NINKIK_HEALTH_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    runs = 10
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        assert probe(env, "worker")[0] == 1  # no worker here: the cost of a full probe all the same
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / runs
    print(f"\nHEALTH probe_cpu_ms={cpu * 1000:.0f} (user+system per `ninkik-tasks health worker`, mean of {runs})")


# Live processes


@dataclass
class Env:
    """The module's shared servers and the environment of its processes."""

    stack: Stack
    broker: Broker
    redis_proc: local.Proc
    redis_url: str
    work: Path

    def env(self, health: str, **overrides: str) -> dict[str, str]:
        """The processes' environment, with health files in their own directory `health`."""
        return self.broker.env(
            NINKIK_RESULT_BACKEND=f"{self.redis_url}/1",
            NINKIK_REDIS_URL=f"{self.redis_url}/2",
            NINKIK_HEALTH_DIR=str(self.work / health),
            NINKIK_HEALTH_MAX_AGE_SECONDS=str(MAX_AGE),
            NINKIK_ECR_CALLS_PER_SECOND="0",
            PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **overrides,
        )

    def restart_redis(self) -> None:
        """Start the module's Redis again on its port and data (after `redis_proc.stop()`)."""
        port = int(self.redis_url.rsplit(":", 1)[1])
        self.redis_proc, _ = local.start_redis(self.work, port=port, data_dir=self.work / "redis-data")


@pytest.fixture(scope="module")
def servers(stack: Stack, rabbitmq: local.RabbitMQ, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One RabbitMQ vhost and one Redis for the module (its outages stay inside it)."""
    work = tmp_path_factory.mktemp("health")
    redis_proc, url = local.start_redis(work, data_dir=work / "redis-data")
    made = Env(stack, make_broker(stack, "rabbitmq", rabbitmq), redis_proc, url, work)
    try:
        yield made
    finally:
        made.redis_proc.stop()


def spawn_worker(env: dict[str, str], name: str) -> local.Proc:
    """A worker started exactly as workers/entrypoint.sh starts it (its name given after it, as compose could)."""
    argv = ["sh", str(ROOT / "workers" / "entrypoint.sh"), "-n", f"{name}@%h"]
    return local.Proc(f"health-{name}", argv, Path(env["NINKIK_HEALTH_DIR"]).parent, env)


def spawn_ingest(env: dict[str, str], name: str) -> local.Proc:
    return local.Proc(name, [str(BIN / "ninkik-tasks"), "ingest"], Path(env["NINKIK_HEALTH_DIR"]).parent, env)


def spawn_beat(env: dict[str, str], name: str) -> local.Proc:
    return local.Proc(name, ["sh", str(ROOT / "beat" / "entrypoint.sh")], Path(env["NINKIK_HEALTH_DIR"]).parent, env)


def wait_started(started: list[tuple[local.Proc, str, dict[str, str], bool]], timeout: float = 60) -> None:
    """Wait until each (process, kind, env, ready) passes its probe (`ready`: its readiness probe)."""
    for proc, kind, env, ready in started:
        try:
            wait_for(
                lambda p=proc, k=kind, e=env, r=ready: passes(e, k, r) or not p.alive(),
                timeout,
                f"{proc.name} to start",
            )
        except TimeoutError:
            raise AssertionError(f"{proc.name} did not start:\n{proc.output()[-3000:]}") from None
        assert proc.alive(), proc.output()[-3000:]


def start_worker(env: dict[str, str], name: str) -> local.Proc:
    """spawn_worker, until ready."""
    proc = spawn_worker(env, name)
    try:
        wait_started([(proc, "worker", env, True)])
    except AssertionError:
        proc.stop()
        raise
    return proc


def alive_through(envs: dict[str, dict[str, str]], seconds: float, what: str) -> dict[str, bool]:
    """Probe every process's liveness for `seconds` (the outage's length): each must pass every time.

    `envs`: the process's kind (or "<kind> <what>") -> its environment. Returns, per process, whether its
    readiness failed at some point (it may, during an outage).
    """
    not_ready = dict.fromkeys(envs, False)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for label, env in envs.items():
            kind = label.split()[0]
            code, line = probe(env, kind)
            assert code == 0, f"{label} liveness failed during {what}: {line}"
            not_ready[label] = not_ready[label] or not passes(env, kind, ready=True)
    return not_ready


def fail_after_freeze(envs: dict[str, dict[str, str]], procs: dict[str, local.Proc]) -> dict[str, float]:
    """SIGSTOP the processes; seconds until each one's probe fails (within MAX_AGE + PERIOD x THRESHOLD); SIGCONT."""
    frozen = time.monotonic()
    took: dict[str, float] = {}
    for proc in procs.values():
        proc.send(signal.SIGSTOP)
    try:

        def all_failed() -> bool:
            for kind in set(procs) - set(took):
                if not passes(envs[kind], kind):
                    took[kind] = time.monotonic() - frozen
            return len(took) == len(procs)

        wait_for(all_failed, MAX_AGE + PERIOD * THRESHOLD, f"the probes to fail once frozen (failed: {took})")
        return took
    finally:
        for proc in procs.values():
            proc.send(signal.SIGCONT)


def test_probes_through_broker_and_redis_outages_and_a_freeze(servers: Env) -> None:
    stack = servers.stack
    stack.standin.reset()
    envs = {kind: servers.env(f"probes-{kind}") for kind in ("worker", "ingest", "beat")}
    envs["ingest"]["NINKIK_METRICS_PORT"] = str(local.free_port())
    queue_url = stack.new_queue()
    envs["ingest"]["NINKIK_SQS_QUEUE_URL"] = queue_url
    standby_env = servers.env("probes-standby")
    procs = {
        "worker": spawn_worker(envs["worker"], "probed"),
        "ingest": spawn_ingest(envs["ingest"], "ingest-probed"),
        "beat": spawn_beat(envs["beat"], "beat-probed"),
    }
    worker, feeder, beat = procs.values()
    standby: local.Proc | None = None
    digests: list[str] = []
    outage = 2 * MAX_AGE  # longer than a file may age: a loop that stopped beating would fail in it

    def send_one(label: str) -> None:
        digest = stack.push(REPOSITORY, label)
        digests.append(digest)
        stack.send(queue_url, local.push_event(REPOSITORY, digest, label))

    try:
        wait_started([(beat, "beat", envs["beat"], True)])  # the lock is the first one's
        standby = spawn_beat(standby_env, "beat-standby")
        started = [(p, kind, envs[kind], True) for kind, p in procs.items()]
        wait_started([*started, (standby, "beat", standby_env, False)])
        # One signal for probes and alerts: ingest's /metrics has every loop's last beat, as their files have it.
        metrics = httpx.get(f"http://127.0.0.1:{envs['ingest']['NINKIK_METRICS_PORT']}/metrics", timeout=10).text
        for kind in ("worker", "ingest", "beat"):
            lines = [x for x in metrics.splitlines() if x.startswith(f"ninkik_{kind}_last_loop_timestamp_seconds")]
            newest = max(p.stat().st_mtime for p in (servers.work / f"probes-{kind}").glob(f"{kind}-*.alive"))
            assert any(abs(float(x.split()[-1]) - newest) < 3 * MAX_AGE for x in lines), (lines, newest)

        assert "ready" in probe(envs["worker"], "worker", ready=True)[1]
        assert not passes(standby_env, "beat", ready=True) and passes(standby_env, "beat"), (
            "a standby: alive, not ready"
        )

        # The broker away (the node's application stopped: connections closed, connecting refused): the
        # worker reconnects, ingest waits to publish the chain of an event that arrives meanwhile.
        node = servers.broker.node
        assert node is not None
        assert node.ctl("stop_app").returncode == 0
        try:
            send_one("broker-outage")
            not_ready = alive_through(envs, outage, "the broker outage")
        finally:
            assert node.ctl("start_app").returncode == 0
        assert not_ready["worker"], "the worker's consumer cannot consume while the broker is away"
        wait_for(lambda: passes(envs["worker"], "worker", ready=True), 60, "the worker to be ready again")

        # Redis away: results, records, the schedule's lock. Beat rides it out; ingest retries its batch.
        servers.redis_proc.stop()
        try:
            send_one("redis-outage")
            not_ready = alive_through({**envs, "beat standby": standby_env}, outage, "the Redis outage")
        finally:
            servers.restart_redis()
        assert not_ready["ingest"] and not_ready["beat"], "ingest's poll and beat's tick need Redis"
        for kind, env in envs.items():
            wait_for(lambda env=env, kind=kind: passes(env, kind, ready=True), 60, f"{kind} to be ready again")
        wait_for(lambda: {r.body["image"]["digest"] for r in stack.standin.received} >= set(digests), 120, "the events")

        # Frozen: each probe fails within the max age and the orchestrator's period x threshold.
        took = fail_after_freeze(envs, procs)
        for kind, env in envs.items():
            wait_for(lambda env=env, kind=kind: passes(env, kind), 30, f"{kind} to pass again once thawed")
        assert all(p.alive() for p in [*procs.values(), standby])
        print(
            f"\nHEALTH freeze_to_failure_s={ {k: round(v, 1) for k, v in took.items()} } max_age_s={MAX_AGE} "
            f"outages_s={outage} (broker, Redis): liveness passed throughout, readiness failed as expected"
        )

        # Beat stops: it releases the lock and the standby holds it at its next try.
        stopped = time.monotonic()
        beat.stop(timeout=STOP_GRACE_SECONDS["beat"])
        assert beat.popen.returncode is not None and "Releasing lock" in beat.output()
        wait_for(lambda: passes(standby_env, "beat", ready=True), 30, "the standby to take the lock")
        print(f"HEALTH beat_standby_took_over_s={time.monotonic() - stopped:.1f}")
    finally:
        for proc in (feeder, worker, beat, standby):
            if proc is not None:
                proc.stop()


# Scale-in: SIGTERM to workers busy with chains, and to the one running a backfill


def _stats(servers: Env) -> dict[str, int]:
    r = redis.Redis.from_url(f"{servers.redis_url}/2", decode_responses=True)
    return {k: int(v) for k, v in r.hgetall("ninkik:stats").items() if v.isdigit()}  # counts (not latency_sum)


def _already_sent(stats: dict[str, int]) -> int:
    return sum(v for k, v in stats.items() if k.startswith("already_sent:"))


def stop_in_grace(proc: local.Proc) -> float:
    """SIGTERM, as an orchestrator scaling in; the seconds it took to exit (within the documented grace)."""
    began = time.monotonic()
    proc.send(signal.SIGTERM)
    wait_for(lambda: not proc.alive(), STOP_GRACE_SECONDS["worker"], "the worker to exit within its grace period")
    took = time.monotonic() - began
    assert proc.popen.returncode == 0, proc.output()[-3000:]
    proc.stop()
    return took


def test_scale_in_of_busy_workers_loses_and_doubles_nothing(servers: Env) -> None:
    stack = servers.stack
    stack.standin.reset()
    broker = make_broker(stack, "rabbitmq", servers.broker.node)
    env = {**servers.env("scale-in"), "NINKIK_BROKER_URL": broker.url}
    queue_url = stack.new_queue()
    digests = [stack.push(REPOSITORY, f"scale-{i}") for i in range(60)]
    stack.standin.answer_next(0, times=len(digests), delay=0.2)  # ninkik answers in 0.2 s: steps are running
    before = _already_sent(_stats(servers))
    workers = [spawn_worker(env, "scale-a"), spawn_worker(env, "scale-b")]
    feeder = spawn_ingest({**env, "NINKIK_SQS_QUEUE_URL": queue_url}, "ingest-scale-in")
    exits: list[float] = []
    try:
        wait_started([*((w, "worker", env, True) for w in workers), (feeder, "ingest", env, True)])
        for i in range(0, len(digests), 10):
            entries = [
                {"Id": str(j), "MessageBody": json.dumps(local.push_event(REPOSITORY, d, f"scale-{i + j}"))}
                for j, d in enumerate(digests[i : i + 10])
            ]
            stack.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)  # type: ignore[arg-type]
        for target in (len(digests) // 4, len(digests) // 2):
            wait_for(lambda target=target: len(stack.standin.received) >= target, 120, "progress")
            exits.append(stop_in_grace(workers.pop(0)))  # the oldest worker goes, as in a scale-in
            workers.append(start_worker(env, f"scale-{len(exits)}"))
        wait_for(lambda: {r.body["image"]["digest"] for r in stack.standin.received} >= set(digests), 180, "all")
        got = [r.body["image"]["digest"] for r in stack.standin.received if r.body["image"]["digest"] in digests]
        assert sorted(got) == sorted(digests), "every image notified exactly once"
        assert _already_sent(_stats(servers)) == before, "no step ran twice as far as the notification"
        print(
            f"\nHEALTH scale_in_exit_s={[round(e, 1) for e in exits]} grace_s={STOP_GRACE_SECONDS['worker']} "
            f"images={len(digests)} notified_once={len(set(got))}"
        )
    finally:
        feeder.stop()
        for w in workers:
            w.stop()


def test_worker_stopped_mid_backfill_hands_it_on(servers: Env) -> None:
    stack = servers.stack
    stack.standin.reset()
    broker = make_broker(stack, "rabbitmq", servers.broker.node)
    # Calls to ECR at 6 a second: the backfill takes seconds, long enough to be stopped in the middle.
    env = {**servers.env("backfill"), "NINKIK_BROKER_URL": broker.url, "NINKIK_ECR_CALLS_PER_SECOND": "6"}
    label = os.urandom(3).hex()
    repositories = [f"{TENANT_A}/shop/sweep-{label}-{i}" for i in range(6)]
    digests = [stack.push(repo, f"v{j}") for repo in repositories for j in range(3)]
    before = _already_sent(_stats(servers))
    # The one that runs the backfill takes every queue; the other only the chain's, until its replacement comes.
    first = spawn_worker(env, "sweep-a")
    chains_env = {
        **env,
        "NINKIK_WORKER_QUEUES": "ninkik-aws,ninkik-api",
        "NINKIK_HEALTH_DIR": f"{env['NINKIK_HEALTH_DIR']}-b",
    }
    chains_only = spawn_worker(chains_env, "sweep-b")
    workers = [first, chains_only]
    app = Celery(backend=env["NINKIK_RESULT_BACKEND"])
    try:
        wait_started([(first, "worker", env, True), (chains_only, "worker", chains_env, True)])
        queued = subprocess.run(
            [str(BIN / "ninkik-tasks"), "backfill", *(f"--repository={r}" for r in repositories)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert queued.returncode == 0, queued.stdout + queued.stderr
        result = app.AsyncResult(queued.stdout.split()[0])
        wait_for(
            lambda: result.state == "PROGRESS" and result.info.get("chains_started", 0) > 0 or result.ready(),
            60,
            "the backfill to be under way",
        )
        interrupted = not result.ready()
        exit_s = stop_in_grace(workers.pop(0))
        workers.append(start_worker(env, "sweep-c"))  # the replacement, as a rollout or an autoscaler starts it
        wait_for(result.ready, 120, "the backfill to finish")
        summary = result.get(timeout=5)
        wait_for(lambda: {r.body["image"]["digest"] for r in stack.standin.received} >= set(digests), 120, "all")
        got = [r.body["image"]["digest"] for r in stack.standin.received if r.body["image"]["digest"] in digests]
        assert sorted(got) == sorted(digests), "every image of the sweep notified exactly once"
        assert _already_sent(_stats(servers)) == before, "no image's chain started twice"
        if interrupted and "queued again" in first.output():
            # The copy went on where the first stopped: it started only the chains the first had not.
            assert summary["already_started"] > 0 and summary["chains_started"] < len(digests), summary
        assert summary["already_started"] + summary["chains_started"] == len(digests), summary
        print(
            f"\nHEALTH backfill_stopped exit_s={exit_s:.1f} handed_on={'queued again' in first.output()} "
            f"images={len(digests)} chains_by_copy={summary['chains_started']} "
            f"already_started={summary['already_started']}"
        )
    finally:
        app.close()
        for w in workers:
            w.stop()


def test_a_stopped_backfill_goes_on_where_it_stopped(stack: Stack) -> None:
    """In process, with a stubbed ECR: stopped after 3 of 6 chains; the same run again starts the other 3."""
    from botocore.stub import Stubber
    from test_backfill import StubbedServices, detail, digest_of, image_page, paged, stubbed_ecr

    from ninkik_tasks.backfill import backfill
    from ninkik_tasks.config import Settings
    from ninkik_tasks.errors import SweepStopped
    from ninkik_tasks.filters import Filters

    settings = Settings(
        redis_url=f"{stack.redis_url}/2",
        redis_namespace=f"t-{os.urandom(4).hex()}",
        aws_account_ids=[local.ACCOUNT],
        aws_regions=[local.REGION],
        api_url=stack.standin.url,
        api_token=TOKEN,
    )
    svc = StubbedServices(settings, redis.Redis.from_url(settings.redis_url, decode_responses=True), httpx.Client())
    svc.stubbed = stubbed_ecr()
    now = datetime.now(UTC)
    repositories = [f"{TENANT_A}/shop/stop-{i}" for i in range(3)]
    images = {
        r: [detail(r, digest_of(f"{i}{j}"), now, [f"v{j}"]) for j in range(2)] for i, r in enumerate(repositories)
    }
    filters = Filters(repositories=repositories)

    def run(run_id: str, read: list[str], stop_after: int | None = None) -> tuple[list[str], dict[str, object]]:
        started: list[str] = []
        with Stubber(svc.stubbed) as stub:
            for r in read:
                stub.add_response("describe_images", image_page(images[r]), paged(repositoryName=r))
            stop = None if stop_after is None else (lambda: len(started) >= stop_after)
            summary = backfill(svc, filters, lambda e: started.append(e.digest), run_id=run_id, stop=stop)
            stub.assert_no_pending_responses()
        return started, summary

    try:
        with pytest.raises(SweepStopped):
            run("run-1", repositories[:2], stop_after=3)
        again, summary = run("run-1", repositories)
        first = [d["imageDigest"] for r in repositories for d in images[r]][:3]
        assert sorted(again) == sorted(
            d["imageDigest"] for r in repositories for d in images[r] if d["imageDigest"] not in first
        )
        assert (summary["chains_started"], summary["already_started"]) == (3, 3)
        # Another run (another backfill) starts them all: the records are the run's, not the images'.
        assert len(run("run-2", repositories)[0]) == 6
    finally:
        svc.http.close()
