"""The faults a node injects for drills: each declared once, with what it targets, what it needs
and how it is injected.

A fault is asked for over the node's authenticated admin endpoint (`http_api.ADMIN_FAULT_PATH`);
`inject` checks its preconditions and carries it out. The drills (`cluster/tools/drill.py`,
`rolling.py`) and the `drill` command take their choices and what a round waits for from here.
A product fault acts on one product's process on this node, by pid: refused (409) without a
running one. A node fault acts on the node or the servers it embeds; some are refused on a node
that runs the embedded broker and Redis (they would take the whole local cluster down), one needs
it. Answers and log lines are the drills' and the tests' interface: `fault injected fault=...`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cluster.embedded import EmbeddedServices, LocalServer
    from cluster.settings import NodeSettings, Timing
    from supervisor import Supervisor

log = logging.getLogger(__name__)

# `stall`: on this signal a product process blocks its matching loop, as a hung loop would, while
# the lease renewer thread runs on; it must stop renewing after Timing.loop_stall_limit_ms.
STALL_SIGNAL = signal.SIGUSR1
# `corrupt`: on this signal a standby changes its own book behind the input's back, as memory
# corruption would; the live state check must catch it at the next checkpoint.
CORRUPT_SIGNAL = signal.SIGUSR2
PAUSE_LIMIT_S = 60.0  # a paused process is continued after at most this long, whatever was asked
NODE_FAULT_DELAY_S = 0.05  # a node fault acts this long after its answer, so the answer gets out


class Target(enum.Enum):
    """What a fault acts on."""

    PRODUCT = "product"  # one product's process on this node; needs a running one
    NODE = "node"  # the node itself or a server it embeds


class Embedded(enum.Enum):
    """A fault's precondition on the embedded broker and Redis (`start` without --kafka/--redis)."""

    ANY = "any"
    REFUSED = "refused"  # it would take the whole local cluster down
    REQUIRED = "required"  # it acts on an embedded server


class Drill(enum.Enum):
    """How `orderbook-cluster drill` uses a fault."""

    ROUND = "round"  # `--fault NAME`: injected at the leader once per round, under load
    ROLLING = "rolling"  # `--fault rolling-restart`: injected at every node in turn
    ADMIN_ONLY = "admin only"  # only over the admin endpoint (it targets a standby, not the leader)


class FaultSite(Protocol):
    """What a node offers the faults (cluster/node.py's Node)."""

    settings: NodeSettings
    embedded: EmbeddedServices | None
    supervisor: Supervisor
    restart_requested: bool

    def on_main_thread(self, work: Callable[[], None]) -> None: ...


# How a fault is carried out: (the node, the admin request, the product process's pid or None for a
# node fault) -> the fields its answer adds.
Inject = Callable[[FaultSite, dict, "int | None"], dict[str, Any]]


@dataclass(frozen=True)
class Fault:
    """One fault: its name on the admin endpoint and the drill's --fault, and all it implies."""

    name: str
    help: str  # what it does, for the drill's --fault help
    target: Target
    inject: Inject
    drill: Drill
    # The leader loses its lease: a drill round waits for a higher epoch. Otherwise leadership may
    # stay and the round waits for an event produced after the answer's `back_ms`.
    moves_lease: bool
    embedded: Embedded = Embedded.ANY
    refusal: str = ""  # the 409 error when `embedded` is not met ({node} is this node's id)


def stall_s(timing: Timing) -> float:
    """How long `stall` holds a matching loop: past the stall limit and a lease TTL."""
    return (2 * timing.loop_stall_limit_ms + timing.lease_ttl_ms) / 1000


def _kill(site: FaultSite, request: dict, pid: int | None) -> dict:
    os.kill(pid, signal.SIGKILL)
    return {}


def _pause(site: FaultSite, request: dict, pid: int | None) -> dict:
    # The node renews the lease while the process's loop turned within the stall limit
    # (cluster/lease_board.py): a stopped process is a hung loop, so the default outlasts that limit.
    held_s = min(float(request.get("pause_s") or stall_s(site.settings.timing)), PAUSE_LIMIT_S)
    os.kill(pid, signal.SIGSTOP)
    resume = threading.Timer(held_s, _continue, (pid,))
    resume.daemon = True  # a node stopping meanwhile continues its children itself
    resume.start()
    return {"stall_s": held_s}


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _stall(site: FaultSite, request: dict, pid: int | None) -> dict:
    os.kill(pid, STALL_SIGNAL)  # the product process blocks its matching loop (worker.py)
    return {"stall_s": stall_s(site.settings.timing)}


def _corrupt(site: FaultSite, request: dict, pid: int | None) -> dict:
    os.kill(pid, CORRUPT_SIGNAL)  # a standby changes its own book (worker.py)
    return {}


