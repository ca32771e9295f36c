"""Incremental state digest: an additive multiset hash over all table rows.

digest = sum over rows (table, key, value) of H(table, key, value) mod 2**256

Adding a row adds its hash, removing one subtracts it, so a write costs two
hashes and the digest never needs a scan. Two replicas with the same rows have
the same digest whatever order the rows were written in. H is BLAKE2b-256 with
length-prefixed fields, so no two different rows share an input.
"""

from __future__ import annotations

from hashlib import blake2b

MODULUS = 1 << 256


def row_hash(table: bytes, key: bytes, value: bytes) -> int:
    h = blake2b(digest_size=32)
    h.update(len(table).to_bytes(2, "big"))
    h.update(table)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key)
    h.update(value)
    return int.from_bytes(h.digest(), "big")


def combine(digest: int, table: bytes, key: bytes, old: bytes | None, new: bytes | None) -> int:
    """The digest after row (table, key) changes from ``old`` to ``new`` (None = absent)."""
    if old is not None:
        digest -= row_hash(table, key, old)
    if new is not None:
        digest += row_hash(table, key, new)
    return digest % MODULUS


def to_hex(digest: int) -> str:
    return digest.to_bytes(32, "big").hex()
