"""HTTP endpoints of a supervisor: liveness, readiness, Prometheus metrics and status.

The paths and the default port are constants here because deploy/ (probes, scrape
annotations) must agree with what the code serves; a test checks that they do.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_HTTP_PORT = 9100
LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"
STATUS_PATH = "/status"
ADMIN_FAULT_PATH = "/admin/fault"
MAX_ADMIN_BODY = 4096


class HealthSource:
    """What the endpoints ask: is the loop alive, is every product served, the status document."""

    def __init__(
        self,
        alive: Callable[[], bool],
        ready: Callable[[], tuple[bool, dict]],
        status: Callable[[], dict],
        metrics: Callable[[], tuple[bytes, str]],
        admin: Callable[[dict], tuple[int, dict]] | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.alive = alive
        self.ready = ready
        self.status = status
        self.metrics = metrics
        self.admin = admin
        self.admin_token = admin_token

    def admin_allowed(self, authorization: str | None) -> bool:
        """Faults are injected only with the configured bearer token; no token, no admin."""
        if not self.admin_token or self.admin is None or not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.encode(), self.admin_token.encode()
        )


def _handler(source: HealthSource) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == LIVENESS_PATH:
                ok = source.alive()
                self._send(200 if ok else 503, {"alive": ok})
            elif path == READINESS_PATH:
                ok, detail = source.ready()
                self._send(200 if ok else 503, {"ready": ok, "products": detail})
            elif path == STATUS_PATH:
                self._send(200, source.status())
            elif path == METRICS_PATH:
                body, content_type = source.metrics()
                self._raw(200, body, content_type)
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?", 1)[0] != ADMIN_FAULT_PATH:
                self._send(404, {"error": "not found"})
                return
            if not source.admin_allowed(self.headers.get("Authorization")):
                self._send(403, {"error": "admin endpoint needs the node's admin token"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_ADMIN_BODY:
                self._send(400, {"error": "body must be a small JSON object"})
                return
            try:
                request = json.loads(self.rfile.read(length))
            except ValueError:
                self._send(400, {"error": "body is not JSON"})
                return
            if not isinstance(request, dict):
                self._send(400, {"error": "body must be a JSON object"})
                return
            code, doc = source.admin(request)
            self._send(code, doc)

        def _send(self, code: int, doc: dict) -> None:
            self._raw(code, json.dumps(doc, sort_keys=True).encode(), "application/json")

        def _raw(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - probes are too chatty to log
            return

    return Handler


def serve_http(host: str, port: int, source: HealthSource) -> ThreadingHTTPServer:
    """Serve the endpoints from a daemon thread; the caller shuts the server down."""
    server = ThreadingHTTPServer((host, port), _handler(source))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
