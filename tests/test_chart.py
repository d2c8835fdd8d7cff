"""The Helm chart (deploy/helm/ninkik-tasks), checked without a cluster by the real tools: helm 3 and helm 4
(lint --strict, template), kubernetes-validate --strict against the oldest and newest Kubernetes that EKS
supports in December 2026, the CRDs' own schemas for KEDA's and the Prometheus Operator's kinds, checkov; then
what matters on the rendered objects. Each value set is rendered once per helm major (session fixtures)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import charttools
import httpx
import pytest
import yaml
from test_compose import APP_DIR, _check_console, _exec_line

from ninkik_tasks import cli, local
from ninkik_tasks.brokers import rabbitmq as rabbitmq_broker
from ninkik_tasks.config import known_variables
from ninkik_tasks.health import STOP_GRACE_SECONDS

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "ninkik-tasks"
VALUE_SETS = ("default", *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")))
NAMESPACE = "ninkik"
RELEASE = "nt"
# EKS in December 2026: 1.31's extended support ended on 26 Nov 2026, so 1.32 is the oldest; 1.37 is the newest
# kubernetes-validate bundles (and 1.36 the newest EKS had released by its own calendar when this was written).
KUBERNETES = ("1.32.0", "1.36.0", "1.37.0")
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
# Variables holding secrets: never in the ConfigMap, always from a Secret.
SECRET_VARIABLES = {
    "NINKIK_BROKER_URL",
    "NINKIK_RESULT_BACKEND",
    "NINKIK_REDIS_URL",
    "NINKIK_API_TOKEN",
    "NINKIK_BROKER_MANAGEMENT_URL",
    "FLOWER_BASIC_AUTH",
    "FLOWER_BROKER_API",
}
# Set per Deployment by the chart (ingest's port, each worker's queues and pool), not in `config`.
CHART_VARIABLES = {"NINKIK_METRICS_PORT", "NINKIK_WORKER_CONCURRENCY", "NINKIK_WORKER_POOL", "NINKIK_WORKER_QUEUES"}
# The health command of each Deployment's process (the health-signals issue's interface).
PROCESS = {"ingest": "ingest", "worker": "worker", "worker-control": "worker", "beat": "beat"}


def _values_args(value_set: str) -> list[str]:
    return [] if value_set == "default" else ["-f", str(CHART / "ci" / f"{value_set}-values.yaml")]


def _template(major: int, value_set: str, *extra: str, chart: Path = CHART) -> str:
    done = subprocess.run(
        [
            str(charttools.helm(major)),
            "template",
            RELEASE,
            str(chart),
            "--namespace",
            NAMESPACE,
            *_values_args(value_set),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, str], Path]:
    """Every value set rendered by helm 3 and helm 4, each to a file of its own (lint --strict first)."""
    out = tmp_path_factory.mktemp("chart")
    files = {}
    for major in (3, 4):
        for value_set in VALUE_SETS:
            lint = subprocess.run(
                [str(charttools.helm(major)), "lint", "--strict", str(CHART), *_values_args(value_set)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert lint.returncode == 0, f"helm {major} lint --strict ({value_set}):\n{lint.stdout}{lint.stderr}"
            path = out / f"helm{major}" / f"{value_set}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(_template(major, value_set))
            files[major, value_set] = path
    return files


@pytest.fixture(scope="session")
def objects(rendered: dict[tuple[int, str], Path]) -> dict[str, list[dict[str, Any]]]:
    """The objects of each value set (helm 4's rendering; helm 3's is checked to be the same)."""
    return {value_set: _objects(rendered[4, value_set].read_text()) for value_set in VALUE_SETS}


def _of(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def _deployment(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    found = [
        o
        for o in objs
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, f"{component}: {len(found)} Deployments"
    return found[0]


def _containers(objs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for o in objs:
        if o["kind"] == "Deployment":
            for container in o["spec"]["template"]["spec"]["containers"]:
                yield o, container


# The tools


def test_both_helm_majors_render_the_same_objects(rendered: dict[tuple[int, str], Path]) -> None:
    for value_set in VALUE_SETS:
        assert _objects(rendered[3, value_set].read_text()) == _objects(rendered[4, value_set].read_text()), value_set


def test_rendered_object_counts(objects: dict[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> None:
    counts = {vs: {} for vs in VALUE_SETS}  # type: dict[str, dict[str, int]]
    for value_set, objs in objects.items():
        for o in objs:
            counts[value_set][o["kind"]] = counts[value_set].get(o["kind"], 0) + 1
    with capsys.disabled():
        for value_set, kinds in counts.items():
            print(f"\n  chart {value_set}: {sum(kinds.values())} objects {dict(sorted(kinds.items()))}", end="")
    assert counts["default"]["Deployment"] == 5
    assert counts["production"]["ScaledObject"] == 1 and counts["production"]["NetworkPolicy"] >= 1


@pytest.mark.parametrize("version", KUBERNETES)
def test_kubernetes_validate_strict(
    rendered: dict[tuple[int, str], Path], objects: dict[str, list[dict[str, Any]]], version: str
) -> None:
    files = [str(rendered[4, vs]) for vs in VALUE_SETS]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", version, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    core = [o for objs in objects.values() for o in objs if o["kind"] not in CRD_KINDS]
    assert output.count("passed for resource") == len(core), output
    # It has no schema for custom resources and only warns about them: test_custom_resources_match_their_crds.
    for line in output.splitlines():
        if line.startswith("WARN"):
            assert any(f"kind {kind} " in line for kind in CRD_KINDS), line


def _crd_errors(custom: list[dict[str, Any]]) -> list[list[Any]]:
    """[kind, name, error or None] for each object, from its CRD's schema (tests/crd_validate.mjs)."""
    done = subprocess.run(
        ["node", str(Path(__file__).with_name("crd_validate.mjs")), str(charttools.crd_schemas())],
        input=json.dumps(custom),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results: list[list[Any]] = json.loads(done.stdout)
    assert len(results) == len(custom)
    return results


def test_custom_resources_match_their_crds(objects: dict[str, list[dict[str, Any]]]) -> None:
    custom = [o for objs in objects.values() for o in objs if o["kind"] in CRD_KINDS]
    assert {o["kind"] for o in custom} == CRD_KINDS
    assert [r for r in _crd_errors(custom) if r[2] is not None] == []
    # The validators do reject a wrong object (a string where the CRD wants an integer).
    bad = json.loads(json.dumps(next(o for o in custom if o["kind"] == "ScaledObject")))
    bad["spec"]["maxReplicaCount"] = "six"
    assert "maxReplicaCount" in str(_crd_errors([bad])[0][2])


def test_checkov_passes_with_skips_that_give_reasons(
    rendered: dict[tuple[int, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = rendered[4, "default"].parent  # helm 4's rendering of every value set, checked in one run
    done = subprocess.run(
        [str(charttools.checkov()), "-d", str(folder), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    results = {
        key: [c for r in reports for c in r["results"].get(key, [])]
        for key in ("passed_checks", "failed_checks", "skipped_checks")
    }
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']}, {Path(c['file_path']).name})"
        for c in results["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    reasons = {}
    for check in results["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment")
        assert reason, f"{check['check_id']} skipped without a reason"
        reasons[check["check_id"]] = reason
    with capsys.disabled():
        print(
            f"\n  checkov: {len(results['passed_checks'])} passed, 0 failed, {len(results['skipped_checks'])} skipped:"
        )
        for check_id, reason in sorted(reasons.items()):
            print(f"    {check_id}: {reason}")
    assert done.returncode == 0, done.stderr[-2000:]


def test_values_schema_refuses_unknown_settings_and_literal_secrets() -> None:
    for extra in (["--set", "config.NINKIK_BOGUS=1"], ["--set", "config.NINKIK_API_TOKEN=x"], ["--set", "bogus=1"]):
        done = subprocess.run(
            [str(charttools.helm(4)), "template", RELEASE, str(CHART), *extra], capture_output=True, text=True
        )
        assert done.returncode != 0 and "additional properties" in done.stderr, (extra, done.stderr)


# The objects


def test_config_map_holds_known_settings_and_no_secret(objects: dict[str, list[dict[str, Any]]]) -> None:
    for value_set, objs in objects.items():
        (config_map,) = _of(objs, "ConfigMap").values()
        keys = set(config_map["data"])
        assert keys <= known_variables(), f"{value_set}: {keys - known_variables()}"
        assert not keys & SECRET_VARIABLES, value_set
        assert not any("@" in str(v) for v in config_map["data"].values()), "credentials in a URL"
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = set(schema["properties"]["config"]["properties"])
    assert schema["properties"]["config"]["additionalProperties"] is False
    # The schema's list follows the package's one list of known variables.
    assert allowed == known_variables() - SECRET_VARIABLES - CHART_VARIABLES


def test_secrets_only_by_reference(objects: dict[str, list[dict[str, Any]]]) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for value_set, objs in objects.items():
        assert not [o for o in objs if o["kind"] == "Secret"], f"{value_set}: the chart never creates a Secret"
        for deployment, container in _containers(objs):
            env = {e["name"]: e for e in container.get("env", [])}
            for name in SECRET_VARIABLES & set(env):
                assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} in {deployment['metadata']['name']}"
            for name in ("NINKIK_BROKER_URL", "NINKIK_RESULT_BACKEND", "NINKIK_REDIS_URL", "NINKIK_API_TOKEN"):
                assert name in env, f"{value_set}: {deployment['metadata']['name']} lacks {name}"
    # No value defaults to a secret: only names of Secrets and of their keys.
    text = json.dumps(defaults)
    assert not re.search(r"://[^/\s\"]*:[^@\s\"]*@", text) and "AKIA" not in text


def test_flower_always_authenticated(objects: dict[str, list[dict[str, Any]]]) -> None:
    for value_set, objs in objects.items():
        if not [o for o in objs if o["kind"] == "Deployment" and "flower" in o["metadata"]["name"]]:
            continue
        ((_, container),) = [(d, c) for d, c in _containers(objs) if c["name"] == "flower"]
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env["FLOWER_BASIC_AUTH"]["valueFrom"], value_set
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
        service = next(
            s
            for s in _of(objs, "Service").values()
            if s["metadata"]["labels"]["app.kubernetes.io/component"] == "flower"
        )
        assert service["spec"]["type"] == "ClusterIP"


def test_beat_is_single_and_recreated(objects: dict[str, list[dict[str, Any]]]) -> None:
    for value_set, objs in objects.items():
        if value_set == "minimal":
            continue
        beat = _deployment(objs, "beat")
        assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}, value_set
        assert beat["spec"]["template"]["spec"]["containers"][0]["command"] == [f"{APP_DIR}/beat/entrypoint.sh"]


def _scale_targets(objs: list[dict[str, Any]]) -> set[str]:
    return {
        o["spec"]["scaleTargetRef"]["name"] for o in objs if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    }


def test_worker_control_is_one_and_never_autoscaled(objects: dict[str, list[dict[str, Any]]]) -> None:
    for value_set, objs in objects.items():
        if value_set == "minimal":
            continue
        control = _deployment(objs, "worker-control")
        assert control["spec"]["replicas"] == 1
        assert control["metadata"]["name"] not in _scale_targets(objs), value_set
        env = {e["name"]: e.get("value") for e in control["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["NINKIK_WORKER_QUEUES"] == "ninkik-control"
        worker = _deployment(objs, "worker")
        queues = {e["name"]: e.get("value") for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "ninkik-control" not in queues["NINKIK_WORKER_QUEUES"].split(",")


def test_workers_scale_on_ready_and_unacked_messages_of_the_chain_queues(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    objs = objects["production"]
    (scaled,) = _of(objs, "ScaledObject").values()
    worker = _deployment(objs, "worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"], "KEDA's HPA owns the worker's replicas"
    triggers = scaled["spec"]["triggers"]
    assert sorted(t["metadata"]["queueName"] for t in triggers) == ["ninkik-api", "ninkik-aws"]
    (auth,) = _of(objs, "TriggerAuthentication").values()
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "rabbitmq" and meta["protocol"] == "http" and meta["mode"] == "QueueLength"
        assert "useRegex" not in meta and "host" not in meta, "the host (with credentials) comes from the Secret"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]] == ["host"]
    # Without KEDA: a CPU HPA or fixed replicas.
    (hpa,) = _of(objects["hpa"], "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == _deployment(objects["hpa"], "worker")["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert _deployment(objects["default"], "worker")["spec"]["replicas"] == 2
    assert not _scale_targets(objects["default"])


def test_every_pod_is_hardened(objects: dict[str, list[dict[str, Any]]]) -> None:
    for value_set, objs in objects.items():
        for deployment, container in _containers(objs):
            where = f"{value_set}: {deployment['metadata']['name']}"
            pod = deployment["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False, where
            assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001, where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] == 10001, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp (and the health files) on an emptyDir"
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, where


def test_commands_exec_the_process(objects: dict[str, list[dict[str, Any]]]) -> None:
    """Kubernetes has no tini: each command is the process itself, or a script of the image whose one `exec`
    line starts it (so it is PID 1 and gets SIGTERM); either is a known command with known options."""
    for objs in objects.values():
        for _, container in _containers(objs):
            argv = container["command"] + container.get("args", [])
            if argv[0].startswith(APP_DIR + "/"):
                script = ROOT / argv[0].removeprefix(APP_DIR + "/")
                inner = _exec_line(script)
                at = inner.index("$@")
                argv = inner[:at] + argv[1:] + inner[at + 1 :]
            _check_console(argv)


def test_probes_run_the_health_command_of_the_image(objects: dict[str, list[dict[str, Any]]]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ninkik-tasks"] == "ninkik_tasks.cli:main", (
        "the image's ninkik-tasks is the package's console script"
    )
    # The probes' command is a real one: `health <process> [--ready]` parses for every process the chart runs
    # (click refuses an unknown process or option here).
    health = cli.main.commands["health"]
    for process in set(PROCESS.values()):
        for extra in ([], ["--ready"]):
            health.make_context("health", [process, *extra])
    for objs in objects.values():
        for deployment, container in _containers(objs):
            component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
            if component == "flower":
                continue
            process = PROCESS[component]
            assert container["livenessProbe"]["exec"]["command"] == ["ninkik-tasks", "health", process]
            assert container["readinessProbe"]["exec"]["command"] == ["ninkik-tasks", "health", process, "--ready"]


def test_grace_periods_are_values_per_component(objects: dict[str, list[dict[str, Any]]]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = {
        "ingest": "ingest",
        "worker": "worker",
        "worker-control": "workerControl",
        "beat": "beat",
        "flower": "flower",
    }
    for component, key in keys.items():
        deployment = _deployment(objects["default"], component)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == values[key]["terminationGracePeriodSeconds"], component
        # The grace each process's shutdown needs (docs/health.md), as compose's stop_grace_period has it.
        assert grace == STOP_GRACE_SECONDS[PROCESS.get(component, component)], component


def test_image_is_the_release_or_a_digest(objects: dict[str, list[dict[str, Any]]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["appVersion"] == version
    assert {c["image"] for _, c in _containers(objects["default"])} == {f"ninkik-tasks:{version}"}
    (image,) = {c["image"] for _, c in _containers(objects["production"])}
    assert re.fullmatch(r".+/ninkik-tasks@sha256:[0-9a-f]{64}", image)
    # With a digest there is nothing to skip for checkov's digest check.
    for o in objects["production"]:
        assert "CKV_K8S_43" not in json.dumps(o["metadata"].get("annotations", {}))


def test_irsa_and_network_policy(objects: dict[str, list[dict[str, Any]]]) -> None:
    (account,) = _of(objects["production"], "ServiceAccount").values()
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert account["automountServiceAccountToken"] is False
    policies = _of(objects["production"], "NetworkPolicy")
    egress = next(p for p in policies.values() if "Egress" in p["spec"]["policyTypes"])
    ports = {port["port"] for rule in egress["spec"]["egress"] for port in rule["ports"]}
    assert {53, 5671, 6379, 443} <= ports
    assert not _of(objects["default"], "NetworkPolicy")


def test_prometheus_rule_only_from_the_chart_file_verbatim(
    objects: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    # The production set enables it: the on-call rules, as they are in the file (deploy/prometheus's one too).
    (shipped,) = _of(objects["production"], "PrometheusRule").values()
    assert shipped["spec"] == yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    assert (ROOT / "deploy" / "prometheus" / "alerts.yml").resolve() == (CHART / "files" / "alerts.yml").resolve()
    # A rule file with Prometheus's own template syntax passes through untouched; none, and nothing renders.
    chart = tmp_path / "ninkik-tasks"
    shutil.copytree(CHART, chart)
    (chart / "files").mkdir(exist_ok=True)
    rules = (
        "groups:\n  - name: t\n    rules:\n      - alert: A\n        expr: up == 0\n"
        '        annotations:\n          summary: "{{ $labels.instance }} is down"\n'
    )
    (chart / "files" / "alerts.yml").write_text(rules)
    objs = _objects(_template(4, "production", chart=chart))
    (rule,) = _of(objs, "PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load(rules), "the rule file is included as it is ({{ $labels }} untouched)"
    assert _crd_errors([rule]) == [["PrometheusRule", rule["metadata"]["name"], None]]
    assert not _of(_objects(_template(4, "default", chart=chart)), "PrometheusRule"), "only when enabled"


# The field KEDA reads, on a real RabbitMQ


def test_quorum_queue_reports_ready_plus_unacked_as_messages(rabbitmq: local.RabbitMQ) -> None:
    """KEDA's rabbitmq scaler in http mode reads `messages` of /api/queues/<vhost>/<queue> (a missing field reads
    as 0: KEDA issue 7180). On a quorum queue declared as a worker declares it, `messages` must be there and
    count ready and unacknowledged messages alike, as Celery's prefetched and running tasks are unacked."""
    import kombu

    vhost = f"keda-{int(time.time() * 1000) % 10**9}"
    url = rabbitmq.vhost(vhost)
    (queue,) = rabbitmq_broker.task_queues(["ninkik-aws"])
    # Confirmed publishes: each is in the queue before the next line runs.
    with kombu.Connection(url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        bound = queue(channel)
        bound.declare()
        producer = kombu.Producer(channel, exchange=queue.exchange, routing_key=queue.routing_key)
        for i in range(5):
            producer.publish({"n": i}, serializer="json")
        # Two delivered and not acknowledged, as a worker's prefetched and running tasks are.
        held = [local.wait_for(lambda: bound.get(no_ack=False), 10, "a message from ninkik-aws") for _ in range(2)]

        def stats() -> dict[str, Any] | None:
            answer = httpx.get(
                f"{rabbitmq.management_url}/api/queues/{vhost}/ninkik-aws", auth=("guest", "guest"), timeout=5
            )
            answer.raise_for_status()
            data: dict[str, Any] = answer.json()
            return data if data.get("messages_unacknowledged") == 2 else None

        data = local.wait_for(stats, 60, "the management API's statistics of ninkik-aws", interval=0.5)
        print(
            f"\n  /api/queues/{vhost}/ninkik-aws: type={data.get('type')} messages={data.get('messages')} "
            f"messages_ready={data.get('messages_ready')} messages_unacknowledged={data.get('messages_unacknowledged')}"
        )
        assert data["type"] == "quorum"
        assert "messages" in data, "the field KEDA reads is missing: it would scale on 0"
        assert (
            data["messages_ready"] == 3
            and data["messages"] == 5 == data["messages_ready"] + data["messages_unacknowledged"]
        )
        for message in held:
            message.ack()
    rabbitmq.ctl("delete_vhost", vhost)


# The chart's README


def values_table() -> list[str]:
    """The README's table of values: every value with a `# --` comment in values.yaml, its default, the comment."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    rows, path, pending = [], [], None  # type: list[str], list[tuple[int, str]], list[str] | None
    for line in (CHART / "values.yaml").read_text().splitlines():
        if match := re.match(r"^\s*# -- (.*)$", line):
            pending = [match.group(1)]
        elif (match := re.match(r"^\s*# (.*)$", line)) and pending is not None:
            pending.append(match.group(1))
        elif match := re.match(r"^(\s*)([A-Za-z][\w-]*):", line):
            indent, key = len(match.group(1)), match.group(2)
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, key))
            if pending is not None:
                value: Any = defaults
                for _, part in path:
                    value = value[part]
                default = json.dumps(value, separators=(", ", ": ")).replace("|", "\\|")
                text = " ".join(pending).replace("|", "\\|")
                rows.append(f"| `{'.'.join(k for _, k in path)}` | `{default}` | {text} |")
            pending = None
        elif not line.strip().startswith("#"):
            pending = None
    return ["| value | default | what it is |", "|---|---|---|", *rows]


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text().splitlines()
    start = readme.index("| value | default | what it is |")
    end = next((i for i in range(start, len(readme)) if not readme[i].startswith("|")), len(readme))
    assert readme[start:end] == values_table(), "regenerate: python -c 'import test_chart; ...' (see the README)"
