"""The state directory of `start`: the embedded default's lock and embedded.json, and per-run files.

Guarantees:
- At most one embedded default runs per state directory: `start` holds an flock on start.lock for
  its whole life; the kernel drops it when the process dies, however it dies, so a lock that can
  be taken means nobody runs here. A second `start` touches nothing and names the first's pid.
- embedded.json (addresses, server pids, the admin token) is written atomically with mode 600 and
  is believed only while start.lock is held. A stale one is removed, and the servers it names are
  killed if they still run and are ours (their command line carries the recorded port).
- Each `start` keeps its own files (metrics, the embedded servers' logs and data) in a
  run-<pid>-* directory holding its own flock, so a later `start` tells a dead run's files from a
  live one's: the runs of dead processes beyond the newest KEEP_DEAD_RUNS are removed at start, and
  the metrics files of those kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from supervisor import pid_alive

log = logging.getLogger(__name__)

LOCK_FILE = "start.lock"
EMBEDDED_FILE = "embedded.json"
RUN_LOCK = "lock"
LOCK_PATIENCE_S = 1.0
# Dead runs whose files (the embedded servers' logs) are kept for a post-mortem; older ones go.
KEEP_DEAD_RUNS = 3


class AlreadyRunning(RuntimeError):
    """Another `start` holds this state directory's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.pid = pid
        super().__init__(f"already running (pid {pid if pid else '?'}) with state dir {state_dir}")


class StaleState(RuntimeError):
    """embedded.json names an embedded default that no longer runs; it was cleaned up."""


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def embedded_lock(state_dir: Path) -> Iterator[None]:
    """Hold this state directory's start.lock for the block, or raise AlreadyRunning (within
    LOCK_PATIENCE_S).

    Under the lock, a stale embedded.json of an earlier run that died is cleaned up first.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    if not (state_dir / LOCK_FILE).exists() and _legacy_record_alive(state_dir):
        raise AlreadyRunning(state_dir, None)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # A command checking for a stale record holds the lock for milliseconds: outwait that.
        deadline = time.monotonic() + LOCK_PATIENCE_S
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise AlreadyRunning(state_dir, _read_pid(fd))
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if (state_dir / EMBEDDED_FILE).exists():
            message = _clean_stale(state_dir)
            log.warning("%s", message)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_embedded(state_dir: Path, doc: dict) -> Path:
    """embedded.json, mode 600 from its first byte (it holds the admin token), replaced atomically."""
    path = state_dir / EMBEDDED_FILE
    tmp = state_dir / f".{EMBEDDED_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


def running_embedded(state_dir: Path) -> dict:
    """What the embedded default running here recorded ({} if none runs here).

    Raises StaleState (after cleaning up) when embedded.json is left over from a `start` that died.
    """
    path = state_dir / EMBEDDED_FILE
    if not path.exists():
        return {}
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    if fd is None:
        if _legacy_record_alive(state_dir):
            return json.loads(path.read_text())
        raise StaleState(_clean_stale(state_dir))
    try:
        if not _try_lock(fd):
            return json.loads(path.read_text())
        raise StaleState(_clean_stale(state_dir))
    finally:
        os.close(fd)


def _legacy_record_alive(state_dir: Path) -> bool:
    """An embedded.json written by a version without start.lock: alive while a server it names runs."""
    try:
        doc = json.loads((state_dir / EMBEDDED_FILE).read_text())
    except (OSError, ValueError):
        return False
    return any(_is_our_server(pid, port) for pid, port in _servers(doc))


def _servers(doc: dict) -> list[tuple[int, str]]:
    """(pid, port) of each server an embedded.json names."""
    found = []
    for name, pid in (doc.get("pids") or {}).items():
        port = _port_of(doc.get("kafka" if name == "broker" else "redis", ""))
        if isinstance(pid, int) and port:
            found.append((pid, port))
    return found


def _clean_stale(state_dir: Path) -> str:
    """Remove a dead run's embedded.json and kill the servers it names that still run; what was done."""
    path = state_dir / EMBEDDED_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    killed = []
    names = {pid: name for name, pid in (doc.get("pids") or {}).items()}
    for pid, port in _servers(doc):
        if _is_our_server(pid, port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{names[pid]} pid {pid}")
    path.unlink(missing_ok=True)
    start_pid = doc.get("start_pid")
    return f"removed a stale {path} (its start{f' pid {start_pid}' if start_pid else ''} is not running)" + (
        f"; killed its leftover {', '.join(killed)}" if killed else ""
    )


def _port_of(address: str) -> str | None:
    tail = address.rstrip("/").rsplit(":", 1)[-1].split("/", 1)[0]
    return tail if tail.isdigit() else None


def _is_our_server(pid: int, port: str) -> bool:
    """The process runs and its command line carries our port (pids are reused: never kill blind)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    ours = port.encode()
    return any(arg == ours or arg.endswith(b":" + ours) for arg in argv) and any(
        b"redis-server" in arg or b"tansu" in arg for arg in argv
    )


@contextlib.contextmanager
def run_directory(state_dir: Path) -> Iterator[Path]:
    """This run's own directory (metrics, embedded servers' files), locked while the run lives.

    Made under a hidden name and renamed once locked, so a cleaner never sees it unlocked. Dead
    runs beyond the newest KEEP_DEAD_RUNS are removed first.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_runs(state_dir)
    making = Path(tempfile.mkdtemp(prefix=f".run-{os.getpid()}-", dir=state_dir))
    fd = os.open(making / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = state_dir / making.name[1:]
    making.rename(path)
    try:
        yield path
    finally:
        os.close(fd)


def remove_dead_runs(state_dir: Path, keep: int = KEEP_DEAD_RUNS) -> list[Path]:
    """Remove run directories whose owner is gone (their lock is free), keeping the newest `keep`."""
    dead = []
    for path in state_dir.glob("run-*"):
        try:
            fd = os.open(path / RUN_LOCK, os.O_RDWR)
        except OSError:
            continue  # not ours, or half removed: leave it
        try:
            if _try_lock(fd):
                dead.append(path)
        finally:
            os.close(fd)
    dead.sort(key=lambda p: (p / RUN_LOCK).stat().st_mtime, reverse=True)  # when each run began
    for path in dead[:keep]:  # kept for their logs; their metrics files only counted live processes
        shutil.rmtree(path / "metrics", ignore_errors=True)
    removed = dead[keep:] + _dead_legacy_metrics(state_dir)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the files of a dead run path=%s", path)
    return removed


def _dead_legacy_metrics(state_dir: Path) -> list[Path]:
    """metrics-* directories of the layout before run directories whose every writer is dead.

    prometheus_client names each file after its writer's pid (counter_1234.db); a directory made
    within the last minute is left alone (an older `start` may not have spawned its writers yet).
    """
    dead = []
    for path in state_dir.glob("metrics-*"):
        try:
            if time.time() - path.stat().st_mtime < 60:
                continue
            pids = [int(f.stem.rsplit("_", 1)[-1]) for f in path.glob("*.db") if f.stem[-1].isdigit()]
        except (OSError, ValueError):
            continue
        if not any(pid_alive(pid) for pid in pids):
            dead.append(path)
    return dead
