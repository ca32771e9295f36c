"""LmdbTables behaves exactly like MemoryTables, its in-memory twin.

Goal: for random sequences of steps, each a random list of put / delete / get /
range operations that either commits or is aborted by a raising callback,
every operation returns the same result on both, the digests agree after every
operation, and after every step the committed rows and digest equal the model's
(an aborted step leaves the model untouched). Keys come from a tiny alphabet so
that overwrites, deletes of present keys and range edges are common; range
bounds include the empty key and bounds longer than LMDB's key limit.
"""

from __future__ import annotations

import copy
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.ready import Persist
from ledger.storage import KEY_BYTES_MAX, ReplicaStorage
from ledger.tables import TABLES, MemoryTables

TABLES_USED = (b"accounts", b"kv", b"meta")

SHORT_KEY = st.lists(st.sampled_from(b"\x00\x01\x02\xff"), min_size=1, max_size=3).map(bytes)
# Keys of exactly LMDB's maximum length, to meet bounds longer than any key.
LONGEST_KEY = st.sampled_from([bytes([b]) * KEY_BYTES_MAX for b in b"\x00\x01\xff"])
KEY = st.one_of(SHORT_KEY, SHORT_KEY, LONGEST_KEY)
# Bounds: any stored-like key, the empty key, or one longer than any key.
BOUND = st.one_of(
    KEY,
    st.just(b""),
    st.tuples(LONGEST_KEY, st.sampled_from([b"\x00", b"\x01", b"\x02"])).map(b"".join),
)
VALUE = st.binary(max_size=8)
TABLE = st.sampled_from(TABLES_USED)

OP = st.one_of(
    st.tuples(st.just("put"), TABLE, KEY, VALUE),
    st.tuples(st.just("put"), TABLE, KEY, VALUE),
    st.tuples(st.just("delete"), TABLE, KEY),
    st.tuples(st.just("get"), TABLE, st.one_of(KEY, BOUND)),
    st.tuples(
        st.just("range"),
        TABLE,
        BOUND,
        st.one_of(st.none(), BOUND),
        st.integers(min_value=0, max_value=6),
        st.booleans(),
    ),
)
STEP = st.tuples(st.lists(OP, max_size=30), st.booleans())  # (ops, commit?)


class Rollback(Exception):
    pass


def run(tables, op):
    kind = op[0]
    if kind == "put":
        return tables.put(*op[1:])
    if kind == "delete":
        return tables.delete(*op[1:])
    if kind == "get":
        return tables.get(*op[1:])
    _, table, start, end, limit, reverse = op
    return list(tables.range(table, start, end, limit, reverse))


def committed_rows(storage: ReplicaStorage) -> dict[bytes, dict[bytes, bytes]]:
    with storage.reader() as view:
        return {t: dict(view.range(t, b"", None, 10**9)) for t in TABLES}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=6))
def test_lmdb_tables_match_memory_tables(steps):
    with tempfile.TemporaryDirectory() as tmp:
        with ReplicaStorage(tmp, cluster_id="prop", replica_id=1) as storage:
            model = MemoryTables()
            for applied, (ops, commit) in enumerate(steps, start=1):
                candidate = copy.deepcopy(model)

                def apply(tables):
                    assert tables.digest == candidate.digest
                    for op in ops:
                        assert run(tables, op) == run(candidate, op), op
                        assert tables.digest == candidate.digest, op
                    if not commit:
                        raise Rollback
                    return applied

                try:
                    storage.write_step(Persist(), apply)
                except Rollback:
                    assert not commit
                else:
                    model = candidate
                assert committed_rows(storage) == model.snapshot_rows()
                assert storage.state_digest() == model.digest
                with storage.reader() as view:
                    assert view.digest == model.digest
                    # The read view answers like the model too.
                    for op in ops:
                        if op[0] in ("get", "range"):
                            assert run(view, op) == run(model, op), op
            assert storage.verify_digest() == model.digest
