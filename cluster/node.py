"""A node: the supervisor running one product process per product, plus what surrounds it.

Around the generic supervisor this adds what a matching node needs: a heartbeat in Redis
(placement of leaders), releasing a killed child's lease at once (fast failover), one reader of
every quiet product's input (cluster/idle_reader.py), health endpoints and the Prometheus
exposition of all product processes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import engine
from cluster import faults, http_api
from cluster.embedded import EmbeddedServices
from cluster.idle_reader import IDLE_READER, READER_SILENT_S, run_idle_reader
from cluster.lease_board import LeaseBoard, NodeRenewer
from cluster.redis_state import NODE_ADDRESSES_KEY, NODES_KEY, durability_problems, release_sync, sync_client
from cluster.settings import NodeSettings
from cluster.worker import run_product
from engine.native import native_import_error, resolve_core
from supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)

# What the forkserver imports once for every product process (supervisor.py): first what keeps it
# alive through a SIGTERM to the node's process group, then the worker and, through it, the engine
# and its C core, confluent-kafka, redis and msgspec; and uvloop, which the worker imports when it
# starts. A module that fails to import here is imported by the child.
PRODUCT_PRELOAD = ("cluster.forkserver_init", "cluster.worker", "engine._native", "redis.asyncio", "uvloop")


class Node:
    """Everything `start` runs for one --node-id."""

    def __init__(self, settings: NodeSettings, embedded: EmbeddedServices | None = None) -> None:
        self.settings = settings
        self.embedded = embedded
        self.advertised = ""
        self.redis = sync_client(settings.redis_url, timeout_s=0.5)
        self.last_heartbeat = 0.0
        # One thread renews every lease this node's leaders hold (cluster/lease_board.py).
        self.lease_board = LeaseBoard.create(len(settings.products))
        self.renewer = NodeRenewer(self.lease_board, settings.products, settings.redis_url, settings.timing)
        board_path = str(self.lease_board.path)
        specs = [ChildSpec(p, run_product, (settings, p, board_path)) for p in settings.products]
        specs.append(ChildSpec(IDLE_READER, run_idle_reader, (settings,)))
        self.supervisor = Supervisor(
            specs,
            settings.node_id,
            on_exit=self.child_exited,
            on_tick=self.tick,
            on_message=self.child_said,
            preload=PRODUCT_PRELOAD,
        )
        # The idle spells the idle reader reads for: product -> round (cluster/idle_reader.py), and
        # since when (wall ms) it has had one to read for without a break.
        self.idle_spells: dict[str, int] = {}
        self.reader_needed_since_ms = 0
        self.http: http_api.HttpServer | None = None
        self.restart_requested = False
        # Work an HTTP handler thread hands to the main loop: restarted servers must be forked by
        # the main thread, or they die with the handler thread (supervisor.die_with_parent).
        self.main_thread_work: queue.Queue[tuple[Callable[[], None], threading.Event, list]] = queue.Queue()

    def child_exited(self, product: str, token: str, code: int | None) -> None:
        """A child that did not stop cleanly may still hold its lease: stop renewing it, then
        release it now, by token."""
        if product == IDLE_READER:
            # Every product it read for reads for itself again, until it is idle again.
            for name, spell in self.idle_spells.items():
                self.supervisor.send(name, ("input", spell))
            self.idle_spells.clear()
            return
        self.lease_board.clear(self.settings.products.index(product))
        if self.idle_spells.pop(product, None) is not None:
            self.supervisor.send(IDLE_READER, ("forget", product))
        if code == 0:
            return
        if release_sync(self.redis, product, token):
            log.info("released lease of exited child product=%s code=%s", product, code)

    def child_said(self, name: str, message: tuple) -> None:
        """Messages between the products and the idle reader: a product's ("idle", round, offset)
        when it leaves reading its input to the reader from `offset` on, and the reader's
        ("input", product, round) when that input arrived. A product is never left waiting on a
        reader that is not there: it is told to read for itself at once."""
        if name == IDLE_READER and message[0] == "input":
            _, product, spell = message
            if self.idle_spells.get(product) == spell:
                del self.idle_spells[product]
                self.supervisor.send(product, ("input", spell))
        elif message[0] == "idle":
            _, spell, offset = message
            if not self.idle_spells:
                self.reader_needed_since_ms = int(time.time() * 1000)
            self.idle_spells[name] = spell
            if not self.supervisor.send(IDLE_READER, ("watch", name, spell, offset)):
                del self.idle_spells[name]
                self.supervisor.send(name, ("input", spell))
        else:
            log.warning("unknown message from=%s message=%r", name, message)

    def check_idle_reader(self) -> None:
        """Kill an idle reader that reads for some product but has not reported for
        READER_SILENT_S: hung, it would leave those products asleep. Its exit wakes them."""
        reader = self.supervisor.children[IDLE_READER]
        if not self.idle_spells or reader.process is None:
            return
        heard_ms = max(reader.status.get("reported_ms", 0), self.reader_needed_since_ms)
        if time.time() * 1000 - heard_ms > READER_SILENT_S * 1000:
            log.warning(
                "idle reader silent for %.0f s while reading for %d products: killing it pid=%d",
                READER_SILENT_S,
                len(self.idle_spells),
                reader.process.pid,
            )
            with contextlib.suppress(ProcessLookupError):  # gone already: its reap follows
                os.kill(reader.process.pid, signal.SIGKILL)
            self.reader_needed_since_ms = int(time.time() * 1000)  # once, not at every tick until the reap

    def on_main_thread(self, work: Callable[[], None], timeout_s: float = 120.0) -> None:
        """Run `work` in the supervisor loop's thread (the main thread) and wait for it; its
        exception, if any, is raised here."""
        done: threading.Event = threading.Event()
        failure: list = []
        self.main_thread_work.put((work, done, failure))
        self.supervisor.wake()
        if not done.wait(timeout_s):
            raise TimeoutError(f"the main loop did not run the work within {timeout_s:.0f}s")
        if failure:
            raise failure[0]

    def tick(self, _supervisor: Supervisor) -> None:
        """Run work handed to the main thread; heartbeat this node into Redis, so placement knows
        who is alive."""
        self.check_idle_reader()
        while not self.main_thread_work.empty():
            work, done, failure = self.main_thread_work.get_nowait()
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - handed back to the waiting thread
                failure.append(exc)
            finally:
                done.set()
        now = time.monotonic()
        if (now - self.last_heartbeat) * 1000 < self.settings.timing.node_heartbeat_ms:
            return
        self.last_heartbeat = now
        try:
            now_ms = int(time.time() * 1000)
            pipe = self.redis.pipeline()
            pipe.zadd(NODES_KEY, {self.settings.node_id: now_ms})
            pipe.hset(NODE_ADDRESSES_KEY, self.settings.node_id, self.advertised)
            pipe.zremrangebyscore(NODES_KEY, "-inf", now_ms - 60_000)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis may be restarting; placement just degrades
            log.debug("heartbeat failed error=%s", exc)

    def ready(self) -> tuple[bool, dict]:
        """Ready when every product has a live process that leads or is a caught-up standby, and
        whose input log still holds its position."""
        detail = {}
        for name, child in self.product_children():
            status = child.status
            fresh_ms = self.settings.timing.status_fresh_ms()
            fresh = bool(status) and time.time() * 1000 - status.get("reported_ms", 0) < fresh_ms
            alive = child.process is not None and child.process.is_alive()
            # A product whose input log went backwards is not served: it stopped applying input.
            input_behind = status.get("input_behind")
            ok = alive and fresh and status.get("caught_up", False) and not input_behind
            detail[name] = {"ok": ok, "role": status.get("role"), "behind": status.get("behind")}
            if input_behind:
                detail[name]["input_behind"] = input_behind
        return all(d["ok"] for d in detail.values()), detail

    def status(self) -> dict:
        """This node's view of its product processes and its idle reader."""
        reader = self.supervisor.children[IDLE_READER]
        return {
            "node": self.settings.node_id,
            "idle_reader": {
                "pid": reader.process.pid if reader.process else None,
                "restarts": reader.restarts,
                "reading_for": len(self.idle_spells),
            },
            "products": {
                name: {
                    **child.status,
                    "restarts": child.restarts,
                    "failed": child.failed,
                    "pid": child.process.pid if child.process else None,
                }
                for name, child in self.product_children()
            },
        }

    def product_children(self) -> list:
        """(product, supervised child) of each product process: not the idle reader."""
        return [(name, child) for name, child in self.supervisor.children.items() if name != IDLE_READER]

    def metrics(self) -> tuple[bytes, str]:
        """The sum over this node's live product processes."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def run(self) -> int:
        """Serve HTTP, supervise until stopped; the return is the process's exit code."""
        for problem in durability_problems(self.redis):
            log.warning("redis durability: %s", problem)
        source = http_api.HealthSource(
            self.supervisor.alive,
            self.ready,
            self.status,
            self.metrics,
            functools.partial(faults.inject, self),
            self.settings.admin_token,
        )
        self.http = http_api.serve_http(self.settings.http_host, self.settings.http_port, source)
        host, port = self.http.server_address[:2]
        self.advertised = f"{self.settings.advertise_host or host}:{port}"
        log.info(
            "node up node=%s http=%s:%d products=%s",
            self.settings.node_id,
            host,
            port,
            ",".join(self.settings.products),
        )
        log_core(self.settings.core)
        self.renewer.start()
        try:
            code = self.supervisor.run()
        finally:
            self.renewer.stop()
            self.lease_board.remove()
            self.http.shutdown()
            try:
                self.redis.zrem(NODES_KEY, self.settings.node_id)
                self.redis.hdel(NODE_ADDRESSES_KEY, self.settings.node_id)
            except Exception:  # noqa: BLE001 - Redis gone: the heartbeat just ages out
                pass
        if self.restart_requested:  # even if a child was still starting and died of the SIGTERM
            # The drill's rolling restart: the same command line in this process (same pid, so a
            # process manager sees no exit), like a StatefulSet pod coming back.
            log.warning("restarting node=%s", self.settings.node_id)
            logging.shutdown()
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
        return code


def log_core(wanted: str) -> None:
    """Say which matching core the product processes take, and warn when `auto` fell back to the
    Python core: e.g. `python -m cluster` run from a checkout imports that source tree, which has no
    C core built in place, even when the installed package has one. (Children are started with
    this process's sys.path, by a forkserver that preloads it: they import the same engine.)"""
    took = resolve_core(wanted)
    if wanted == "auto" and took == "python":
        log.warning(
            "core=python asked=auto: no C core in %s (%s); the Python core runs, about 3x slower "
            "end to end. Build it (pip install with a C compiler; in a checkout, pip install -e .) "
            "or run the installed orderbook-cluster command from outside the checkout",
            Path(engine.__file__).parent,
            native_import_error(),
        )
    else:
        log.info("core=%s asked=%s engine=%s", took, wanted, Path(engine.__file__).parent)


def prepare_metrics_dir(run_dir: Path) -> Path:
    """A fresh directory for multiprocess metrics in this run's directory (cluster/state_dir.py);
    must be set before prometheus_client loads."""
    path = run_dir / "metrics"
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path
