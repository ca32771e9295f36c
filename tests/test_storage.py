"""Replica storage keeps exactly what a step wrote, across reopen, or nothing.

Goal: every field of ``Persist`` and of the applied state survives a close and
reopen unchanged; a directory of another cluster, replica or format version is
refused; a step whose ``apply`` raises changes nothing, on disk or in memory;
the read view, log compaction and digest verification behave as documented.
"""

from __future__ import annotations

import os
import shutil

import lmdb
import pytest

from consensus.ballot import ZERO_BALLOT, Ballot
from consensus.ready import DurableState, Persist
from ledger import storage as storage_mod
from ledger.digest import combine
from ledger.storage import (
    DataDirInUse,
    IncompatibleFormat,
    LmdbTables,
    ReplicaStorage,
    StorageCorrupt,
    WrongDataDir,
)
from ledger.tables import TABLES, MemoryTables

CLUSTER = "test-cluster"


def open_storage(path, replica_id: int = 1, cluster_id: str = CLUSTER) -> ReplicaStorage:
    return ReplicaStorage(path, cluster_id=cluster_id, replica_id=replica_id)


def rows_of(storage: ReplicaStorage) -> dict[bytes, dict[bytes, bytes]]:
    with storage.reader() as view:
        return {t: dict(view.range(t, b"", None, 10**9)) for t in TABLES}


def test_new_storage_is_empty(tmp_path):
    with open_storage(tmp_path / "r1") as storage:
        assert storage.load() == DurableState()
        assert storage.state_digest() == 0
        assert storage.verify_digest() == 0
        assert (storage.promised, storage.chosen_below, storage.applied_below) == (ZERO_BALLOT, 0, 0)


def test_persist_round_trips_through_reopen(tmp_path):
    path = tmp_path / "r1"
    b1, b2 = Ballot(1, 1), Ballot(2, 3)
    with open_storage(path) as storage:
        storage.write_step(Persist(promised=b1, accepted=((0, b1, b"zero"), (1, b1, b"one"))))
        storage.write_step(Persist(chosen_below=1))  # chosen alone: not must_sync, still stored
        storage.write_step(Persist(promised=b2, accepted=((1, b2, b"one'"), (2, b2, b""))))
        big = os.urandom(3 << 20)  # spills into LMDB overflow pages
        storage.write_step(Persist(accepted=((7, b2, big),), chosen_below=3))
        expected = DurableState(
            promised=b2,
            accepted={0: (b1, b"zero"), 1: (b2, b"one'"), 2: (b2, b""), 7: (b2, big)},
            chosen_below=3,
            applied_below=0,
            log_start=0,
        )
        assert storage.load() == expected
    with open_storage(path) as storage:
        assert storage.load() == expected
        assert storage.promised == b2 and storage.chosen_below == 3


def test_applied_state_round_trips_through_reopen(tmp_path):
    path = tmp_path / "r1"
    model = MemoryTables()

    def apply(tables):
        for t in (tables, model):
            t.put(b"accounts", b"a" * 16, b"balance-1")
            t.put(b"kv", b"key", b"v1")
            t.put(b"kv", b"key", b"v2")
            t.put(b"meta", b"last_ts", (5).to_bytes(8, "big"))
            assert t.delete(b"kv", b"missing") is False
        assert tables.digest == model.digest
        return 1

    with open_storage(path) as storage:
        storage.write_step(Persist(accepted=((0, Ballot(1, 1), b"cmd"),), chosen_below=1), apply)
        assert storage.applied_below == 1
        assert storage.state_digest() == model.digest
    with open_storage(path) as storage:
        assert storage.applied_below == 1
        assert storage.load().applied_below == 1
        assert storage.state_digest() == model.digest == storage.verify_digest()
        assert rows_of(storage) == model.snapshot_rows()
        with storage.reader() as view:
            assert view.digest == model.digest
            assert view.get(b"kv", b"key") == b"v2"


@pytest.mark.parametrize(
    "cluster_id, replica_id",
    [("other-cluster", 1), (CLUSTER, 2)],
)
def test_foreign_data_dir_is_refused(tmp_path, cluster_id, replica_id):
    path = tmp_path / "r1"
    with open_storage(path) as storage:
        storage.write_step(Persist(promised=Ballot(4, 1)))
    with pytest.raises(WrongDataDir, match="replica 1 of cluster 'test-cluster'"):
        open_storage(path, replica_id=replica_id, cluster_id=cluster_id)
    with open_storage(path) as storage:  # refusing left the directory usable
        assert storage.promised == Ballot(4, 1)