def _restart_node(site: FaultSite, request: dict, pid: int | None) -> dict:
    site.restart_requested = True  # Node.run execs the same command line once the supervisor stopped
    # As SIGTERM does: every leader hands its product over, then the node starts afresh.
    threading.Timer(NODE_FAULT_DELAY_S, os.kill, (os.getpid(), signal.SIGTERM)).start()
    return {}


def _kill_node(site: FaultSite, request: dict, pid: int | None) -> dict:
    acts_at_ms = int(time.time() * 1000 + NODE_FAULT_DELAY_S * 1000)
    threading.Timer(NODE_FAULT_DELAY_S, _node_dies, (site,)).start()
    return {"acts_at_ms": acts_at_ms}  # the drill times the takeover from the death, not the request


def _node_dies(site: FaultSite) -> None:
    """The whole node dies at once: no drain, no lease release (the TTL decides)."""
    for child in site.supervisor.children.values():
        if child.process is not None and child.process.is_alive():
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(child.process.pid, signal.SIGKILL)
    os._exit(137)


def _restart_redis(site: FaultSite, request: dict, pid: int | None) -> dict:
    server = site.embedded.redis
    # Forked by the main thread, or it dies with this handler thread (supervisor.die_with_parent);
    # answered when it is back, for drills.
    site.on_main_thread(lambda: _restart_server(server))
    return {"back_ms": int(time.time() * 1000)}


def _restart_server(server: LocalServer) -> None:
    """SIGKILL the local server and start it again on the same port (redis-server's fsync-always
    AOF keeps epochs, progress and snapshots)."""
    server.kill()
    server.start()
    log.warning("fault: server restarted name=%s port=%d", server.name, server.port)


_EMBEDDED_REFUSES = "this node runs the embedded broker and Redis; "
FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault("kill", "SIGKILL the product's process", Target.PRODUCT, _kill, Drill.ROUND, moves_lease=True),
        Fault(
            "pause",
            "SIGSTOP it past the stall limit and a lease TTL",
            Target.PRODUCT,
            _pause,
            Drill.ROUND,
            moves_lease=True,
        ),
        Fault(
            "stall",
            "block its matching loop past the stall limit (the node's lease renewer runs on)",
            Target.PRODUCT,
            _stall,
            Drill.ROUND,
            moves_lease=True,
        ),
        Fault(
            "corrupt",
            "a standby rests an order no input carried (its state check must catch it)",
            Target.PRODUCT,
            _corrupt,
            Drill.ADMIN_ONLY,
            moves_lease=False,
        ),
        Fault(
            "node-kill",
            "SIGKILL the whole node (no drain, no lease release)",
            Target.NODE,
            _kill_node,
            Drill.ROUND,
            moves_lease=True,
            embedded=Embedded.REFUSED,
            refusal=_EMBEDDED_REFUSES + "killing it kills the cluster",
        ),
        Fault(
            "redis-restart",
            "SIGKILL the embedded Redis and start it again",
            Target.NODE,
            _restart_redis,
            Drill.ROUND,
            moves_lease=False,
            embedded=Embedded.REQUIRED,
            refusal="{node} does not run the embedded Redis",
        ),
        Fault(
            "restart",
            "stop as on SIGTERM (each leader hands over), then start again with the same command line",
            Target.NODE,
            _restart_node,
            Drill.ROLLING,
            moves_lease=True,
            embedded=Embedded.REFUSED,
            refusal=_EMBEDDED_REFUSES + "restarting it restarts the cluster",
        ),
    )
}


def inject(site: FaultSite, request: dict) -> tuple[int, dict]:
    """The admin endpoint's fault request carried out: (HTTP status, answer)."""
    name = request.get("fault")
    fault = FAULTS.get(name) if isinstance(name, str) else None
    if fault is None:
        return 400, {"error": f"unknown fault {name!r}"}
    node = site.settings.node_id
    at_ms = int(time.time() * 1000)
    refused = (fault.embedded is Embedded.REFUSED and site.embedded is not None) or (
        fault.embedded is Embedded.REQUIRED and site.embedded is None
    )
    if refused:
        return 409, {"error": fault.refusal.format(node=node)}
    if fault.target is Target.NODE:
        added = fault.inject(site, request, None)
        log.warning("fault injected fault=%s node=%s", fault.name, node)
        return 200, {"ok": True, "fault": fault.name, "node": node, "at_ms": at_ms, **added}
    product = request.get("product")
    child = site.supervisor.children.get(product) if isinstance(product, str) else None
    if child is None or child.process is None or not child.process.is_alive():
        return 409, {"error": f"no running process for product {product!r} on {node}"}
    pid = child.process.pid
    added = fault.inject(site, request, pid)
    log.warning("fault injected fault=%s product=%s pid=%d", fault.name, product, pid)
    return 200, {
        "ok": True,
        "fault": fault.name,
        "pid": pid,
        "node": node,
        "at_ms": at_ms,
        "stall_s": 0.0,
        **added,
    }
