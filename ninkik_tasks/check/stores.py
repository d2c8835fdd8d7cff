"""`check` of the stores: the broker (RabbitMQ or Redis), the result backend and the records' Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import redis

from .. import brokers, tls
from ..brokers.rabbitmq import management_url
from ..config import Settings, safe_url
from ..errors import ConfigError
from ..explain import redis_full, redis_full_line
from .line import Check

LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def records_client(s: Settings) -> redis.Redis:
    """A client of NINKIK_REDIS_URL for what `check` reads of the records (string answers, 3 s timeouts, TLS as
    the processes use it); connecting happens at the first command."""
    return redis.Redis.from_url(
        s.redis_url,
        decode_responses=True,
        socket_connect_timeout=3,
        socket_timeout=3,
        **tls.redis_client_options(s.redis_url, s),
    )


def broker_and_redis(s: Settings) -> Iterator[Check]:
    """The broker (RabbitMQ or Redis), then Redis as result backend and records' store."""
    urls = [("NINKIK_RESULT_BACKEND", s.result_backend), ("NINKIK_REDIS_URL", s.redis_url)]
    try:
        kind = brokers.for_url(s.broker_url).__name__.rsplit(".", 1)[-1]
    except ConfigError as exc:
        yield Check("FAIL", "broker", str(exc))
        kind = ""
    if kind == "rabbitmq":
        yield from _rabbitmq(s)
    elif kind == "redis":
        urls.insert(0, ("NINKIK_BROKER_URL", s.broker_url))
    checked: set[tuple[str, int]] = set()  # the eviction policy is the server's: once per server
    for name, url in urls:
        options = tls.redis_client_options(url, s)
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3, **options)
        try:
            client.ping()
        except redis.RedisError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                yield Check(
                    "FAIL",
                    "redis",
                    f"{name} ({safe_url(url)}) presents a certificate that does not verify: set "
                    "NINKIK_TLS_CA_FILE to the CA that signed it (or fix the host name in the URL)",
                )
                continue
            yield Check("FAIL", "redis", f"{name} ({safe_url(url)}) does not answer: {exc}; start Redis or fix the URL")
            continue
        yield Check("OK", "redis", f"{name} answers ({safe_url(url)})")
        yield from _writable(name, url, client, s.redis_namespace)
        kwargs = client.connection_pool.connection_kwargs
        server = (str(kwargs.get("host", kwargs.get("path", ""))), int(kwargs.get("port", 0)))
        if server not in checked:
            checked.add(server)
            yield from _memory(name, url, client)
        client.close()


NOEVICTION_FIX = (
    "set maxmemory-policy noeviction (ElastiCache: in the cluster's parameter group; redis-server: "
    "--maxmemory-policy noeviction)"
)


def _memory(name: str, url: str, client: redis.Redis) -> Iterator[Check]:
    """The server's eviction policy and how full it is (INFO memory: ElastiCache refuses CONFIG GET)."""
    try:
        info = client.info("memory")
    except redis.RedisError as exc:
        yield Check(
            "WARN",
            "redis",
            f"{name} ({safe_url(url)}): INFO memory refused ({exc}), so the eviction policy "
            f"is not known: ninkik-tasks needs maxmemory-policy noeviction; {NOEVICTION_FIX}",
        )
        return
    policy = info.get("maxmemory_policy")
    if policy is None:
        yield Check(
            "WARN",
            "redis",
            f"{name} ({safe_url(url)}) does not say its eviction policy: ninkik-tasks needs "
            f"maxmemory-policy noeviction; {NOEVICTION_FIX}",
        )
    elif policy != "noeviction":
        yield Check(
            "FAIL",
            "redis",
            f"{name} ({safe_url(url)}) evicts keys when memory runs short (maxmemory-policy {policy}): "
            "ninkik-tasks' records (events seen, reports sent, scan waits) would vanish early, so redeliveries "
            f"start new chains and waits are forgotten; {NOEVICTION_FIX}",
        )
    limit, used = int(info.get("maxmemory", 0) or 0), int(info.get("used_memory", 0) or 0)
    if limit and used >= 0.9 * limit:
        yield Check(
            "WARN",
            "redis",
            f"{name} ({safe_url(url)}) uses {used * 100 // limit}% of its maxmemory ({limit} bytes): give it "
            "more memory before it is full and refuses every write",
        )


