"""HTTP endpoints of a supervisor: liveness, readiness, Prometheus metrics and status.

The paths and the default port are constants here because deploy/ (probes, scrape
annotations) must agree with what the code serves; a test checks that they do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import http
import http.client
import io
import json
import logging
import socket
import threading
from collections.abc import Callable
from email.message import Message

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 9100
LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"
METRICS_PATH = "/metrics"
STATUS_PATH = "/status"
ADMIN_FAULT_PATH = "/admin/fault"
MAX_ADMIN_BODY = 4096
MAX_HEAD_BYTES = 16384  # request line and headers
MAX_CONNECTIONS = 256
LISTEN_BACKLOG = 1024  # connections the kernel holds until accepted (capped by net.core.somaxconn)
REQUEST_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
HANDLER_THREADS = 2


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


class HttpServer:
    """The endpoints on an asyncio loop of their own thread, with every resource bounded.

    Why not http.server: its ThreadingHTTPServer starts a thread per connection and waits on a
    silent client for ever, so 2,000 idle connections (no token needed) made 2,000 threads and
    /livez failed: Kubernetes would restart a healthy pod. Here an idle connection costs one file
    descriptor and a few kB, never a thread, and:
    - past MAX_CONNECTIONS open, each new connection closes the oldest one that has not sent its
      request yet, so idle connections hold at most that many descriptors and a probe (which
      sends at once) is served however many there are; connections being answered are not
      closed, they end within the timeouts below;
    - a request must arrive whole (line, headers, body) within REQUEST_TIMEOUT_S, and its answer
      be taken within WRITE_TIMEOUT_S; one request per connection (`Connection: close`);
    - liveness and readiness are answered on the loop itself (they read the supervisor's state),
      status, metrics and admin in HANDLER_THREADS threads, so no probe waits behind a scrape
      or a drill's fault.
    """

    def __init__(self, sock: socket.socket, source: HealthSource) -> None:
        self.sock = sock
        self.server_address = sock.getsockname()
        self.source = source
        self.loop = asyncio.new_event_loop()
        self.handlers = concurrent.futures.ThreadPoolExecutor(
            HANDLER_THREADS, thread_name_prefix="http-handler"
        )
        self.waiting: dict[asyncio.StreamWriter, None] = {}  # no request yet, oldest first
        self.open = 0
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, sock=self.sock, limit=MAX_HEAD_BYTES)
        )
        self.started.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()  # each closes its connection on the way out
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

    def shutdown(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        self.handlers.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        if self.open > MAX_CONNECTIONS and self.waiting:
            oldest = next(iter(self.waiting))
            del self.waiting[oldest]
            oldest.transport.abort()  # its handler sees the connection lost and ends
        self.waiting[writer] = None
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    request = await _read_request(reader)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                return
            except (asyncio.LimitOverrunError, ValueError, http.client.HTTPException):
                request = None
            finally:
                self.waiting.pop(writer, None)
            try:
                code, body, content_type = await self._answer(request)
            except Exception as exc:  # noqa: BLE001 - a failing source is an answer, not a dead server
                log.warning("http handler failed path=%s error=%r", request and request.target, exc)
                code, body, content_type = _json(500, {"error": "internal error"})
            writer.write(_response(code, body, content_type))
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.open -= 1
            self.waiting.pop(writer, None)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a reader that stopped reading: drop what it did not take
            else:
                writer.close()

    async def _answer(self, request: Request | None) -> tuple[int, bytes, str]:
        source = self.source
        if request is None:
            return _json(400, {"error": "malformed request"})
        path = request.target.split("?", 1)[0]
        if request.method == "GET":
            if path == LIVENESS_PATH:
                ok = source.alive()
                return _json(200 if ok else 503, {"alive": ok})
            if path == READINESS_PATH:
                ok, detail = source.ready()
                return _json(200 if ok else 503, {"ready": ok, "products": detail})
            if path == STATUS_PATH:
                return _json(200, await self._off_loop(source.status))
            if path == METRICS_PATH:
                body, content_type = await self._off_loop(source.metrics)
                return 200, body, content_type
            return _json(404, {"error": "not found"})
        if request.method != "POST":
            return _json(501, {"error": f"unsupported method {request.method}"})
        if path != ADMIN_FAULT_PATH:
            return _json(404, {"error": "not found"})
        if not source.admin_allowed(request.headers.get("Authorization")):
            return _json(403, {"error": "admin endpoint needs the node's admin token"})
        if request.body is None:
            return _json(400, {"error": "body must be a small JSON object"})
        try:
            doc = json.loads(request.body)
        except ValueError:
            return _json(400, {"error": "body is not JSON"})
        if not isinstance(doc, dict):
            return _json(400, {"error": "body must be a JSON object"})
        return _json(*await self._off_loop(source.admin, doc))

    async def _off_loop(self, fn: Callable, *args):
        return await self.loop.run_in_executor(self.handlers, fn, *args)


class Request:
    """The parts of a request the endpoints use."""

    def __init__(self, method: str, target: str, headers: Message, body: bytes | None) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body


async def _read_request(reader: asyncio.StreamReader) -> Request:
    """Request line, headers and (for a POST) a body of 1..MAX_ADMIN_BODY bytes by Content-Length.

    A body that is absent, chunked or too long is not read (body None): the answer is 400 or 403.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    line, _, rest = head.partition(b"\r\n")
    method, target, version = line.decode("latin-1").split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1.x")
    headers = http.client.parse_headers(io.BytesIO(rest))
    body = None
    if method == "POST" and "Transfer-Encoding" not in headers:
        length = int(headers.get("Content-Length") or 0)
        if 0 < length <= MAX_ADMIN_BODY:
            body = await reader.readexactly(length)
    return Request(method, target, headers, body)


def _json(code: int, doc: dict) -> tuple[int, bytes, str]:
    return code, json.dumps(doc, sort_keys=True).encode(), "application/json"


def _response(code: int, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def serve_http(host: str, port: int, source: HealthSource) -> HttpServer:
    """Serve the endpoints from a daemon thread; the caller shuts the server down."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    server = HttpServer(sock, source)
    server.thread.start()
    server.started.wait(5)
    return server
