"""Replacing a lost replica, log compaction and primary-zone leadership, with real processes.

Goal: with a writer running throughout, r3 is killed for good; r4 starts from
an empty data directory, is added as a learner, catches up by a snapshot (the
others compacted their logs long before), is promoted, and r3 is removed. The
cluster acknowledges writes in every phase and no acknowledged transfer is
lost (acknowledged count == balance == transfers found). Leadership moves to
the primary zone (dc1 = r1), away when r1 dies, and back once it recovered.
Under a long overwrite load, the replicas' data files stop growing (log
compaction keeps the log bounded). Every process is killed by PID at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from cluster_harness import LocalCluster, running_with_accounts, wait_until
from ledger.client import Client
from ledger.model import Transfer
from ledger.storage import data_file_bytes

pytestmark = pytest.mark.timeout(400)

LEDGER = 9
A, B = 1, 2
BATCH = 50
EVERY_SLOTS, KEEP_SLOTS = 40, 8


class Writer:
    """Transfers of 1 from A to B in batches, each retried until it lands."""

    def __init__(self, cluster: LocalCluster, first_id: int) -> None:
        self.cluster = cluster
        self.next_id = first_id
        self.acked: list[int] = []
        self.ack_times: list[float] = []
        self.stop = threading.Event()
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        c = Client(list(self.cluster.addresses.values()) + list(self.cluster.joiner_addresses.values()),
                   attempt_timeout_s=2.0)
        try:
            while not self.stop.is_set():
                ids = list(range(self.next_id, self.next_id + BATCH))
                self.next_id += BATCH
                batch = [Transfer(id=i, debit_account_id=A, credit_account_id=B, amount=1, ledger=LEDGER, code=1)
                         for i in ids]
                while True:
                    try:
                        results = c.create_transfers(batch)
                        break
                    except Exception:
                        self.errors += 1  # retried with the same ids: lands once
                        time.sleep(0.05)
                assert {r.name for r in results} <= {"ok", "exists"}, results
                self.acked.extend(ids)
                self.ack_times.append(time.monotonic())
        finally:
            c.close()

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)

    def wait_more(self, n: int, what: str) -> None:
        start = len(self.acked)
        wait_until(lambda: len(self.acked) >= start + n, 60, f"{n} more acknowledged transfers {what}")


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(3, joiners=1, primary_zone="dc1", extra_toml=(
        f"[snapshot]\nevery_slots = {EVERY_SLOTS}\nkeep_slots = {KEEP_SLOTS}\n\n[timing]\nprimary_hold_ms = 1000\n"
    ))
    with running_with_accounts(c, LEDGER, (A, B)):
        yield c


def _ledgerctl(cluster, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "ledger.ledgerctl", "--address", ",".join(cluster.addresses.values()),
         "--json", *args], capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _members(cluster) -> dict[str, str]:
    with cluster.client() as c:
        return {m.id: m.kind for m in c.list_members().members}


def test_replace_dead_replica_by_snapshot(cluster):
    """Kill r3 for good, add r4 (snapshot catch-up), promote it, remove r3; nothing acknowledged is lost."""
    with Writer(cluster, 1_000_000) as w:
        w.wait_more(200, "before the kill")
        cluster.kill("r3")
        cluster.forget("r3")
        w.wait_more(100 * BATCH // 10, "with r3 dead")  # many slots: the logs compact past r4's start
        cluster.add("r4")
        w.wait_more(BATCH, "after r4 started")
        added = _ledgerctl(cluster, "members", "add", "r4")
        assert added["slot"] > 0
        assert {m["id"]: m["kind"] for m in added["members"]}["r4"] == "learner"
        with cluster.client() as c:
            w.wait_more(BATCH, "after adding r4")
            c.replace_member("r3", "r4", catch_up_timeout_s=120)  # waits until caught up, promotes, removes
        w.wait_more(BATCH, "after the replacement")
    assert w.acked
    assert _members(cluster) == {"r1": "voter", "r2": "voter", "r4": "voter"}
    listing = _ledgerctl(cluster, "members", "list")
    assert {m["id"]: m["kind"] for m in listing["members"]} == {"r1": "voter", "r2": "voter", "r4": "voter"}
    log = (cluster.data / "r4.log").read_text()
    assert "snapshot installed" in log, "r4 should have caught up by a snapshot"
    cluster.wait_converged(120)
    with cluster.client() as c:
        a, b = c.lookup_accounts([A, B])
        found = []
        for i in range(0, len(w.acked), 8000):
            found += c.lookup_transfers(w.acked[i:i + 8000])
    assert len(set(w.acked)) == len(w.acked)
    assert len(found) == len(w.acked)
    assert b.credits_posted == a.debits_posted == len(w.acked)


def test_restarts_keep_the_new_membership(cluster):
    """r4 (installed from a snapshot) and r2 restart with the membership they had: r1, r2, r4 vote."""
    digest = cluster.wait_converged(120)
    for rid in ("r4", "r2"):
        cluster.restart(rid)
        cluster.wait_leader()
    assert _members(cluster) == {"r1": "voter", "r2": "voter", "r4": "voter"}
    with cluster.client() as c:
        c.kv_put(b"after-restarts", b"1")
    assert cluster.wait_converged(120) != digest


def test_leadership_follows_primary_zone(cluster):
    """Leadership settles in dc1 (r1), moves away when r1 dies, and returns after r1 recovers."""
    wait_until(lambda: cluster.leader() == "r1", 60, "leadership to reach the primary zone (r1)")
    with Writer(cluster, 5_000_000) as w:
        w.wait_more(BATCH, "before the failover")
        cluster.kill("r1")
        wait_until(lambda: cluster.leader(exclude=("r1",)), 30, "a leader outside r1")
        w.wait_more(BATCH, "after the failover")
        cluster.restart("r1")
        moved_at = time.monotonic()
        wait_until(lambda: cluster.leader() == "r1", 60, "leadership to return to r1")
        w.wait_more(BATCH, "after leadership returned")
    gaps = [b - a for a, b in zip(w.ack_times, w.ack_times[1:]) if b > moved_at]
    print(f"largest write gap after r1 restarted (includes its return to leadership): {max(gaps) * 1000:.0f} ms")
    cluster.wait_converged(120)
    with cluster.client() as c:
        _, b = c.lookup_accounts([A, B])
        assert b.credits_posted >= len(w.acked)


def test_disk_use_stays_bounded_under_overwrites(cluster):
    """A long loop of KV overwrites: after a warm-up, no replica's data file grows beyond a small slack."""
    value = b"x" * 2000
    def load(rounds: int) -> None:
        with cluster.client() as c:
            for r in range(rounds):
                for k in range(20):
                    c.kv_put(b"key-%d" % k, value + b"%d" % r)

    def sizes() -> dict[str, int]:  # the state's and the acceptor log's data files
        return {rid: data_file_bytes(cluster.data / rid) for rid in cluster.ids}

    load(60)
    warm = sizes()
    load(240)  # four times the warm-up: a log without compaction would hold ~10 MiB more
    end = sizes()
    print(f"data.mdb bytes (state + acceptor) after warm-up {warm}, after 4x more load {end}")
    for rid in cluster.ids:
        assert end[rid] <= warm[rid] + 2 * 1024 * 1024, (rid, warm[rid], end[rid])
