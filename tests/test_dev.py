"""The README's first command: `ninkik-tasks dev` runs everything and shows notifications arriving."""

from __future__ import annotations

import subprocess
import sys

from ninkik_tasks import local
from ninkik_tasks.local.dev import demo_images


def test_dev_shows_every_demo_notification_and_stops_cleanly() -> None:
    port = local.free_port()
    done = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "dev", "--until-done", "--flower-port", str(port)],
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
