"""Which matching core a node runs is what it says: the node's log and each product process's
status tell the core taken, and `auto` falling back to the Python core is a warning.

The fallback guards against a real mistake: `python -m cluster` run from a source tree without
the C core built in place imports that tree, not the installed package. Here the copied tree holds
an extension file that does not load: with an editable install of the project, a tree without any
such file would still get the installed C core through the editable finder.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest

from cluster.tools.status import collect_status
from engine.native import native_available
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def source_tree_without_c_core(dest: Path) -> Path:
    """A copy of the checkout's code whose C core does not import (an empty extension file)."""
    for name in ("cluster", "engine"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "supervisor.py", dest / "supervisor.py")
    (dest / "engine" / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}").write_bytes(b"")
    return dest


def test_auto_without_the_c_core_warns_and_reports_python(cluster_factory, product, tmp_path):
    tree = source_tree_without_c_core(tmp_path / "checkout")
    cluster = cluster_factory([product])
    node = cluster.start_node("n1", extra_env={"PYTHONPATH": str(tree)}, cwd=tree)
    cluster.wait_leader(product)
    assert wait_until(lambda: node.product_status(product).get("core"), 30, "the core in /status") == "python"
    log_text = node.log_text()
    assert "WARNING cluster.node" in log_text and "core=python asked=auto" in log_text, log_text[-2000:]
    assert str(tree / "engine") in log_text


@pytest.mark.skipif(not native_available(), reason="the C core is not built here")
def test_auto_with_the_c_core_reports_native(services, cluster_factory, product):
    cluster = cluster_factory([product])
    node = cluster.start_node("n1")
    cluster.wait_leader(product)
    assert wait_until(lambda: node.product_status(product).get("core"), 30, "the core in /status") == "native"

    def status_cores():
        processes = collect_status(services.redis_url, [product])["products"][product]["processes"]
        return [p["core"] for p in processes]

    assert wait_until(status_cores, 10, "`status` to show the core") == ["native"]
    assert "INFO cluster.node" in node.log_text() and "core=native asked=auto" in node.log_text()
