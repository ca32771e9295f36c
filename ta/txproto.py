"""The generated protobuf / gRPC modules for ``ta/proto/ta_service.proto``.

Generated code lives in ``ta/proto/gen/`` (not committed, never edited by hand).
``python -m ta.txproto`` produces it; importing this module also produces it when it is
missing or older than the ``.proto`` file, so a fresh clone works without a
separate build step. Generation takes a file lock, writes into a temporary
folder and renames, so replicas starting at the same moment never see a
half-written module.

    from ta.txproto import pb, pb_grpc
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

PROTO_DIR = Path(__file__).resolve().parent / "proto"
GEN_DIR = PROTO_DIR / "gen"
PROTO_FILES = ("ta_service.proto",)
MODULE = "ta_service"


def _stale() -> bool:
    outputs = [GEN_DIR / f"{MODULE}_pb2.py", GEN_DIR / f"{MODULE}_pb2_grpc.py"]
    if not all(p.exists() for p in outputs):
        return True
    newest_source = max((PROTO_DIR / f).stat().st_mtime for f in PROTO_FILES)
    return min(p.stat().st_mtime for p in outputs) < newest_source


def generate(force: bool = False) -> None:
    """Run protoc (from grpcio-tools) if the generated code is stale."""
    if not force and not _stale():
        return
    PROTO_DIR.mkdir(exist_ok=True)
    # The lock lives outside the tree so that it never shows up in git status.
    tag = hashlib.blake2b(str(PROTO_DIR).encode(), digest_size=8).hexdigest()
    lock_path = Path(tempfile.gettempdir()) / f"ta-proto-{tag}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and not _stale():
            return
        from grpc_tools import protoc  # build-time dependency only

        tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=PROTO_DIR))
        try:
            include = Path(protoc.__file__).parent / "_proto"
            args = [
                "protoc",
                f"-I{PROTO_DIR}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *[str(PROTO_DIR / f) for f in PROTO_FILES],
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {PROTO_FILES}; run `python -m ta.txproto` to see why")
            (tmp / "__init__.py").write_text("")
            (tmp / "README").write_text("Generated from proto/*.proto by `make proto`. Do not edit.\n")
            old = PROTO_DIR / f".gen-old-{os.getpid()}"
            if GEN_DIR.exists():
                GEN_DIR.rename(old)
            tmp.rename(GEN_DIR)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


generate()
# The generated grpc module imports its message module by its bare name.
if str(GEN_DIR) not in sys.path:
    sys.path.insert(0, str(GEN_DIR))
pb = importlib.import_module(f"{MODULE}_pb2")
pb_grpc = importlib.import_module(f"{MODULE}_pb2_grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Transactions"].full_name

if __name__ == "__main__":
    generate(force=True)
    print(f"generated {', '.join(PROTO_FILES)} into {GEN_DIR}")
