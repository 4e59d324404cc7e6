"""The protocol core stays sans-IO: no sockets, clocks or threads under sctpbond/proto/."""

from __future__ import annotations

import ast
from pathlib import Path

import sctpbond.proto

FORBIDDEN = {"socket", "threading", "time", "select", "selectors", "asyncio", "os", "subprocess"}


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
