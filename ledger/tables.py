"""The state machine's view of storage: named tables of sorted byte keys.

``Tables`` is the one-interface boundary between the deterministic ledger
state machine and durable storage. ``MemoryTables`` is its in-memory twin used
by the simulator and the property tests; ``ledger.storage.LmdbTables`` is the
durable one (one LMDB named database per table, inside the write transaction
of the current step).

Every write keeps the incremental state digest (``ledger.digest``) current.
Keys order as raw bytes (big-endian integers sort numerically).
"""

from __future__ import annotations

import bisect
from typing import Iterator, Protocol

from ledger import digest as _digest

# The tables the state machine uses. Names are stable: they are on disk.
TABLES = (
    b"accounts",  # account id (16 B) -> encoded account
    b"transfers",  # transfer id (16 B) -> encoded transfer
    b"transfers_by_ts",  # timestamp (8 B) -> transfer id
    b"account_transfers",  # account id + timestamp -> transfer id (checkpoints)
    b"account_history",  # account id + timestamp -> balances after
    b"pending_expiry",  # expiry timestamp + transfer id -> b""
    b"pending_status",  # pending transfer id -> status byte + resolving id
    b"kv",  # user key -> version (8 B) + value
    b"meta",  # state machine metadata (last timestamp, ...)
    b"account_last",  # account id -> timestamp of its last transfer + count
)


class Tables(Protocol):
    def get(self, table: bytes, key: bytes) -> bytes | None: ...

    def put(self, table: bytes, key: bytes, value: bytes) -> None: ...

    def delete(self, table: bytes, key: bytes) -> bool: ...

    def insert_rows(self, table: bytes, rows: list[tuple[bytes, bytes]]) -> None:
        """Add rows, in key order, whose keys ``table`` does not hold yet.

        A key already present is a broken invariant of the caller
        (AssertionError): the state machine inserts only rows it has just
        checked to be new, such as a transfer whose id it looked up."""
        ...

    def replace_rows(self, table: bytes, rows: list[tuple[bytes, bytes | None, bytes]]) -> None:
        """Set each row (key, old, new), in key order, to ``new``; ``old`` is
        the value the caller read in this same transaction (None: absent).

        The digest is kept from the stated ``old`` values without reading
        the rows again, so a wrong ``old`` is a broken invariant of the
        caller; ``MemoryTables`` (the simulator's) checks every one."""
        ...

    def write_rows(self, table: bytes, rows: list[tuple[bytes, bytes]], new_only: bool) -> None:
        """Set each row (key, value), reading the old row for the digest in
        the same call (``ledger.write_set``: rows from a peer, not checked by
        this replica's state machine). ``new_only``: every key must be
        absent. ``ValueError`` when a key is present (``new_only``) or not a
        key the store takes; the caller aborts its transaction then."""
        ...

    def range(
        self,
        table: bytes,
        start: bytes,
        end: bytes | None,
        limit: int,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Rows with start <= key < end (end None: no upper bound), at most limit."""
        ...

    @property
    def digest(self) -> int: ...


class MemoryTables:
    """In-memory ``Tables``: a dict per table plus a sorted key list."""

    def __init__(self) -> None:
        self._rows: dict[bytes, dict[bytes, bytes]] = {t: {} for t in TABLES}
        self._keys: dict[bytes, list[bytes]] = {t: [] for t in TABLES}
        self._digest = 0

    @property
    def digest(self) -> int:
        return self._digest

    def get(self, table: bytes, key: bytes) -> bytes | None:
        return self._rows[table].get(key)

    def put(self, table: bytes, key: bytes, value: bytes) -> None:
        rows = self._rows[table]
        old = rows.get(key)
        if old is None:
            bisect.insort(self._keys[table], key)
        rows[key] = value
        self._digest = _digest.combine(self._digest, table, key, old, value)

    def delete(self, table: bytes, key: bytes) -> bool:
        rows = self._rows[table]
        old = rows.pop(key, None)
        if old is None:
            return False
        keys = self._keys[table]
        del keys[bisect.bisect_left(keys, key)]
        self._digest = _digest.combine(self._digest, table, key, old, None)
        return True

    def insert_rows(self, table: bytes, rows: list[tuple[bytes, bytes]]) -> None:
        stored = self._rows[table]
        keys = self._keys[table]
        for key, value in rows:
            assert key not in stored, f"insert_rows: {table!r} already holds key {key.hex()}"
            bisect.insort(keys, key)
            stored[key] = value
        self._digest = _digest.inserted(self._digest, table, rows)

    def replace_rows(self, table: bytes, rows: list[tuple[bytes, bytes | None, bytes]]) -> None:
        stored = self._rows[table]
        keys = self._keys[table]
        for key, old, new in rows:
            current = stored.get(key)
            assert current == old, f"replace_rows: {table!r} key {key.hex()} is not the stated old value"
            if current is None:
                bisect.insort(keys, key)
            stored[key] = new
        self._digest = _digest.replaced(self._digest, table, rows)

    def write_rows(self, table: bytes, rows: list[tuple[bytes, bytes]], new_only: bool) -> None:
        stored = self._rows[table]
        if new_only and any(key in stored for key, _ in rows):
            raise ValueError(f"write_rows: {table!r} already holds a key of the new rows")
        for key, value in rows:
            self.put(table, key, value)

    def range(
        self,
        table: bytes,
        start: bytes,
        end: bytes | None,
        limit: int,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        keys = self._keys[table]
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        rows = self._rows[table]
        picked = keys[lo:hi]
        if reverse:
            picked = picked[::-1]
        for key in picked[:limit]:
            yield key, rows[key]

    def copy(self) -> "MemoryTables":
        """An independent copy (the simulator's snapshots)."""
        other = MemoryTables()
        other._rows = {t: dict(rows) for t, rows in self._rows.items()}
        other._keys = {t: list(keys) for t, keys in self._keys.items()}
        other._digest = self._digest
        return other

    def snapshot_rows(self) -> dict[bytes, dict[bytes, bytes]]:
        """A copy of every row, for comparing replicas in tests."""
        return {t: dict(rows) for t, rows in self._rows.items()}
