"""The Helm chart (deploy/helm/ninkik-tasks), checked without a cluster by the real tools: helm 3 and helm 4
(lint --strict, template), kubernetes-validate --strict against the oldest and newest Kubernetes that EKS
supports in December 2026, the CRDs' own schemas for KEDA's and the Prometheus Operator's kinds, checkov, promtool
applying the rendered relabelings; then what matters on the rendered objects. Each value set (the
chart's defaults, every ci/*-values.yaml, and docs/kubernetes.md's my-values.yaml blocks) is rendered once per
helm major (session fixtures)."""

from __future__ import annotations

import itertools
import json
import os
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
from test_alerts import promtool
from test_compose import APP_DIR, _check_console, _exec_line
from test_monitoring import used_metrics

from ninkik_tasks import accounts, cli, local
from ninkik_tasks.brokers import rabbitmq as rabbitmq_broker
from ninkik_tasks.config import Settings, known_variables
from ninkik_tasks.health import STOP_GRACE_SECONDS

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "ninkik-tasks"
ALERTS = CHART / "files" / "alerts.yml"  # the one rule file
KUBERNETES_MD = ROOT / "docs" / "kubernetes.md"
# "docs": the values docs/kubernetes.md builds up, installed as the page says (release ninkik-tasks).
VALUE_SETS = (
    "default",
    *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")),
    "docs",
)
NAMESPACE = "ninkik"
RELEASE = "nt"
DOCS_RELEASE = "ninkik-tasks"
# EKS in December 2026: 1.31's extended support ended on 26 Nov 2026, so 1.32 is the oldest; 1.37 is the newest
# kubernetes-validate bundles (and 1.36 the newest EKS had released by its own calendar when this was written).
KUBERNETES = ("1.32.0", "1.36.0", "1.37.0")
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule", "ScrapeConfig"}
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


def _deep_merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def fenced_blocks(path: Path, language: str) -> list[str]:
    """The page's fenced code blocks of that language, as written."""
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.M | re.S)


def docs_values() -> dict[str, Any]:
    """docs/kubernetes.md's values: every yaml block whose first line is `# my-values.yaml...`, merged in order."""
    merged: dict[str, Any] = {}
    blocks = [b for b in fenced_blocks(KUBERNETES_MD, "yaml") if b.startswith("# my-values.yaml")]
    assert len(blocks) >= 2, "docs/kubernetes.md builds my-values.yaml in blocks starting `# my-values.yaml`"
    for block in blocks:
        _deep_merge(merged, yaml.safe_load(block))
    return merged


@pytest.fixture(scope="session")
def docs_values_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("docs-values") / "my-values.yaml"
    path.write_text(yaml.safe_dump(docs_values()))
    return path


def _values_args(value_set: str, docs: Path | None = None) -> list[str]:
    if value_set == "docs":
        assert docs is not None
        return ["-f", str(docs)]
    return [] if value_set == "default" else ["-f", str(CHART / "ci" / f"{value_set}-values.yaml")]


