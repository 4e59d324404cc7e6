"""The layers hold (docs/design.md): the protocol core stays sans-IO (no sockets, clocks or threads under
sctpbond/proto/); the lab drives the product only from outside, as processes; the runtime never reaches up into
the lab or the CLI; no import cycle anywhere in the package; no module grows past MAX_LINES."""

from __future__ import annotations

import ast
from pathlib import Path

import sctpbond
import sctpbond.proto

FORBIDDEN = {"socket", "threading", "time", "select", "selectors", "asyncio", "os", "subprocess"}
PACKAGE = Path(sctpbond.__file__).parent
MAX_LINES = 600


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_proto_imports_no_io_modules():
    files = sorted(Path(sctpbond.proto.__file__).parent.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        bad = _imports(path) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"


# --- the package's own import graph ---------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package by its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports anywhere in its source: at the top, inside functions, under
    TYPE_CHECKING. `from .x import y` counts as x, or as x.y where y is itself a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _targets(name, path) for name, path in MODULES.items()}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_sees_the_package():
    assert {"sctpbond.cli", "sctpbond.lab.bench", "sctpbond.runtime.client", "sctpbond.proto.session"} <= set(GRAPH)
    assert "sctpbond.lab.topology" in GRAPH["sctpbond.cli"]  # a function-level import counts
    assert "sctpbond.lab.bench" in GRAPH["sctpbond.cli"]


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_the_lab_drives_the_product_only_from_outside():
    lab = [name for name in GRAPH if _in(name, "sctpbond.lab")]
    assert len(lab) >= 8
    for name in lab:
        bad = {t for t in GRAPH[name]
               if _in(t, "sctpbond.runtime", "sctpbond.proto", "sctpbond.transport", "sctpbond.cli")}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_the_runtime_never_imports_the_lab_or_the_cli():
    below = [name for name in GRAPH if _in(name, "sctpbond.runtime", "sctpbond.proto", "sctpbond.transport")]
    assert len(below) >= 15
    for name in below:
        bad = {t for t in GRAPH[name] if _in(t, "sctpbond.lab", "sctpbond.cli", "sctpbond.console")}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_no_module_is_too_long():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split by job): {long}"
