"""The package's floor plan: each stage imports only stages before it in the flow, and no module imports itself
back through others (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

from support import REPO

PACKAGE = REPO / "src" / "dsclora"
# HR -> LR -> student / teacher -> losses -> checkpoint -> export, measured; then running and the command line.
STAGES = ["base", "data", "models", "weights", "export", "measure", "train", "runtime", "app"]
BASE = {"errors", "fs", "devices", "version"}
APP = {"cli", "commands", "demo", "__init__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in APP:
        return "app"
    return "base" if parts[1] in BASE else parts[1]


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dsclora"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("dsclora"))
        graph[module_name(path)] = found
    return graph


def test_every_module_belongs_to_a_known_stage() -> None:
    for module in imports():
        assert stage(module) in STAGES, module


def test_stages_import_only_earlier_stages() -> None:
    wrong = [
        f"{module} ({stage(module)}) imports {target} ({stage(target)})"
        for module, targets in imports().items()
        for target in targets
        if STAGES.index(stage(target)) > STAGES.index(stage(module))
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = imports()
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in graph.get(module, ()):
            if target in graph and state.get(target) == 1:
                raise AssertionError("cycle: " + " -> ".join([*trail, module, target]))
            if target in graph and not state.get(target):
                visit(target, [*trail, module])
        state[module] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [])
