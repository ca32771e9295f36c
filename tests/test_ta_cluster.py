"""The TA services on a real local cluster: three replica processes on 127.0.0.1.

Goal: the ``ta`` command line clears TA.md's worked day on the replicated
ledger with the very bytes of the in-memory walk-through, rolls back to BP0
and clears again to the same files; and a clearing process SIGKILLed at
random points of its batch (several times, mid-booking included) resumes
each time and ends with the files and balances of an uninterrupted run (the
same day cleared on the twin). Each cluster is started for its test and
every process is killed by PID at the end.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_ta_worked_day as pure  # noqa: E402
from cluster_harness import LocalCluster  # noqa: E402
from ta_worked_day_data import REFERENCE, T, T0, write_inbox  # noqa: E402
from ta import bench, reference  # noqa: E402
from ta.clearing import Clearing  # noqa: E402
from ta.store import ClusterStore, TwinStore  # noqa: E402

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent

CRASH_POINTS = (
    "INIT:done", "VALIDATE:done", "ACCOUNTS:done", "DIVIDEND:planned", "DIVIDEND:half-booked",
    "MMF:done", "CONFIRM:planned", "CONFIRM:half-booked", "CONFIRM:done", "CHECK:done", "EXPORT:done",
)  # fmt: skip


@pytest.fixture()
def cluster():
    c = LocalCluster(3, cluster_id="ta-itest")
    try:
        c.start()
        c.wait_leader()
        yield c
    finally:
        c.stop()


def ta_cli(cluster: LocalCluster, *args: str, env: dict | None = None, timeout_s: float = 120):
    addresses = ",".join(cluster.addresses.values())
    return subprocess.run([sys.executable, "-m", "ta", "--addresses", addresses, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, **(env or {})})  # fmt: skip


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_worked_day_on_a_three_replica_cluster_via_the_cli(cluster, tmp_path) -> None:
    """Goal: load, import, clear, status, rollback to BP0 and clear again
    through ``python -m ta`` on real replicas; the files are the bytes of the
    pure walk-through both times."""
    ref = tmp_path / "reference.json"
    ref.write_text(json.dumps(REFERENCE))
    ok(ta_cli(cluster, "load", str(ref)))
    ok(ta_cli(cluster, "clear", T0))
    write_inbox(tmp_path / "in")
    ok(ta_cli(cluster, "--json", "clear", T, "--inbox", str(tmp_path / "in"), "--out",
              str(tmp_path / "out"), "--shards", "4"))  # fmt: skip
    expected = pure.clear_day(pure.distributor_files(pure.ORDERS), pure.resent_file())["files"]
    got = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert got == expected
    status = json.loads(ok(ta_cli(cluster, "--json", "status", T)).stdout)
    assert status["status"] == "closed" and status["shards"] == 4
    assert {u["status"] for u in status["units"]} == {"done"}
    rolled = json.loads(ok(ta_cli(cluster, "--json", "rollback", T, "--to", "BP0")).stdout)
    assert rolled["differences"] == []
    ok(ta_cli(cluster, "clear", T, "--out", str(tmp_path / "again")))
    assert {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir()} == expected


def test_a_killed_clearing_process_resumes_to_the_same_day(cluster, tmp_path) -> None:
    """Goal: SIGKILL the clearing process at random points (seeded; the seed
    is printed), start it again each time: the day ends with the same files
    and balances as an uninterrupted run of the same inputs."""
    seed = int(os.environ.get("TA_CRASH_SEED", random.randrange(1 << 30)))
    print(f"TA_CRASH_SEED={seed}")
    rng = random.Random(seed)
    date = "20270104"
    doc = bench.generate(tmp_path / "in", orders_n=400, accounts_n=60, date=date, seed=seed)
    # The uninterrupted run, on the twin.
    twin = TwinStore()
    reference.load(twin, reference.parse(doc))
    expected_clearing = Clearing(twin)
    expected_clearing.clear(bench.previous_day(date), shards=4)
    expected_clearing.import_dir(date, tmp_path / "in", shards=4)
    expected_clearing.clear(date, shards=4)
    expected_files = expected_clearing.render(date)
    expected_balances = all_balances(expected_clearing, date)

    ref = tmp_path / "reference.json"
    ref.write_text(json.dumps(doc))
    ok(ta_cli(cluster, "load", str(ref)))
    ok(ta_cli(cluster, "clear", bench.previous_day(date), "--shards", "4"))
    ok(ta_cli(cluster, "import", date, str(tmp_path / "in"), "--shards", "4"))
    points = sorted(rng.sample(CRASH_POINTS, 4), key=CRASH_POINTS.index)
    for point in points:
        result = ta_cli(cluster, "clear", date, "--out", str(tmp_path / "out"),
                        env={"TA_CRASH_AFTER": point})  # fmt: skip
        assert result.returncode == -9, f"seed {seed}: no kill at {point}: {result.stdout}{result.stderr}"
    ok(ta_cli(cluster, "clear", date, "--out", str(tmp_path / "out")))
    store = ClusterStore(list(cluster.addresses.values()))
    try:
        clearing = Clearing(store)
        assert clearing.day(date).status == "closed"
        assert clearing.render(date) == expected_files, f"seed {seed}"
        assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == expected_files
        assert all_balances(clearing, date) == expected_balances, f"seed {seed}"
    finally:
        store.close()


def all_balances(clearing: Clearing, date: str) -> dict:
    ref = clearing.reference(date)
    return {k: (v[1] - v[3], v[0], v[2]) for k, v in clearing.balances(clearing._all_accounts(date, ref)).items()}
