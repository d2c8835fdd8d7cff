"""A reverse proxy that sleeps before forwarding each request: AWS's round-trip time in front of moto.

Bench-only. Every request (method, path, headers, body) is forwarded to `--target` after `--delay`
seconds, over one keep-alive connection per client connection, and the answer is passed back as it is.
Long polls (ReceiveMessage with a 20 s wait) go through unchanged.

    python bench/delay_proxy.py --target http://127.0.0.1:5000 --port 5001 --delay 0.03
"""

from __future__ import annotations

import argparse
import http.client
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers that belong to one connection, not to the request (RFC 9110 7.6.1), and those we recompute.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


def serve(target: str, port: int, delay: float) -> None:
    """Proxy 127.0.0.1:`port` to `target` until SIGTERM or SIGINT."""
    upstream = urlsplit(target)
    host, upstream_port = upstream.hostname or "127.0.0.1", upstream.port or 80

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects from AWS
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if delay:
                time.sleep(delay)
            for attempt in (1, 2):  # moto may have closed the idle upstream connection: reconnect once
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(host, upstream_port, timeout=60)
                try:
                    self.upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = self.upstream.getresponse()
                    data = answer.read()
                    break
                except (http.client.HTTPException, OSError):
                    self.upstream.close()
                    self.upstream = None
                    if attempt == 2:
                        self.send_error(502, "upstream failed")
                        return
            self.send_response_only(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def finish(self) -> None:
            super().finish()
            if self.upstream is not None:
                self.upstream.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"proxying 127.0.0.1:{server.server_address[1]} -> {target} after {delay * 1000:.0f} ms", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="base URL of moto's server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.03, help="seconds to wait before forwarding")
    args = parser.parse_args()
    serve(args.target, args.port, args.delay)


if __name__ == "__main__":
    main()