def _writable(name: str, url: str, client: redis.Redis, namespace: str) -> Iterator[Check]:
    """One write and its removal: a full Redis (maxmemory) still answers reads and PING, and refuses writes."""
    key = f"{namespace}:check:{uuid.uuid4().hex}"
    try:
        client.set(key, "1", px=10_000)
        client.delete(key)
    except redis.RedisError as exc:
        if redis_full(exc):
            yield Check("FAIL", "redis", f"{name} ({safe_url(url)}): {redis_full_line()}")
        else:
            yield Check("FAIL", "redis", f"{name} ({safe_url(url)}) refuses a write ({exc}): is it a replica?")


def _rabbitmq(s: Settings) -> Iterator[Check]:
    from kombu.connection import Connection

    from ..brokers import rabbitmq
    from ..celery_app import QUEUES

    url = s.broker_url
    parsed = urlparse(url)
    host = parsed.hostname or "localhost"
    if (parsed.username or "guest") == "guest" and (parsed.password or "guest") == "guest" and host not in LOOPBACK:
        yield Check(
            "WARN",
            "broker",
            f"NINKIK_BROKER_URL logs in to {host} as guest/guest: RabbitMQ refuses guest from other hosts, "
            "and a well-known password is no password; create a user of its own (rabbitmqctl add_user)",
        )
    ssl: Any = tls.amqp_options(s) if parsed.scheme == "amqps" else False
    try:
        conn = Connection(url, connect_timeout=5, ssl=ssl)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        yield Check("FAIL", "broker", f"NINKIK_BROKER_URL ({safe_url(url)}) is not a valid URL: {exc}")
        return
    try:
        conn.ensure_connection(max_retries=1)  # type: ignore[no-untyped-call]
    except Exception as exc:
        conn.release()  # type: ignore[no-untyped-call]
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            yield Check(
                "FAIL",
                "broker",
                f"NINKIK_BROKER_URL ({safe_url(url)}) presents a certificate that does not verify: set "
                "NINKIK_TLS_CA_FILE to the CA that signed it (or fix the host name in the URL)",
            )
            return
        yield Check(
            "FAIL",
            "broker",
            f"NINKIK_BROKER_URL ({safe_url(url)}) does not answer: {exc}; start RabbitMQ or fix the URL",
        )
        return
    names = [*QUEUES, rabbitmq.DEAD_LETTER_QUEUE]
    try:
        yield Check("OK", "broker", f"NINKIK_BROKER_URL answers (RabbitMQ {_server_version(conn)}, {safe_url(url)})")
        types = _queue_types(s, parsed)
        if types is None:
            found = _passive(conn, names)
            missing = [name for name in names if not found[name]]
            how = (
                f"AMQP passive declare (the management API at {management_url(s)} does not answer: "
                "the type is not checked)"
            )
        else:
            missing = [name for name in names if name not in types]
            how = "management API"
            for name, kind in sorted(types.items()):
                if name in names and kind != "quorum":
                    yield Check(
                        "FAIL",
                        "broker",
                        f"queue {name} is a {kind} queue: ninkik-tasks declares quorum queues; delete it "
                        f"(rabbitmqctl delete_queue {name}, after draining it) and restart a worker to declare it",
                    )
        if missing:
            yield Check(
                "WARN",
                "broker",
                f"queues not declared yet: {', '.join(missing)} (a worker declares them when it starts)",
            )
        else:
            yield Check("OK", "broker", f"queues {', '.join(names)} exist ({how})")
    finally:
        conn.release()  # type: ignore[no-untyped-call]


def _server_version(conn: Any) -> str:
    properties = getattr(conn.connection, "server_properties", {}) or {}
    version = properties.get("version", "?")
    return version.decode() if isinstance(version, bytes) else str(version)


def _queue_types(s: Settings, parsed: Any) -> dict[str, str] | None:
    """Queue name -> type in the broker URL's vhost, from the management API; None if it does not answer."""
    from urllib.parse import quote, unquote

    base = management_url(s)
    vhost = unquote(parsed.path[1:]) if parsed.path not in ("", "/") else "/"
    try:
        answer = httpx.get(
            f"{base.rstrip('/')}/api/queues/{quote(vhost, safe='')}",
            auth=(unquote(parsed.username or "guest"), unquote(parsed.password or "guest")),
            timeout=5,
        )
        answer.raise_for_status()
        return {q["name"]: q.get("type", "classic") for q in answer.json()}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _passive(conn: Any, names: list[str]) -> dict[str, bool]:
    found = {}
    for name in names:
        channel = conn.channel()
        try:
            channel.queue_declare(name, passive=True)
            found[name] = True
        except conn.channel_errors:
            found[name] = False
        finally:
            with contextlib.suppress(Exception):
                channel.close()
    return found
