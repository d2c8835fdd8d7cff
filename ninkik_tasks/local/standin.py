"""A local stand-in for ninkik's API: a tenant directory and a receiver that shows what it got.

Used by `ninkik-tasks dev` and the tests. It behaves like ninkik where ninkik-tasks can tell:
bearer token required, 404 for unknown tenants and products, 409 for an Idempotency-Key it already has.
Tests can script its next answers (status codes, delays) to play an API that is down or slow.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click


@dataclass
class Received:
    """One notification ninkik accepted."""

    tenant: str
    product: str
    key: str
    body: dict[str, Any]
    at: float


@dataclass
class Removed:
    """One DELETE of an image ninkik answered (204: it had the image, 404: it had none)."""

    tenant: str
    product: str
    digest: str
    key: str
    status: int
    at: float


@dataclass
class Standin:
    """The stand-in server; `start()` it, read `received`, script answers with `answer_next`."""

    tenants: list[dict[str, Any]]
    token: str
    host: str = "127.0.0.1"
    port: int = 0
    on_receive: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)
    # (status, idempotency key) of every POST, and of every scripted answer to a DELETE (`removed` has the others)
    attempts: list[tuple[int, str]] = field(default_factory=list)
    peers: list[tuple[str, str]] = field(default_factory=list)  # (client address, idempotency key) of every POST
    tenant_lookups: int = 0
    removed: list[Removed] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)  # the bodies of usage reports
    _script: deque[tuple[int, float]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The base URL to set as NINKIK_API_URL."""
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> Standin:
        """Serve in a background thread."""
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._get(self)

            def do_POST(self) -> None:
                standin._post(self)

            def do_DELETE(self) -> None:
                standin._delete(self)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="standin").start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def answer_next(self, status: int, times: int = 1, delay: float = 0.0) -> None:
        """Answer the next `times` image POSTs with `status` after `delay` seconds (0 = normal handling)."""
        with self._lock:
            self._script.extend([(status, delay)] * times)

    def reset(self) -> None:
        """Forget everything received and scripted."""
        with self._lock:
            self.received.clear()
            self.attempts.clear()
            self.peers.clear()
            self.removed.clear()
            self.usage.clear()
            self._script.clear()
            self.tenant_lookups = 0

    def holds(self, digest: str) -> dict[str, Any] | None:
        """The report ninkik has of an image now: its latest, unless a DELETE came after it."""
        with self._lock:
            reports = [(r.at, r.body) for r in self.received if r.body["image"]["digest"] == digest]
            removals = [d.at for d in self.removed if d.digest == digest]
        if not reports or (removals and max(removals) >= reports[-1][0]):
            return None
        return reports[-1][1]

    def keys(self) -> list[str]:
        """Idempotency keys of the accepted notifications."""
        with self._lock:
            return [r.key for r in self.received]

    # HTTP
    def _authorised(self, req: BaseHTTPRequestHandler) -> bool:
        if req.headers.get("Authorization") == f"Bearer {self.token}":
            return True
        _reply(req, 401, {"error": "missing or wrong bearer token"})
        return False

    def _tenant(self, uuid: str) -> dict[str, Any] | None:
        return next((t for t in self.tenants if t["uuid"] == uuid), None)

    def _get(self, req: BaseHTTPRequestHandler) -> None:
        parts = req.path.strip("/").split("/")
        if req.path.rstrip("/") in ("", "/_standin/received"):
            with self._lock:
                _reply(req, 200, [r.__dict__ for r in self.received])
            return
        if len(parts) == 4 and parts[:3] == ["api", "v1", "tenants"]:
            if not self._authorised(req):
                return
            with self._lock:
                self.tenant_lookups += 1
            tenant = self._tenant(parts[3])
            _reply(req, 200 if tenant else 404, tenant or {"error": "no such tenant"})
            return
        _reply(req, 404, {"error": "not found"})

    def _post(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length)
        parts = req.path.strip("/").split("/")
        if req.path == "/_standin/script":
            for item in json.loads(raw):
                self.answer_next(int(item["status"]), int(item.get("times", 1)), float(item.get("delay", 0)))
            _reply(req, 204, None)
            return
        if _images_path(parts, 8) and parts[7] == "usage":
            if self._authorised(req):
                with self._lock:
                    self.usage.append(json.loads(raw))
                _reply(req, 202, None)
            return
        if not _images_path(parts, 7):
            _reply(req, 404, {"error": "not found"})
            return
        key = req.headers.get("Idempotency-Key", "")
        with self._lock:
            self.peers.append((req.client_address[0], key))
        if self._scripted(req, key):
            return
        if not self._authorised(req):
            return
        tenant_uuid, product_uuid = parts[3], parts[5]
        tenant = self._tenant(tenant_uuid)
        if tenant is None or not any(p["uuid"] == product_uuid for p in tenant.get("products", [])):
            _reply(req, 404, {"error": "no such tenant or product"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            _reply(req, 400, {"error": "body is not JSON"})
            return
        if not key:
            _reply(req, 400, {"error": "Idempotency-Key is required"})
            return
        with self._lock:
            duplicate = any(r.key == key for r in self.received)
            self.attempts.append((409 if duplicate else 201, key))
            if not duplicate:
                received = Received(tenant_uuid, product_uuid, key, body, time.time())
                self.received.append(received)
        if duplicate:
            _reply(req, 409, {"error": "already received"})
            return
        if self.on_receive:
            self.on_receive(received)
        _reply(req, 201, {"id": key})

    def _scripted(self, req: BaseHTTPRequestHandler, key: str) -> bool:
        """Answer with the next scripted status (after its delay) if one is queued; True if it answered."""
        with self._lock:
            status, delay = self._script.popleft() if self._script else (0, 0.0)
        if delay:
            time.sleep(delay)
        if not status:
            return False
        with self._lock:
            self.attempts.append((status, key))
        _reply(req, status, {"error": "scripted answer"}, retry_after="1" if status == 429 else None)
        return True

    def _delete(self, req: BaseHTTPRequestHandler) -> None:
        parts = req.path.strip("/").split("/")
        if not _images_path(parts, 8):
            _reply(req, 404, {"error": "not found"})
            return
        key = req.headers.get("Idempotency-Key", "")
        if self._scripted(req, key):
            return
        if not self._authorised(req):
            return
        digest = parts[7]
        with self._lock:
            had = any(r.body["image"]["digest"] == digest for r in self.received)
            status = 204 if had else 404
            self.removed.append(Removed(parts[3], parts[5], digest, key, status, time.time()))
        _reply(req, status, None)


def _images_path(parts: list[str], length: int) -> bool:
    """`api/v1/tenants/{t}/products/{p}/images` (7 parts), with one more (a digest, `usage`) for 8."""
    return (
        len(parts) == length
        and parts[:3] == ["api", "v1", "tenants"]
        and parts[4] == "products"
        and parts[6] == "images"
    )


def _reply(req: BaseHTTPRequestHandler, status: int, body: Any, retry_after: str | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    req.send_response(status)
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(data)))
    if retry_after:
        req.send_header("Retry-After", retry_after)
    req.end_headers()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
        req.wfile.write(data)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--tenants-file", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--token", envvar="NINKIK_API_TOKEN", required=True, help="Bearer token it accepts.")
def serve(host: str, port: int, tenants_file: str, token: str) -> None:
    """Run the ninkik stand-in until interrupted, printing what it receives."""
    with open(tenants_file) as f:
        data = json.load(f)
    tenants = data["tenants"] if isinstance(data, dict) else data

    def show(r: Received) -> None:
        image = r.body.get("image", {})
        click.echo(
            f"received {image.get('repository')}@{image.get('digest', '')[:19]} "
            f"scan={r.body.get('scan', {}).get('status')}",
            err=True,
        )

    standin = Standin(tenants, token, host=host, port=port, on_receive=show).start()
    click.echo(f"ninkik stand-in on {standin.url}", err=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        standin.stop()


if __name__ == "__main__":
    serve()
