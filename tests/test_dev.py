"""The README's first command: `ninkik-tasks dev` runs everything and shows notifications arriving."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CI

from ninkik_tasks import local
from ninkik_tasks.local.dev import demo_images


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_dev_shows_every_demo_notification_and_stops_cleanly(broker: str) -> None:
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
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Flower:           http://127.0.0.1:{port}" in done.stdout
    notified = [line for line in done.stdout.splitlines() if line.startswith("notified")]
    assert len(notified) == len(demo_images())
    assert any("ENHANCED/COMPLETE" in line for line in notified)
    assert any("tags=[]" in line for line in notified)
    assert "stopping" in done.stdout
    assert ("RabbitMQ:" in done.stdout) is (broker == "rabbitmq")
