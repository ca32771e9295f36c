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
    if old == new:
        return digest  # rewriting a row with the same value changes nothing
    prefix = _PREFIXES.get((table, len(key))) or _prefix(table, len(key))
    if old is not None:
        digest -= _from_bytes(_blake2b(prefix + key + old, digest_size=32).digest(), "big")
    if new is not None:
        digest += _from_bytes(_blake2b(prefix + key + new, digest_size=32).digest(), "big")
    return digest % MODULUS


def to_hex(digest: int) -> str:
    return digest.to_bytes(32, "big").hex()
