"""The replica process's driver loop, in-process on a one-replica cluster.

Goal: writes that arrive together are group-committed into one slot; a full
proposal queue answers Overloaded (RESOURCE_EXHAUSTED) instead of growing; a
request already past its deadline is refused and never proposed; results come
back per event; a restarted replica serves what it acknowledged before.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from cluster import topology as topo
from ledger import commands as cmd
from ledger import errors, server
from ledger import state_machine as sm
from ledger.codes import CreateTransferResult
from ledger.model import Account, Transfer

pytestmark = pytest.mark.timeout(60)


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _topology(tmp: Path) -> topo.Topology:
    path = tmp / "one.toml"
    path.write_text(
        'cluster_id = "unit"\nprimary_zone = "dc1"\n[[replica]]\nid = "r1"\ncity = "c"\n'
        f'data_center = "dc1"\naddress = "127.0.0.1:{_port()}"\npeer_address = "127.0.0.1:{_port()}"\n'
        f'metrics_port = {_port()}\n'
        f'data_dir = "{tmp / "r1"}"\n'
    )
    return topo.load(path)


async def _started(tmp: Path) -> server.ReplicaProcess:
    proc = server.ReplicaProcess(_topology(tmp), "r1", seed=1)
    await proc.start()
    for _ in range(500):
        if proc.driver.role == "leader":
            return proc
        await asyncio.sleep(0.01)
    raise AssertionError("a one-replica cluster did not elect itself")


def _sample(proc, name: str) -> float:
    return proc.metrics.registry.get_sample_value(name, {"cluster": "unit", "replica": "r1"}) or 0.0


def _accounts(ids) -> cmd.CreateAccounts:
    return cmd.CreateAccounts.of(Account(id=i, ledger=1, code=1) for i in ids)


def test_concurrent_writes_share_one_slot():
    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _started(Path(tmp))
            try:
                d = proc.driver
                proposals_before = _sample(proc, "ledger_proposals_total")
                results = await asyncio.gather(*(
                    d.submit(_accounts([1000 + i]), 1, 128, None) for i in range(200)
                ), return_exceptions=True)
                failed = {repr(r) for r in results if isinstance(r, BaseException)}
                assert not failed, failed
                assert all(r == [] for r in results)  # sparse result list: every event ok
                proposals = _sample(proc, "ledger_proposals_total") - proposals_before
                assert proposals <= 2, f"200 concurrent writes took {proposals} slots"
                # Per-event results travel back to each caller.
                transfer = cmd.CreateTransfers.of([
                    Transfer(id=1, debit_account_id=1000, credit_account_id=1001, amount=5, ledger=1, code=1),
                    Transfer(id=0, debit_account_id=1000, credit_account_id=1001, amount=5, ledger=1, code=1),
                ])
                result = await d.submit(transfer, 2, len(transfer.events), None)
                assert [(i, int(c)) for i, c in result] == [(1, 5)]  # id_must_not_be_zero
            finally:
                await proc.stop()

    asyncio.run(run())


def test_full_queue_answers_overloaded(monkeypatch):
    monkeypatch.setattr(server, "QUEUE_REQUESTS_MAX", 10)

    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _started(Path(tmp))
            try:
                d = proc.driver
                outcomes = await asyncio.gather(
                    *(d.submit(_accounts([2000 + i]), 1, 128, None) for i in range(50)),
                    return_exceptions=True,
                )
                overloaded = [o for o in outcomes if isinstance(o, errors.Overloaded)]
                assert len(overloaded) == 40
                assert "queue is full" in overloaded[0].message
                assert all(o == [] for o in outcomes if not isinstance(o, Exception))
            finally:
                await proc.stop()

    asyncio.run(run())


def test_expired_deadline_is_refused_and_nothing_is_proposed():
    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _started(Path(tmp))
            try:
                d = proc.driver
                before = _sample(proc, "ledger_proposals_total")
                with pytest.raises(errors.DeadlineExceeded):
                    await d.submit(_accounts([3000]), 1, 128, deadline=0.0)
                await asyncio.sleep(0.05)
                assert _sample(proc, "ledger_proposals_total") == before
            finally:
                await proc.stop()

    asyncio.run(run())


def test_restart_serves_acknowledged_writes():
    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            topology_dir = Path(tmp)
            proc = await _started(topology_dir)
            topology = proc.topology
            try:
                await proc.driver.submit(cmd.KvPut(b"k", b"v1"), 1, 4, None)
                # The answer may come before its apply commits; a read barrier waits for that.
                await proc.driver.read_barrier(None)
                digest = proc.driver.status()["state_digest"]
            finally:
                await proc.stop()
            proc = server.ReplicaProcess(topology, "r1", seed=2)
            await proc.start()
            try:
                assert proc.driver.status()["state_digest"] == digest
                with proc.storage.reader() as tables:
                    from ledger import server_sm

                    assert server_sm.kv_get(tables, b"k")[0] == b"v1"
            finally:
                await proc.stop()

    asyncio.run(run())


def test_hostile_peer_frames_are_dropped_and_counted():
    """Garbage, truncated and foreign-cluster frames at the peer address never
    crash the replica: they are counted, a foreign cluster's or a non-member's
    connection is refused with the reason, and the replica keeps serving."""
    from consensus.ballot import Ballot
    from consensus.messages import Heartbeat
    from ledger import wire
    from ledger.server_peers import send_frames

    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _started(Path(tmp))
            try:
                good = wire.encode_frame("unit", 1, [Heartbeat(1, 1, Ballot(9, 1), 0, 1)])
                garbage = [b"", b"\x93\x01", good[:-3], b"\xff" * 64, wire.encode_frame("unit", 7, [
                    Heartbeat(7, 1, Ballot(1, 7), 0, 1)])]
                address = proc.spec.peer_address
                other = wire.encode_frame("other", 2, [Heartbeat(2, 1, Ballot(1, 2), 0, 1)])
                reason, text = await asyncio.to_thread(send_frames, address, garbage[:4] + [other])
                assert reason == "cluster_id" and "cluster id" in text, (reason, text)
                reason, text = await asyncio.to_thread(send_frames, address, garbage[4:])  # sender 7: no member
                assert reason == "not_member", (reason, text)
                assert _sample(proc, "ledger_wire_errors_total") >= 5
                assert proc.driver.role == "leader"
                assert await proc.driver.submit(_accounts([4000]), 1, 128, None) == []
            finally:
                await proc.stop()

    asyncio.run(run())


def _three(tmp: Path) -> topo.Topology:
    path = tmp / "three.toml"
    lines = ['cluster_id = "unit"', 'primary_zone = "dc1"']
    for i in (1, 2, 3):
        lines += ["[[replica]]", f'id = "r{i}"', 'city = "c"', f'data_center = "dc{i}"',
                  f'address = "127.0.0.1:{_port()}"', f'peer_address = "127.0.0.1:{_port()}"',
                  f"metrics_port = {_port()}",
                  f'data_dir = "{tmp / f"r{i}"}"']
    path.write_text("\n".join(lines) + "\n")
    return topo.load(path)


def test_leader_answers_a_chosen_write_before_its_apply_is_written():
    """The result of a chosen slot goes out as soon as it is computed: the
    leader's apply transaction is held open here, and the write is answered
    anyway; what it answered is what the state machine then holds."""

    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            topology = _three(Path(tmp))
            procs = [server.ReplicaProcess(topology, f"r{i}", seed=i) for i in (1, 2, 3)]
            for p in procs:
                await p.start()
            try:
                leader = None
                for _ in range(1000):
                    leader = next((p for p in procs if p.driver.role == "leader"), None)
                    if leader is not None:
                        break
                    await asyncio.sleep(0.01)
                assert leader is not None, "no leader elected"
                d = leader.driver
                assert await d.submit(_accounts([1, 2]), 2, 256, None) == []

                storage = d.storage
                for _ in range(500):  # that answer may come before its apply is written
                    with storage.reader() as tables:
                        if len(sm.lookup_accounts(tables, [1, 2])) == 2:
                            break
                    await asyncio.sleep(0.01)
                release = threading.Event()
                held = threading.Event()
                at_hold: list[int] = []  # applied_below while the apply was held
                storage_apply = storage.apply

                def holding_apply(apply, sync=False, commit=True):
                    def apply_then_hold(tables):
                        applied = apply(tables)
                        at_hold.append(storage.applied_below)
                        held.set()
                        assert release.wait(10), "the test never released the apply"
                        return applied

                    return storage_apply(apply_then_hold, sync, commit)

                storage.apply = holding_apply
                transfer = cmd.CreateTransfers.of([
                    Transfer(id=7, debit_account_id=1, credit_account_id=2, amount=5, ledger=1, code=1),
                    Transfer(id=8, debit_account_id=1, credit_account_id=1, amount=5, ledger=1, code=1),
                ])
                result = await asyncio.wait_for(d.submit(transfer, 2, len(transfer.events), None), 10)
                # The answer leaves from inside the apply (call_soon_threadsafe),
                # so the storage thread may set ``held`` just after it arrives;
                # either way that step cannot finish before ``release``.
                assert await asyncio.to_thread(held.wait, 10) and storage.applied_below == at_hold[0], (
                    "the answer came only after the apply was written"
                )
                applied_before = at_hold[0]
                assert [(i, int(c)) for i, c in result] == [(1, CreateTransferResult.ACCOUNTS_MUST_BE_DIFFERENT)]
                release.set()
                for _ in range(500):
                    if storage.applied_below > applied_before:
                        break
                    await asyncio.sleep(0.01)
                storage.apply = storage_apply
                with storage.reader() as tables:
                    found = sm.lookup_transfers(tables, [7, 8])
                assert [t.id for t in found] == [7]
            finally:
                release.set()
                for p in procs:
                    await p.stop()

    asyncio.run(run())


def test_applies_share_one_commit_which_a_read_or_a_stop_forces(monkeypatch):
    """With a commit interval far longer than the test, writes are answered
    from applies whose transaction stays open: a linearizable read makes the
    driver commit them (it does not wait for the interval), and so does
    stopping; a restart then holds them all."""
    monkeypatch.setattr(server, "APPLY_COMMIT_INTERVAL_S", 3600.0)

    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _started(Path(tmp))
            topology = proc.topology
            try:
                d = proc.driver
                committed = d.storage.applied_below
                for i in range(5):
                    assert await d.submit(_accounts([4000 + i]), 1, 128, None) == []
                assert d.storage.apply_open and d.storage.applied_below == committed
                with d.storage.reader() as tables:
                    assert sm.lookup_accounts(tables, [4000]) == []  # answered, not yet committed
                await asyncio.wait_for(d.read_barrier(None), 10)
                assert not d.storage.apply_open
                with d.storage.reader() as tables:
                    assert len(sm.lookup_accounts(tables, [4000 + i for i in range(5)])) == 5
                assert await d.submit(_accounts([4100]), 1, 128, None) == []
                assert d.storage.apply_open
            finally:
                await proc.stop()
            proc = server.ReplicaProcess(topology, "r1", seed=2)
            await proc.start()
            try:
                with proc.storage.reader() as tables:
                    assert len(sm.lookup_accounts(tables, [4100])) == 1  # committed by the stop
                assert proc.storage.verify_digest() == proc.storage.state_digest()
            finally:
                await proc.stop()

    asyncio.run(run())


def test_a_failed_commit_applies_the_uncommitted_slots_again(monkeypatch):
    """A storage failure aborts the open apply transaction with every apply
    it held; the driver retries and applies those slots again from the
    committed point, so no answered write goes missing."""
    from ledger.storage import StorageUnavailable

    monkeypatch.setattr(server, "APPLY_COMMIT_INTERVAL_S", 3600.0)
    monkeypatch.setattr(server, "STORAGE_RETRY_MIN_S", 0.01)

    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _started(Path(tmp))
            try:
                d = proc.driver
                storage = d.storage
                for i in range(3):
                    assert await d.submit(_accounts([5000 + i]), 1, 128, None) == []
                assert storage.apply_open
                real_apply = storage.apply
                failures = []

                def failing_apply(apply, sync=False, commit=True):
                    if commit and not failures:
                        failures.append(storage.applying_below)
                        storage.abort_apply()  # as a failed commit leaves it
                        raise StorageUnavailable("commit", OSError(28, "No space left on device"))
                    return real_apply(apply, sync, commit)

                storage.apply = failing_apply
                await asyncio.wait_for(d.read_barrier(None), 10)
                assert failures, "the commit never ran"
                assert storage.applied_below >= failures[0]
                with storage.reader() as tables:
                    assert len(sm.lookup_accounts(tables, [5000, 5001, 5002])) == 3
                assert storage.verify_digest() == storage.state_digest()
            finally:
                await proc.stop()

    asyncio.run(run())


def test_a_read_that_arrives_during_an_uncommitted_apply_gets_its_commit(monkeypatch):
    """A read registered while an apply runs that chose not to commit: that
    apply, once done, commits for it (the read does not wait for the
    interval, nor for another write)."""
    monkeypatch.setattr(server, "APPLY_COMMIT_INTERVAL_S", 3600.0)

    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _started(Path(tmp))
            try:
                d = proc.driver
                storage = d.storage
                await asyncio.wait_for(d.read_barrier(None), 10)  # nothing open now
                release = threading.Event()
                held = threading.Event()
                real_apply = storage.apply

                def holding_apply(apply, sync=False, commit=True):
                    def apply_then_hold(tables):
                        applied = apply(tables)
                        if not commit and not held.is_set():
                            held.set()
                            assert release.wait(10), "the test never released the apply"
                        return applied

                    return real_apply(apply_then_hold, sync, commit)

                storage.apply = holding_apply
                assert await asyncio.wait_for(d.submit(_accounts([6000]), 1, 128, None), 10) == []
                assert await asyncio.to_thread(held.wait, 10)
                read = asyncio.ensure_future(d.read_barrier(None))
                for _ in range(100):  # until the turn registered it
                    if d._reads_waiting:
                        break
                    await asyncio.sleep(0.01)
                assert d._reads_waiting and not read.done()
                release.set()
                await asyncio.wait_for(read, 10)
                with storage.reader() as tables:
                    assert len(sm.lookup_accounts(tables, [6000])) == 1
            finally:
                release.set()
                await proc.stop()

    asyncio.run(run())


def test_proposals_held_for_the_apply_backlog_resume_when_it_drains(monkeypatch):
    """With any apply queued counting as a full backlog, the leader holds new
    proposals while one runs, and every write still gets its answer: the end
    of each apply wakes the proposals it held."""
    monkeypatch.setattr(server, "APPLY_BACKLOG_BYTES_MAX", 0)

    async def run():
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _started(Path(tmp))
            try:
                d = proc.driver
                for round_ in range(3):
                    outcomes = await asyncio.wait_for(asyncio.gather(
                        *(d.submit(_accounts([7000 + 100 * round_ + i]), 1, 128, None) for i in range(20))), 20)
                    assert outcomes == [[]] * 20
                await asyncio.wait_for(d.read_barrier(None), 10)
                with d.storage.reader() as tables:
                    assert len(sm.lookup_accounts(tables, [7000 + 100 * r + i for r in range(3) for i in range(20)])) == 60
            finally:
                await proc.stop()

    asyncio.run(run())
