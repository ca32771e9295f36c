"""Incremental state digest: an additive multiset hash over all table rows.

digest = sum over rows (table, key, value) of H(table, key, value) mod 2**256

Adding a row adds its hash, removing one subtracts it, so a write costs two
hashes and the digest never needs a scan. Two replicas with the same rows have
the same digest whatever order the rows were written in. H is BLAKE2b-256 with
length-prefixed fields, so no two different rows share an input.

Rows of ``PROJECTION_TABLES`` hash to 0: they are projections of the
digested transfer rows (each transfer's timestamp and id, and per account
the chain of its transfers: ``ledger.state_machine``), written by the same
deterministic code in the same batch, so hashing them again would only cost
time. Two replicas whose digests agree hold the same transfers, hence
(unless the state machine itself is broken, which the simulator's checkers
and a full comparison of rows catch) the same index rows.
"""

from __future__ import annotations

from hashlib import blake2b

MODULUS = 1 << 256
PROJECTION_TABLES = frozenset((b"transfers_by_ts", b"account_transfers", b"account_last"))


_PREFIXES: dict[tuple[bytes, int], bytes] = {}  # (table, key length) -> hash input prefix
_PREFIXES_MAX = 4096


def _prefix(table: bytes, key_bytes: int) -> bytes:
    prefix = len(table).to_bytes(2, "big") + table + key_bytes.to_bytes(4, "big")
    if len(_PREFIXES) < _PREFIXES_MAX:
        _PREFIXES[(table, key_bytes)] = prefix
    return prefix


def row_hash(table: bytes, key: bytes, value: bytes) -> int:
    # One BLAKE2b call over one buffer: the same input bytes (so the same
    # digest) as feeding the fields one update() at a time, for less Python.
    if table in PROJECTION_TABLES:
        return 0
    prefix = _PREFIXES.get((table, len(key))) or _prefix(table, len(key))
    return int.from_bytes(blake2b(prefix + key + value, digest_size=32).digest(), "big")


def combine(
    digest: int,
    table: bytes,
    key: bytes,
    old: bytes | None,
    new: bytes | None,
    _blake2b=blake2b,
    _from_bytes=int.from_bytes,
) -> int:
    """The digest after row (table, key) changes from ``old`` to ``new`` (None = absent)."""
    if old == new or table in PROJECTION_TABLES:
        return digest  # an unchanged row, or one that is not hashed
    prefix = _PREFIXES.get((table, len(key))) or _prefix(table, len(key))
    if old is not None:
        digest -= _from_bytes(_blake2b(prefix + key + old, digest_size=32).digest(), "big")
    if new is not None:
        digest += _from_bytes(_blake2b(prefix + key + new, digest_size=32).digest(), "big")
    return digest % MODULUS


def inserted(digest: int, table: bytes, rows, _blake2b=blake2b, _from_bytes=int.from_bytes) -> int:
    """The digest after adding ``rows`` ((key, value) pairs whose keys were absent)."""
    if table in PROJECTION_TABLES:
        return digest
    prefixes: dict[int, bytes] = {}
    for key, value in rows:
        prefix = prefixes.get(len(key)) or prefixes.setdefault(len(key), _prefix(table, len(key)))
        digest += _from_bytes(_blake2b(prefix + key + value, digest_size=32).digest(), "big")
    return digest % MODULUS


def replaced(digest: int, table: bytes, rows, _blake2b=blake2b, _from_bytes=int.from_bytes) -> int:
    """The digest after each row (key, old, new) of ``rows`` changes from
    ``old`` to ``new`` (None: absent before; ``new`` is never None)."""
    if table in PROJECTION_TABLES:
        return digest
    prefixes: dict[int, bytes] = {}
    for key, old, new in rows:
        prefix = prefixes.get(len(key)) or prefixes.setdefault(len(key), _prefix(table, len(key)))
        if old is not None:
            digest -= _from_bytes(_blake2b(prefix + key + old, digest_size=32).digest(), "big")
        digest += _from_bytes(_blake2b(prefix + key + new, digest_size=32).digest(), "big")
    return digest % MODULUS


def to_hex(digest: int) -> str:
    return digest.to_bytes(32, "big").hex()
