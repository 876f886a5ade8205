"""engine/ is the pure core: it imports nothing from cluster/, nothing that does I/O, reads a clock
or draws randomness. The rule is checked on the source (ast), so it holds for every module, imported
anywhere in it (inside a function, under TYPE_CHECKING), and the checker is tested on code that
breaks it, so that it can fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"
# Top-level packages engine/ must not import: the cluster and its I/O, clocks and randomness.
BANNED = {
    "cluster",
    "supervisor",
    "confluent_kafka",
    "redis",
    "asyncio",
    "uvloop",
    "socket",
    "threading",
    "subprocess",
    "os",
    "time",
    "datetime",
    "random",
    "secrets",
    "uuid",
}


def banned_imports(source: str, filename: str = "<source>") -> list[str]:
    """Every import in `source` of a BANNED package, as 'line: name'."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            names = [node.args[0].value]
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if name.split(".")[0] in BANNED]
    return found


def _is_dynamic_import(node: ast.Call) -> bool:
    """importlib.import_module("x") or __import__("x") with a literal name."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return (
        name in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


ENGINE_MODULES = sorted(ENGINE.glob("*.py"))


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=lambda p: p.name)
def test_engine_module_imports_nothing_banned(path):
    assert banned_imports(path.read_text(), str(path)) == [], (
        f"engine/{path.name} imports what the core must not"
    )


def test_the_check_sees_every_form_of_import():
    source = """
import time
import os.path
from cluster.worker import ProductWorker
from confluent_kafka import Consumer
import engine.book
from engine import messages
from . import book
def later():
    import random
    importlib.import_module("redis.asyncio")
    __import__("asyncio")
"""
    assert banned_imports(source) == [
        "2: time",
        "3: os.path",
        "4: cluster.worker",
        "5: confluent_kafka",
        "10: random",
        "11: redis.asyncio",
        "12: asyncio",
    ]


def test_the_core_and_its_interface_are_checked():
    names = {path.name for path in ENGINE_MODULES}
    assert {"api.py", "matching.py", "native.py", "messages.py", "snapshot.py", "book.py"} <= names