def _helm_template(major: int, release: str, values: list[str], *extra: str, chart: Path = CHART) -> str:
    done = subprocess.run(
        [str(charttools.helm(major)), "template", release, str(chart), "--namespace", NAMESPACE, *values, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _template(major: int, value_set: str, *extra: str, chart: Path = CHART) -> str:
    return _helm_template(major, RELEASE, _values_args(value_set), *extra, chart=chart)


def _objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory, docs_values_file: Path) -> dict[tuple[int, str], Path]:
    """Every value set rendered by helm 3 and helm 4, each to a file of its own (lint --strict first)."""
    out = tmp_path_factory.mktemp("chart")
    files = {}
    for major in (3, 4):
        for value_set in VALUE_SETS:
            values = _values_args(value_set, docs_values_file)
            lint = subprocess.run(
                [str(charttools.helm(major)), "lint", "--strict", str(CHART), *values],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert lint.returncode == 0, f"helm {major} lint --strict ({value_set}):\n{lint.stdout}{lint.stderr}"
            path = out / f"helm{major}" / f"{value_set}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(_helm_template(major, DOCS_RELEASE if value_set == "docs" else RELEASE, values))
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
    # extraEnv is for what is not a setting: a setting (or a secret) there would dodge both checks above.
    done = subprocess.run(
        [str(charttools.helm(4)), "template", RELEASE, str(CHART), "--set", "extraEnv[0].name=NINKIK_API_TOKEN"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "/extraEnv/0/name" in done.stderr, done.stderr


# The objects


def test_config_map_holds_known_settings_and_no_secret(objects: dict[str, list[dict[str, Any]]]) -> None:
    for value_set, objs in objects.items():
        (config_map,) = [c for name, c in _of(objs, "ConfigMap").items() if not name.endswith("-accounts")]
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


def test_beat_and_the_control_worker_are_single_and_recreated(objects: dict[str, list[dict[str, Any]]]) -> None:
    """A rolling update would run a second one beside the first: two schedules, or two sweeps at once."""
    for value_set, objs in objects.items():
        if value_set == "minimal":
            continue
        beat = _deployment(objs, "beat")
        assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}, value_set
        assert beat["spec"]["template"]["spec"]["containers"][0]["command"] == [f"{APP_DIR}/beat/entrypoint.sh"]
        control = _deployment(objs, "worker-control")
        # rollingUpdate: null removes what the API server filled in while it was RollingUpdate (an upgrade).
        assert control["spec"]["strategy"] == {"type": "Recreate", "rollingUpdate": None}, value_set


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
    # A management API KEDA cannot read runs the fallback's workers, not the last count (AverageValue triggers).
    assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 6}
    assert all(t.get("metricType", "AverageValue") == "AverageValue" for t in triggers)
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


# Accounts: ci/accounts-values.yaml names three

AWS_COMPONENTS = {"ingest", "worker", "worker-control", "beat"}  # the pods that read AWS (Flower does not)
ROLE = "arn:aws:iam::111111111111:role"


def test_the_accounts_file_is_what_the_product_loads_mounted_into_every_pod_that_reads_aws(
    objects: dict[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs, values = objects["accounts"], _values_of("accounts")
    config_maps = _of(objs, "ConfigMap")
    files = config_maps[f"{RELEASE}-ninkik-tasks-accounts"]
    seen = set()
    for deployment, container in _containers(objs):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if component not in AWS_COMPONENTS:
            assert "NINKIK_ACCOUNTS_FILE" not in env and "checksum/accounts" not in pod["metadata"]["annotations"]
            continue
        seen.add(component)
        where, name = Path(env["NINKIK_ACCOUNTS_FILE"]).parent, Path(env["NINKIK_ACCOUNTS_FILE"]).name
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(where)]
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
        assert mount["readOnly"] and volume["configMap"]["name"] == files["metadata"]["name"], component
        assert name in files["data"] and pod["metadata"]["annotations"]["checksum/accounts"], component
    assert seen == AWS_COMPONENTS
    # The base identity that assumes each account's role: the ServiceAccount's IRSA role.
    (account,) = _of(objs, "ServiceAccount").values()
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == values["serviceAccount"]["roleArn"]
    # The file, loaded by the product's own loader with the settings a pod gets from the chart's ConfigMap.
    for var in list(os.environ):
        if var.startswith(("NINKIK_", "AWS_")):
            monkeypatch.delenv(var)
    for variable, value in config_maps[f"{RELEASE}-ninkik-tasks"]["data"].items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("AWS_REGION", values["aws"]["region"])
    (tmp_path / name).write_text(files["data"][name])
    settings = Settings(accounts_file=tmp_path / name)
    settings.require_ingest()
    loaded = accounts.load(settings)
    assert [a.model_dump(mode="json", exclude_unset=True) for a in loaded] == values["accounts"]
    assert [(a.id, a.identity, len(a.queues)) for a in loaded] == [
        ("111111111111", "role", 1),
        ("222222222222", "role", 1),
        ("333333333333", "role", 0),
    ]
    # Without accounts, nothing of it: the chart renders as before accounts.
    for value_set in set(VALUE_SETS) - {"accounts"}:
        assert not [n for n in _of(objects[value_set], "ConfigMap") if n.endswith("-accounts")], value_set
        assert "NINKIK_ACCOUNTS_FILE" not in json.dumps(objects[value_set]), value_set


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"config": {"NINKIK_SQS_QUEUE_URL": "https://sqs.eu-central-1.amazonaws.com/111111111111/q"}}, "both set"),
        ({"accounts": [{"id": "111111111111", "profile": "docker-user"}]}, "profile"),
        ({"accounts": [{"id": "111111111111", "external_id": "ninkik-7f3a"}]}, "role_arn"),
        ({"accounts": [{"id": "111111111111", "role_arn": "arn:aws:iam::222222222222:role/r"}]}, "not in account"),
        ({"accounts": [{"id": "111111111111"}, {"id": "111111111111"}]}, "listed twice"),
        (
            {"accounts": [{"id": "111111111111", "queues": ["https://sqs.eu-central-1.amazonaws.com/222222222222/q"]}]},
            "is in account 222222222222",
        ),
        ({"accounts": [{"id": "111111111111", "duration_seconds": 60, "role_arn": f"{ROLE}/r"}]}, "900"),
    ],
)
def test_accounts_the_loader_would_refuse_are_refused_at_render(
    tmp_path: Path, change: dict[str, Any], refusal: str
) -> None:
    values = _deep_merge(yaml.safe_load((CHART / "ci" / "accounts-values.yaml").read_text()), change)
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    for major in (3, 4):
        done = subprocess.run(
            [str(charttools.helm(major)), "template", RELEASE, str(CHART), "-f", str(tmp_path / "values.yaml")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode != 0 and refusal in done.stderr, (major, done.stderr)


def test_irsa_and_network_policy(objects: dict[str, list[dict[str, Any]]]) -> None:
    (account,) = _of(objects["production"], "ServiceAccount").values()
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert account["automountServiceAccountToken"] is False
    policies = _of(objects["production"], "NetworkPolicy")
    egress = next(p for p in policies.values() if "Egress" in p["spec"]["policyTypes"])
    ports = {port["port"] for rule in egress["spec"]["egress"] for port in rule["ports"]}
    assert {53, 5671, 6379, 443} <= ports
    assert not _of(objects["default"], "NetworkPolicy")


def _values_of(value_set: str) -> dict[str, Any]:
    """The values a value set renders with: the chart's defaults and its file merged (as Helm merges maps)."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    if value_set == "docs":
        return _deep_merge(values, docs_values())
    if value_set != "default":
        _deep_merge(values, yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text()))
    return values


def test_prometheus_rule_is_the_chart_file_less_the_alerts_switched_off(
    objects: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    rule_file = yaml.safe_load(ALERTS.read_text())
    names = [rule["alert"] for group in rule_file["groups"] for rule in group["rules"] if "alert" in rule]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]["alerts"]
    assert list(defaults) == names, "values.yaml switches every alert of files/alerts.yml, in the file's order"
    schema = json.loads((CHART / "values.schema.json").read_text())
    rule_schema = schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]
    assert list(rule_schema["alerts"]["properties"]) == names
    # Off unless their source is scraped: the broker's metrics (Amazon MQ 4.2+), a redis_exporter.
    off = {name for name, on in defaults.items() if not on}
    assert off == {"NinkikBrokerDown", "NinkikQueueWithoutConsumer", "NinkikWorkWaitingLong", "NinkikRedisMemoryHigh"}
    assert (ROOT / "deploy" / "prometheus" / "alerts.yml").resolve() == ALERTS.resolve()
    shipped_sets = set()
    for value_set, objs in objects.items():
        rules = _of(objs, "PrometheusRule")
        if not rules:
            continue
        (shipped,) = rules.values()
        switches = _values_of(value_set)["metrics"]["prometheusRule"]["alerts"]
        expected = [
            {**group, "rules": [r for r in group["rules"] if switches.get(r.get("alert"), True)]}
            for group in rule_file["groups"]
        ]
        assert shipped["spec"] == {"groups": expected}, f"{value_set}: the file's rules, less those switched off"
        shipped_sets.add(value_set)
    assert {"production", "hpa", "docs"} <= shipped_sets
    # A rule file with Prometheus's own template syntax passes through untouched; none, and nothing renders.
    chart = tmp_path / "ninkik-tasks"
    shutil.copytree(CHART, chart)
    rules_text = (
        "groups:\n  - name: t\n    rules:\n      - alert: A\n        expr: up == 0\n"
        '        annotations:\n          summary: "{{ $labels.instance }} is down"\n'
        "      - alert: NinkikBrokerDown\n        expr: up == 0\n"
    )
    (chart / "files" / "alerts.yml").write_text(rules_text)
    objs = _objects(_template(4, "hpa", chart=chart))
    (rule,) = _of(objs, "PrometheusRule").values()
    expected_text = yaml.safe_load(rules_text)
    expected_text["groups"][0]["rules"].pop()  # switched off by default
    assert rule["spec"] == expected_text, "the rule file is read as data ({{ $labels }} untouched)"
    assert _crd_errors([rule]) == [["PrometheusRule", rule["metadata"]["name"], None]]
    assert not _of(_objects(_template(4, "default", chart=chart)), "PrometheusRule"), "only when enabled"


# Which job serves which metric family, as deploy/prometheus/prometheus.yml scrapes them and
# tests/test_monitoring.py proves on a real stack. Nothing in the chart scrapes a redis_exporter.
FAMILY_JOBS = (
    ("ninkik_", "ninkik-ingest"),
    ("flower_", "ninkik-flower"),
    ("rabbitmq_detailed_", "rabbitmq-detailed"),
    ("rabbitmq_", "rabbitmq"),
    ("redis_", "redis"),
)


def _meta_label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabel(rule: dict[str, Any]) -> dict[str, Any]:
    """A RelabelConfig of the Prometheus Operator's CRDs in Prometheus' own form."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    out = {names.get(key, key): value for key, value in rule.items()}
    if "action" in out:
        out["action"] = out["action"].lower()
    return out


def _operator_scrape_configs(value_set: str, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scrape configuration the Prometheus Operator generates from the value set's ServiceMonitors and
    ScrapeConfigs (the order and form of its own relabelings as in its golden file
    pkg/prometheus/testdata/GenerateRelabelConfig.golden: job from the Service's name, then the endpoint's
    relabelings), with the Kubernetes service discovery replaced by static groups carrying the
    __meta_kubernetes_* labels the rendered Services would have (nothing is scraped: addresses are made up)."""
    configs = []
    addresses = (f"192.0.2.1:{port}" for port in itertools.count(10000))
    services = _of(objs, "Service").values()
    for monitor in _of(objs, "ServiceMonitor").values():
        spec = monitor["spec"]
        namespaces = spec.get("namespaceSelector", {}).get("matchNames", [monitor["metadata"]["namespace"]])
        for i, endpoint in enumerate(spec["endpoints"]):
            groups = []
            for service in services:
                if service["metadata"]["namespace"] not in namespaces:
                    continue
                for port in service["spec"]["ports"]:
                    pod = f"{service['metadata']['name']}-0"
                    labels = {
                        "__meta_kubernetes_namespace": service["metadata"]["namespace"],
                        "__meta_kubernetes_service_name": service["metadata"]["name"],
                        "__meta_kubernetes_endpoint_port_name": port["name"],
                        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
                        "__meta_kubernetes_endpoint_address_target_name": pod,
                        "__meta_kubernetes_pod_name": pod,
                        "__meta_kubernetes_pod_container_name": "main",
                        "__meta_kubernetes_pod_phase": "Running",
                        "chart_values": value_set,
                    }
                    for key, value in service["metadata"]["labels"].items():
                        labels[f"__meta_kubernetes_service_label_{_meta_label(key)}"] = value
                        labels[f"__meta_kubernetes_service_labelpresent_{_meta_label(key)}"] = "true"
                    groups.append({"targets": [next(addresses)], "labels": labels})
            relabel: list[dict[str, Any]] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
            for key, value in spec["selector"]["matchLabels"].items():
                present = [f"__meta_kubernetes_service_label_{_meta_label(key)}"]
                present.append(f"__meta_kubernetes_service_labelpresent_{_meta_label(key)}")
                relabel.append({"action": "keep", "source_labels": present, "regex": f"({value});true"})
            relabel += [
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                    "regex": endpoint["port"],
                },
                {
                    "source_labels": [
                        "__meta_kubernetes_endpoint_address_target_kind",
                        "__meta_kubernetes_endpoint_address_target_name",
                    ],
                    "separator": ";",
                    "regex": "Pod;(.*)",
                    "replacement": "${1}",
                    "target_label": "pod",
                },
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
            ]
            if job_label := spec.get("jobLabel"):
                relabel.append(
                    {
                        "source_labels": [f"__meta_kubernetes_service_label_{_meta_label(job_label)}"],
                        "target_label": "job",
                        "regex": "(.+)",
                        "replacement": "${1}",
                    }
                )
            relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
            relabel += [_relabel(r) for r in endpoint.get("relabelings", [])]
            name = f"{value_set}/serviceMonitor/{monitor['metadata']['namespace']}/{monitor['metadata']['name']}/{i}"
            configs.append({"job_name": name, "static_configs": groups, "relabel_configs": relabel})
    for scrape in _of(objs, "ScrapeConfig").values():
        spec = scrape["spec"]
        assert "jobName" not in spec, "the emulation knows the job from relabelings only"
        groups = [
            {
                "targets": [next(addresses) for _ in group["targets"]],
                "labels": {**group.get("labels", {}), "chart_values": value_set},
            }
            for group in spec["staticConfigs"]
        ]
        relabel = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
        relabel += [_relabel(r) for r in spec.get("relabelings", [])]
        name = f"{value_set}/scrapeConfig/{scrape['metadata']['namespace']}/{scrape['metadata']['name']}"
        configs.append({"job_name": name, "static_configs": groups, "relabel_configs": relabel})
    return configs


def _relabelled_targets(config: Path, jobs: list[str]) -> dict[str, list[dict[str, str]]]:
    """job -> the labels of each target Prometheus keeps after relabelling, by `promtool check service-discovery`
    (scrape.PopulateLabels, as the server applies it). It reports what it discovered when its timeout ends: static
    groups arrive at once, and a job that reports nothing is asked again with a longer wait."""
    found: dict[str, list[dict[str, str]]] = {}
    for timeout in ("300ms", "5s"):
        runs = {
            job: subprocess.Popen(
                [promtool(), "check", "service-discovery", f"--timeout={timeout}", str(config), job],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for job in jobs
            if job not in found
        }
        for job, run in runs.items():
            out, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
            if results := json.loads(out):
                found[job] = [r["labels"] for r in results if r["labels"]]
    assert set(found) == set(jobs), f"no targets discovered for {set(jobs) - set(found)}"
    return found


def _matches(labels: dict[str, str], matcher: tuple[str, str, str]) -> bool:
    """A PromQL label matcher (anchored regular expressions, as Prometheus has them)."""
    name, op, value = matcher
    have = labels.get(name, "")
    return {
        "=": have == value,
        "!=": have != value,
        "=~": re.fullmatch(value, have) is not None,
        "!~": re.fullmatch(value, have) is None,
    }[op]


def test_every_rule_selects_jobs_the_rendered_scrape_configuration_produces(
    objects: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Prometheus (promtool) applies the relabelings the chart renders (ServiceMonitor, ScrapeConfigs) to the
    targets the Operator would give it; then every job matcher of every rendered rule must select a target it
    keeps, and every rule must read a metric family some kept job serves (not only a source nobody scrapes)."""
    monitored = {vs: objs for vs, objs in objects.items() if _of(objs, "PrometheusRule")}
    assert {"production", "hpa", "docs"} <= set(monitored)
    configs = {vs: _operator_scrape_configs(vs, objs) for vs, objs in monitored.items()}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": sum(configs.values(), [])}))
    targets = _relabelled_targets(tmp_path / "prometheus.yml", [c["job_name"] for c in sum(configs.values(), [])])
    for value_set, objs in monitored.items():
        kept = [labels for c in configs[value_set] for labels in targets[c["job_name"]]]
        jobs = {labels["job"] for labels in kept}
        print(f"\n  {value_set}: the rendered scrape configuration keeps the jobs {sorted(jobs)}", end="")
        (rule_object,) = _of(objs, "PrometheusRule").values()
        for rule in (r for group in rule_object["spec"]["groups"] for r in group["rules"]):
            where = f"{value_set}: {rule['alert']}"
            for selector in re.findall(r"\{([^{}]*)\}", rule["expr"]):
                matchers = re.findall(r"\b(job)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"", selector)
                if matchers:
                    assert any(all(_matches(t, m) for m in matchers) for t in kept), f"{where}: no job {{{selector}}}"
            families = used_metrics(rule["expr"])
            sources = {next(job for prefix, job in FAMILY_JOBS if f.startswith(prefix)) for f in families}
            assert sources & jobs or not families, f"{where} reads only {sorted(families)}, which nothing scrapes"


def _references(obj: Any) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None for the whole object) of every Secret and ConfigMap an object refers to."""
    if isinstance(obj, list):
        for item in obj:
            yield from _references(item)
        return
    if not isinstance(obj, dict):
        return
    for key, value in obj.items():
        if key == "secretKeyRef" or (key in ("username", "password") and isinstance(value, dict)):
            yield "Secret", value["name"], value["key"]
        elif key == "secretTargetRef":
            yield from (("Secret", ref["name"], ref["key"]) for ref in value)
        elif key == "secretRef":
            yield "Secret", value["name"], None
        elif key == "secret" and isinstance(value, dict) and "secretName" in value:
            yield "Secret", value["secretName"], None
        elif key == "tls" and isinstance(value, list):
            yield from (("Secret", entry["secretName"], None) for entry in value if "secretName" in entry)
        elif key in ("configMapKeyRef", "configMapRef", "configMap") and isinstance(value, dict):
            yield "ConfigMap", value["name"], value.get("key")
        else:
            yield from _references(value)


def documented_objects() -> dict[tuple[str, str], set[str]]:
    """(kind, name) -> keys of every Secret and ConfigMap docs/kubernetes.md has you create with kubectl."""
    found: dict[tuple[str, str], set[str]] = {}
    for block in fenced_blocks(KUBERNETES_MD, "sh"):
        for command in block.replace("\\\n", " ").splitlines():
            if match := re.search(r"kubectl (?:-n \S+ )?create (secret generic|configmap) (\S+)(.*)", command):
                kind = "Secret" if match.group(1).startswith("secret") else "ConfigMap"
                keys = found.setdefault((kind, match.group(2)), set())
                keys.update(re.findall(r"--from-(?:literal|file)=([\w.-]+)=", match.group(3)))
    return found


def test_every_secret_and_config_map_a_value_set_names_is_one_the_docs_create(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """A key that does not exist keeps every pod in CreateContainerConfigError: the chart's examples and the values
    docs/kubernetes.md builds name only Secrets, keys and ConfigMaps its kubectl commands create."""
    documented = documented_objects()
    assert ("Secret", "ninkik-tasks") in documented
    for value_set, objs in objects.items():
        own = set(_of(objs, "ConfigMap"))
        for o in objs:
            for kind, name, key in _references(o):
                if kind == "ConfigMap" and name in own:
                    continue
                where = f"{value_set}: {o['kind']} {o['metadata']['name']} names {kind} {name}"
                assert (kind, name) in documented, f"{where}, which docs/kubernetes.md never creates"
                assert key is None or key in documented[kind, name], f"{where} key {key}, which the docs never create"
        # A setting's file on a mounted ConfigMap is one of its documented keys.
        values = _values_of(value_set)
        volumes = {v["name"]: v for v in values["extraVolumes"]}
        for setting, value in values["config"].items():
            for mount in values["extraVolumeMounts"]:
                if setting.endswith("_FILE") and str(value).startswith(mount["mountPath"] + "/"):
                    config_map = volumes[mount["name"]]["configMap"]["name"]
                    file = str(value).removeprefix(mount["mountPath"] + "/")
                    assert file in documented["ConfigMap", config_map], f"{value_set}: {setting}={value}"


def test_flower_behind_an_alb_can_become_healthy(objects: dict[str, list[dict[str, Any]]]) -> None:
    """ClusterIP Service: ip targets; health check where Flower answers without auth; ALB traffic from the VPC."""
    for value_set in ("production", "docs"):
        objs = objects[value_set]
        ((_, container),) = [(d, c) for d, c in _containers(objs) if c["name"] == "flower"]
        (ingress,) = _of(objs, "Ingress").values()
        assert ingress["spec"]["ingressClassName"] == "alb"
        annotations = ingress["metadata"]["annotations"]
        assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip", value_set
        health = container["readinessProbe"]["httpGet"]["path"]
        assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == health == "/healthcheck", value_set
        assert not [t for t in ingress["spec"].get("tls", []) if "secretName" in t], "an ALB's certificate is ACM's"
        policies = _of(objs, "NetworkPolicy").values()
        flower_policy = next(p for p in policies if "flower" in p["spec"]["podSelector"]["matchLabels"].values())
        peers = [peer for rule in flower_policy["spec"]["ingress"] for peer in rule["from"]]
        assert any("ipBlock" in peer for peer in peers), f"{value_set}: the ALB's addresses are in the VPC"
    # An ALB Ingress with a NetworkPolicy admitting only namespaces is refused, saying why.
    done = subprocess.run(
        [
            str(charttools.helm(4)),
            "template",
            RELEASE,
            str(CHART),
            *_values_args("production"),
            "--set-json",
            'networkPolicy.flowerFrom=[{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}]',
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "ipBlock" in done.stderr, done.stderr


def _health_md_probes() -> dict[str, dict[str, Any]]:
    """docs/health.md's Kubernetes probes: kind -> the probe as written."""
    (block,) = [b for b in fenced_blocks(ROOT / "docs" / "health.md", "yaml") if "livenessProbe" in b]
    probes: dict[str, dict[str, Any]] = yaml.safe_load(block.split("terminationGracePeriodSeconds")[0])
    return probes


def test_probes_are_the_ones_health_md_gives(objects: dict[str, list[dict[str, Any]]]) -> None:
    written = _health_md_probes()
    assert set(written) == {"startupProbe", "livenessProbe", "readinessProbe"}
    for value_set, objs in objects.items():
        for deployment, container in _containers(objs):
            for kind, probe in written.items():
                timing = {k: v for k, v in probe.items() if k != "exec"}
                got = {k: v for k, v in container[kind].items() if k not in ("exec", "httpGet")}
                assert got == timing, f"{value_set}: {deployment['metadata']['name']} {kind}"
    # The page's worker is the chart's worker.
    worker = _deployment(objects["default"], "worker")["spec"]["template"]["spec"]["containers"][0]
    assert {kind: worker[kind]["exec"] for kind in written} == {kind: p["exec"] for kind, p in written.items()}


def test_pods_carry_the_labels_annotations_priority_and_environment_of_the_values(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    for value_set in VALUE_SETS:
        values = _values_of(value_set)
        for deployment, container in _containers(objects[value_set]):
            component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
            own = values[{"worker-control": "workerControl"}.get(component, component)]
            pod = deployment["spec"]["template"]
            where = f"{value_set}: {component}"
            for label, value in {**values["commonLabels"], **values["podLabels"], **own["podLabels"]}.items():
                assert pod["metadata"]["labels"][label] == value, where
            for name, value in {**values["podAnnotations"], **own["podAnnotations"]}.items():
                assert pod["metadata"]["annotations"][name] == value, where
            assert pod["spec"].get("priorityClassName", "") == (own["priorityClassName"] or values["priorityClassName"])
            env = container.get("env", [])
            assert all(e in env for e in values["extraEnv"]), where
            assert all(e in container["envFrom"] for e in values["extraEnvFrom"]), where
    # The examples use them: commonLabels reach pods, an egress proxy, a PriorityClass, one component's annotations.
    hpa = objects["hpa"]
    assert _deployment(hpa, "worker")["spec"]["template"]["metadata"]["annotations"]["example.com/owner"]
    assert "example.com/owner" not in _deployment(hpa, "ingest")["spec"]["template"]["metadata"]["annotations"]
    assert _deployment(hpa, "beat")["spec"]["template"]["spec"]["priorityClassName"] == "ninkik"
    ingest_env = _deployment(hpa, "ingest")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"HTTPS_PROXY", "NO_PROXY"} <= {e["name"] for e in ingest_env}
    ingest_labels = _deployment(objects["production"], "ingest")["spec"]["template"]["metadata"]["labels"]
    assert ingest_labels["app.kubernetes.io/part-of"] == "ninkik"


def test_spread_and_disruption_budgets_keep_drains_moving(objects: dict[str, list[dict[str, Any]]]) -> None:
    ingest = _deployment(objects["default"], "ingest")
    selector = ingest["spec"]["selector"]["matchLabels"]
    constraints = ingest["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(c["labelSelector"] == {"matchLabels": selector} for c in constraints), "its own pods, this release"
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in constraints)
    worker = _deployment(objects["production"], "worker")
    (zone,) = worker["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert zone["labelSelector"] == {"matchLabels": worker["spec"]["selector"]["matchLabels"]}
    for value_set, objs in objects.items():
        for name, pdb in _of(objs, "PodDisruptionBudget").items():
            # A pod that is not ready (Redis or the broker away) may be evicted: a drain is not blocked for it.
            assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", f"{value_set}: {name}"


KINDS_IN_COMMANDS = {
    "deploy": "Deployment",
    "svc": "Service",
    "scaledobject": "ScaledObject",
    "hpa": "HorizontalPodAutoscaler",
    "secret": "Secret",
    "configmap": "ConfigMap",
}
# kind/name as kubectl takes it (not a path such as deploy/helm/ninkik-tasks).
OBJECT_IN_COMMAND = re.compile(rf"(?<![\w/.-])({'|'.join(KINDS_IN_COMMANDS)})/([a-z0-9][a-z0-9-]*[a-z0-9])(?![\w/.-])")


def test_the_docs_commands_name_objects_the_chart_renders(objects: dict[str, list[dict[str, Any]]]) -> None:
    """docs/kubernetes.md and the runbook, walked with their own values (release ninkik-tasks in ninkik): every
    kind/name a kubectl command names is rendered (or created by the page's kubectl commands, or KEDA's HPA of a
    rendered ScaledObject); every component label exists; nothing needs a shell Amazon MQ or the image lacks."""
    objs = objects["docs"]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    names |= {("HorizontalPodAutoscaler", f"keda-hpa-{n}") for kind, n in set(names) if kind == "ScaledObject"}
    names |= set(documented_objects())
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objs if o["kind"] == "Deployment"}
    monitoring = [o for o in objs if o["kind"] in ("ServiceMonitor", "ScrapeConfig", "PrometheusRule")]
    labels = {o["metadata"]["labels"].get("release") for o in monitoring}
    assert labels == {"kube-prometheus-stack"}, "kube-prometheus-stack selects them by release"
    checked = 0
    for page in (KUBERNETES_MD, ROOT / "docs" / "runbook.md"):
        text = " ".join(page.read_text().split())
        for kind, name in OBJECT_IN_COMMAND.findall(text):
            assert (KINDS_IN_COMMANDS[kind], name) in names, f"{page.name}: {kind}/{name} is not rendered"
            checked += 1
        for component in re.findall(r"app\.kubernetes\.io/component=([a-z-]+)", text):
            assert component in components, f"{page.name}: no component {component}"
        assert set(re.findall(r"kubectl -n (\S+)", text)) <= {NAMESPACE}, page.name
        for release, namespace in re.findall(r"helm (?:install|upgrade) (\S+) deploy/helm/ninkik-tasks -n (\S+)", text):
            assert (release, namespace) == (DOCS_RELEASE, NAMESPACE), page.name
    assert checked >= 30, checked
    for block in fenced_blocks(KUBERNETES_MD, "sh"):
        for line in block.splitlines():
            assert not re.match(r"\s*(rabbitmqctl|redis-cli|docker)\b", line), line


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
