"""An HTTP proxy in front of moto that refuses what AWS refuses under the setup guide's two IAM policies.

moto checks ECR permissions against "*" only, so resource scoping needs a layer of the tests' own. This one
evaluates each ECR call against the resources AWS authorizes it on (the repositories it names; `repository/*`
for DescribeRepositories without names) and the guide's pattern `repository/${TENANT_UUID}/*`, and each SQS
call against the guide's three actions (DeleteMessageBatch is authorized as sqs:DeleteMessage). Refusals come
back in AWS's shapes: ECR an HTTP 400 JSON AccessDeniedException, SQS (JSON protocol) an HTTP 400 with
`x-amzn-query-error: AccessDenied;Sender`. ECR also refuses DescribeImageScanFindings for an image Amazon
Inspector scanned unless inspector2:ListFindings is granted, naming that action as AWS does.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from ninkik_tasks import local

# The guide's ECR policy: these actions on repository/${TENANT_UUID}/*, and GetAuthorizationToken on "*".
GUIDE_ECR_ACTIONS = {
    "DescribeImageScanFindings",
    "GetDownloadUrlForLayer",
    "DescribeImages",
    "DescribeRepositories",
    "ListTagsForResource",
    "ListImages",
}
# The guide's SQS policy.
GUIDE_SQS_ACTIONS = {"ReceiveMessage", "GetQueueUrl", "GetQueueAttributes"}
# How IAM names the SQS action a request is authorized as.
SQS_IAM_ACTION = {
    "DeleteMessageBatch": "DeleteMessage",
    "SendMessageBatch": "SendMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}


@dataclass(frozen=True)
class Refusal:
    """One call the proxy refused."""

    action: str  # e.g. ecr:DescribeRepositories
    resource: str
    params: dict[str, Any]


@dataclass
class IamProxy:
    """Forwards ECR and SQS calls to `upstream` that the guide's policies for `tenants` allow; refuses the rest.

    `tenants`: the guide's ECR policy attached once per tenant UUID (one statement each).
    `list_registry`: a broader policy that also grants ecr:DescribeRepositories on repository/*.
    `inspector`: inspector2:ListFindings granted (enhanced scanning findings readable).
    `batch_get_image`: ecr:BatchGetImage granted on the tenants' repositories.
    `sqs_delete`: sqs:DeleteMessage granted.
    """

    upstream: str
    tenants: set[str]
    account: str = local.ACCOUNT
    region: str = local.REGION
    # Regions the policy's resources name: the guide writes one; the tests use a region of their own at times.
    regions: set[str] = field(default_factory=lambda: {local.REGION})
    user: str = "ninkik"
    list_registry: bool = False
    inspector: bool = False
    batch_get_image: bool = False
    sqs_delete: bool = False
    refused: list[Refusal] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Where to point AWS_ENDPOINT_URL_ECR and AWS_ENDPOINT_URL_SQS."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """The endpoint variables that put a process behind this proxy."""
        return {"AWS_ENDPOINT_URL_ECR": self.url, "AWS_ENDPOINT_URL_SQS": self.url}

    def repository_arn(self, name: str) -> str:
        """The ARN AWS authorizes a call on one repository against."""
        return f"arn:aws:ecr:{self.region}:{self.account}:repository/{name}"

    def principal(self) -> str:
        """The IAM user that makes the calls."""
        return f"arn:aws:iam::{self.account}:user/{self.user}"

    # Policy evaluation

    def _ecr_allows(self, action: str, resource: str) -> bool:
        if action == "GetAuthorizationToken":
            return True
        granted = action in GUIDE_ECR_ACTIONS or (action == "BatchGetImage" and self.batch_get_image)
        if not granted:
            return False
        # The guide's policy names one region and account: arn:aws:ecr:<region>:<account>:repository/...
        match = re.fullmatch(r"arn:aws:ecr:([a-z0-9-]+):(\d{12}):repository/(.*)", resource)
        if match is None or match[2] != self.account or match[1] not in self.regions:
            return False
        if action == "DescribeRepositories" and match[3] == "*":
            return self.list_registry
        # IAM's "*" matches any characters, "/" included: repository/${TENANT}/* covers T/web/api.
        return any(match[3].startswith(f"{tenant}/") for tenant in self.tenants)

    def ecr_resources(self, action: str, params: dict[str, Any], region: str | None = None) -> list[str]:
        """The resources AWS authorizes an ECR call (in `region`) against."""
        if action == "GetAuthorizationToken":
            return ["*"]
        registry = params.get("registryId") or self.account
        arn = f"arn:aws:ecr:{region or self.region}:{registry}:repository/"
        if action == "ListTagsForResource":
            return [str(params.get("resourceArn", ""))]
        if action == "DescribeRepositories":
            names = params.get("repositoryNames") or ["*"]
            return [arn + str(n) for n in names]
        return [arn + str(params.get("repositoryName", ""))]

    # Serving

    def start(self) -> IamProxy:
        """Serve in a background thread."""
        proxy = self
        client = httpx.Client(base_url=self.upstream, timeout=60)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                try:
                    params = json.loads(body or b"{}")
                except ValueError:
                    params = {}
                service, _, action = target.partition(".")
                if service.startswith("AmazonEC2ContainerRegistry"):
                    proxy._record(f"ecr:{action}", params)
                    region = _region(self.headers.get("Authorization", "")) or proxy.region
                    for resource in proxy.ecr_resources(action, params, region):
                        if not proxy._ecr_allows(action, resource):
                            self._refuse_ecr(f"ecr:{action}", resource, params)
                            return
                    answer = self._forward(body)
                    if action == "DescribeImageScanFindings" and not proxy.inspector and _enhanced(answer):
                        # ECR reads enhanced findings from Inspector with the caller's permissions.
                        resource = f"arn:aws:inspector2:{region}:{proxy.account}:/findings/list"
                        self._refuse_ecr("inspector2:ListFindings", resource, params)
                        return
                    self._relay(answer)
                    return
                if service == "AmazonSQS":
                    proxy._record(f"sqs:{action}", params)
                    iam_action = SQS_IAM_ACTION.get(action, action)
                    allowed = iam_action in GUIDE_SQS_ACTIONS or (iam_action == "DeleteMessage" and proxy.sqs_delete)
                    if not allowed:
                        self._refuse_sqs(f"sqs:{iam_action}", str(params.get("QueueUrl", "")), params)
                        return
                self._relay(self._forward(body))

            def _forward(self, body: bytes) -> httpx.Response:
                # The Host header stays as signed: an upstream that checks signatures (moto with IAM) accepts it.
                headers = {k: v for k, v in self.headers.items() if k.lower() != "content-length"}
                try:
                    return client.request("POST", self.path, content=body, headers=headers)
                except httpx.RemoteProtocolError:  # a kept-alive connection moto closed meanwhile: once more
                    return client.request("POST", self.path, content=body, headers=headers)

            def _relay(self, answer: httpx.Response) -> None:
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def _message(self, action: str, resource: str) -> str:
                return (
                    f"User: {proxy.principal()} is not authorized to perform: {action} on resource: {resource} "
                    f"because no identity-based policy allows the {action} action"
                )

            def _refuse_ecr(self, action: str, resource: str, params: dict[str, Any]) -> None:
                proxy._refused(action, resource, params)
                payload = {"__type": "AccessDeniedException", "message": self._message(action, resource)}
                self._answer(400, payload, {"Content-Type": "application/x-amz-json-1.1"})

            def _refuse_sqs(self, action: str, queue_url: str, params: dict[str, Any]) -> None:
                name = queue_url.rstrip("/").rsplit("/", 1)[-1]
                resource = f"arn:aws:sqs:{proxy.region}:{proxy.account}:{name}"
                proxy._refused(action, resource, params)
                payload = {
                    "__type": "com.amazon.coral.service#AccessDeniedException",
                    "message": self._message(action, resource),
                }
                headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": "AccessDenied;Sender"}
                self._answer(400, payload, headers)

            def _answer(self, status: int, payload: dict[str, str], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="iamproxy").start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _record(self, action: str, params: dict[str, Any]) -> None:
        with self._lock:
            self.calls.append((action, params))

    def _refused(self, action: str, resource: str, params: dict[str, Any]) -> None:
        with self._lock:
            self.refused.append(Refusal(action, resource, params))

    def refusals(self, action: str | None = None) -> list[Refusal]:
        """What was refused so far (of one action, e.g. "ecr:DescribeRepositories")."""
        with self._lock:
            return [r for r in self.refused if action is None or r.action == action]

    def repositories_read(self) -> set[str]:
        """Every repository an allowed or refused ECR call named."""
        with self._lock:
            names = {str(p["repositoryName"]) for a, p in self.calls if a.startswith("ecr:") and "repositoryName" in p}
            for a, p in self.calls:
                if a == "ecr:DescribeRepositories":
                    names |= {str(n) for n in p.get("repositoryNames") or []}
            return names


def _enhanced(answer: httpx.Response) -> bool:
    if answer.status_code != 200:
        return False
    try:
        body = answer.json()
    except ValueError:
        return False
    findings = body.get("imageScanFindings") or {}
    return bool(findings.get("enhancedFindings")) or (body.get("imageScanStatus") or {}).get("status") == "ACTIVE"


def _region(authorization: str) -> str | None:
    """The region of a SigV4 request (Credential=KEY/DATE/REGION/SERVICE/aws4_request)."""
    match = re.search(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/", authorization)
    return match[1] if match else None
