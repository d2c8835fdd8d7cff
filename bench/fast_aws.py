"""A fast, bench-only stand-in for the few SQS and ECR calls ninkik-tasks makes: canned answers, real HTTP.

moto answers about 200-300 ECR calls/s on 2 cores and shares them with everything else, which hides
the pipeline's own cost. This server keeps one in-memory queue per name and answers any image as
existing with a finished basic scan (two findings). Not an emulator: no IAM, no persistence, no
validation beyond what the pipeline needs. Its own process, so its CPU is counted apart.

    python bench/fast_aws.py --port 9000 [--deny-delete]

`--deny-delete` answers every DeleteMessageBatch with AccessDenied, as the customer guide's policy does.
GET /stats gives {"received": n, "first_receive": t, "deleted": n} (time.time()).
POST /_scans {"sha256:...": t} makes those images' scans finish at time t (time.time()): until then
DescribeImageScanFindings answers IN_PROGRESS. POST /_findings {"sha256:...": ["CVE-...", ...]} adds findings to
those images' scans, as Amazon Inspector does when its database changes. GET /_calls gives every ECR call as
[arrival time, action, digest] (`calls`; a DescribeImages' first digest), and every DescribeImages as
[arrival time, [digests]] (`describes`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT = "123456789012"
REGION = "eu-central-1"
FINDINGS = [
    {"name": "CVE-2026-0001", "severity": "HIGH", "uri": "https://nvd.nist.gov/vuln/detail/CVE-2026-0001"},
    {"name": "CVE-2026-0002", "severity": "MEDIUM", "uri": "https://nvd.nist.gov/vuln/detail/CVE-2026-0002"},
]


class Queue:
    """Ready messages, and received ones that come back after the visibility timeout unless deleted."""

    def __init__(self, visibility: float = 30.0) -> None:
        self.ready: deque[dict[str, Any]] = deque()
        self.in_flight: dict[str, tuple[float, dict[str, Any]]] = {}
        self.visibility = visibility
        self.cond = threading.Condition()

    def send(self, bodies: list[str]) -> None:
        with self.cond:
            for body in bodies:
                self.ready.append({"MessageId": str(uuid.uuid4()), "Body": body, "SentTimestamp": time.time()})
            self.cond.notify_all()

    def receive(self, limit: int, wait: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait
        with self.cond:
            while True:
                now = time.monotonic()
                for handle, (due, message) in list(self.in_flight.items()):
                    if due <= now:
                        del self.in_flight[handle]
                        self.ready.append(message)
                if self.ready or now >= deadline:
                    break
                self.cond.wait(min(0.5, deadline - now))
            out = []
            while self.ready and len(out) < limit:
                message = self.ready.popleft()
                handle = uuid.uuid4().hex
                self.in_flight[handle] = (now + self.visibility, message)
                out.append({**message, "ReceiptHandle": handle})
            return out

    def delete(self, handles: list[str]) -> None:
        with self.cond:
            for handle in handles:
                self.in_flight.pop(handle, None)


class State:
    def __init__(self, deny_delete: bool) -> None:
        self.queues: dict[str, Queue] = {}
        self.deny_delete = deny_delete
        self.received = self.deleted = 0
        self.first_receive: float | None = None
        self.lock = threading.Lock()
        self.scans: dict[str, float] = {}  # digest -> when its scan finishes
        self.added: dict[str, list[str]] = {}  # digest -> CVEs found after the push
        self.ecr_calls: list[tuple[float, str, str]] = []  # (time, action, digest)
        self.describes: list[tuple[float, list[str]]] = []  # (time, every digest a DescribeImages asked for)
        self.listed: dict[str, list[str]] = {}  # repository -> the digests a DescribeImages listing pages through
        self.gone: set[str] = set()  # digests deleted: DescribeImages by id answers ImageNotFoundException

    def queue(self, url_or_name: str) -> Queue:
        name = url_or_name.rstrip("/").rsplit("/", 1)[-1]
        with self.lock:
            return self.queues.setdefault(name, Queue())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State
    base_url: str

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes: without this, Nagle and delayed ACKs add 40 ms per call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def parse_request(self) -> bool:
        self.arrived = time.time()  # the request line is in: the call's arrival, before its headers and body
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # health (as the delay proxy probes moto: /moto-api/), /stats and /_calls
        s = self.state
        if self.path == "/_calls":
            with s.lock:
                self._reply(200, {"calls": list(s.ecr_calls), "describes": list(s.describes)})
            return
        self._reply(200, {"received": s.received, "first_receive": s.first_receive, "deleted": s.deleted})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path == "/_scans":
            with self.state.lock:
                self.state.scans.update(body)
            self._reply(200, {})
            return
        if self.path == "/_images":  # {repository: [digest, ...]}: what a listing of the repository gives
            with self.state.lock:
                for repository, digests in body.items():
                    self.state.listed.setdefault(repository, []).extend(digests)
            self._reply(200, {})
            return
        if self.path == "/_gone":  # [digest, ...]: deleted from their repositories
            with self.state.lock:
                self.state.gone.update(body)
            self._reply(200, {})
            return
        if self.path == "/_findings":
            with self.state.lock:
                for digest, cves in body.items():
                    self.state.added.setdefault(digest, []).extend(cves)
            self._reply(200, {})
            return
        service, _, op = (self.headers.get("X-Amz-Target") or "").partition(".")
        if service.startswith("AmazonEC2ContainerRegistry"):
            digest = (body.get("imageId") or {}).get("imageDigest") or next(
                (i.get("imageDigest", "") for i in body.get("imageIds") or []), ""
            )
            with self.state.lock:
                self.state.ecr_calls.append((self.arrived, op, digest))
                if op == "DescribeImages":
                    asked = [i.get("imageDigest", "") for i in body.get("imageIds") or []]
                    self.state.describes.append((self.arrived, asked))
        handler = getattr(self, f"_{op}", None)
        if handler is None:
            self._reply(400, {"__type": "UnknownOperationException", "message": f"{service}.{op} is not faked"})
            return
        status, answer = handler(body)
        self._reply(status, answer)

    def _reply(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # SQS (AWS JSON 1.0)
    def _CreateQueue(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.state.queue(body["QueueName"])
        return 200, {"QueueUrl": f"{self.base_url}/{ACCOUNT}/{body['QueueName']}"}

    def _GetQueueUrl(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self._CreateQueue(body)

    def _GetQueueAttributes(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        q = self.state.queue(body["QueueUrl"])
        return 200, {"Attributes": {"MessageRetentionPeriod": "60", "VisibilityTimeout": str(int(q.visibility))}}

    def _SendMessageBatch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        entries = body["Entries"]
        self.state.queue(body["QueueUrl"]).send([e["MessageBody"] for e in entries])
        ok = [
            {"Id": e["Id"], "MessageId": str(uuid.uuid4()), "MD5OfMessageBody": md5(e["MessageBody"])} for e in entries
        ]
        return 200, {"Successful": ok, "Failed": []}

    def _SendMessage(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.state.queue(body["QueueUrl"]).send([body["MessageBody"]])
        return 200, {"MessageId": str(uuid.uuid4()), "MD5OfMessageBody": md5(body["MessageBody"])}

    def _ReceiveMessage(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        q = self.state.queue(body["QueueUrl"])
        got = q.receive(int(body.get("MaxNumberOfMessages", 1)), float(body.get("WaitTimeSeconds", 0)))
        s = self.state
        with s.lock:
            s.received += len(got)
            if got and s.first_receive is None:
                s.first_receive = time.time()
        messages = [
            {
                "MessageId": m["MessageId"],
                "ReceiptHandle": m["ReceiptHandle"],
                "MD5OfBody": md5(m["Body"]),
                "Body": m["Body"],
                "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(m["SentTimestamp"] * 1000))},
            }
            for m in got
        ]
        return 200, {"Messages": messages} if messages else {}

    def _DeleteMessageBatch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.state.deny_delete:
            message = f"User is not authorized to perform: sqs:DeleteMessage on resource: {body['QueueUrl']}"
            return 400, {"__type": "com.amazon.coral.service#AccessDeniedException", "message": message}
        self.state.queue(body["QueueUrl"]).delete([e["ReceiptHandle"] for e in body["Entries"]])
        with self.state.lock:
            self.state.deleted += len(body["Entries"])
        return 200, {"Successful": [{"Id": e["Id"]} for e in body["Entries"]], "Failed": []}

    # ECR (AWS JSON 1.1): every image exists, with a finished basic scan
    def _DescribeImages(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.state.lock:
            gone = [i["imageDigest"] for i in body.get("imageIds") or [] if i.get("imageDigest") in self.state.gone]
            listing = [d for d in self.state.listed.get(body["repositoryName"], []) if d not in self.state.gone]
        if gone:  # as moto answers (AWS's reference does not say): the whole call refused
            return 400, {"__type": "ImageNotFoundException", "message": f"The image {gone[0]} does not exist"}
        page: dict[str, Any] = {}
        if "imageIds" not in body:  # a listing: maxResults a page, the offset as nextToken
            first, size = int(body.get("nextToken") or 0), int(body.get("maxResults") or 100)
            if first + size < len(listing):
                page["nextToken"] = str(first + size)
            body = {**body, "imageIds": [{"imageDigest": d} for d in listing[first : first + size]]}
        details = [
            {
                "registryId": body.get("registryId", ACCOUNT),
                "repositoryName": body["repositoryName"],
                "imageDigest": image["imageDigest"],
                "imageTags": [f"v-{image['imageDigest'][7:19]}"],  # a tag of its own: no tag moves between images
                "imageSizeInBytes": 52_428_800,
                "imagePushedAt": time.time() - 60,
                "imageManifestMediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "imageScanStatus": {"status": "COMPLETE", "description": "The scan was completed successfully."},
            }
            for image in body.get("imageIds", [])
        ]
        return 200, {"imageDetails": details, **page}

    def _DescribeImageScanFindings(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        finishes = self.state.scans.get(body["imageId"].get("imageDigest", ""))
        if finishes is not None and time.time() < finishes:
            return 200, {
                "registryId": body.get("registryId", ACCOUNT),
                "repositoryName": body["repositoryName"],
                "imageId": body["imageId"],
                "imageScanStatus": {"status": "IN_PROGRESS"},
            }
        with self.state.lock:
            added = list(self.state.added.get(body["imageId"].get("imageDigest", ""), []))
        extra = [{"name": cve, "severity": "HIGH", "uri": f"https://nvd.nist.gov/vuln/detail/{cve}"} for cve in added]
        return 200, {
            "registryId": body.get("registryId", ACCOUNT),
            "repositoryName": body["repositoryName"],
            "imageId": body["imageId"],
            "imageScanStatus": {"status": "COMPLETE", "description": "The scan was completed successfully."},
            "imageScanFindings": {
                "imageScanCompletedAt": time.time() - 30,
                "vulnerabilitySourceUpdatedAt": time.time() - 3600,
                "findingSeverityCounts": {"HIGH": 1 + len(extra), "MEDIUM": 1},
                "findings": FINDINGS + extra,
            },
        }


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deny-delete", action="store_true")
    args = parser.parse_args()
    Handler.state = State(args.deny_delete)
    Handler.base_url = f"http://127.0.0.1:{args.port}"
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"fast_aws listening on {Handler.base_url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
