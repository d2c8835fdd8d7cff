"""The local stack's helpers that the tests' workers rely on."""

from __future__ import annotations

import socket

import pytest

from ninkik_tasks import local


def test_free_port_hands_each_port_of_its_block_once_then_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ports asked at once (a fixture's servers, none bound yet) must differ: the same port twice was Flower's
    # "Address already in use" in a parallel run.
    monkeypatch.setattr(local, "_handed", set())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        monkeypatch.setenv(local.PORTS_ENV, f"{busy}-{busy + 30}")
        ports = [local.free_port() for _ in range(4)]
    assert len(set(ports)) == 4 and busy not in ports and all(busy < p <= busy + 30 for p in ports)
    # A block used up: its ports are handed again (those bound long since are skipped as busy).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        only = s.getsockname()[1]
    monkeypatch.setenv(local.PORTS_ENV, f"{only}-{only}")
    assert local.free_port() == only and local.free_port() == only


def test_free_port_without_a_block_is_the_kernels_choice_and_never_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(local.PORTS_ENV, raising=False)
    monkeypatch.setattr(local, "_handed", set())
    ports = [local.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
