"""An HTTP proxy in front of moto's STS: refuses AssumeRole of chosen roles, shortens the sessions it hands out.

moto's AssumeRole succeeds for any role, existing or not, and never enforces a session's expiry. This layer plays
what AWS does instead: a role whose trust policy no longer lets the caller in is refused with AWS's
AccessDenied answer (query protocol, HTTP 403); with `lifetime`, each session's Expiration is that many seconds
away, so that a test sees sessions renewed without waiting an hour. Point AWS_ENDPOINT_URL_STS at it.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx

DENIED = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    "<Code>AccessDenied</Code><Message>User: {caller} is not authorized to perform: sts:AssumeRole on resource: "
    "{role}</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"
)


@dataclass
class StsProxy:
    """Forwards STS calls to `upstream`; AssumeRole of a role in `refused` is denied; `lifetime` shortens sessions."""

    upstream: str
    lifetime: float | None = None
    refused: set[str] = field(default_factory=set)
    assumed: Counter[str] = field(default_factory=Counter)  # role ARN -> AssumeRole calls answered
    expires: dict[str, float] = field(default_factory=dict)  # role ARN -> the end of its last session (Unix time)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Where to point AWS_ENDPOINT_URL_STS."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, role: str) -> int:
        """AssumeRole calls of `role` answered so far (refused ones too)."""
        with self._lock:
            return self.assumed[role]

    def start(self) -> StsProxy:
        """Serve in a background thread."""
        proxy = self
        client = httpx.Client(base_url=self.upstream, timeout=30)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
                role = form.get("RoleArn", "") if form.get("Action") == "AssumeRole" else ""
                if role:
                    with proxy._lock:
                        proxy.assumed[role] += 1
                        refused = role in proxy.refused
                    if refused:
                        text = DENIED.format(caller="arn:aws:iam::123456789012:user/ninkik", role=role).encode()
                        self._send(403, {"Content-Type": "text/xml"}, text)
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = client.request("POST", self.path, content=body, headers=headers)
                content = answer.content
                if role and proxy.lifetime is not None and answer.status_code == 200:
                    until = datetime.now(UTC) + timedelta(seconds=proxy.lifetime)
                    stamp = until.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
                    with proxy._lock:
                        proxy.expires[role] = until.timestamp()
                    expiration = b"<Expiration>" + stamp + b"</Expiration>"
                    content = re.sub(rb"<Expiration>[^<]*</Expiration>", expiration, content)
                kept = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")
                }
                self._send(answer.status_code, kept, content)

            def _send(self, status: int, headers: dict[str, str], content: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="stsproxy").start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
