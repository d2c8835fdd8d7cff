"""The deployment files (docker-compose.yml, Dockerfile, entrypoints, .env.example) agree with the package.

No Docker engine is needed: the files are parsed, and `docker compose config` runs only where a client exists.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from conftest import Stack

from ninkik_tasks import local
from ninkik_tasks.celery_app import QUEUES
from ninkik_tasks.cli import main
from ninkik_tasks.config import Settings, known_variables

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = "/app"  # the Dockerfile's WORKDIR, where workers/ and beat/ are copied
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ninkik-tasks:{VERSION}"  # the image is tagged with the release (docs/upgrading.md)
APP_SERVICES = ("ingest", "worker", "beat", "flower")
LOCAL_SERVICES = ("moto", "standin")
MONITORING_SERVICES = ("prometheus", "redis-exporter")
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
SHELL_VAR = re.compile(r"\$\{(\w+)(?::?[-?+=]([^}]*))?\}")
COMPOSE_VAR = re.compile(r"(?<!\$)\$\{(\w+)")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _ours(service: dict[str, Any]) -> bool:
    return "build" in service or service.get("image") == IMAGE


def _argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def _env_file(name: str) -> dict[str, tuple[str, bool]]:
    """Variables of an env example file: name -> (value, set); commented `# NAME=value` lines count as unset."""
    found: dict[str, tuple[str, bool]] = {}
    for line in (ROOT / name).read_text().splitlines():
        if match := ENV_LINE.match(line.strip()):
            found[match.group(2)] = (match.group(3).strip(), match.group(1) is None)
    return found


def _settings_vars() -> dict[str, str]:
    # Fields read under AWS's own names (AWS_REGION) are not NINKIK_ variables; the AWS ones are checked apart.
    fields = Settings.model_fields.items()
    return {"NINKIK_" + name.upper(): name for name, field in fields if field.validation_alias is None}


def _scripts() -> list[Path]:
    return sorted([*(ROOT / "workers").glob("*.sh"), *(ROOT / "beat").glob("*.sh")])


def _exec_line(script: Path) -> list[str]:
    """The argv of the script's `exec` line, `${VAR:-default}` replaced by its default."""
    joined = script.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines() if line.strip().startswith("exec ")]
    assert len(lines) == 1, f"{script.name}: expected one `exec` line, found {len(lines)}"
    argv = shlex.split(lines[0])[1:]
    return [SHELL_VAR.sub(lambda m: m.group(2) or "", arg) if arg != "$@" else arg for arg in argv]


def _resolve(service: dict[str, Any]) -> list[str]:
    """What the container runs: a repo script's exec line (with compose's arguments in place of "$@"), or argv."""
    argv = _argv(service.get("entrypoint")) + _argv(service.get("command"))
    if argv and argv[0].startswith(APP_DIR + "/"):
        script = ROOT / argv[0].removeprefix(APP_DIR + "/")
        assert script.is_file(), f"{argv[0]} is not a file in the repository ({script})"
        assert os.access(script, os.X_OK), f"{script} is not executable"
        inner = _exec_line(script)
        at = inner.index("$@") if "$@" in inner else len(inner)
        return inner[:at] + argv[1:] + inner[at + 1 :]
    return argv


def _option_names(params: list[click.Parameter]) -> set[str]:
    return {opt for param in params for opt in (*param.opts, *param.secondary_opts)}


def _check_options(args: list[str], known: set[str], what: str) -> None:
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in known, f"{what}: unknown option {arg}"


def _check_flower_options(args: list[str]) -> None:
    from flower.options import options

    known = {"--" + name.replace("_", "-") for name in options}
    _check_options([arg.replace("_", "-") for arg in args], known, "flower")


