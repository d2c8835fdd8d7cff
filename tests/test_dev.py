"""The README's first command: `ninkik-tasks dev` runs everything and shows notifications arriving, a second
shell set up as the README says can talk to it (`ninkik-tasks check` passes), and it leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import CI

from ninkik_tasks import local
from ninkik_tasks.local.dev import demo_images

# Each test runs a whole dev stack (ports it picks itself, Flower's 5555 when free): one at a time, on one worker.
pytestmark = [pytest.mark.servers, pytest.mark.xdist_group("dev")]


def _readme_second_shell() -> list[str]:
    """The lines of the README's fenced sh block under its "second shell" heading."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = re.search(r"^#+ [^\n]*second shell[^\n]*\n(.*?)^#", text, re.S | re.M | re.I)
    assert section, "README.md has no second-shell section"
    block = re.search(r"```sh\n(.*?)```", section.group(1), re.S)
    assert block, "the README's second-shell section has no ```sh block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def _clean_env(tmp_path: Path) -> dict[str, str]:
    # A new user's shell: no NINKIK_ or AWS_ settings; TMPDIR so the run's folder can be looked for. Its output goes
    # to a pipe, with no COLUMNS: as in `> log` or `| tee`, where rich wrapped every line at 80 columns.
    return {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}


def _whole_lines(out: str) -> None:
    """What an operator copies comes out on one line: Flower's address, the queue's URL, the env file's path."""
    lines = out.splitlines()
    assert any(re.fullmatch(r"Flower: +http://127\.0\.0\.1:\d+ \(.*its API open\)", line) for line in lines), out
    assert any(re.fullmatch(r"AWS emulator: +\S+ +queue http://\S+/ecr-docker-push", line) for line in lines), out
    assert any(re.fullmatch(r"In another shell: source /\S+/ninkik-dev-\S+/env puts .*check\)", line) for line in lines)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_dev_shows_every_demo_notification_and_stops_cleanly(broker: str, tmp_path: Path) -> None:
    if broker == "rabbitmq" and local.rabbitmq_scripts() is None and not CI:
        pytest.skip(f"rabbitmq-server is not installed, RabbitMQ tests skipped: {local.RABBITMQ_INSTALL}")
    port = local.free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ninkik_tasks.cli",
            "dev",
            "--until-done",
            "--flower-port",
            str(port),
            "--broker",
            broker,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=_clean_env(tmp_path),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Flower:           http://127.0.0.1:{port}" in done.stdout
    _whole_lines(done.stdout)
    notified = [line for line in done.stdout.splitlines() if line.startswith("notified")]
    assert len(notified) == len(demo_images())
    assert any("ENHANCED/COMPLETE" in line for line in notified)
    assert any("tags=[]" in line for line in notified)
    assert "stopping" in done.stdout
    assert ("RabbitMQ:" in done.stdout) is (broker == "rabbitmq")
    assert list(tmp_path.glob("ninkik-dev-*")) == [], "the run's folder was left behind"


def test_check_passes_from_a_second_shell(tmp_path: Path) -> None:
    port = local.free_port()
    out = tmp_path / "dev.out"
    # As a user runs it: `... | tee log` in a terminal, whose Ctrl-C reaches tee too (the whole process group).
    dev_line = f"{shlex.quote(sys.executable)} -m ninkik_tasks.cli dev --flower-port {port} 2>&1 | tee {out}"
    dev = subprocess.Popen(
        ["bash", "-c", dev_line],
        stdout=subprocess.DEVNULL,
        env=_clean_env(tmp_path),
        start_new_session=True,
    )
    try:
        local.wait_for(
            lambda: out.read_text().count("\nnotified") >= len(demo_images()) or dev.poll() is not None,
            180,
            "every demo notification",
        )
        assert dev.poll() is None, out.read_text()
        match = re.search(r"In another shell: source (\S+)", out.read_text())
        assert match, out.read_text()
        _whole_lines(out.read_text())  # through `| tee`
        env_file = Path(match.group(1))
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, "the env file holds the stand-in's token"
        assert "NINKIK_API_TOKEN=" in env_file.read_text()
        # The README's way: plain `source` in bash, nothing else set, the commands called by name.
        shell = f"source {shlex.quote(str(env_file))} && ninkik-tasks check"
        check = subprocess.run(
            ["bash", "-c", shell], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "FAIL" not in check.stdout and "Traceback" not in check.stderr
        # The lookup is proven on a tenant ninkik knows (one seen in the demo's pushes), not a made-up one.
        assert "OK   ninkik: API at" in check.stdout and "knows tenant" in check.stdout, check.stdout
        # The README's second-shell lines, exactly as written, by name.
        lines = _readme_second_shell()
        assert lines[0] == "source /tmp/ninkik-dev-XXXX/env", lines
        script = "\n".join(["set -e", f"source {shlex.quote(str(env_file))}", *lines[1:]])
        readme = subprocess.run(
            ["bash", "-c", script], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=180
        )
        assert readme.returncode == 0, readme.stdout + readme.stderr
        assert "Traceback" not in readme.stderr and "done:" in readme.stdout, readme.stdout + readme.stderr
        # A worker that started after Flower is in Flower's /api/workers without ?refresh=1.
        local.wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/api/workers", timeout=10).json(), 60, "Flower's worker list"
        )
        # Ingest's metrics are on ingest's port only, not in Flower's /metrics (Flower imports the app).
        flower_metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "flower_" in flower_metrics and "ninkik_ingest_" not in flower_metrics
        ingest_url = re.search(r"Ingest metrics:\s+(\S+)", out.read_text())
        assert ingest_url, out.read_text()
        ingest_metrics = httpx.get(ingest_url.group(1), timeout=10).text
        assert "ninkik_ingest_messages_received_total" in ingest_metrics and "process_cpu_seconds" in ingest_metrics
        assert "ninkik_pipeline_notified" in ingest_metrics
        # Ctrl-C: tee dies at once, so dev's stdout is a broken pipe while it cleans up.
        os.killpg(dev.pid, signal.SIGINT)
        dev.wait(60)
        local.wait_for(lambda: not list(tmp_path.glob("ninkik-dev-*")), 60, "the run's folder to go")
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of the group (nothing, when it passed)
            os.killpg(dev.pid, signal.SIGKILL)
        dev.wait()
    assert list(tmp_path.glob("ninkik-dev-*")) == [], "the run's folder (with the token) was left behind"
