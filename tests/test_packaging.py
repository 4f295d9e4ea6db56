"""Packaging: every third-party import is declared, with lower bounds only."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {_normalise(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for req in requirements}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules(folder: Path) -> set[str]:
    """Top-level modules imported anywhere under ``folder`` (absolute imports only)."""
    modules: set[str] = set()
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def _third_party(modules: set[str]) -> dict[str, set[str]]:
    """{module: its distributions} for the modules that are neither stdlib nor ours."""
    distributions = packages_distributions()
    return {
        module: {_normalise(d) for d in distributions.get(module, [])}
        for module in modules
        if module not in sys.stdlib_module_names and module != "filterformer"
    }


@pytest.mark.parametrize(
    ("folder", "extras"), [("src", ()), ("tests", ("dev",)), ("scripts", ("dev",))]
)
def test_every_third_party_import_is_declared(folder, extras):
    declared = _names(PROJECT["dependencies"])
    for extra in extras:
        declared |= _names(PROJECT["optional-dependencies"][extra])
    local = {path.stem for path in (ROOT / folder).glob("*.py")}  # scripts import each other
    undeclared = {
        module: dists
        for module, dists in _third_party(_imported_modules(ROOT / folder) - local).items()
        if not dists & declared
    }
    assert not undeclared, f"{folder}/ imports undeclared packages: {undeclared}"


def test_dependencies_have_lower_bounds_only():
    requirements = PROJECT["dependencies"] + [
        req for reqs in PROJECT["optional-dependencies"].values() for req in reqs
    ]
    capped = [req for req in requirements if re.search(r"<|==|~=", req)]
    assert not capped, f"upper caps keep users on old versions: {capped}"