def test_other_format_version_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "r1"
    open_storage(path).close()
    monkeypatch.setattr(storage_mod, "FORMAT_VERSION", storage_mod.FORMAT_VERSION + 1)
    with pytest.raises(IncompatibleFormat):
        open_storage(path)


def test_an_older_format_directory_is_refused_untouched(tmp_path, monkeypatch):
    path = tmp_path / "r1"
    monkeypatch.setattr(storage_mod, "FORMAT_VERSION", storage_mod.FORMAT_VERSION - 1)
    open_storage(path).close()
    shutil.rmtree(path / storage_mod.ACCEPTOR_DIR)  # an older format had no acceptor environment
    monkeypatch.undo()
    with pytest.raises(IncompatibleFormat):
        open_storage(path)
    assert not (path / storage_mod.ACCEPTOR_DIR).exists()


def test_a_state_without_its_acceptor_log_is_refused(tmp_path):
    path = tmp_path / "r1"
    with open_storage(path) as storage:
        storage.write_step(Persist(accepted=((0, Ballot(1, 1), b"x"),), chosen_below=1),
                           lambda t: (t.put(b"kv", b"k", b"v"), 1)[1])
    shutil.rmtree(path / storage_mod.ACCEPTOR_DIR)
    with pytest.raises(WrongDataDir, match="acceptor log is missing"):
        open_storage(path)


def test_second_opener_is_refused(tmp_path):
    path = tmp_path / "r1"
    with open_storage(path):
        with pytest.raises(DataDirInUse):
            open_storage(path)
    open_storage(path).close()  # the lock went with the first close


def test_raising_apply_changes_no_state_and_keeps_its_persist(tmp_path):
    """An apply that raises leaves the state as it was; the persist before it
    (the acceptor half of the step) stays done, and doing the step again works."""
    path = tmp_path / "r1"

    def good(tables):
        tables.put(b"kv", b"k", b"v")
        return 1

    class Boom(Exception):
        pass

    def bad(tables):
        tables.put(b"kv", b"k", b"changed")
        tables.put(b"kv", b"new", b"row")
        tables.delete(b"kv", b"k")
        raise Boom

    step2 = Persist(promised=Ballot(9, 2), accepted=((1, Ballot(9, 2), b"y"),), chosen_below=2)
    with open_storage(path) as storage:
        storage.write_step(Persist(promised=Ballot(1, 1), accepted=((0, Ballot(1, 1), b"x"),), chosen_below=1), good)
        before = (storage.state_digest(), rows_of(storage))
        with pytest.raises(Boom):
            storage.write_step(step2, bad)
        assert (storage.promised, storage.chosen_below, storage.applied_below) == (Ballot(9, 2), 2, 1)
        assert (storage.state_digest(), rows_of(storage)) == before
        assert storage.load().applied_below == 1
        # The storage still works after the abort, and the step may be redone.
        storage.write_step(step2, lambda t: (t.put(b"kv", b"z", b"1"), 2)[1])
        assert storage.applied_below == 2
    with open_storage(path) as storage:
        assert storage.load().promised == Ballot(9, 2)
        assert storage.load().accepted[1] == (Ballot(9, 2), b"y")
        assert storage.verify_digest() == storage.state_digest()


def test_uncommitted_applies_share_one_transaction(tmp_path):
    """``apply(commit=False)`` leaves the transaction open: the next apply
    goes on in it, readers and the committed points see none of it until a
    commit, and closing (like a crash) drops it whole."""
    path = tmp_path / "r1"
    model = MemoryTables()

    def put(n):
        def apply(tables):
            tables.put(b"kv", b"k%d" % n, b"v%d" % n)
            return n + 1
        return apply

    with open_storage(path) as storage:
        storage.write_step(Persist(accepted=tuple((n, Ballot(1, 1), b"x") for n in range(6)), chosen_below=6))
        storage.apply(put(0))
        put(0)(model)
        committed = (storage.state_digest(), rows_of(storage))
        for n in (1, 2):
            storage.apply(put(n), commit=False)
        assert storage.apply_open
        assert (storage.applied_below, storage.applying_below) == (1, 3)
        assert (storage.state_digest(), rows_of(storage)) == committed
        assert storage.load().applied_below == 1
        storage.apply(put(3))  # commits all three
        for n in (1, 2, 3):
            put(n)(model)
        assert not storage.apply_open
        assert (storage.applied_below, storage.applying_below) == (4, 4)
        assert storage.state_digest() == model.digest == storage.verify_digest()
        storage.apply(put(4), commit=False)
    with open_storage(path) as storage:  # the open transaction went with the close
        assert storage.load().applied_below == 4
        assert storage.state_digest() == model.digest == storage.verify_digest()


