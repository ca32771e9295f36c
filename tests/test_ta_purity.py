"""The TA domain layer stays pure: no I/O, clocks, randomness or servers.

Goal: ``ta/`` imports only the standard-library modules on the allow-list
below and its own modules, so every result is a function of its arguments
(re-runs give the same numbers, ids and bytes) and the layer never depends
on the ledger, consensus or the network.
"""

from __future__ import annotations

import ast
import pathlib

import ta

ALLOWED = {
    "__future__", "dataclasses", "datetime", "enum", "fractions", "functools", "hashlib", "re",
    "typing",
}  # fmt: skip


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            found.add((node.module or "").split(".")[0])
    return found


# The services over the domain: they talk to the ledger store, files and the
# network, and only they may; no domain module imports them.
SERVICES = ("store", "reference", "clearing", "txservice", "txproto", "cli", "__main__", "bench")


def domain_modules() -> list[pathlib.Path]:
    package = pathlib.Path(ta.__file__).parent
    return [p for p in sorted(package.glob("*.py")) if p.stem not in SERVICES]


def test_ta_imports_only_pure_modules() -> None:
    """Goal: no ta domain module imports time, random, asyncio, grpc, lmdb,
    os, the ledger or consensus; only the allow-list and ta itself."""
    modules = domain_modules()
    assert len(modules) >= 8
    for path in modules:
        extra = imports_of(path) - ALLOWED - {"ta"}
        assert not extra, f"{path.name} imports {sorted(extra)}"


def test_no_float_literals_in_ta() -> None:
    """Goal: no float literal appears in the domain code (money is exact;
    the services' timeouts are the only floats)."""
    for path in domain_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        floats = [n.lineno for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, float)]  # fmt: skip
        assert not floats, f"{path.name} has float literals at lines {floats}"


LAYERS = ("errors", "money", "codes", "arith", "fund", "ids", "files", "orders", "confirm",
          "postings", "memory_ledger")  # fmt: skip


def ta_imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ta."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "ta":
            found |= {alias.name for alias in node.names}
    return found


def test_ta_imports_point_one_way() -> None:
    """Goal: each ta module imports only modules of lower layers (the order
    of the package docstring), so there are no cycles."""
    package = pathlib.Path(ta.__file__).parent
    assert {p.stem for p in domain_modules()} - {"__init__"} == set(LAYERS)
    for rank, name in enumerate(LAYERS):
        used = ta_imports_of(package / f"{name}.py")
        assert used <= set(LAYERS[:rank]), f"{name} imports {sorted(used - set(LAYERS[:rank]))}"
