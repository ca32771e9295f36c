"""Generate and load protobuf / gRPC modules from ``.proto`` files at import time.

Generated code lives in a ``gen/`` folder beside the ``.proto`` files (not
committed, never edited by hand). ``load`` produces it when it is missing or
older than its sources, under a file lock, into a temporary folder that is
then renamed, so processes starting at the same moment never see a
half-written module.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType


def _stale(proto_dir: Path, gen_dir: Path, files: tuple[str, ...], module: str) -> bool:
    outputs = [gen_dir / f"{module}_pb2.py", gen_dir / f"{module}_pb2_grpc.py"]
    if not all(p.exists() for p in outputs):
        return True
    newest_source = max((proto_dir / f).stat().st_mtime for f in files)
    return min(p.stat().st_mtime for p in outputs) < newest_source


def generate(proto_dir: Path, files: tuple[str, ...], module: str, *, force: bool = False) -> Path:
    """Run protoc (from grpcio-tools) if the generated code is stale; returns the gen folder."""
    gen_dir = proto_dir / "gen"
    if not force and not _stale(proto_dir, gen_dir, files, module):
        return gen_dir
    # The lock lives outside the tree so that it never shows up in git status.
    tag = hashlib.blake2b(str(proto_dir).encode(), digest_size=8).hexdigest()
    lock_path = Path(tempfile.gettempdir()) / f"proto-{module}-{tag}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and not _stale(proto_dir, gen_dir, files, module):
            return gen_dir
        from grpc_tools import protoc  # build-time dependency only

        tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=proto_dir))
        try:
            include = Path(protoc.__file__).parent / "_proto"
            args = [
                "protoc",
                f"-I{proto_dir}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *[str(proto_dir / f) for f in files],
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {files} in {proto_dir}")
            (tmp / "__init__.py").write_text("")
            (tmp / "README").write_text("Generated from the .proto files beside this folder. Do not edit.\n")
            old = proto_dir / f".gen-old-{os.getpid()}"
            if gen_dir.exists():
                gen_dir.rename(old)
            tmp.rename(gen_dir)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return gen_dir


def load(proto_dir: Path, files: tuple[str, ...], module: str) -> tuple[ModuleType, ModuleType]:
    """Generate if stale, then import ``<module>_pb2`` and ``<module>_pb2_grpc``."""
    gen_dir = generate(proto_dir, files, module)
    # The generated grpc module imports its message module by its bare name.
    if str(gen_dir) not in sys.path:
        sys.path.insert(0, str(gen_dir))
    return importlib.import_module(f"{module}_pb2"), importlib.import_module(f"{module}_pb2_grpc")
