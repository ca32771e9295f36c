"""A leader whose disk fills hands leadership over; nothing acknowledged is lost.

Goal: three replicas of real processes, each data directory on its own small
tmpfs. A writer sends transfers one at a time. The leader's disk is filled:
its storage step fails, it stops accepting and asks the most caught-up
follower to campaign at once (its log says so), a new leader takes the writes,
and writes are acknowledged again. Once the filler is deleted the old leader
finishes its step, follows, and every replica converges to one digest; the
balances equal the acknowledged transfers exactly.

Needs root for the mounts; skipped otherwise. Mounts and processes are always
undone (processes by PID).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from cluster_harness import LocalCluster, wait_until
from ledger import errors
from ledger.model import Account, Transfer

pytestmark = pytest.mark.timeout(240)

LEDGER = 3
A, B = 11, 12
TMPFS_SIZE = "96m"


def _mount(path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(path)],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def _umount(path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _fill(path) -> None:
    """Fill the file system of ``path`` to the last byte."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                continue
    finally:
        os.close(fd)


def test_leader_with_full_disk_hands_over_and_loses_nothing():
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    cluster = LocalCluster(3, cluster_id="diskfull")
    mounts = [cluster.data / rid for rid in cluster.ids]  # the launcher puts data_dir under --data
    try:
        for m in mounts:
            if not _mount(m):
                pytest.skip("cannot mount tmpfs")
        cluster.start()
        with cluster.client() as c:
            assert [r.name for r in c.create_accounts(
                [Account(id=i, ledger=LEDGER, code=1) for i in (A, B)])] == ["ok", "ok"]
        old = cluster.wait_leader()

        acked: list[int] = []
        acked_at: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            with cluster.client(attempt_timeout_s=2.0) as c:
                next_id = 1
                while not stop.is_set():
                    t = Transfer(id=next_id, debit_account_id=A, credit_account_id=B, amount=1,
                                 ledger=LEDGER, code=1)
                    try:
                        result = c.create_transfers([t])
                    except errors.LedgerError:
                        continue  # retried with the same id: idempotent
                    assert result[0].name in ("ok", "exists"), result
                    acked.append(next_id)
                    acked_at.append(time.monotonic())
                    next_id += 1

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        wait_until(lambda: len(acked) >= 20, 30, "writes before the fault")
        filled_at = time.monotonic()
        _fill(cluster.data / old)
        wait_until(lambda: cluster.leader(exclude=(old,)) is not None, 60, "a new leader")
        new = cluster.leader(exclude=(old,))
        after = len(acked)
        wait_until(lambda: len(acked) >= after + 20, 60, "writes under the new leader")
        log_text = (cluster.data / f"{old}.log").read_text()
        gaps = [b - a for a, b in zip(acked_at, acked_at[1:]) if b > filled_at]
        print(f"longest write gap after the leader's disk filled: {max(gaps) * 1e3:.0f} ms")
        assert "handing leadership over" in log_text

        (cluster.data / old / "filler").unlink()
        wait_until(lambda: len(acked) >= after + 40, 60, "writes after the disk came back")
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive()
        digest = cluster.wait_converged()
        assert digest
        with cluster.client() as c:
            a, b = c.lookup_accounts([A, B])
            assert a.debits_posted == b.credits_posted == len(acked), (new, len(acked))
            found = c.lookup_transfers(acked[-5:])
            assert [t.id for t in found] == acked[-5:]
    finally:
        cluster.stop()
        for m in mounts:
            _umount(m)
