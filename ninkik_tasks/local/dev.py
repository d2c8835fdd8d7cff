"""`ninkik-tasks dev`: the whole system on one machine, with demo tenants, images and push events."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from .. import local
from ..console import console as make_console
from .standin import Received, Standin

TENANT_A = "3f1c9a52-5d0e-4b8a-9c7e-0a1b2c3d4e5f"
TENANT_B = "8e2d4c61-7a9b-4f3e-8d2c-1b0a9f8e7d6c"
PRODUCT_SHOP = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
PRODUCT_API = "0f1e2d3c-4b5a-4697-8877-665544332211"
PRODUCT_BILLING = "c0ffee00-1234-4567-89ab-cdef01234567"

DEMO_TENANTS: list[dict[str, Any]] = [
    {
        "uuid": TENANT_A,
        "name": "Acme",
        "products": [{"uuid": PRODUCT_SHOP, "name": "web-shop"}, {"uuid": PRODUCT_API, "name": "public-api"}],
    },
    {"uuid": TENANT_B, "name": "Globex", "products": [{"uuid": PRODUCT_BILLING, "name": "billing"}]},
]


def demo_images() -> list[dict[str, Any]]:
    """What `dev` pushes: several tenants, product by UUID and by name, tagged and untagged, basic and enhanced."""
    return [
        {
            "repository": f"{TENANT_A}/{PRODUCT_SHOP}",
            "tag": "1.4.2",
            "findings": [
                local.basic_finding("CVE-2026-0001", "HIGH", "openssl", "3.0.1"),
                local.basic_finding("CVE-2026-0002", "MEDIUM", "zlib", "1.2.11"),
            ],
        },
        {
            "repository": f"{TENANT_A}/public-api",
            "tag": None,
            "enhanced": [local.enhanced_finding("CVE-2026-1234", "CRITICAL", "log4j-core", "2.14.1", "2.17.1")],
        },
        {"repository": f"{TENANT_A}/public-api/worker", "tag": "latest", "findings": []},
        {
            "repository": f"{TENANT_B}/billing",
            "tag": "2026.11",
            "findings": [local.basic_finding("CVE-2026-0420", "LOW", "busybox", "1.36.0")],
        },
    ]


def run(until_done: bool = False, flower_port: int = 5555, broker: str = "redis") -> int:
    """Start everything, seed the demo, print notifications until Ctrl-C (or until all arrived).

    broker: "redis" (the zero-install default: the bundled Redis is the broker too) or "rabbitmq" (a
    rabbitmq-server node of its own, when the package is installed; Redis stays the result backend).
    """
    console = make_console()
    if broker == "rabbitmq" and local.rabbitmq_scripts() is None:
        print(
            f"ninkik-tasks: --broker rabbitmq needs rabbitmq-server, which is not installed: {local.RABBITMQ_INSTALL}"
            " (or leave out --broker to use Redis)",
            file=sys.stderr,
        )
        return 2
    rabbit: local.RabbitMQ | None = None
    work = Path(tempfile.mkdtemp(prefix="ninkik-dev-"))
    procs: list[local.Proc] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    expected = len(demo_images())
    arrived: list[Received] = []
    keep = False  # the logs are kept when something went wrong
    standin: Standin | None = None

    def show(r: Received) -> None:
        image, scan = r.body["image"], r.body["scan"]
        counts = ", ".join(f"{k} {v}" for k, v in scan.get("severity_counts", {}).items()) or "no findings"
        console.print(
            f"[green]notified[/] tenant {r.tenant[:8]}… product {r.product[:8]}… "
            f"[bold]{image['repository'].split('/', 1)[1]}[/]@{image['digest'][7:19]} "
            f"tags={image['tags']} scan={scan['type']}/{scan['status']} ({counts})"
        )
        arrived.append(r)
        if until_done and len(arrived) >= expected:
            stop.set()

    try:
        with console.status("starting Redis and the AWS emulator…"):
            redis_proc, redis_url = local.start_redis(work)
            procs.append(redis_proc)
            moto_proc, moto_url = local.start_moto(work)
            procs.append(moto_proc)
        if broker == "rabbitmq":
            with console.status("starting RabbitMQ…"):
                rabbit = local.start_rabbitmq(work)
        with console.status("starting the ninkik stand-in…"):
            token = secrets.token_urlsafe(24)
            standin = Standin(DEMO_TENANTS, token, on_receive=show).start()
            aws = local.aws_env(moto_url)
            session = boto3.session.Session(
                aws_access_key_id="testing", aws_secret_access_key="testing", region_name=local.REGION
            )
            sqs = session.client("sqs", endpoint_url=moto_url)
            ecr = session.client("ecr", endpoint_url=moto_url)
            queue_url = sqs.create_queue(QueueName="ecr-docker-push", Attributes={"MessageRetentionPeriod": "60"})[
                "QueueUrl"
            ]
        ours = {
            **aws,
            **local.stack_env(redis_url, queue_url),
            "NINKIK_API_URL": standin.url,
            "NINKIK_API_TOKEN": token,  # the stand-in's throw-away token, for this run only
            "NINKIK_METRICS_PORT": str(local.free_port()),
            "NINKIK_METRICS_ADDRESS": "127.0.0.1",
        }
        if rabbit is not None:
            ours["NINKIK_BROKER_URL"] = rabbit.url
            ours["NINKIK_BROKER_MANAGEMENT_URL"] = rabbit.management_url
        # The demo pushes no index, so its untagged image need not be held the production 30 s for one;
        # a value in the environment still wins.
        env = {"NINKIK_UNTAGGED_HOLD_SECONDS": "5", **os.environ, **ours}
        flower_port = flower_port if _port_free(flower_port) else local.free_port()
        celery = [sys.executable, "-m", "celery", "-A", "ninkik_tasks"]
        with console.status("starting ingest, a worker and Flower…"):
            procs.append(local.Proc("worker", [*celery, "worker", "--loglevel", "INFO", "-n", "dev@%h"], work, env))
            procs.append(local.Proc("ingest", [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], work, env))
            # Its REST API without credentials, as everything here listens on 127.0.0.1 only.
            flower_env = {**env, "FLOWER_UNAUTHENTICATED_API": "true"}
            if rabbit is not None:  # Flower's broker tab reads RabbitMQ's management API
                flower_env["FLOWER_BROKER_API"] = f"http://guest:guest@127.0.0.1:{rabbit.management_port}/api/"
            procs.append(
                local.Proc(
                    "flower", [*celery, "flower", "--address=127.0.0.1", f"--port={flower_port}"], work, flower_env
                )
            )
        flower_url = f"http://127.0.0.1:{flower_port}"
        threading.Thread(target=_refresh_flower, args=(flower_url,), daemon=True).start()
        console.print(f"Flower:           [bold]{flower_url}[/] (this machine only: no login, its API open)")
        console.print(f"ninkik stand-in:  {standin.url}/_standin/received")
        console.print(f"AWS emulator:     {moto_url}   queue {queue_url}")
        console.print(f"Redis:            {redis_url}   logs in {work}")
        if rabbit is not None:
            console.print(f"RabbitMQ:         {rabbit.url}   management {rabbit.management_url} (guest/guest)")
        console.print(f"Ingest metrics:   http://127.0.0.1:{env['NINKIK_METRICS_PORT']}/metrics")
        env_file = work / "env"
        _write_env_file(env_file, {k: v for k, v in ours.items() if k not in _NOT_SHARED})
        console.print(
            f"In another shell: [bold]source {env_file}[/] puts this stack's settings and ninkik-tasks' commands "
            "in it (then e.g. ninkik-tasks check)"
        )
        with console.status("seeding tenants, images and scan findings…"):
            for i, item in enumerate(demo_images()):
                digest = local.push_image(ecr, item["repository"], f"demo-{i}", item["tag"])
                local.set_scan_result(
                    moto_url,
                    ecr,
                    item["repository"],
                    digest,
                    findings=item.get("findings"),
                    enhanced=item.get("enhanced"),
                )
                event = local.push_event(item["repository"], digest, item["tag"])
                sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
                console.print(f"pushed   {item['repository'].split('/', 1)[1]}@{digest[7:19]}")
        console.print(f"waiting for {expected} notifications (Ctrl-C to stop)…")
        # From here Ctrl-C ends the wait as SIGTERM does, rather than as a KeyboardInterrupt raised wherever the
        # loop is: inside Popen.poll() it can leave the Popen's wait lock taken, and the cleanup's wait for that
        # process then hangs for ever (dev never stopped, its processes left running).
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        deadline = time.monotonic() + 120
        while not stop.wait(0.5):
            dead = [p.name for p in procs if not p.alive()]
            if dead:
                keep = True
                console.print(f"[red]{', '.join(dead)} stopped unexpectedly[/]: see the logs in {work}")
                return 1
            if until_done and time.monotonic() > deadline:
                keep = True
                console.print(f"[red]only {len(arrived)} of {expected} notifications in 120 s[/]: logs in {work}")
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    except BaseException:
        keep = True
        raise
    finally:
        # Cleanup comes first and cannot be cut short: a second Ctrl-C is ignored, and a closed stdout (`| tee`
        # dies with the same Ctrl-C) only silences what is said. The folder holds the stand-in's token.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _say("stopping…")
        for proc in reversed(procs):
            proc.stop(timeout=10)
        if rabbit is not None:
            rabbit.remove()
        if standin is not None:
            standin.stop()
        (work / "env").unlink(missing_ok=True)
        if keep:
            _say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _say(line: str) -> None:
    """Print, unless stdout is gone (a pipe's reader that died): then stdout goes to /dev/null for good. Not
    through rich, whose answer to a broken pipe is SystemExit, which would cut the cleanup short."""
    try:
        print(line, flush=True)
    except OSError:  # BrokenPipeError, and what a closed terminal gives
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# Per process: a second shell's ingest would find the port taken.
_NOT_SHARED = {"NINKIK_METRICS_PORT", "NINKIK_METRICS_ADDRESS"}


def _write_env_file(path: Path, values: dict[str, str]) -> None:
    """`export NAME=value` lines, mode 0600 (it holds the stand-in's token): plain `source` and `set -a; .` work.
    It also puts the directory of this Python's scripts (the project's .venv/bin) first on PATH, so that
    `ninkik-tasks` and `celery` are found by name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    scripts = Path(sys.executable).parent
    with os.fdopen(fd, "w") as out:
        out.write("# ninkik-tasks dev: source this file in another shell to talk to the running stack.\n")
        out.write(f'export PATH={shlex.quote(str(scripts))}:"$PATH"\n')
        for name, value in sorted(values.items()):
            out.write(f"export {name}={shlex.quote(value)}\n")


def _refresh_flower(url: str) -> None:
    """Make Flower inspect the workers now: its /api/workers is a cache filled when Flower starts."""
    import httpx

    try:
        local.wait_for(lambda: httpx.get(f"{url}/api/workers?refresh=1", timeout=10).json(), 60, "Flower", interval=1.0)
    except TimeoutError:
        return  # Flower or the worker did not come up: the main loop reports the process that died


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
