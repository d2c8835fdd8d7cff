"""Flower started the way the README says (`ninkik-tasks flower`, by name): never open to the network without
auth; `celery -A ninkik_tasks flower` refuses the same way; the loopback address alone may go without."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import Stack

from ninkik_tasks import local
from ninkik_tasks.flower import refusal

BIN = Path(sys.executable).parent  # the project's .venv/bin: where `ninkik-tasks` is, as on the image's PATH


def _env(stack: Stack, **extra: str) -> dict[str, str]:
    env = stack.env(**extra)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("FLOWER_BASIC_AUTH", None)
    return {**env, **extra}


@pytest.mark.parametrize(
    "argv",
    [["ninkik-tasks", "flower"], ["celery", "-A", "ninkik_tasks", "flower", "--port=5599"]],
    ids=["ninkik-tasks", "celery"],
)
def test_flower_without_auth_refuses_to_start(stack: Stack, argv: list[str]) -> None:
    done = subprocess.run(argv, env=_env(stack), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "FLOWER_BASIC_AUTH=user:password" in line and "--address=127.0.0.1" in line


def test_flower_serves_its_pages_only_with_auth(stack: Stack) -> None:
    port = local.free_port()
    proc = local.Proc(
        f"flower-{port}",
        ["ninkik-tasks", "flower", f"--port={port}"],
        stack.work,
        _env(stack, FLOWER_BASIC_AUTH="ops:s3cret-pass"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        local.wait_for(lambda: httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200, 60, "Flower")
        # Every page shows task arguments (tenants, repositories, images): none without the password.
        for page in ("/", "/tasks", "/api/tasks"):
            assert httpx.get(url + page, timeout=5).status_code == 401, page
        assert httpx.get(f"{url}/tasks", auth=("ops", "s3cret-pass"), timeout=5).status_code == 200
        assert "s3cret-pass" not in proc.output()
        assert f"Visit me at http://0.0.0.0:{port}" in proc.output()  # it says where it really listens
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("args", "env", "refused"),
    [
        ([], {}, True),
        (["--address=0.0.0.0"], {}, True),
        (["--address", "127.0.0.1"], {}, False),  # the dev stack: this machine only
        ([], {"FLOWER_ADDRESS": "::1"}, False),
        ([], {"FLOWER_BASIC_AUTH": "ops:pw"}, False),
        (["--basic-auth=ops:pw,admin:pw2"], {}, False),
        ([], {"FLOWER_BASIC_AUTH": "ops"}, True),  # no password
        ([], {"FLOWER_BASIC_AUTH": "ops:pw,:pw"}, True),
        (["--auth=.*@example\\.com"], {}, False),  # Flower's OAuth
    ],
)
def test_refusal(args: list[str], env: dict[str, str], refused: bool) -> None:
    assert (refusal(args, env) is not None) is refused
