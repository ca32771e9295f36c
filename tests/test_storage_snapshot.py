"""Goal: a snapshot streamed from one replica's storage installs on another
atomically: rows, applied/chosen point, log start and membership history move
together; a bad digest or a crash before the state's commit changes nothing,
a crash between the state's and the acceptor's commits is finished by the next
open; the membership history stored by log compaction survives a restart."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from consensus.ballot import Ballot
from consensus.ready import Persist
from ledger.storage import ReplicaStorage, SnapshotMismatch

MEMBERS = ((0, (1, 2, 3), ()), (300, (1, 2, 3), (4,)))


def _fill(storage: ReplicaStorage, rows: int, first_slot: int = 0) -> int:
    slots = 10
    entries = tuple((first_slot + i, Ballot(1, 1), b"v%d" % i) for i in range(slots))

    def apply(tables) -> int:
        for i in range(rows):
            tables.put(b"kv", b"key%06d" % i, b"value-%d" % i * 5)
            tables.put(b"accounts", i.to_bytes(16, "big"), b"a" * 40)
        return first_slot + slots

    storage.write_step(Persist(accepted=entries, chosen_below=first_slot + slots), apply)
    return first_slot + slots


def _spool(src: ReplicaStorage, path: str) -> tuple[int, int]:
    with src.snapshot_source() as (index, digest, chunks), open(path, "wb") as f:
        for chunk in chunks:
            f.write(len(chunk).to_bytes(4, "big") + chunk)
    return index, digest


def test_install_replaces_state_and_points(tmp_path):
    src = ReplicaStorage(tmp_path / "src", cluster_id="c", replica_id=1)
    _fill(src, 30_000)  # several chunks
    dst = ReplicaStorage(tmp_path / "dst", cluster_id="c", replica_id=4)
    dst.write_step(Persist(accepted=((5, Ballot(1, 1), b"old"), (40, Ballot(1, 1), b"later"))),
                   lambda t: (t.put(b"kv", b"stale", b"x"), 0)[1])
    spool = dst.incoming_snapshot_path()
    index, digest = _spool(src, spool)
    dst.install_snapshot(spool, index, digest, MEMBERS)
    assert dst.state_digest() == src.state_digest() == dst.verify_digest()
    state = dst.load()
    assert (state.applied_below, state.chosen_below, state.log_start) == (index, index, index)
    assert state.memberships == MEMBERS
    assert set(state.accepted) == {40}  # entries below the snapshot are gone
    with dst.reader() as t:
        assert t.get(b"kv", b"stale") is None
        assert t.get(b"kv", b"key000007") is not None
    src.close()
    dst.close()


def test_bad_digest_changes_nothing(tmp_path):
    src = ReplicaStorage(tmp_path / "src", cluster_id="c", replica_id=1)
    _fill(src, 100)
    dst = ReplicaStorage(tmp_path / "dst", cluster_id="c", replica_id=4)
    before = dst.load()
    spool = dst.incoming_snapshot_path()
    index, digest = _spool(src, spool)
    with pytest.raises(SnapshotMismatch):
        dst.install_snapshot(spool, index, digest ^ 1, MEMBERS)
    with open(spool, "r+b") as f:  # a torn spool (crash of the receiver mid-transfer)
        f.truncate(os.path.getsize(spool) - 3)
    with pytest.raises(SnapshotMismatch):
        dst.install_snapshot(spool, index, digest, MEMBERS)
    assert dst.load() == before
    assert dst.verify_digest() == 0
    src.close()
    dst.close()


_CRASH = """
import os, sys
from ledger.storage import ReplicaStorage
import ledger.storage as st
dst = ReplicaStorage(sys.argv[1], cluster_id="c", replica_id=4)
# Die inside the install transaction, after the rows are written, before commit.
def die(m):
    os._exit(9)
st._encode_memberships = die
dst.install_snapshot(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), ())
"""


def test_crash_during_install_keeps_old_state(tmp_path):
    src = ReplicaStorage(tmp_path / "src", cluster_id="c", replica_id=1)
    _fill(src, 5_000, first_slot=100)
    dst = ReplicaStorage(tmp_path / "dst", cluster_id="c", replica_id=4)
    _fill(dst, 10)
    before, before_digest = dst.load(), dst.state_digest()
    spool = str(tmp_path / "spool")
    index, digest = _spool(src, spool)
    dst.close()
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path / "dst"), spool, str(index), str(digest)],
                          cwd=os.path.dirname(os.path.dirname(__file__)), timeout=60)
    assert proc.returncode == 9
    dst = ReplicaStorage(tmp_path / "dst", cluster_id="c", replica_id=4)
    assert dst.load() == before
    assert dst.verify_digest() == before_digest
    dst.install_snapshot(spool, index, digest, MEMBERS)  # the retry works
    assert dst.state_digest() == src.state_digest()
    src.close()
    dst.close()


_CRASH_BETWEEN = """
import os, sys
from ledger.storage import ReplicaStorage
dst = ReplicaStorage(sys.argv[1], cluster_id="c", replica_id=4)
# Die after the state's commit, before the acceptor's.
def die(index, memberships):
    os._exit(9)
dst._finish_install = die
dst.install_snapshot(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), ((0, (1, 2, 3), ()), (300, (1, 2, 3), (4,))))
"""


def test_crash_between_state_and_acceptor_commits_is_finished_on_open(tmp_path):
    src = ReplicaStorage(tmp_path / "src", cluster_id="c", replica_id=1)
    _fill(src, 2_000, first_slot=100)
    dst = ReplicaStorage(tmp_path / "dst", cluster_id="c", replica_id=4)
    dst.write_step(Persist(accepted=((5, Ballot(1, 1), b"old"), (400, Ballot(1, 1), b"later"))),
                   lambda t: (t.put(b"kv", b"stale", b"x"), 0)[1])
    spool = str(tmp_path / "spool")
    index, digest = _spool(src, spool)
    dst.close()
    proc = subprocess.run([sys.executable, "-c", _CRASH_BETWEEN, str(tmp_path / "dst"), spool, str(index),
                           str(digest)], cwd=os.path.dirname(os.path.dirname(__file__)), timeout=60)
    assert proc.returncode == 9
    dst = ReplicaStorage(tmp_path / "dst", cluster_id="c", replica_id=4)
    state = dst.load()
    assert (state.applied_below, state.chosen_below, state.log_start) == (index, index, index)
    assert state.memberships == MEMBERS
    assert set(state.accepted) == {400}
    assert dst.state_digest() == src.state_digest() == dst.verify_digest()
    src.close()
    dst.close()


def test_compaction_stores_membership_history(tmp_path):
    s = ReplicaStorage(tmp_path / "r", cluster_id="c", replica_id=1)
    applied = _fill(s, 10)
    s.compact_log(applied, MEMBERS)
    s.close()
    s = ReplicaStorage(tmp_path / "r", cluster_id="c", replica_id=1)
    state = s.load()
    assert state.memberships == MEMBERS and state.log_start == applied and not state.accepted
    s.close()
