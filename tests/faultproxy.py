"""A fault-injecting HTTP proxy in front of moto: records every ECR call, answers a share with throttling."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


@dataclass(frozen=True)
class EcrCall:
    """One ECR request the proxy received."""

    at: float  # time.monotonic()
    action: str  # e.g. DescribeImages
    params: dict[str, Any]


@dataclass
class FaultProxy:
    """Forwards to `upstream`, recording every ECR call; every `throttle_every`-th is answered with throttling.

    `scanning` maps digests to the time (time.monotonic()) their scan finishes: until then
    DescribeImageScanFindings answers IN_PROGRESS, which moto cannot (its scans are final at once).
    `statuses` maps digests to the imageStatus DescribeImages gives them (moto knows no archive).
    `findings` maps digests to the DescribeImageScanFindings answer to give instead of moto's: moto keeps the
    first result it served for an image, while Amazon Inspector changes an image's findings as its database
    changes (a new CVE, a finding closed); set it to play that change.
    """

    upstream: str
    throttle_every: int = 0
    scanning: dict[str, float] = field(default_factory=dict)
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # digest -> imageStatus (ARCHIVED, ACTIVATING) that DescribeImages gives, which moto has not (ECR's archive):
    # an ARCHIVED image's DescribeImageScanFindings says IMAGE_ARCHIVED.
    statuses: dict[str, str] = field(default_factory=dict)
    calls: list[EcrCall] = field(default_factory=list)
    throttled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Where to point AWS_ENDPOINT_URL_ECR."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        """Serve in a background thread."""
        proxy = self
        client = httpx.Client(base_url=self.upstream, timeout=30)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                if target.startswith("AmazonEC2ContainerRegistry"):
                    try:
                        params = json.loads(body or b"{}")
                    except ValueError:
                        params = {"unreadable": body.decode(errors="replace")}
                    with proxy._lock:
                        proxy.calls.append(EcrCall(time.monotonic(), target.split(".")[-1], params))
                        n = len(proxy.calls)
                        throttle = proxy.throttle_every and n % proxy.throttle_every == 0
                        if throttle:
                            proxy.throttled += 1
                    digest = (params.get("imageId") or {}).get("imageDigest")
                    action = target.split(".")[-1]
                    scanning = action == "DescribeImageScanFindings" and digest in proxy.scanning
                    if not throttle and scanning and time.monotonic() < proxy.scanning[digest]:
                        # The shape of awscli's start-image-scan example, as DescribeImageScanFindings has it.
                        self._answer(
                            200,
                            {
                                "registryId": params.get("registryId", ""),
                                "repositoryName": params.get("repositoryName", ""),
                                "imageId": {"imageDigest": digest},
                                "imageScanStatus": {"status": "IN_PROGRESS"},
                            },
                        )
                        return
                    if not throttle and action == "DescribeImageScanFindings" and digest in proxy.findings:
                        self._answer(200, proxy.findings[digest])
                        return
                    if action == "DescribeImageScanFindings" and proxy.statuses.get(digest) == "ARCHIVED":
                        status = {"status": "IMAGE_ARCHIVED", "description": "The image is archived."}
                        self._answer(200, {"imageId": {"imageDigest": digest}, "imageScanStatus": status})
                        return
                    if throttle:
                        # Alternate the two shapes ECR throttling takes.
                        if n % (2 * proxy.throttle_every) == 0:
                            self._answer(429, {"__type": "ThrottleException", "message": "Too many requests"})
                        else:
                            self._answer(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = client.request("POST", self.path, content=body, headers=headers)
                content = answer.content
                if target.endswith(".DescribeImages") and proxy.statuses and answer.status_code == 200:
                    described = json.loads(content)
                    for detail in described.get("imageDetails", []):
                        detail["imageStatus"] = proxy.statuses.get(detail["imageDigest"], "ACTIVE")
                    content = json.dumps(described).encode()
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                if "__type" in body:
                    self.send_header("x-amzn-ErrorType", body["__type"])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="faultproxy").start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def count(self) -> int:
        """ECR calls so far."""
        with self._lock:
            return len(self.calls)

    def reads(self, digest: str) -> int:
        """DescribeImageScanFindings calls for one image so far."""
        with self._lock:
            reads = [c for c in self.calls if c.action == "DescribeImageScanFindings"]
            return sum(1 for c in reads if (c.params.get("imageId") or {}).get("imageDigest") == digest)

    def named(self, repositories: set[str]) -> list[EcrCall]:
        """ECR calls whose repositoryName is one of `repositories`."""
        with self._lock:
            return [c for c in self.calls if c.params.get("repositoryName") in repositories]

    def peak_per_second(self) -> int:
        """The most ECR calls seen in any one-second window."""
        with self._lock:
            times = sorted(c.at for c in self.calls)
        peak, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= 1.0:
                start += 1
            peak = max(peak, end - start + 1)
        return peak
