"""engine/ is the pure core: it imports nothing that does I/O, reads a clock or draws randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"
BANNED = {
    "cluster",
    "confluent_kafka",
    "redis",
    "asyncio",
    "time",
    "random",
    "uuid",
    "datetime",
    "socket",
    "threading",
    "os",
    "subprocess",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(ENGINE.glob("*.py")), ids=lambda p: p.name)
def test_engine_module_is_pure(path):
    assert not _imports(path) & BANNED, f"{path.name} imports {sorted(_imports(path) & BANNED)}"


def test_engine_has_modules():
    assert len(list(ENGINE.glob("*.py"))) >= 8
