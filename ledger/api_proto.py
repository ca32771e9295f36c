"""The generated protobuf / gRPC modules for ``proto/ledger_api.proto``.

Generated code lives in ``proto/gen/`` (not committed, never edited by hand).
``make proto`` produces it; importing this module also produces it when it is
missing or older than the ``.proto`` file, so a fresh clone works without a
separate build step. Generation takes a file lock, writes into a temporary
folder and renames, so replicas starting at the same moment never see a
half-written module.

    from ledger.api_proto import pb, pb_grpc
"""

from __future__ import annotations

from pathlib import Path

from ledger import protogen

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = PROTO_DIR / "gen"
PROTO_FILES = ("ledger_api.proto",)
MODULE = "ledger_api"


def generate(force: bool = False) -> None:
    protogen.generate(PROTO_DIR, PROTO_FILES, MODULE, force=force)


pb, pb_grpc = protogen.load(PROTO_DIR, PROTO_FILES, MODULE)

SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Ledger", "KV", "Cluster", "Peer")
)



def varint(n: int) -> bytes:
    """A protobuf base-128 varint, for code that writes wire format directly
    (hot-path responses, the benchmark's requests)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


if __name__ == "__main__":
    generate(force=True)
    print(f"generated {', '.join(PROTO_FILES)} into {GEN_DIR}")
