"""The on-call's files are code: the rule file (one copy, promtool's checks and unit tests), its runbook anchors,
the scrape configuration, and the dashboard. tests/test_monitoring.py runs them on a real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import CI
from test_docs import anchors

from ninkik_tasks import local

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/helm/ninkik-tasks/files/alerts.yml"  # the one copy: the chart's .Files.Get reads it there
LINK = ROOT / "deploy/prometheus/alerts.yml"
UNIT_TESTS = ROOT / "deploy/prometheus/alerts_test.yml"
SCRAPE = ROOT / "deploy/prometheus/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/ninkik-tasks.json"
RUNBOOK = ROOT / "docs/runbook.md"
RUNBOOK_URL = "https://github.com/ninkik/ninkik-tasks/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning", "info"}


def promtool() -> str:
    """Debian's promtool (package prometheus, which .ci/run installs)."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (apt-get install prometheus): rule tests skipped"
        if CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return found


def alerts() -> list[dict[str, Any]]:
    """Every alerting rule of the rule file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_one_rule_file_and_a_relative_symlink_to_it() -> None:
    assert LINK.is_symlink()
    target = Path(LINK.readlink())
    assert not target.is_absolute(), "an absolute link breaks in every other clone"
    assert LINK.resolve() == RULES
    # git stores the link itself (mode 120000), not a second copy of the file
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-s", "--", str(LINK.relative_to(ROOT))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if listed:  # committed
        assert listed.startswith("120000 "), listed


def test_promtool_checks_the_rules_through_the_link() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(LINK)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_promtool_unit_tests_pass_and_make_every_alert_fire() -> None:
    done = subprocess.run([promtool(), "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in cases for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in alerts()}, "every alert needs a unit test where it fires"


def test_promtool_checks_the_scrape_configuration(tmp_path: Path) -> None:
    # The Flower password file is compose's; a copy of the config points at a stand-in one.
    (tmp_path / "flower-password").write_text("x")
    config = SCRAPE.read_text().replace("/prometheus/flower-password", str(tmp_path / "flower-password"))
    (tmp_path / "prometheus.yml").write_text(config)
    (tmp_path / "alerts.yml").symlink_to(LINK)
    done = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: str(rule["alert"]))
def test_every_alert_says_what_and_links_its_runbook_section(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    notes = rule["annotations"]
    assert set(notes) == {"summary", "description", "runbook_url"}
    assert notes["runbook_url"] == RUNBOOK_URL + rule["alert"].lower()
    anchor = notes["runbook_url"].removeprefix(RUNBOOK_URL)
    assert anchor in anchors(RUNBOOK), f"docs/runbook.md has no section #{anchor}"


def test_alert_names_are_unique_and_the_runbook_has_no_section_without_an_alert() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    sections = set(re.findall(r"^### (Ninkik\w+)$", RUNBOOK.read_text(), re.M))
    assert sections == set(names)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as written) for every target of every panel."""
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def test_dashboard_is_classic_json_with_a_pinned_schema_and_a_datasource_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])


def test_prometheus_loads_the_rules_through_the_link(tmp_path: Path) -> None:
    """The server itself (not only promtool) follows deploy/prometheus/alerts.yml to the chart's file."""
    promtool()
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package installs promtool and prometheus together"
    port = local.free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"rule_files": [str(LINK)]}))
    proc = local.Proc(
        "prometheus-rules",
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path,
    )
    try:

        def loaded() -> list[str]:
            groups = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=2).json()["data"]["groups"]
            return [rule["name"] for group in groups for rule in group["rules"]]

        names = local.wait_for(loaded, 30, "Prometheus to load the rules")
        assert sorted(names) == sorted(rule["alert"] for rule in alerts())
        files = {
            g["file"] for g in httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=2).json()["data"]["groups"]
        }
        assert files == {str(LINK)}
    finally:
        proc.stop()


def test_every_alert_has_its_kubernetes_or_managed_service_steps() -> None:
    """Beside compose's: kubectl for the chart's pods and autoscaler, the aws CLI for Amazon MQ and ElastiCache
    (the image has no redis-cli, Amazon MQ no rabbitmqctl)."""
    text = RUNBOOK.read_text()
    sections = dict(re.findall(r"^### (Ninkik\w+)\n(.*?)(?=^#{2,3} )", text, re.M | re.S))
    assert set(sections) == {rule["alert"] for rule in alerts()}
    for name, section in sections.items():
        steps = re.findall(
            r"^\*\*(?:Kubernetes|Amazon MQ|ElastiCache):\*\* (.*?)(?=\n\n|\n\*\*|\Z)", section, re.M | re.S
        )
        assert len(steps) == 1, f"{name}: no Kubernetes, Amazon MQ or ElastiCache steps"
        assert "docker compose" not in steps[0] and "rabbitmqctl" not in steps[0], name
        if "redis-cli" in steps[0]:
            assert "no `redis-cli`" in steps[0], f"{name}: the image has no redis-cli"
    assert "aws mq reboot-broker" in sections["NinkikBrokerDown"]
    assert "aws elasticache describe-events" in sections["NinkikRedisUnreachable"]
    assert "OOMKilled" in sections["NinkikDeadLetters"] and "scaledobject/" in sections["NinkikWorkWaitingLong"]
