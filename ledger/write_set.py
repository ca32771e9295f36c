"""Write sets: the rows one applied slot wrote, so followers install them
instead of running the slot's batch again.

Every replica can apply every chosen slot value itself (``ledger.state_machine``
is deterministic), and that stays the rule. A leader that applies a large
slot also records what the apply wrote (``Recorder``), in order, and sends it
to its followers with the state digest before and after the slot
(``ledger.wire.WriteSet``), as OceanBase's followers replay the leader's redo
rather than re-executing statements. A follower about to apply that slot
installs the rows instead (``install``), which costs about a third of
running the batch (no checks, no row building, no account cache), but only
when

* its own state digest equals the write set's ``base_digest`` (so its rows
  are the leader's rows as they were before the slot, and the deterministic
  apply would write exactly these rows), and
* installing gives exactly the write set's ``digest`` after; the digest is
  recomputed from the rows the follower itself held (``Tables.write_rows``
  reads each old row in the same LMDB call), so a wrong or hostile write set
  cannot pass unnoticed.

Otherwise the step is aborted as a whole and the follower runs the batch
itself. A write set is an optimization that never decides anything: the
chosen slot value does.

Encoding (msgpack, inside the peer frame's ``rows`` bytes)::

    [[kind, table, [key, value, key, value, ...]], ...]   kinds 1 insert, 2 put
    [[3, table, [key, key, ...]], ...]                     kind 3 delete

in the order the apply wrote them.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack

from ledger.tables import TABLES, Tables

KIND_INSERT = 1  # rows whose keys the table did not hold
KIND_PUT = 2  # rows set whatever was there
KIND_DELETE = 3  # keys removed (they were present)
KINDS = (KIND_INSERT, KIND_PUT, KIND_DELETE)
WRITE_SET_BYTES_MAX = 64 * 1024 * 1024  # a larger one is not sent: followers apply the batch
OPS_MAX = 4096
ROWS_PER_OP_MAX = 1 << 20
_TABLES = frozenset(TABLES)
_chain = itertools.chain.from_iterable


class WriteSetError(ValueError):
    """A write set that does not decode, or does not fit the rows it is installed on."""


class Recorder:
    """``Tables`` that passes everything to ``tables`` and records the writes."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.ops: list[tuple[int, bytes, list]] = []
        # Reads go straight to the wrapped tables (no extra call per read).
        self.get = tables.get
        self.range = tables.range

    @property
    def digest(self) -> int:
        return self.tables.digest

    def put(self, table: bytes, key: bytes, value: bytes) -> None:
        self.tables.put(table, key, value)
        self.ops.append((KIND_PUT, table, [key, value]))

    def delete(self, table: bytes, key: bytes) -> bool:
        found = self.tables.delete(table, key)
        if found:
            self.ops.append((KIND_DELETE, table, [key]))
        return found

    def insert_rows(self, table: bytes, rows: list[tuple[bytes, bytes]]) -> None:
        self.tables.insert_rows(table, rows)
        if rows:
            self.ops.append((KIND_INSERT, table, list(_chain(rows))))

    def replace_rows(self, table: bytes, rows: list[tuple[bytes, bytes | None, bytes]]) -> None:
        self.tables.replace_rows(table, rows)
        if rows:
            self.ops.append((KIND_PUT, table, [x for key, _, new in rows for x in (key, new)]))

    def encode(self) -> bytes:
        return msgpack.packb([[kind, table, flat] for kind, table, flat in self.ops], use_bin_type=True)


def decode(blob: bytes) -> list[tuple[int, bytes, list[bytes]]]:
    """The ops of an encoded write set, checked for shape; ``WriteSetError`` otherwise."""
    try:
        obj = msgpack.unpackb(blob, raw=False, use_list=True, max_bin_len=len(blob),
                              max_str_len=0, max_array_len=max(OPS_MAX, 2 * ROWS_PER_OP_MAX),
                              max_map_len=0, max_ext_len=0)
    except Exception as e:  # msgpack raises several types for bad input
        raise WriteSetError(f"not a msgpack write set: {type(e).__name__}: {e}") from None
    if type(obj) is not list or len(obj) > OPS_MAX:
        raise WriteSetError(f"a write set is an array of at most {OPS_MAX} ops")
    ops = []
    for i, op in enumerate(obj):
        if type(op) is not list or len(op) != 3:
            raise WriteSetError(f"op {i}: expected [kind, table, rows]")
        kind, table, flat = op
        if kind not in KINDS or type(kind) is not int:
            raise WriteSetError(f"op {i}: unknown kind {kind!r}")
        if type(table) is not bytes or table not in _TABLES:
            raise WriteSetError(f"op {i}: unknown table {table!r}")
        if type(flat) is not list or (kind != KIND_DELETE and len(flat) % 2):
            raise WriteSetError(f"op {i}: rows must be an array of key, value pairs")
        if not all(type(x) is bytes for x in flat):
            raise WriteSetError(f"op {i}: keys and values are bytes")
        ops.append((kind, table, flat))
    return ops


def install(tables: Any, ops: list[tuple[int, bytes, list[bytes]]]) -> None:
    """Write ``ops`` (from ``decode``) to ``tables`` in order.

    ``WriteSetError`` when they do not fit the rows there (an insert of a
    present key, a delete of an absent one, a key the store refuses); the
    caller then aborts its transaction and runs the batch instead."""
    for kind, table, flat in ops:
        if kind == KIND_DELETE:
            for key in flat:
                if not tables.delete(table, key):
                    raise WriteSetError(f"delete of a key {table!r} does not hold")
            continue
        it = iter(flat)
        try:
            tables.write_rows(table, list(zip(it, it)), kind == KIND_INSERT)
        except ValueError as e:
            raise WriteSetError(str(e)) from None
