"""The package's structure, checked from its source: layers in pipeline order with every import
running down (or within a layer), no import circle, no module importing another module's private
name (tests and benchmarks included), no choice list defined in two modules, no module over the size
limit. docs/architecture.md draws the same layers and states these rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "hpcspec"
#: Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS = (
    ("errors", "choices", "version"),
    ("config",),
    ("parallel", "files"),
    ("problem",),
    ("solvers",),
    ("curvature",),
    ("analyses",),
    ("checkpoint",),
    ("results",),
    ("commands",),
    ("cli", "__main__", "__init__"),
)
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken, line) for every import of an hpcspec module in ``name``,
    relative imports resolved; ``from pkg import module`` counts as importing the module."""
    tree = ast.parse(MODULES[name].read_text())
    package = name.split(".") if _is_package(name) else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("hpcspec")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "hpcspec" and not target.startswith("hpcspec."):
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            found += [(sub, [], node.lineno) for sub in submodules]
            rest = [n for n in names if f"{target}.{n}" not in MODULES]
            if rest or not submodules:
                found.append((target, rest, node.lineno))
    return found


def _layer(name: str) -> int:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{name} is in no layer: add its folder to LAYERS (and to docs/architecture.md)")


def test_every_module_is_in_a_layer():
    for name in MODULES:
        _layer(name)


def test_imports_run_down_the_layers():
    upward = []
    for name in MODULES:
        if name == "hpcspec":  # the library's face re-exports from every layer
            continue
        for target, _, line in _imports(name):
            if target in MODULES and _layer(target) > _layer(name):
                upward.append(f"{MODULES[name].relative_to(REPO)}:{line} imports {target}")
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = {name: {t for t, _, _ in _imports(name) if t in MODULES and t != name} for name in MODULES}
    # a package's __init__ that only re-exports is a face, not a room: skip edges into faces' parents
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt == "hpcspec" or node == "hpcspec":
                continue
            if _is_package(nxt) and node.startswith(nxt + "."):
                continue  # a submodule importing its own package's face
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def _python_files() -> list[Path]:
    return [p for folder in ("hpcspec", "tests", "benchmarks") for p in sorted((REPO / folder).rglob("*.py"))]


def test_no_private_name_imported_across_modules():
    ours = {path.stem for path in _python_files()}  # test and benchmark modules import each other by name
    borrowed = []
    for path in _python_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            if isinstance(node, ast.ImportFrom) and (node.level or module.startswith("hpcspec") or module in ours):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        borrowed.append(f"{path.relative_to(REPO)}:{node.lineno} imports {alias.name}")
    assert not borrowed, "private names imported from another module:\n" + "\n".join(borrowed)


def _string_tuples(path: Path) -> dict[str, tuple[str, ...]]:
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if isinstance(value, ast.Tuple) and value.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.isupper():
                        found[target.id] = tuple(e.value for e in value.elts)
    return found


def test_no_choice_list_defined_twice():
    owners: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for constant in _string_tuples(path):
            owners.setdefault(constant, []).append(name)
    twice = {c: m for c, m in owners.items() if len(m) > 1}
    assert not twice, f"constants defined in more than one module: {twice}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(REPO)} has {lines} lines (limit {MAX_LINES}): split it by responsibility"
