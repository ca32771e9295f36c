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

from pathlib import Path

from ledger import protogen

PROTO_DIR = Path(__file__).resolve().parent / "proto"
GEN_DIR = PROTO_DIR / "gen"
PROTO_FILES = ("ta_service.proto",)
MODULE = "ta_service"


def generate(force: bool = False) -> None:
    protogen.generate(PROTO_DIR, PROTO_FILES, MODULE, force=force)


pb, pb_grpc = protogen.load(PROTO_DIR, PROTO_FILES, MODULE)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Transactions"].full_name

if __name__ == "__main__":
    generate(force=True)
    print(f"generated {', '.join(PROTO_FILES)} into {GEN_DIR}")
