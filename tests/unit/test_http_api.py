"""The HTTP endpoints' server on real sockets: paths, admin checks, and bounds on idle clients."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from cluster import http_api


@pytest.fixture
def served():
    faults = []
    source = http_api.HealthSource(
        alive=lambda: True,
        ready=lambda: (False, {"P": {"ok": False}}),
        status=lambda: {"node": "n1"},
        metrics=lambda: (b"obc_up 1\n", "text/plain; version=0.0.4"),
        admin=lambda request: (faults.append(request) or 200, {"ok": True}),
        admin_token="t0ken",
    )
    server = http_api.serve_http("127.0.0.1", 0, source)
    yield server, faults
    server.shutdown()


def request(server, path: str, body: bytes | None = None, token: str | None = None, timeout: float = 2):
    """(status, body) of one request."""
    port = server.server_address[1]
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def idle_connections(server, count: int) -> list[socket.socket]:
    """Connections that never send a byte."""
    return [socket.create_connection(server.server_address[:2], timeout=5) for _ in range(count)]


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF or reset) within the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_paths_and_answers(served):
    server, _ = served
    assert request(server, http_api.LIVENESS_PATH) == (200, b'{"alive": true}')
    code, body = request(server, http_api.READINESS_PATH)
    assert code == 503 and json.loads(body) == {"ready": False, "products": {"P": {"ok": False}}}
    assert request(server, http_api.STATUS_PATH) == (200, b'{"node": "n1"}')
    assert request(server, http_api.METRICS_PATH) == (200, b"obc_up 1\n")
    assert request(server, "/nope")[0] == 404
    assert request(server, http_api.LIVENESS_PATH + "?verbose=1")[0] == 200


def test_admin_needs_the_token_and_a_small_json_object(served):
    server, faults = served
    fault = json.dumps({"fault": "kill", "product": "P"}).encode()
    assert request(server, http_api.ADMIN_FAULT_PATH, fault)[0] == 403
    assert request(server, http_api.ADMIN_FAULT_PATH, fault, token="wrong")[0] == 403
    assert request(server, http_api.ADMIN_FAULT_PATH, b"x" * 5000, token="t0ken")[0] == 400
    assert request(server, http_api.ADMIN_FAULT_PATH, b"not json", token="t0ken")[0] == 400
    assert request(server, http_api.ADMIN_FAULT_PATH, b"[1]", token="t0ken")[0] == 400
    assert faults == []
    assert request(server, http_api.ADMIN_FAULT_PATH, fault, token="t0ken") == (200, b'{"ok": true}')
    assert faults == [{"fault": "kill", "product": "P"}]
    assert request(server, "/admin/other", fault, token="t0ken")[0] == 404


def test_malformed_requests_get_400_not_a_dead_server(served):
    server, _ = served
    too_long = b"GET /livez HTTP/1.1\r\nX-Pad: " + b"x" * http_api.MAX_HEAD_BYTES + b"\r\n\r\n"
    for raw in (b"GARBAGE\r\n\r\n", b"GET /livez SPDY/3\r\n\r\n", too_long):
        with socket.create_connection(server.server_address[:2], timeout=2) as sock:
            sock.sendall(raw)
            assert sock.recv(100).startswith(b"HTTP/1.1 400 "), raw
    assert request(server, http_api.LIVENESS_PATH)[0] == 200


def test_a_client_that_sends_nothing_is_closed_after_the_request_timeout(served, monkeypatch):
    server, _ = served
    monkeypatch.setattr(http_api, "REQUEST_TIMEOUT_S", 0.3)
    sock = idle_connections(server, 1)[0]
    sock.settimeout(3)
    started = time.monotonic()
    with contextlib.closing(sock):
        assert closed_by_server(sock)
    assert 0.25 < time.monotonic() - started < 2.5


def test_idle_connections_past_the_limit_make_room_for_probes(served, monkeypatch):
    server, _ = served
    monkeypatch.setattr(http_api, "MAX_CONNECTIONS", 16)
    threads_before = threading.active_count()
    idle = idle_connections(server, 64)
    try:
        started = time.monotonic()
        assert request(server, http_api.LIVENESS_PATH, timeout=1)[0] == 200
        assert time.monotonic() - started < 1
        # The oldest idle connections were closed to keep at most 16 open.
        idle[0].settimeout(2)
        assert closed_by_server(idle[0])
        idle[-1].settimeout(0.2)
        assert not closed_by_server(idle[-1]), "the newest idle connection is still open"
        assert server.open <= 16
        assert threading.active_count() <= threads_before + http_api.HANDLER_THREADS
    finally:
        for sock in idle:
            sock.close()
