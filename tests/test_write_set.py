"""Write sets (``ledger.write_set``): installing the rows a leader's apply
wrote gives a follower exactly the rows and digest of running the batch;
a write set that does not fit is refused, never half-installed; and in a
running cluster followers install the leader's write sets of large slots.
Seeded."""

from __future__ import annotations

import random
import re
import urllib.request

import lmdb
import msgpack
import pytest

from cluster_harness import LocalCluster, wait_until
from consensus.ready import Persist
from ledger import write_set
from ledger.model import Account, Transfer
from ledger.state_machine import LedgerStateMachine
from ledger.storage import ReplicaStorage
from ledger.tables import MemoryTables
from ledger_histories import random_batches


@pytest.mark.parametrize("seed", range(5))
def test_installed_rows_equal_the_applied_rows(seed):
    leader, follower = MemoryTables(), MemoryTables()
    for value in random_batches(seed, 30):
        before = leader.digest
        recorder = write_set.Recorder(leader)
        results = LedgerStateMachine(recorder).apply_batch(value)
        assert results
        assert follower.digest == before
        write_set.install(follower, write_set.decode(recorder.encode()))
        assert follower.digest == leader.digest
    assert follower.snapshot_rows() == leader.snapshot_rows()


def test_installed_rows_equal_the_applied_rows_in_lmdb(tmp_path):
    leader = ReplicaStorage(str(tmp_path / "a"), cluster_id="ws", replica_id=1)
    follower = ReplicaStorage(str(tmp_path / "b"), cluster_id="ws", replica_id=2)
    try:
        for slot, value in enumerate(random_batches(7, 20)):
            blob = []

            def record(tables, value=value, blob=blob):
                recorder = write_set.Recorder(tables)
                LedgerStateMachine(recorder).apply_batch(value)
                blob.append(recorder.encode())
                return slot + 1

            def install(tables, blob=blob):
                write_set.install(tables, write_set.decode(blob[0]))
                return slot + 1

            leader.write_step(Persist(chosen_below=slot + 1), record)
            follower.write_step(Persist(chosen_below=slot + 1), install)
            assert follower.state_digest() == leader.state_digest()
        assert follower.verify_digest() == leader.verify_digest()
    finally:
        leader.close()
        follower.close()


@pytest.mark.parametrize("blob", [
    b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([[9, b"kv", []]]), msgpack.packb([[1, b"nope", []]]),
    msgpack.packb([[1, b"kv", [b"k"]]]), msgpack.packb([[2, b"kv", [b"k", 5]]]), msgpack.packb([[2, "kv", []]]),
    msgpack.packb([[True, b"kv", []]]), msgpack.packb([[1, b"kv"]]), msgpack.packb([1]),
])
def test_malformed_write_sets_are_refused(blob):
    with pytest.raises(write_set.WriteSetError):
        write_set.decode(blob)


def test_random_bytes_never_raise_anything_else():
    rng = random.Random(3)
    good = msgpack.packb([[1, b"kv", [b"k", b"v"]], [3, b"meta", [b"x"]]])
    for _ in range(2000):
        blob = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            write_set.decode(bytes(blob[: rng.randrange(len(blob) + 1)]))
        except write_set.WriteSetError:
            pass  # the one exception decode may raise


def test_a_write_set_that_does_not_fit_is_refused_and_the_step_writes_nothing(tmp_path):
    storage = ReplicaStorage(str(tmp_path / "r"), cluster_id="ws", replica_id=1)
    try:
        storage.write_step(Persist(chosen_below=1), lambda t: (t.put(b"kv", b"k", b"v"), 1)[1])
        digest = storage.state_digest()
        bad = [
            [(write_set.KIND_PUT, b"kv", [b"a", b"1"]), (write_set.KIND_INSERT, b"kv", [b"k", b"other"])],
            [(write_set.KIND_DELETE, b"kv", [b"absent"])],
            [(write_set.KIND_PUT, b"kv", [b"x" * 600, b"v"])],  # above LMDB's key limit
            [(write_set.KIND_PUT, b"kv", [b"", b"v"])],
        ]
        for ops in bad:
            with pytest.raises(write_set.WriteSetError):
                storage.write_step(Persist(chosen_below=2), lambda t, ops=ops: (write_set.install(t, ops), 2)[1])
            assert storage.state_digest() == digest and storage.applied_below == 1
            with storage.reader() as r:
                assert r.get(b"kv", b"a") is None and r.get(b"kv", b"k") == b"v"
    finally:
        storage.close()


def _write_sets(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r'ledger_write_sets_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)',
                                                     text)}


@pytest.mark.timeout(180)
def test_followers_install_the_leaders_write_sets():
    cluster = LocalCluster(3, cluster_id="wstest")
    try:
        cluster.start()
        with cluster.client() as c:
            c.create_accounts([Account(id=i, ledger=1, code=1) for i in range(1, 101)])
            rng = random.Random(5)
            for b in range(6):
                transfers = [Transfer(id=1 + b * 1000 + i, debit_account_id=(d := rng.randrange(1, 101)),
                                      credit_account_id=d % 100 + 1, amount=1, ledger=1, code=1)
                             for i in range(1000)]
                assert all(r.name == "ok" for r in c.create_transfers(transfers))
        cluster.wait_converged()
        leader = cluster.leader()
        followers = [rid for rid in cluster.ids if rid != leader]
        sent = _write_sets(cluster.metrics_ports[leader])
        assert sent["sent"] >= 2 * 6 - 2
        installed = sum(_write_sets(cluster.metrics_ports[rid])["installed"] for rid in followers)
        assert installed >= 6, installed  # most slots; one may have waited out its write set
        assert all(_write_sets(cluster.metrics_ports[rid])["refused"] == 0 for rid in followers)
    finally:
        cluster.stop()
