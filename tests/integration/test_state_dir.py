"""The state directory: one embedded default per directory, stale records cleaned, bounded growth."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest

from cluster.embedded import redis_server
from cluster.state_dir import (
    EMBEDDED_FILE,
    KEEP_DEAD_RUNS,
    AlreadyRunning,
    StaleState,
    embedded_lock,
    remove_dead_runs,
    run_directory,
    running_embedded,
    write_embedded,
)
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration


def test_a_second_lock_holder_is_refused_with_the_first_pid(tmp_path):
    with embedded_lock(tmp_path):
        with pytest.raises(AlreadyRunning) as refused, embedded_lock(tmp_path):
            pass
        assert refused.value.pid == os.getpid()
    with embedded_lock(tmp_path):  # released with the first
        pass


def test_embedded_json_is_private_from_its_first_byte(tmp_path):
    path = write_embedded(tmp_path, {"admin_token": "secret"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"admin_token": "secret"}
    assert [p.name for p in tmp_path.iterdir()] == [EMBEDDED_FILE], "no temporary file left behind"


def test_a_stale_record_is_removed_and_only_our_leftover_server_killed(tmp_path, start_local):
    leftover = start_local(redis_server(tmp_path / "leftover"))
    stranger = subprocess.Popen(["sleep", "300"])  # a live pid that is not one of our servers
    try:
        write_embedded(
            tmp_path,
            {
                "kafka": "127.0.0.1:9",
                "redis": f"redis://127.0.0.1:{leftover.port}/0",
                "start_pid": 999_999_999,
                "pids": {"broker": stranger.pid, "redis": leftover.pid},
            },
        )
        (tmp_path / "start.lock").touch()  # nobody holds it: the start that wrote the record died
        with pytest.raises(StaleState, match=f"killed its leftover redis pid {leftover.pid}"):
            running_embedded(tmp_path)
        assert not (tmp_path / EMBEDDED_FILE).exists()
        wait_until(lambda: leftover.process.poll() is not None, 10, "the leftover redis-server to die")
        assert stranger.poll() is None, "a process that is not our server was killed"
        assert running_embedded(tmp_path) == {}
    finally:
        stranger.kill()
        stranger.wait(5)


def test_a_record_is_believed_while_its_start_holds_the_lock(tmp_path):
    with embedded_lock(tmp_path):
        write_embedded(tmp_path, {"kafka": "127.0.0.1:9", "redis": "redis://127.0.0.1:9/0"})
        assert running_embedded(tmp_path)["kafka"] == "127.0.0.1:9"


def test_dead_runs_beyond_the_newest_few_are_removed_and_live_ones_never(tmp_path):
    dead = []
    for n in range(KEEP_DEAD_RUNS + 2):
        with run_directory(tmp_path) as run:
            (run / "metrics").mkdir()
            dead.append(run)
        os.utime(run / "lock", (time.time() - 100 + n, time.time() - 100 + n))  # began: older first
    with run_directory(tmp_path) as live:  # a new run cleans up as it starts
        assert not any(p.exists() for p in dead[:2]), "the oldest dead runs are still there"
        assert all(p.exists() for p in dead[2:]), "the newest dead runs went too"
        assert not any((p / "metrics").exists() for p in dead[2:]), "dead runs' metrics files stayed"
        os.utime(live / "lock", (0, 0))  # the oldest of all now, but its owner lives
        assert sorted(remove_dead_runs(tmp_path, keep=0)) == sorted(dead[2:])
        assert live.exists()
    assert remove_dead_runs(tmp_path, keep=0) == [live]
    assert not list(tmp_path.glob("run-*"))


def test_metrics_dirs_of_the_old_layout_go_when_their_writers_are_dead(tmp_path):
    dead_writer = subprocess.Popen(["true"])
    dead_writer.wait(5)
    old_dead = tmp_path / "metrics-abc"
    old_live = tmp_path / "metrics-def"
    for path, pid in ((old_dead, dead_writer.pid), (old_live, os.getpid())):
        path.mkdir()
        (path / f"counter_{pid}.db").write_bytes(b"")
        os.utime(path, (time.time() - 120, time.time() - 120))
    assert remove_dead_runs(tmp_path) == [old_dead]
    assert not old_dead.exists() and old_live.exists()


def test_a_record_from_before_the_lock_is_believed_while_its_servers_run(tmp_path, start_local):
    server = start_local(redis_server(tmp_path / "old"))
    doc = {
        "kafka": "127.0.0.1:9",
        "redis": f"redis://127.0.0.1:{server.port}/0",
        "pids": {"redis": server.pid},
    }
    write_embedded(tmp_path, doc)  # as an older `start` left it: no start.lock, no start_pid
    assert running_embedded(tmp_path) == doc
    with pytest.raises(AlreadyRunning), embedded_lock(tmp_path):
        pass
    assert server.process.poll() is None, "a running older start's server was killed"
    server.stop()
    with pytest.raises(StaleState, match="is not running"):
        running_embedded(tmp_path)
