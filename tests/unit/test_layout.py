"""The folders are the architecture: imports run only tools -> runtime -> engine (docs/architecture.md).

Rooms, from the bottom: engine/ (the pure core), supervisor.py (generic process lifecycle),
cluster/ (the runtime), cluster/tools/ (operator tools), cluster/bench/ (benchmarks), and the door,
cluster/cli.py with cluster/__main__.py, which wires the commands of every room. Imports are read
with ast, so an import inside a function or under TYPE_CHECKING counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("engine", "supervisor", "cluster")
DOOR = {"cluster.cli", "cluster.__main__"}
MAY_IMPORT = {
    "engine": {"engine"},
    "supervisor": set(),
    "runtime": {"engine", "supervisor", "runtime"},
    "tools": {"engine", "supervisor", "runtime", "tools"},
    "bench": {"engine", "supervisor", "runtime", "tools", "bench"},
    "door": {"engine", "supervisor", "runtime", "tools", "bench", "door"},
}


def room(module: str) -> str:
    """The room a dotted module name of the project lives in."""
    if module in DOOR:
        return "door"
    parts = module.split(".")
    if parts[0] != "cluster":
        return parts[0]
    if len(parts) > 1 and parts[1] in ("tools", "bench"):
        return parts[1]
    return "runtime"


def module_name(path: Path) -> str:
    """cluster/tools/send.py -> cluster.tools.send; a package's __init__.py is the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(source: str) -> set[str]:
    """Every module of the project `source` imports; `from cluster import tools` names cluster.tools."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PROJECT}


def wrong_way(module: str, source: str) -> list[str]:
    """The imports of `module` that its room may not make."""
    allowed = MAY_IMPORT[room(module)]
    return sorted(name for name in project_imports(source) if room(name) not in allowed)


SOURCES = sorted(
    [*ROOT.glob("engine/*.py"), *ROOT.glob("cluster/**/*.py"), ROOT / "supervisor.py"],
    key=lambda p: str(p),
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_only_down(path):
    module = module_name(path)
    wrong = wrong_way(module, path.read_text())
    assert not wrong, f"{module} (room {room(module)}) imports {', '.join(wrong)}: arrows point down only"


def test_every_source_file_is_in_a_room():
    assert {room(module_name(p)) for p in SOURCES} == set(MAY_IMPORT)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("cluster.worker", "from cluster.tools.workload import generate_orders"),
        ("cluster.node", "def f():\n    from cluster import bench\n"),
        ("cluster.tools.send", "import cluster.bench.e2e"),
        ("engine.matching", "from cluster import kafka_io"),
        ("supervisor", "from cluster.node import Node"),
    ],
)
def test_an_import_against_the_direction_is_caught(module, source):
    assert wrong_way(module, source)
