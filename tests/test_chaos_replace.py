"""Goal: the chaos suite's replacement scenario. Under the bank, register and set
workloads a replica is lost for good (SIGKILL, data directory deleted) and a
spare of the same zone, started from an empty directory, replaces it through
``ledgerctl members replace``; the checkers pass (nothing acknowledged lost), the
final members (without the lost replica) converge to one digest, and a fault
after the replacement (the leader killed) is survived by the new voter set.
Network namespaces as root, else loopback."""

from __future__ import annotations

import json

import pytest

from chaos import netns, runner
from chaos.cluster import with_spares
from cluster import topology as topo


def test_spares_take_the_zone_of_the_replica_they_replace():
    t = topo.load("three-cities")
    assert runner.replace_target(t, "replace") == "r5"
    assert runner.replace_target(t, "replace:r2") == "r2"
    with pytest.raises(ValueError):
        runner.replace_target(t, "replace:r9")
    t2, pairs = with_spares(t, ["r5", "r2"])
    assert pairs == [("r5", "r6"), ("r2", "r7")]
    r6, r7 = t2.replica("r6"), t2.replica("r7")
    assert (r6.city, r6.data_center, r6.join) == (t.replica("r5").city, t.replica("r5").data_center, True)
    assert (r7.city, r7.data_center, r7.join) == (t.replica("r2").city, t.replica("r2").data_center, True)
    assert len({r.address for r in t2.replicas}) == len(t2.replicas)
    assert t2.initial_voters == t.initial_voters


def test_zone_faults_after_a_replacement_take_the_current_members():
    import random
    from types import SimpleNamespace

    from chaos import nemesis
    from chaos.cluster import ChaosCluster

    t, pairs = with_spares(topo.load("two-cities"), ["r3"])
    cluster = ChaosCluster.__new__(ChaosCluster)
    cluster.topology, cluster.ids, cluster.spares, cluster.retired = t, ["r1", "r2", "r3"], pairs, []
    ctx = SimpleNamespace(cluster=cluster, rng=random.Random(1))
    assert nemesis.make("lose-city:paris:kill")._zone(ctx, "city") == ("paris", ["r3"])  # not the spare
    cluster.retire("r3", "r4")
    assert nemesis.make("lose-city:paris:kill")._zone(ctx, "city") == ("paris", ["r4"])  # not the lost one


@pytest.mark.timeout(110)
def test_a_lost_replica_is_replaced_under_load_and_nothing_is_lost(tmp_path):
    network = "netns" if netns.is_root() else "loopback"
    cfg = runner.RunConfig(topology="one-city", network=network, schedule=["replace", "kill:leader"],
                           fault_s=3.0, gap_s=1.5, warmup_s=1.0, post_heal_s=1.0, concurrency=2, seed=21,
                           out=tmp_path / "run")
    result = runner.execute(cfg)
    assert result["valid"], result["why_not_valid"]
    row = result["survival"][0]
    assert row["fault"] == "replace" and row["rpo_lost_acknowledged"] == 0
    assert row["replaced_after_s"] < 60
    windows = json.loads((tmp_path / "run" / "windows.json").read_text())
    assert windows[0]["members"] == {"r1": "voter", "r2": "voter", "r4": "voter"}
    # convergence was checked across the final members: r3 is gone, r4 holds the same state
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    ids = sorted(s["id"] for s in final["statuses"].values() if s)
    assert ids == ["r1", "r2", "r4"]
    assert len({s["state_digest"] for s in final["statuses"].values()}) == 1
    assert not list((tmp_path / "run" / "data" / "r3").iterdir())  # deleted, never restarted
    assert result["survival"][1]["writes_continued"]
