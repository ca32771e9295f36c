"""A snapshot transfer cut by a crash of either side starts again and completes.

Goal: with snapshot chunks sent slowly (test hook LEDGER_SNAPSHOT_CHUNK_DELAY_S),
a new learner r4 starts fetching a snapshot; the sending replica is SIGKILLed
mid-transfer, and r4 fetches from another replica; that transfer is cut by
SIGKILLing r4 itself, which restarts (its partial spool is discarded) and
fetches again. In the end r4 installed a snapshot and every replica reaches
the same state digest. Every process is killed by PID at the end.
"""

from __future__ import annotations

import os

import pytest

from cluster_harness import LocalCluster, wait_until
from ledger.model import Account, Transfer

pytestmark = pytest.mark.timeout(300)


def _log(cluster, rid: str) -> str:
    try:
        return (cluster.data / f"{rid}.log").read_text()
    except FileNotFoundError:
        return ""


def _senders(cluster) -> dict[str, int]:
    """How many snapshot transfers to r4 each replica started (others may serve lagging voters too)."""
    return {
        rid: sum(1 for line in _log(cluster, rid).splitlines() if '"sending a snapshot"' in line and '"peer": 4,' in line)
        for rid in ("r1", "r2", "r3")
    }


@pytest.fixture()
def cluster():
    old = os.environ.get("LEDGER_SNAPSHOT_CHUNK_DELAY_S")
    os.environ["LEDGER_SNAPSHOT_CHUNK_DELAY_S"] = "0.4"
    c = LocalCluster(3, joiners=1, extra_toml="[snapshot]\nevery_slots = 4\nkeep_slots = 1\n")
    try:
        c.start()
        yield c
    finally:
        c.stop()
        if old is None:
            os.environ.pop("LEDGER_SNAPSHOT_CHUNK_DELAY_S", None)
        else:
            os.environ["LEDGER_SNAPSHOT_CHUNK_DELAY_S"] = old


def test_transfer_restarts_after_sender_and_receiver_crash(cluster):
    with cluster.client(attempt_timeout_s=30) as c:
        c.create_accounts([Account(id=i, ledger=1, code=1) for i in range(1, 101)])
        for start in range(1, 48_001, 8000):  # several MiB of state: several chunks
            c.create_transfers([Transfer(id=i, debit_account_id=1 + i % 100, credit_account_id=1 + (i + 1) % 100,
                                         amount=1, ledger=1, code=1) for i in range(start, start + 8000)])
        cluster.add("r4")
        c.change_membership("add_learner", "r4")

    # 1. The sender dies mid-transfer.
    senders = wait_until(lambda: [r for r, n in _senders(cluster).items() if n], 60, "a snapshot transfer to start")
    sender = senders[0]
    before = _senders(cluster)
    cluster.kill(sender)
    cluster.forget(sender)
    try:
        wait_until(lambda: "snapshot transfer failed" in _log(cluster, "r4"), 60, "r4 to notice the cut transfer")
    except AssertionError:
        print(f"killed {sender}; r4's log:\n" + _log(cluster, "r4")[-4000:])
        raise

    # 2. The receiver dies mid-transfer (from another sender) and restarts.
    wait_until(lambda: any(n > before[r] for r, n in _senders(cluster).items() if r != sender), 60,
               "a new transfer from another replica")
    assert "snapshot installed" not in _log(cluster, "r4")
    cluster.kill("r4")
    cluster.restart("r4")

    wait_until(lambda: "snapshot installed" in _log(cluster, "r4"), 120, "r4 to install a snapshot")
    cluster.restart(sender)
    cluster.ids.append(sender)
    cluster.addresses[sender] = cluster.joiner_addresses.get(sender) or _address(cluster, sender)
    cluster.wait_converged(120)


def _address(cluster, rid: str) -> str:
    import tomllib

    doc = tomllib.loads(cluster.topology.read_text())
    return next(r["address"] for r in doc["replica"] if r["id"] == rid)
