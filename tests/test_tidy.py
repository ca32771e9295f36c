"""Layering rules that keep the core pure and imports pointing one way.

Goal: ``consensus`` imports nothing of ours and no I/O, clock, thread or global
randomness; the ledger's domain modules import nothing of the server.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

FORBIDDEN_IN_CORE = {"asyncio", "grpc", "lmdb", "time", "threading", "socket", "random", "os", "ledger", "sim"}
DOMAIN = ["ledger/tables.py", "ledger/digest.py", "ledger/codes.py", "ledger/model.py", "ledger/commands.py",
          "ledger/state_machine.py"]
FORBIDDEN_IN_DOMAIN = {"asyncio", "grpc", "time", "threading", "socket", "random", "consensus", "sim"}


def _runtime_imports(path: pathlib.Path) -> set[str]:
    """Module-level imports (a benchmark's imports inside a function are its own)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    top = []
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        top.append(node)
    for node in top:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_consensus_core_has_no_io():
    for path in sorted((ROOT / "consensus").glob("*.py")):
        bad = _runtime_imports(path) & FORBIDDEN_IN_CORE
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_ledger_domain_imports_nothing_of_the_server():
    for rel in DOMAIN:
        path = ROOT / rel
        if not path.exists():
            continue
        bad = _runtime_imports(path) & FORBIDDEN_IN_DOMAIN
        bad |= {n for n in _runtime_imports(path) if n.startswith("ledger.server")}
        assert not bad, f"{rel} imports {sorted(bad)}"
