"""The package layers of src/filterformer import one way: down, never up, never in a circle.

cli -> api -> runs -> training / inference / export / convert / runtime -> models -> data /
evaluation / submission -> io / lock / manifest / ranges / progress -> errors. Every import
counts, inside functions too (ast). ``runtime`` is the torch-free deployment runtime: besides
the layers below it, it reads only the torch-free modules of ``inference`` (the map loop,
post-processing); tests/test_runtime.py checks that it imports without torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "filterformer"

LAYERS = {
    "cli": 7,
    "api": 6,
    "runs": 5,
    "training": 4,
    "inference": 4,
    "export": 4,
    "convert": 4,
    "runtime": 4,
    "models": 3,
    "data": 2,
    "evaluation": 2,
    "submission": 2,
    "io": 1,
    "lock": 1,
    "manifest": 1,
    "ranges": 1,
    "progress": 1,
    "errors": 0,
    "configs": 0,
}
"""Rank of each top-level part: an import goes to a lower rank, or sideways without a circle."""

SIDEWAYS = {
    ("training", "inference"),
    ("export", "inference"),
    ("export", "runtime"),
    ("runtime", "inference"),
    ("evaluation", "data"),
    ("submission", "evaluation"),
    ("lock", "io"),
    ("manifest", "io"),
}
"""Imports between parts of one rank, each one way only."""


def _part(file: Path) -> str:
    rel = file.relative_to(SRC).parts
    return rel[0].removesuffix(".py")


def _targets(file: Path) -> set[str]:
    """Top-level filterformer parts imported by ``file`` (absolute and relative imports)."""
    package = list(file.relative_to(SRC).parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join(["filterformer", *base, *([node.module] if node.module else [])])]
                if not node.module:
                    names = [f"{names[0]}.{alias.name}" for alias in node.names]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "filterformer" and len(parts) > 1:
                found.add(parts[1])
    return found


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for file in SRC.rglob("*.py"):
        source = _part(file)
        if source == "__init__":  # the package's lazy API front door
            continue
        for target in _targets(file) - {source}:
            edges.setdefault((source, target), []).append(str(file.relative_to(SRC)))
    return edges


def test_every_part_has_a_layer() -> None:
    parts = {_part(f) for f in SRC.rglob("*.py")} - {"__init__"}
    assert parts <= set(LAYERS), f"parts without a layer: {sorted(parts - set(LAYERS))}"


def test_imports_run_down_the_layers() -> None:
    wrong = {
        edge: files
        for edge, files in _edges().items()
        if LAYERS[edge[1]] > LAYERS[edge[0]]
        or (LAYERS[edge[1]] == LAYERS[edge[0]] and edge not in SIDEWAYS)
    }
    assert not wrong, f"imports that run up or sideways: {wrong}"


def test_sideways_imports_run_one_way() -> None:
    edges = _edges()
    assert not [(a, b) for a, b in SIDEWAYS if (b, a) in edges]


def test_the_package_front_door_imports_only_the_api() -> None:
    assert _targets(SRC / "__init__.py") <= {"api"}
