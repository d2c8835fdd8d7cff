"""What every process does before it starts work: refuse a configuration it cannot run with (one line, exit 2)
and warn of the variables it ignores. Never at import: Celery's start-up signals, ingest's and Flower's start."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import NoReturn
from urllib.parse import urlparse

from .config import Settings, unknown_variables
from .errors import ConfigError

log = logging.getLogger(__name__)

API_PATH = "/api/v1"  # what ninkik-tasks appends to NINKIK_API_URL


def validate(settings: Settings) -> None:
    """ConfigError, in one line with its fix, for a configuration no process of ninkik-tasks can run with."""
    from redis.connection import parse_url

    from . import brokers
    from .tenants import load_tenants_file

    brokers.for_url(settings.broker_url)
    for name, url in (("NINKIK_RESULT_BACKEND", settings.result_backend), ("NINKIK_REDIS_URL", settings.redis_url)):
        try:
            parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError(f"{name} is not a Redis URL ({exc}): use redis://host:6379/N or rediss://") from None
    if settings.api_url:
        api_url_problem = api_url_mistake(settings.api_url)
        if api_url_problem:
            raise ConfigError(api_url_problem)
    if settings.tenants_file:
        load_tenants_file(settings.tenants_file)
    if settings.tls_ca_file and not settings.tls_ca_file.is_file():
        raise ConfigError(f"NINKIK_TLS_CA_FILE {settings.tls_ca_file} is not a file: set it to the CA's PEM file")
    if settings.api_ca_file and not settings.api_ca_file.is_file():
        raise ConfigError(f"NINKIK_API_CA_FILE {settings.api_ca_file} is not a file: set it to the CA's PEM file")


def api_url_mistake(url: str) -> str | None:
    """What is wrong with NINKIK_API_URL as a base URL, or None."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"NINKIK_API_URL {url!r} is not an http(s) URL: set it to ninkik's base URL, e.g. https://ninkik.example"
    if parsed.path.rstrip("/").lower().endswith(API_PATH):
        base = url.rstrip("/")[: -len(API_PATH)]
        return (
            f"NINKIK_API_URL {url} ends in {API_PATH}, which ninkik-tasks appends itself (every tenant lookup "
            f"would answer 404): set it to {base}"
        )
    return None


def warn_unknown(environ: Mapping[str, str] | None = None) -> list[str]:
    """Log one WARNING per NINKIK_* variable nothing reads; returns the lines."""
    lines = unknown_variables(os.environ if environ is None else environ)
    for line in lines:
        log.warning("%s", line)
    return lines


def refuse(exc: ConfigError) -> NoReturn:
    """Print the one line and exit 2 (configuration), as every command of ninkik-tasks does."""
    print(f"ninkik-tasks: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def prepare(settings: Settings) -> None:
    """A process's start: refuse a configuration it cannot run with, warn of unknown variables."""
    try:
        validate(settings)
    except ConfigError as exc:
        refuse(exc)
    warn_unknown()