def _check_console(argv: list[str]) -> None:
    """Fail unless argv is a known console command with options that command accepts."""
    assert argv, "no command (the image's CMD only prints help)"
    if argv[0] == "ninkik-tasks":
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts.get("ninkik-tasks") == "ninkik_tasks.cli:main"
        command: click.Command = main
        words = [arg for arg in argv[1:] if not arg.startswith("-")]
        assert words, "ninkik-tasks needs a subcommand"
        for word in words:
            if not isinstance(command, click.Group):
                break
            assert word in command.commands, f"ninkik-tasks has no subcommand {word!r}"
            command = command.commands[word]
        if words[0] == "flower":  # Flower's own options pass through
            _check_flower_options(argv[2:])
        else:
            _check_options(argv[1:], _option_names(command.params), " ".join(argv[:2]))
    elif argv[0] == "celery":
        assert argv[1:3] in (["-A", "ninkik_tasks"], ["--app", "ninkik_tasks"]), f"not the ninkik_tasks app: {argv}"
        sub, args = argv[3], argv[4:]
        if sub == "worker":
            from celery.bin.worker import worker

            _check_options(args, _option_names(worker.params), "celery worker")
        elif sub == "beat":
            from celery.bin.beat import beat

            _check_options(args, _option_names(beat.params), "celery beat")
        elif sub == "flower":
            _check_flower_options(args)
        else:
            pytest.fail(f"celery {sub} is not one of worker, beat, flower")
    else:
        assert argv[:3] == ["python", "-m", "moto.server"], f"unknown command {argv}"


# Services and their commands


def test_services_and_profiles() -> None:
    services = _services()
    assert set(services) >= {"rabbitmq", "redis", *APP_SERVICES, *LOCAL_SERVICES}
    for name in ("rabbitmq", "redis", *APP_SERVICES):
        assert not services[name].get("profiles"), f"{name} must run without a profile"
    for name in LOCAL_SERVICES:
        assert services[name].get("profiles") == ["local"], f"{name} belongs to the local profile only"
    for name in MONITORING_SERVICES:
        assert services[name].get("profiles") == ["monitoring"], f"{name} belongs to the monitoring profile only"


@pytest.mark.parametrize("name", [*APP_SERVICES, "standin"])
def test_app_services_share_one_image_rabbitmq_and_redis(name: str) -> None:
    service = _services()[name]
    build = service.get("build")
    assert build == "." or (isinstance(build, dict) and build.get("context") == "."), f"{name} builds elsewhere"
    assert service.get("image") == IMAGE
    env_files = service.get("env_file")
    env_files = [env_files] if isinstance(env_files, str) else env_files or []
    assert ".env" in [entry if isinstance(entry, str) else entry["path"] for entry in env_files]
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping, please"
    assert re.fullmatch(r"amqp://ninkik:\$\{RABBITMQ_PASSWORD:\?[^}]+\}@rabbitmq:5672/ninkik", env["NINKIK_BROKER_URL"])
    assert env.get("NINKIK_BROKER_MANAGEMENT_URL") == "http://rabbitmq:15672"
    for var, db in (("NINKIK_RESULT_BACKEND", 1), ("NINKIK_REDIS_URL", 2)):
        assert env.get(var) == f"redis://redis:6379/{db}", f"{name}: {var} must point at the redis service"
    for needed in ("rabbitmq", "redis"):
        assert service.get("depends_on", {}).get(needed, {}).get("condition") == "service_healthy", needed


@pytest.mark.parametrize("name", sorted(_services()))
def test_commands_resolve(name: str) -> None:
    service = _services()[name]
    if name == "redis":
        assert _argv(service.get("command"))[0] == "redis-server"
    elif name == "rabbitmq":
        assert not service.get("command"), "the image's own entrypoint starts the node"
    elif name == "prometheus":
        assert re.fullmatch(r"prom/prometheus:v2\.\d+\.\d+", service["image"]), "Prometheus 2.x, pinned"
        assert "exec /bin/prometheus --config.file=/etc/prometheus/prometheus.yml" in " ".join(service["entrypoint"])
    elif name == "redis-exporter":
        assert re.fullmatch(r"oliver006/redis_exporter:v1\.\d+\.\d+", service["image"])
    elif not _ours(service):
        assert name == "moto" and str(service["image"]).startswith("motoserver/moto:"), f"{name}: unknown image"
        assert not service.get("command") or _argv(service["command"])[:3] == ["python", "-m", "moto.server"]
    else:
        _check_console(_resolve(service))


def test_processes_are_the_designed_ones() -> None:
    services = _services()
    assert _resolve(services["ingest"])[:2] == ["ninkik-tasks", "ingest"]
    assert _resolve(services["worker"])[:4] == ["celery", "-A", "ninkik_tasks", "worker"]
    assert _resolve(services["beat"])[:4] == ["celery", "-A", "ninkik_tasks", "beat"]
    assert _resolve(services["flower"])[:2] == ["ninkik-tasks", "flower"]  # it refuses to start without auth
    assert _resolve(services["standin"])[:2] == ["ninkik-tasks", "standin"]