def test_a_failing_apply_aborts_every_uncommitted_one(tmp_path):
    class Boom(Exception):
        """The callback's own failure."""

    def boom(tables):
        tables.put(b"kv", b"b", b"1")
        raise Boom

    with open_storage(tmp_path / "r1") as storage:
        storage.apply(lambda t: (t.put(b"kv", b"a", b"1"), 1)[1])
        committed = (storage.state_digest(), rows_of(storage))
        storage.apply(lambda t: (t.put(b"kv", b"c", b"1"), 2)[1], commit=False)
        with pytest.raises(Boom):
            storage.apply(boom, commit=False)
        assert not storage.apply_open
        assert (storage.applied_below, storage.applying_below) == (1, 1)
        assert (storage.state_digest(), rows_of(storage)) == committed
        storage.apply(lambda t: (t.put(b"kv", b"c", b"1"), 2)[1])  # applied again, from the committed point
        assert storage.applied_below == 2
        assert storage.verify_digest() == storage.state_digest()


def test_broken_preconditions_abort_the_step(tmp_path):
    with open_storage(tmp_path / "r1") as storage:
        storage.write_step(Persist(promised=Ballot(5, 1), chosen_below=3), lambda t: 2)
        with pytest.raises(AssertionError):
            storage.write_step(Persist(promised=Ballot(4, 9)))
        with pytest.raises(AssertionError):
            storage.write_step(Persist(chosen_below=2))
        with pytest.raises(AssertionError):
            storage.write_step(Persist(), lambda t: 1)  # applied_below going down
        assert storage.load() == DurableState(promised=Ballot(5, 1), chosen_below=3, applied_below=2)


def test_empty_step_is_a_no_op(tmp_path):
    with open_storage(tmp_path / "r1") as storage:
        storage.write_step(Persist())
        assert storage.load() == DurableState()


def test_compact_log_drops_entries_below_and_moves_log_start(tmp_path):
    path = tmp_path / "r1"
    b = Ballot(1, 1)
    with open_storage(path) as storage:
        entries = tuple((s, b, b"v%d" % s) for s in range(10))
        storage.write_step(Persist(promised=b, accepted=entries, chosen_below=10), lambda t: 8)
        storage.compact_log(5)
        storage.compact_log(3)  # backwards: no-op
        assert storage.log_start == 5
        with pytest.raises(AssertionError):
            storage.compact_log(9)  # beyond applied
    with open_storage(path) as storage:
        state = storage.load()
        assert state.log_start == 5
        assert sorted(state.accepted) == [5, 6, 7, 8, 9]
        assert state.accepted[6] == (b, b"v6")
        storage.write_step(Persist(), lambda t: 10)
        storage.compact_log(10)  # everything
        assert storage.load() == DurableState(promised=b, chosen_below=10, applied_below=10, log_start=10)
        storage.write_step(Persist(accepted=((10, b, b"next"),), chosen_below=11))
        assert storage.load().accepted == {10: (b, b"next")}


def test_reader_sees_committed_state_only(tmp_path):
    with open_storage(tmp_path / "r1") as storage:
        storage.write_step(Persist(), lambda t: (t.put(b"kv", b"a", b"1"), 1)[1])
        committed = storage.state_digest()
        with storage.reader() as view:
            seen = []

            def apply(tables):
                tables.put(b"kv", b"b", b"2")
                # An open read transaction does not see the pending write.
                seen.append((view.get(b"kv", b"b"), view.digest))
                return 2

            storage.write_step(Persist(), apply)
            assert seen == [(None, committed)]
            assert view.get(b"kv", b"b") is None  # still its own snapshot
            assert not hasattr(view, "put")
        with storage.reader() as view:
            assert view.get(b"kv", b"b") == b"2"
            assert view.digest == storage.state_digest() != committed


def test_key_limits(tmp_path):
    with open_storage(tmp_path / "r1") as storage:
        long_key = b"k" * 600

        def apply(tables: LmdbTables):
            assert tables.get(b"kv", b"") is None
            assert tables.get(b"kv", long_key) is None
            assert tables.delete(b"kv", b"") is False
            assert tables.delete(b"kv", long_key) is False
            tables.put(b"kv", b"k" * 511, b"max")
            with pytest.raises(ValueError, match="keys are 1..511 bytes"):
                tables.put(b"kv", b"", b"x")
            with pytest.raises(ValueError):
                tables.put(b"kv", long_key, b"x")
            # Bounds may be longer than any key.
            assert list(tables.range(b"kv", long_key, None, 5)) == []
            assert list(tables.range(b"kv", b"", long_key, 5)) == [(b"k" * 511, b"max")]
            assert list(tables.range(b"kv", b"", long_key, 5, reverse=True)) == [(b"k" * 511, b"max")]
            return 1

        storage.write_step(Persist(), apply)
        assert storage.verify_digest() == combine(0, b"kv", b"k" * 511, None, b"max")


