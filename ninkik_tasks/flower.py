"""Flower, never open to the network by default: it shows every task's arguments (tenants, repositories, images),
so `ninkik-tasks flower` and `celery -A ninkik_tasks flower` alike refuse to serve it without auth, except on
this machine's loopback address (the dev stack)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import click

from .errors import ConfigError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Where `ninkik-tasks flower` listens unless told otherwise (compose and the chart publish this port).
DEFAULT_ADDRESS, DEFAULT_PORT = "0.0.0.0", 5555


def _options(args: Sequence[str]) -> dict[str, str]:
    """Flower's (tornado's) options in args: `--name=value` or `--name value`, names with - or _."""
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
        out[name.replace("-", "_")] = value
    return out


def refusal(args: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Why Flower must not start with these options and variables, or None when it is protected."""
    options = _options(args)
    if options.get("auth") or environ.get("FLOWER_AUTH"):
        return None  # Flower's OAuth (--auth with its provider)
    basic = options.get("basic_auth") or environ.get("FLOWER_BASIC_AUTH", "")
    if basic:
        for entry in basic.split(","):
            user, colon, password = entry.partition(":")
            if not (user and colon and password):
                return "FLOWER_BASIC_AUTH must be user:password (more than one: user:password,user2:password2)"
        return None
    address = options.get("address") or environ.get("FLOWER_ADDRESS", "")
    if address in LOOPBACK:
        return None
    return (
        "Flower shows every task's arguments (tenants, repositories, images) and would serve them to anyone: "
        "set FLOWER_BASIC_AUTH=user:password (in .env for docker compose), or listen on this machine only "
        "with --address=127.0.0.1"
    )


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args: tuple[str, ...]) -> None:
    """Start Flower with auth (FLOWER_BASIC_AUTH); Flower's own options pass through (--help shows them)."""
    from . import startup
    from .config import get_settings

    startup.prepare(get_settings())
    problem = refusal(args, os.environ)
    if problem:
        raise ConfigError(problem)
    given = _options(args)
    defaults = [f"--{name}={value}" for name, value in (("address", DEFAULT_ADDRESS), ("port", DEFAULT_PORT))]
    defaults = [d for d in defaults if d[2:].split("=")[0] not in given]
    # exec: Flower becomes this process (PID 1 in a container gets SIGTERM itself).
    argv = [sys.executable, "-m", "celery", "-A", "ninkik_tasks", "flower", *defaults, *args]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
