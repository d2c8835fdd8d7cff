"""Test hosts on one machine: network namespaces joined by veth pairs to a bridge in the services' host.

    with Hosts(["ingest", "worker-1", "worker-2"]) as hosts:
        with hosts.inside("services"):   # this thread's sockets and children are on the services host
            ...start redis-server, moto, the stand-in bound to hosts.address("services")...
        proc = hosts.proc("worker-1", "worker-1", [sys.executable, "-m", "celery", ...], log_dir, env)
        hosts.cut("worker-1")            # its link goes down: packets are dropped, connections hang
        hosts.mend("worker-1")

Every host is a namespace of its own (`ip netns`), named with a per-run prefix that starts with the creating
process's pid; the services' host holds the bridge, so nothing is added to the machine's own namespace and no
address outside these namespaces is ever a target: test workers running side by side (pytest-xdist) each have
hosts of their own on the same subnet. Namespaces are deleted when the block ends, at interpreter exit, and
(left by a killed run, whose process is gone) when the next block starts. Needs root and iproute2 (`ip`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from ninkik_tasks import local

PREFIX = "nkt-"  # every namespace these tests make starts with it
SUBNET = "10.77.0"  # the test hosts' own addresses: services .1, the others .2, .3 ...
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def available() -> str | None:
    """Why these tests cannot run here (not root, no `ip`), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command: apt-get install iproute2"
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete(ns: str) -> None:
    """Kill whatever still runs in `ns`, then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def _creator(ns: str) -> int | None:
    """The pid of the process that made a namespace of these tests (the first part of its run prefix)."""
    head = ns.removeprefix(PREFIX).split("x", 1)[0]
    return int(head) if ns.startswith(PREFIX) and head.isdigit() else None


def remove_leftovers() -> None:
    """Delete the namespaces an interrupted run left behind: those whose creator is gone (another test worker's
    are in use)."""
    for ns in _namespaces():
        pid = _creator(ns)
        if ns.startswith(PREFIX) and (pid is None or not Path(f"/proc/{pid}").exists()):
            _delete(ns)


class Hosts:
    """A services host and the named others, each with one address on a shared bridge."""

    SERVICES = "services"

    def __init__(self, names: list[str]) -> None:
        self.run = f"{os.getpid()}x{uuid.uuid4().hex[:4]}"
        self.names = [self.SERVICES, *names]
        self._made: list[str] = []
        self.second_address = f"{SUBNET}.200"

    def ns(self, name: str) -> str:
        """The namespace of a host."""
        return f"{PREFIX}{self.run}-{name}"[:40]

    def address(self, name: str) -> str:
        """A host's address."""
        return f"{SUBNET}.{self.names.index(name) + 1}"

    def __enter__(self) -> Hosts:
        remove_leftovers()
        atexit.register(self.close)
        try:
            services = self.ns(self.SERVICES)
            self._add(services)
            _ip("link", "add", "br0", "type", "bridge", ns=services)
            _ip("addr", "add", f"{self.address(self.SERVICES)}/24", "dev", "br0", ns=services)
            # A second address of the services host, for a server a test makes unreachable alone (`block`).
            _ip("addr", "add", f"{self.second_address}/24", "dev", "br0", ns=services)
            _ip("link", "set", "br0", "up", ns=services)
            for i, name in enumerate(self.names[1:], start=1):
                ns, outside = self.ns(name), f"v{i}"
                self._add(ns)
                # Both ends are made in the host's namespace, then one end moves to the services' host.
                _ip("link", "add", "eth0", "type", "veth", "peer", "name", outside, ns=ns)
                _ip("link", "set", outside, "netns", services, ns=ns)
                _ip("link", "set", outside, "master", "br0", ns=services)
                _ip("link", "set", outside, "up", ns=services)
                _ip("addr", "add", f"{self.address(name)}/24", "dev", "eth0", ns=ns)
                _ip("link", "set", "eth0", "up", ns=ns)
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, ns: str) -> None:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        self._made.append(ns)
        _ip("link", "set", "lo", "up", ns=ns)

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete every namespace made (processes in them are killed)."""
        while self._made:
            _delete(self._made.pop())

    @contextlib.contextmanager
    def inside(self, name: str) -> Iterator[None]:
        """This thread on a host: the sockets it opens and the processes it starts are there."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/var/run/netns/{self.ns(name)}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {name}")
            yield
        finally:
            _libc.setns(own, CLONE_NEWNET)
            os.close(own)
            os.close(target)

    def proc(self, host: str, name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> local.Proc:
        """A process on a host."""
        return local.Proc(name, ["ip", "netns", "exec", self.ns(host), *args], log_dir, env)

    def cut(self, name: str) -> None:
        """Take a host off the network: its link goes down, so its packets are dropped, not refused."""
        _ip("link", "set", f"v{self.names.index(name)}", "down", ns=self.ns(self.SERVICES))

    def mend(self, name: str) -> None:
        """Put a host back on the network."""
        _ip("link", "set", f"v{self.names.index(name)}", "up", ns=self.ns(self.SERVICES))

    def block(self, name: str, address: str) -> None:
        """From a host, make `address` unreachable, silently (its frames go to a MAC nobody has: connections
        hang, no refusal), while every other address of the services host still answers."""
        nobody = "02:00:00:00:00:01"
        _ip("neigh", "replace", address, "lladdr", nobody, "dev", "eth0", "nud", "permanent", ns=self.ns(name))

    def unblock(self, name: str, address: str) -> None:
        """Undo `block`."""
        _ip("neigh", "del", address, "dev", "eth0", ns=self.ns(name))