def test_verify_digest_detects_a_row_changed_behind_its_back(tmp_path):
    path = tmp_path / "r1"
    with open_storage(path) as storage:
        storage.write_step(Persist(), lambda t: (t.put(b"kv", b"a", b"1"), 1)[1])
    # Change a row without the digest, as a bit flip or a buggy tool would.
    env = lmdb.open(str(path), max_dbs=32)
    with env.begin(write=True) as txn:
        txn.put(b"a", b"2", db=env.open_db(b"sm.kv", txn=txn))
    env.close()
    with open_storage(path) as storage:
        with pytest.raises(StorageCorrupt):
            storage.verify_digest()


def test_map_full_fails_cleanly_and_a_larger_map_resumes(tmp_path):
    path = tmp_path / "r1"
    model = MemoryTables()
    done = 0

    def step(n):
        rows = [(b"%08d-%03d" % (n, i), bytes([n % 251]) * 900) for i in range(20)]

        def apply(tables):
            for key, value in rows:
                tables.put(b"kv", key, value)
            return n + 1

        return Persist(accepted=((n, Ballot(1, 1), b"x" * 4000),), chosen_below=n + 1), apply

    with ReplicaStorage(path, cluster_id=CLUSTER, replica_id=1, map_size_bytes=1 << 20) as storage:
        for _ in range(1000):
            try:
                storage.write_step(*step(done))
            except storage_mod.StorageUnavailable as e:
                assert isinstance(e.cause, lmdb.MapFullError)
                break
            step(done)[1](model)
            done += 1
        else:
            pytest.fail("the map never filled")
        assert storage.applied_below == done
        assert storage.state_digest() == model.digest == storage.verify_digest()
        # The failed step's persist may have fitted, its apply did not.
        assert sorted(storage.load().accepted) in (list(range(done)), list(range(done + 1)))
    with ReplicaStorage(path, cluster_id=CLUSTER, replica_id=1, map_size_bytes=8 << 20) as storage:
        storage.write_step(*step(done))
        step(done)[1](model)
        assert storage.applied_below == done + 1
        assert storage.state_digest() == model.digest == storage.verify_digest()


def test_after_an_lmdb_panic_the_next_step_reopens_the_environment(tmp_path):
    """LMDB refuses all use of an environment after a failed meta write
    (MDB_PANIC); the file is intact, so the storage reopens it and goes on."""

    class PanickedEnv:
        def __init__(self, env):
            self.env = env

        def begin(self, *args, **kwargs):
            raise lmdb.PanicError("mdb_txn_begin: MDB_PANIC: Update of meta page failed")

        def close(self):
            self.env.close()

    with open_storage(tmp_path / "r1") as storage:
        storage.write_step(Persist(promised=Ballot(1, 1)), lambda t: (t.put(b"kv", b"a", b"1"), 1)[1])
        digest = storage.state_digest()
        storage._acc.handle = PanickedEnv(storage._acc.handle)
        with pytest.raises(storage_mod.StorageUnavailable) as failed:
            storage.write_step(Persist(promised=Ballot(2, 1)))
        assert isinstance(failed.value.cause, lmdb.PanicError)
        assert storage.promised == Ballot(1, 1)
        storage.write_step(Persist(promised=Ballot(2, 1)), lambda t: (t.put(b"kv", b"b", b"2"), 2)[1])
        assert storage.load().promised == Ballot(2, 1)
        assert storage.state_digest() != digest
        assert storage.verify_digest() == storage.state_digest()
        # The same for the state environment.
        digest = storage.state_digest()
        storage._state.handle = PanickedEnv(storage._state.handle)
        with pytest.raises(storage_mod.StorageUnavailable) as failed:
            storage.apply(lambda t: (t.put(b"kv", b"c", b"3"), 3)[1])
        assert isinstance(failed.value.cause, lmdb.PanicError)
        assert (storage.applied_below, storage.state_digest()) == (2, digest)
        storage.apply(lambda t: (t.put(b"kv", b"c", b"3"), 3)[1])
        assert storage.load().applied_below == 3
        assert storage.verify_digest() == storage.state_digest() != digest