def test_image_is_tagged_with_the_package_version() -> None:
    from importlib.metadata import version

    assert version("ninkik-tasks") == VERSION, "the installed metadata is stale: rebuild .venv"
    images = {name: service.get("image") for name, service in _services().items() if "build" in service}
    assert images and set(images.values()) == {f"ninkik-tasks:{VERSION}"}, images


def test_worker_scales() -> None:
    worker = _services()["worker"]
    assert "container_name" not in worker, "container_name breaks --scale worker=N"
    assert not worker.get("ports"), "host ports break --scale worker=N"
    argv = _resolve(worker)
    assert any(re.fullmatch(r"(--hostname=|-n)?\S*%h\S*", arg) for arg in argv), "replicas need distinct names (%h)"
    assert "-E" in argv or "--task-events" in argv, "Flower needs task events"
    queues = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--queues="))
    assert set(queues.split(",")) == set(QUEUES), "by default a worker takes every queue of celery_app.QUEUES"


def test_beat_is_one_and_keeps_its_schedule_in_redis() -> None:
    beat = _services()["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    # RedBeat keeps the schedule and its lock in Redis: no schedule file, nothing to persist locally.
    assert not any(arg.startswith(("--schedule", "-s")) for arg in _resolve(beat))
    from celery.utils.imports import symbol_by_name
    from redbeat import RedBeatScheduler

    from ninkik_tasks import app

    assert issubclass(symbol_by_name(app.conf.beat_scheduler), RedBeatScheduler)


def test_flower_requires_basic_auth_and_keeps_state() -> None:
    flower = _services()["flower"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?.+\}", flower["environment"]["FLOWER_BASIC_AUTH"])
    argv = _resolve(flower)
    assert "--persistent=True" in argv and "--purge_offline_workers=600" in argv
    db = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--db="))
    mounts = [volume.split(":")[1].rstrip("/") for volume in flower.get("volumes", [])]
    assert any(db.startswith(mount + "/") for mount in mounts), f"flower's db {db} is not on a volume"
    assert any(str(port).endswith(":5555") for port in flower.get("ports", []))


@pytest.mark.parametrize("value", ["", "no-colon"])
def test_flower_script_refuses_without_auth(value: str) -> None:
    # The image has the package's scripts on PATH, as .venv/bin is here.
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "FLOWER_BASIC_AUTH": value}
    result = subprocess.run(["sh", str(ROOT / "workers" / "flower.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "FLOWER_BASIC_AUTH" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _seconds(duration: str) -> float:
    """A compose duration (1m30s, 150s, 10s) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.mark.parametrize("name", ["ingest", "worker", "beat"])
def test_processes_are_healthchecked_by_their_own_loop(name: str) -> None:
    """docs/health.md: `ninkik-tasks health KIND`, a real subcommand, within the probe's period and threshold."""
    from ninkik_tasks.health import STOP_GRACE_SECONDS

    service = _services()[name]
    check = service["healthcheck"]
    argv = _argv(check["test"])
    assert argv[0] == "CMD" and argv[1:] == ["ninkik-tasks", "health", name], argv
    _check_console(argv[1:])
    assert "inspect" not in argv and "ping" not in argv
    assert _seconds(check["timeout"]) <= _seconds(check["interval"])
    assert int(check["retries"]) >= 2, "one slow probe must not make it unhealthy"
    assert _seconds(service["stop_grace_period"]) == STOP_GRACE_SECONDS[name]


def test_flower_is_healthchecked_on_its_port() -> None:
    from ninkik_tasks.health import STOP_GRACE_SECONDS

    flower = _services()["flower"]
    test = " ".join(_argv(flower["healthcheck"]["test"]))
    assert "http://127.0.0.1:5555/healthcheck" in test
    assert _seconds(flower["stop_grace_period"]) == STOP_GRACE_SECONDS["flower"]


def test_redis_is_persistent_and_healthchecked() -> None:
    redis = _services()["redis"]
    command = _argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction", "check fails any other policy"
    assert "redis-cli ping" in " ".join(_argv(redis["healthcheck"]["test"]))
    assert any(str(volume).endswith(":/data") for volume in redis.get("volumes", []))


def test_rabbitmq_is_pinned_persistent_managed_and_healthchecked() -> None:
    rabbitmq = _services()["rabbitmq"]
    # A release series whose quorum-queue behaviour the suite covers (docs/operations.md: supported versions).
    assert re.fullmatch(r"rabbitmq:3\.13\.\d+-management", rabbitmq["image"]), rabbitmq["image"]
    assert rabbitmq.get("hostname") == "rabbitmq", "the node's data is kept under rabbit@<hostname>"
    assert any(str(volume).endswith(":/var/lib/rabbitmq") for volume in rabbitmq.get("volumes", []))
    assert "rabbitmq-diagnostics" in " ".join(_argv(rabbitmq["healthcheck"]["test"]))
    env = rabbitmq["environment"]
    assert env["RABBITMQ_DEFAULT_USER"] == "ninkik" and env["RABBITMQ_DEFAULT_VHOST"] == "ninkik"
    assert env["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:?"), "no default password"
    assert rabbitmq.get("ports") == ["127.0.0.1:15672:15672"], "management on this host only, AMQP not published"
    flower = _services()["flower"]["environment"]
    assert "@rabbitmq:15672/api/" in flower["FLOWER_BROKER_API"], "Flower's broker tab reads the management API"


def test_monitoring_profile_runs_the_rules_against_the_stack() -> None:
    prometheus = _services()["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if v.startswith("./")}
    config = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    assert config == ROOT / "deploy/prometheus/prometheus.yml"
    # A bind mount of the symlink gives the container the chart's file itself (a mounted folder would not).
    assert (ROOT / mounts["/etc/prometheus/alerts.yml"]).resolve() == ROOT / "deploy/helm/ninkik-tasks/files/alerts.yml"
    scrape = yaml.safe_load(config.read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert set(jobs) == {"ninkik-ingest", "ninkik-flower", "rabbitmq", "rabbitmq-detailed", "redis"}
    assert jobs["ninkik-ingest"]["dns_sd_configs"][0]["port"] == Settings().metrics_port
    assert jobs["ninkik-flower"]["basic_auth"]["password_file"] == "/prometheus/flower-password"
    assert "/prometheus/flower-password" in " ".join(prometheus["entrypoint"])
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?.+\}", prometheus["environment"]["FLOWER_BASIC_AUTH"])
    assert jobs["rabbitmq-detailed"]["metrics_path"] == "/metrics/detailed"
    assert jobs["rabbitmq-detailed"]["params"]["family"] == ["queue_coarse_metrics", "queue_consumer_count"]
    rabbitmq = _services()["rabbitmq"]
    plugins = next(v.split(":")[0] for v in rabbitmq["volumes"] if v.endswith(":/etc/rabbitmq/enabled_plugins:ro"))
    assert "rabbitmq_prometheus" in (ROOT / plugins).read_text()
    services = _services()
    for job in ("rabbitmq", "redis", "ninkik-flower"):
        for target in jobs[job]["static_configs"][0]["targets"]:
            assert target.split(":")[0] in services, f"{job} scrapes {target}, which compose does not run"


def test_volumes_exist() -> None:
    declared = set(_compose().get("volumes") or {})
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
                assert str(volume).endswith(":ro"), f"{name} mounts {source} writable"
            else:
                assert source in declared, f"{name} uses volume {source}, not declared"


# The environment


def test_env_example_documents_every_variable() -> None:
    documented = _env_file(".env.example")
    wanted = set(known_variables())
    wanted |= set(COMPOSE_VAR.findall((ROOT / "docker-compose.yml").read_text()))
    for script in _scripts():
        read = {var for var, _ in SHELL_VAR.findall(script.read_text())}
        # The package's one list of known variables (its warning, the chart's ConfigMap) has every one.
        assert {var for var in read if var.startswith("NINKIK_")} <= known_variables(), script.name
        wanted |= read
    wanted |= {"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"}
    assert sorted(wanted - set(documented)) == []
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        assert not documented[name][1], f"{name} must be commented out (an empty value is not 'unset' to boto3)"


@pytest.mark.parametrize("name", [".env.example", ".env.local.example"])
def test_env_files_are_commented_known_and_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [line.strip() for line in (ROOT / name).read_text().splitlines()]
    script_vars = {var for script in _scripts() for var, _ in SHELL_VAR.findall(script.read_text())}
    for i, line in enumerate(lines):
        if match := ENV_LINE.match(line):
            var = match.group(2)
            assert i and lines[i - 1].startswith("#") and not ENV_LINE.match(lines[i - 1]), f"{var}: no comment"
            if var.startswith("NINKIK_"):
                assert var in _settings_vars() or var in script_vars, f"{name}: {var} is read by nothing"
    for var in os.environ:
        if var.startswith("NINKIK_"):
            monkeypatch.delenv(var)
    for var, (value, is_set) in _env_file(name).items():
        if is_set:
            monkeypatch.setenv(var, value)
    Settings()  # the values it sets are valid


def test_env_example_leaves_secrets_empty_and_shows_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    documented = _env_file(".env.example")
    for var, (value, _) in documented.items():
        if SECRET_NAME.search(var):
            assert value == "", f"{var} must be empty in .env.example"
    for var in os.environ:
        if var.startswith("NINKIK_"):
            monkeypatch.delenv(var)
    defaults = Settings()
    for var, field in _settings_vars().items():
        value, is_set = documented[var]
        default = getattr(defaults, field)
        if is_set or default in (None, []):
            continue
        assert getattr(Settings(**{field: value}), field) == default, f"{var}: .env.example shows {value!r}"


# The image


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def _env_names(rest: str) -> list[tuple[str, str]]:
    words = shlex.split(rest)
    if "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]  # legacy `ENV NAME value`
    return [(word.split("=", 1)[0], word.split("=", 1)[1]) for word in words]


def test_dockerfile_runs_as_non_root_without_secrets() -> None:
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for instruction, rest in instructions if instruction == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), "the last USER is root"
    for instruction, rest in instructions:
        if instruction in ("ENV", "ARG"):
            for name, value in _env_names(rest):
                assert not SECRET_NAME.search(name), f"{instruction} {name} looks like a secret"
                assert not re.search(r"AKIA[0-9A-Z]{16}", value), f"{instruction} {name} holds an AWS key"
    assert ("ARG", 'INSTALL_EXTRAS=""') in instructions
    assert any(instruction == "CMD" for instruction, _ in instructions)
    assert ("WORKDIR", APP_DIR) in instructions


def _ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching pattern wins)."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_build_context_has_the_sources_and_no_secrets() -> None:
    for instruction, rest in _dockerfile():
        if instruction == "COPY":
            sources = [word for word in shlex.split(rest) if not word.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not _ignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    for kept in ("ninkik_tasks/config.py", "workers/entrypoint.sh", "beat/entrypoint.sh"):
        assert not _ignored(kept)
    for secret in (".env", ".env.local", ".git/config", ".venv/bin/python", "tests/conftest.py", ".dev/env"):
        assert _ignored(secret), f"{secret} would be sent to the Docker build"


def test_scripts_are_strict_executable_shell() -> None:
    assert _scripts()
    for script in _scripts():
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n") or text.startswith("#!/usr/bin/env bash\n"), script.name
        assert re.search(r"^set -eu", text, re.MULTILINE), f"{script.name}: no `set -eu`"
        assert os.access(script, os.X_OK), f"{script.name}: not executable"
        shell = "bash" if "bash" in text.splitlines()[0] else "sh"
        subprocess.run([shell, "-n", str(script)], check=True)


# A real compose client, where there is one (`config` needs no engine)


def _compose_client() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]):
            probe = subprocess.run([*argv, "version"], capture_output=True, text=True)
            if probe.returncode == 0:
                return argv
    return None


def test_docker_compose_config(tmp_path: Path) -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client here")
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH" and not k.startswith("COMPOSE_")}
    example = (ROOT / ".env.local.example").read_text()
    (tmp_path / ".env").write_text(example.replace("\nFLOWER_BASIC_AUTH=\n", "\nFLOWER_BASIC_AUTH=user:dummy\n"))
    for profile in ([], ["--profile", "local"], ["--profile", "monitoring"]):
        result = subprocess.run(
            [*client, "-f", "docker-compose.yml", *profile, "config", "-q"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
    (tmp_path / ".env").write_text(example)  # FLOWER_BASIC_AUTH empty: compose must refuse
    result = subprocess.run(
        [*client, "-f", "docker-compose.yml", "config", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "FLOWER_BASIC_AUTH" in result.stderr


# The local profile, run without Docker


COMPOSE_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation of ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        present = name in variables and (variables[name] != "" or not op.startswith(":"))
        if present:
            return variables[name]
        if op.endswith("?"):
            raise AssertionError(f"compose would refuse to start: {arg or name + ' is not set'}")
        return arg if op.endswith("-") else ""

    return COMPOSE_INTERPOLATION.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def _compose_env(service: str, env_file: str) -> dict[str, str]:
    """The environment compose gives `service`: its env_file (here `env_file`, also compose's .env), then its
    `environment`, interpolated from that file as compose does."""
    env = {var: value for var, (value, is_set) in _env_file(env_file).items() if is_set}
    environment = _services()[service].get("environment", {})
    assert isinstance(environment, dict)
    variables = dict(env)
    env.update({str(k): _interpolate(str(v), variables) for k, v in environment.items()})
    return env


def _pointed_at(env: dict[str, str], hosts: dict[str, str]) -> dict[str, str]:
    """Service host names (redis:6379 ...) replaced by the local servers standing in for them."""
    used: set[str] = set()
    out = {}
    for var, value in env.items():
        for service, address in hosts.items():
            for before in ("//", "@"):  # redis://redis:6379, amqp://user:password@rabbitmq:5672
                if f"{before}{service}" in value:
                    value = value.replace(f"{before}{service}", f"{before}{address}")
                    used.add(service)
        out[var] = value
    assert used == set(hosts), f"the local profile no longer uses {set(hosts) - used}: update this test"
    return out


def test_local_profile_starts_ingest_and_check(stack: Stack, rabbitmq: local.RabbitMQ, tmp_path: Path) -> None:
    from ninkik_tasks.local.standin import Standin

    services = _services()
    moto_port = next(str(p).split(":")[-1] for p in services["moto"]["ports"])
    standin_port = next(a.split("=", 1)[1] for a in services["standin"]["command"] if a.startswith("--port="))
    env = _compose_env("ingest", ".env.local.example")
    # The stand-in as the profile runs it: deploy/tenants.example.json, the token from .env.
    tenants = json.loads((ROOT / "deploy" / "tenants.example.json").read_text())
    standin = Standin(tenants, env["NINKIK_API_TOKEN"]).start()
    redis_proc, redis_url = local.start_redis(tmp_path)
    try:
        # The RabbitMQ service as compose sets it up: user ninkik (RABBITMQ_PASSWORD), vhost ninkik.
        password = _env_file(".env.local.example")["RABBITMQ_PASSWORD"][0]
        for args in (
            ("add_user", "ninkik", password),
            ("add_vhost", "ninkik"),
            ("set_permissions", "-p", "ninkik", "ninkik", ".*", ".*", ".*"),
            ("set_user_tags", "ninkik", "management"),
        ):
            done = rabbitmq.ctl(*args)
            assert done.returncode == 0 or "already" in done.stdout + done.stderr, done.stdout + done.stderr
        hosts = {
            "rabbitmq:5672": f"127.0.0.1:{rabbitmq.port}",
            "rabbitmq:15672": f"127.0.0.1:{rabbitmq.management_port}",
            "redis:6379": redis_url.removeprefix("redis://"),
            f"moto:{moto_port}": stack.moto_url.removeprefix("http://"),
            f"standin:{standin_port}": standin.url.removeprefix("http://"),
        }
        env = _pointed_at(env, hosts)
        # What the compose file's comment says to do once the profile is up.
        stack.sqs.create_queue(QueueName=env["NINKIK_SQS_QUEUE_URL"].rsplit("/", 1)[-1])
        # A container's environment: nothing from this shell (no AWS_DEFAULT_REGION, no ~/.aws).
        env = {**env, "PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
        cli = [sys.executable, "-m", "ninkik_tasks.cli"]
        check = subprocess.run([*cli, "check"], env=env, capture_output=True, text=True, timeout=120)
        assert "Traceback" not in check.stdout + check.stderr, check.stdout + check.stderr
        assert check.returncode == 0 and "FAIL" not in check.stdout, check.stdout + check.stderr
        assert "OK   sqs: queue ecr-docker-push found" in check.stdout
        # The tenant lookup is proven on deploy/tenants.example.json's tenant (NINKIK_TENANT_UUIDS).
        assert f"accepts the token and knows tenant {tenants[0]['uuid']}" in check.stdout, check.stdout
        proc = local.Proc("ingest-local-profile", [*cli, "ingest"], tmp_path, env)
        try:
            local.wait_for(lambda: "polling" in proc.output() or not proc.alive(), 30, "ingest to poll")
            assert proc.alive(), proc.output()
            proc.send(signal.SIGTERM)
            local.wait_for(lambda: not proc.alive(), 15, "ingest to stop")
            assert proc.popen.returncode == 0, proc.output()
        finally:
            proc.stop()
        assert "Traceback" not in proc.output(), proc.output()
    finally:
        redis_proc.stop()
        standin.stop()
