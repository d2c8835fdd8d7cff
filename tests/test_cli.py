"""The real `ninkik-tasks` CLI against real and deliberately absent Redis and AWS endpoints: an operator's
mistake or an outage is one line on stderr with the fix and a non-zero exit; a traceback only for a bug."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import click
import pytest
import redis
from click.testing import CliRunner
from conftest import Stack, own_broker_db

from ninkik_tasks import local
from ninkik_tasks.check import TOKEN_FIX
from ninkik_tasks.cli import _Group
from ninkik_tasks.local import wait_for
from ninkik_tasks.records import failures, quarantine

CLI = [sys.executable, "-m", "ninkik_tasks.cli"]


def cli(env: dict[str, str], *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    """Run `ninkik-tasks args...` to the end."""
    return subprocess.run(
        [*CLI, *args], env={**env, "COLUMNS": str(columns)}, capture_output=True, text=True, timeout=120
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed as the README promises."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ninkik-tasks: ")
    return lines[0]


def closed_port_url(scheme: str = "redis") -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was free a moment ago)."""
    return f"{scheme}://127.0.0.1:{local.free_port()}"


def without_region(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION", "NINKIK_AWS_REGIONS")}


# The region


def test_aws_region_alone_is_enough_for_an_emulator_queue_url(stack: Stack) -> None:
    # botocore reads AWS_DEFAULT_REGION only; the moto queue URL names no region; AWS_REGION must do.
    env = {**without_region(stack.env()), "AWS_REGION": local.REGION, "NINKIK_SQS_QUEUE_URL": stack.new_queue()}
    done = cli(env, "check")
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"regions {local.REGION}" in done.stdout and "OK   sqs: queue" in done.stdout
    proc = local.Proc("ingest-aws-region", [*CLI, "ingest"], stack.work, env)
    try:
        wait_for(lambda: "polling" in proc.output() or not proc.alive(), 30, "ingest to poll")
        assert proc.alive(), proc.output()
        proc.send(signal.SIGTERM)
        wait_for(lambda: not proc.alive(), 15, "ingest to stop")
        assert proc.popen.returncode == 0
    finally:
        proc.stop()
    assert "Traceback" not in proc.output()


@pytest.mark.parametrize("command", ["ingest", "check"])
def test_no_region_anywhere_is_one_line(stack: Stack, command: str) -> None:
    # No ~/.aws/config region either (this machine's, if any, is kept out).
    env = {**without_region(stack.env()), "NINKIK_SQS_QUEUE_URL": stack.new_queue(), "AWS_CONFIG_FILE": "/nonexistent"}
    done = cli(env, command)
    assert "names no region: set AWS_REGION" in one_line(done)


# Redis: ids, a server that is not there


@pytest.mark.parametrize(
    ("args", "listing"),
    [
        (["quarantine", "replay", "179615657246…"], "quarantine list"),
        (["quarantine", "replay", "1796156572460"], "quarantine list"),
        (["failures", "retry", "not-an-id"], "failures list"),
        (["failures", "retry", "1-0-1"], "failures list"),
    ],
)
def test_an_id_that_is_not_one_is_one_line(stack: Stack, args: list[str], listing: str) -> None:
    line = one_line(cli(stack.env(), *args))
    assert "is not a" in line and f"ninkik-tasks {listing}" in line


@pytest.mark.parametrize(("journal", "verb"), [("quarantine", "replay"), ("failures", "retry")])
def test_an_unknown_id_is_one_line(stack: Stack, journal: str, verb: str) -> None:
    env = stack.env(NINKIK_REDIS_NAMESPACE=f"cli-{uuid.uuid4().hex[:8]}")
    line = one_line(cli(env, journal, verb, "1-0"))
    assert "1-0" in line and f"ninkik-tasks {journal} list" in line


@pytest.mark.parametrize(
    "args",
    [
        ["quarantine", "list"],
        ["failures", "list"],
        ["quarantine", "replay", "1-0"],
        ["failures", "retry", "1-0"],
        ["backfill", "--tenant", "11111111-2222-4333-8444-555555555555"],
    ],
)
def test_redis_down_is_one_line(stack: Stack, args: list[str]) -> None:
    down = closed_port_url()
    env = stack.env(NINKIK_REDIS_URL=f"{down}/2", NINKIK_BROKER_URL=f"{down}/0", NINKIK_RESULT_BACKEND=f"{down}/1")
    line = one_line(cli(env, *args))
    assert "does not answer" in line and "NINKIK_" in line


def test_broker_down_is_one_line(stack: Stack) -> None:
    env = stack.env(NINKIK_BROKER_URL=f"{closed_port_url()}/0")
    line = one_line(cli(env, "backfill", "--repository", "11111111-2222-4333-8444-555555555555/shop"))
    assert "NINKIK_BROKER_URL" in line


def test_ids_are_shown_whole_on_a_narrow_terminal(stack: Stack) -> None:
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(f"{stack.redis_url}/2", decode_responses=True)
    entry = quarantine(client, namespace).add(
        reason="invalid_json", error="x" * 300, message_id=str(uuid.uuid4()), body="{"
    )
    terminal = {"TTY_COMPATIBLE": "1", "TERM": "dumb"}  # a terminal to rich, without styles (off one: no wrapping)
    done = cli(stack.env(NINKIK_REDIS_NAMESPACE=namespace, **terminal), "quarantine", "list", columns=80)
    assert done.returncode == 0, done.stderr
    assert entry in done.stdout, done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


def test_piped_output_is_never_wrapped(stack: Stack) -> None:
    """Off a terminal (a log file, `| tee`, CI) rich wrapped at 80 columns: a URL, a repository or a digest copied
    from the output was broken. Each list's output piped, as a script reads it: every value on one line, whole."""
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(f"{stack.redis_url}/2", decode_responses=True)
    url = f"https://ninkik.example/api/v1/tenants/{uuid.uuid4()}/products/{uuid.uuid4()}/images?page=2"
    quarantine(client, namespace).add(reason="invalid_json", error=f"not JSON, from {url}", message_id="m", body="{")
    repository, digest = f"{uuid.uuid4()}/shop/frontend/api-gateway-service", "sha256:" + "0123456789abcdef" * 4
    failures(client, namespace).add(stage="notify", reason="http_400", repository=repository, digest=digest)
    env = {k: v for k, v in stack.env(NINKIK_REDIS_NAMESPACE=namespace).items() if k != "COLUMNS"}
    for journal, whole in (("quarantine", [url]), ("failures", [repository, digest])):
        done = subprocess.run([*CLI, journal, "list"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert all(any(value in line for line in done.stdout.splitlines()) for value in whole), done.stdout


def test_empty_lists_say_none(stack: Stack) -> None:
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    for journal in ("quarantine", "failures"):
        done = cli(stack.env(NINKIK_REDIS_NAMESPACE=namespace), journal, "list")
        assert done.returncode == 0 and done.stdout == "none\n", done.stdout + done.stderr


def test_a_queued_backfill_says_how_to_follow_it(stack: Stack) -> None:
    # A broker DB of its own, which no worker reads: the backfill is only queued.
    done = cli(stack.env(broker_db=own_broker_db(), NINKIK_REDIS_NAMESPACE=f"cli-{uuid.uuid4().hex[:8]}"), "backfill")
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert uuid.UUID(task_id)
    assert f"`celery -A ninkik_tasks result {task_id}`" in done.stderr and "Flower" in done.stderr
    assert "again" not in done.stderr  # running it again would queue a second backfill


# ninkik's API


def test_check_names_a_missing_token(stack: Stack) -> None:
    env = stack.env(NINKIK_SQS_QUEUE_URL=stack.new_queue())
    env.pop("NINKIK_API_TOKEN")
    done = cli(env, "check")
    # 2: what fails is a setting (1 is for the rest, a server that does not answer, a permission not granted).
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    ninkik = [line for line in done.stdout.splitlines() if " ninkik: " in line]
    assert ninkik == [f"FAIL ninkik: NINKIK_API_TOKEN is not set: {TOKEN_FIX}"]


def test_backfill_without_token_names_it(stack: Stack) -> None:
    env = stack.env(NINKIK_REDIS_NAMESPACE=f"cli-{uuid.uuid4().hex[:8]}")
    env.pop("NINKIK_API_TOKEN")
    line = one_line(cli(env, "backfill", "--tenant", "11111111-2222-4333-8444-555555555555"))
    assert "NINKIK_API_TOKEN is not set" in line


def test_api_down_is_one_line(stack: Stack) -> None:
    env = stack.env(NINKIK_API_URL=closed_port_url("http"), NINKIK_REDIS_NAMESPACE=f"cli-{uuid.uuid4().hex[:8]}")
    line = one_line(cli(env, "backfill", "--tenant", "11111111-2222-4333-8444-555555555555"))
    assert "cannot check the tenant with ninkik" in line


# AWS endpoints that refuse or never answer


def test_check_against_an_absent_aws_endpoint_fails_line_by_line(stack: Stack) -> None:
    env = stack.env(AWS_ENDPOINT_URL=closed_port_url("http"), NINKIK_SQS_QUEUE_URL=stack.new_queue())
    done = cli(env, "check")
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "FAIL sqs: cannot reach SQS" in done.stdout and "FAIL ecr: cannot reach ECR" in done.stdout


class SilentServer:
    """A TCP server that accepts every connection and never answers (a stuck endpoint or proxy)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_ingest_against_an_endpoint_that_never_answers(stack: Stack, silent: SilentServer) -> None:
    env = stack.env(
        AWS_ENDPOINT_URL_SQS=silent.url, NINKIK_SQS_QUEUE_URL=stack.new_queue(), NINKIK_SQS_WAIT_SECONDS="2"
    )
    proc = local.Proc("ingest-silent", [*CLI, "ingest"], stack.work, env)
    try:
        # Each attempt ends at the read timeout (5 s above the long poll: 7 s here) with one log line, then a retry.
        wait_for(lambda: "failed (ReadTimeoutError" in proc.output() or not proc.alive(), 60, "a failed attempt")
        assert proc.alive(), proc.output()
        [failed] = [line for line in proc.output().splitlines() if "failed (" in line]
        assert "retrying in" in failed
        wait_for(lambda: len(silent.accepted) >= 2, 30, "the next attempt")
        # SIGTERM inside that second, unanswered call: ingest leaves at once, not at the end of its timeout.
        proc.send(signal.SIGTERM)
        wait_for(lambda: not proc.alive(), 10, "ingest to stop on SIGTERM during an unanswered call")
        assert proc.popen.returncode == 0
    finally:
        proc.stop()
    assert "Traceback" not in proc.output() and "stopped" in proc.output()


def test_ingest_against_a_closed_port_retries_and_stops_on_sigterm(stack: Stack) -> None:
    env = stack.env(
        AWS_ENDPOINT_URL_SQS=closed_port_url("http"), NINKIK_SQS_QUEUE_URL=stack.new_queue(), NINKIK_LOG_LEVEL="DEBUG"
    )
    proc = local.Proc("ingest-refused", [*CLI, "ingest"], stack.work, env)  # DEBUG: every attempt's line
    try:
        wait_for(lambda: proc.output().count("retrying in") >= 2 or not proc.alive(), 60, "two failed attempts")
        assert proc.alive(), proc.output()
        assert "EndpointConnectionError" in proc.output()
        proc.send(signal.SIGTERM)
        wait_for(lambda: not proc.alive(), 10, "ingest to stop on SIGTERM during its pause")
        assert proc.popen.returncode == 0
    finally:
        proc.stop()
    assert "Traceback" not in proc.output()


# A bug


def test_an_unexpected_error_keeps_its_traceback_and_says_it_is_a_bug() -> None:
    # A fake command: no real part of ninkik-tasks can be made to have a bug on purpose.
    @click.group(cls=_Group)
    def group() -> None:
        pass

    @group.command()
    def boom() -> None:
        raise ZeroDivisionError("division by zero")

    result = CliRunner().invoke(group, ["boom"])
    assert result.exit_code == 70
    assert "ZeroDivisionError" in result.output and "this is a bug in ninkik-tasks" in result.output
    usage = CliRunner().invoke(group, ["nope"])
    assert usage.exit_code == 2 and "No such command" in usage.output and "bug" not in usage.output


# The version


def test_version_is_the_package_version() -> None:
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    expected = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    # By name, as an operator runs it: the console script next to this interpreter.
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ninkik-tasks"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ninkik-tasks, version {expected}"
