"""Topology files: the three shipped ones load; mistakes are refused with the file and the fix.

Goal: one city with three data centers, two cities with three data centers,
and three cities with five replicas (2 + 2 + 1) are shipped and valid; a
topology with a duplicate address, a bad id or an unknown primary zone is
refused naming what is wrong.
"""

from __future__ import annotations

from collections import Counter

import pytest

from cluster import topology as topo


def test_shipped_topologies():
    one = topo.load("one-city")
    assert len(one.replicas) == 3 and len({r.city for r in one.replicas}) == 1
    assert len({r.data_center for r in one.replicas}) == 3
    two = topo.load("two-cities")
    assert len(two.replicas) == 3 and len({r.city for r in two.replicas}) == 2
    assert len({r.data_center for r in two.replicas}) == 3
    three = topo.load("three-cities")
    assert sorted(Counter(r.city for r in three.replicas).values()) == [1, 2, 2]
    for t in (one, two, three):
        assert t.cluster_id and t.primary_zone
        assert all(r.host == "127.0.0.1" == r.peer_host for r in t.replicas)
        assert [r.number for r in t.replicas] == list(range(1, len(t.replicas) + 1))


BASE = """cluster_id = "x"
primary_zone = "{zone}"
""" + "".join(
    f"""
[[replica]]
id = "{{id{i}}}"
city = "c"
data_center = "d{i}"
address = "{{addr{i}}}"
metrics_port = {9000 + i}
data_dir = "data/r{i}"
"""
    for i in range(1, 4)
)


def _write(tmp_path, **over):
    values = {"zone": "d1", "id1": "r1", "id2": "r2", "id3": "r3",
              "addr1": "127.0.0.1:1", "addr2": "127.0.0.1:2", "addr3": "127.0.0.1:3"}
    values.update(over)
    path = tmp_path / "t.toml"
    path.write_text(BASE.format(**values))
    return path


def test_valid_custom_topology(tmp_path):
    t = topo.load(_write(tmp_path))
    assert t.replica("r2").address == "127.0.0.1:2"
    assert t.with_data_root(tmp_path).replica("r3").data_dir == tmp_path / "r3"


def test_peer_address_defaults_to_the_port_plus_100_and_may_be_given(tmp_path):
    t = topo.load(_write(tmp_path))
    assert t.replica("r2").peer_address == "127.0.0.1:102"
    assert (t.replica("r2").peer_host, t.replica("r2").peer_port) == ("127.0.0.1", 102)
    path = tmp_path / "t.toml"
    path.write_text(path.read_text().replace('address = "127.0.0.1:3"\n',
                                             'address = "127.0.0.1:3"\npeer_address = "127.0.0.1:7777"\n'))
    assert topo.load(path).replica("r3").peer_address == "127.0.0.1:7777"
    for bad, why in (('"127.0.0.1:2"', "addresses must be distinct"), ('"nohost"', "peer_address must be host:port"),
                     ("7", "peer_address must be host:port")):
        path.write_text(_write(tmp_path).read_text().replace(
            'address = "127.0.0.1:3"\n', f'address = "127.0.0.1:3"\npeer_address = {bad}\n'))
        with pytest.raises(topo.TopologyError, match=why):
            topo.load(path)


@pytest.mark.parametrize("over, why", [
    ({"addr2": "127.0.0.1:1"}, "addresses must be distinct"),
    ({"id2": "two"}, "id must look like r1"),
    ({"id2": "r1"}, "ids must be distinct"),
    ({"zone": "mars"}, "names no city or data center"),
    ({"addr3": "nohost"}, "host:port"),
])
def test_mistakes_are_refused_with_the_cause(tmp_path, over, why):
    with pytest.raises(topo.TopologyError, match=why):
        topo.load(_write(tmp_path, **over))


def test_unknown_topology_names_the_shipped_ones():
    with pytest.raises(topo.TopologyError, match="one-city"):
        topo.load("no-such-topology")


def test_joining_replicas_primary_zone_list_and_snapshot_settings(tmp_path):
    """A ``join = true`` replica is not an initial voter (nor counted in 1/3/5/7);
    primary_zone may be an ordered list; [snapshot] and primary_hold_ms are read."""
    path = tmp_path / "t.toml"
    path.write_text(_write(tmp_path).read_text().replace('primary_zone = "d1"', 'primary_zone = ["d2", "c"]') + """
[timing]
primary_hold_ms = 500

[snapshot]
every_slots = 100
keep_slots = 10

[[replica]]
id = "r4"
city = "c"
data_center = "d4"
address = "127.0.0.1:4"
metrics_port = 9004
data_dir = "data/r4"
join = true
""")
    t = topo.load(path)
    assert t.initial_voters == (1, 2, 3) and t.replica("r4").join
    assert t.primary_zones == ("d2", "c") and t.primary_zone == "d2"
    assert t.zone_rank(t.replica("r2")) == 0 and t.zone_rank(t.replica("r1")) == 1
    assert (t.primary_hold_ms, t.snapshot_every_slots, t.snapshot_keep_slots) == (500, 100, 10)
    assert topo.load(_write(tmp_path)).zone_rank(topo.load(_write(tmp_path)).replica("r2")) is None
