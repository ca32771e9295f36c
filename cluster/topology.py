"""Topology files: which replicas form a cluster, where they run, and where they keep data.

A topology is a TOML file::

    cluster_id = "one-city"           # carried in every peer frame
    primary_zone = "fra-a"            # a data center name (or city) leadership prefers

    [timing]                          # optional
    tick_ms = 10                      # the consensus clock period
    primary_hold_ms = 3000            # a caught-up primary-zone replica waits
                                      # this long before leadership moves to it

    [snapshot]                        # optional: log compaction
    every_slots = 4096                # compact once this many applied slots
    keep_slots = 512                  # are in the log, keeping the newest ones

    [tls]                             # optional: mutual TLS (see cluster.certs)
    cert_dir = "data/one-city/certs"  # ca.pem, <id>.pem/.key, admin.*, client.*;
                                      # relative paths: to the working directory

    [[replica]]
    id = "r1"                         # "r" + a number 1..65535 (the consensus id)
    city = "frankfurt"
    data_center = "fra-a"
    address = "127.0.0.1:7101"        # gRPC: public API, admin calls, snapshot transfer
    peer_address = "127.0.0.1:7111"   # consensus messages from the other replicas
                                      # (optional; default: the address's port + 100)
    metrics_port = 9101               # Prometheus metrics over HTTP
    data_dir = "data/one-city/r1"     # relative paths: to the working directory
    join = false                      # true: not an initial voter; the replica
                                      # joins a running cluster as a learner

``primary_zone`` may also be an ordered list (most preferred first).
Replicas with ``join = true`` are where a running cluster finds the address
of a replica being added (``ledgerctl members add r4``): the operator lists
the new replica in the topology file first, and replicas re-read the file
when they meet a member they do not know. The 1/3/5/7 rule counts only the
initial voters.

Without a ``[tls]`` table the cluster runs in plaintext, which the replicas
accept only when every address is loopback (``Topology.all_loopback``); every
shipped topology names a cert dir, and ``python -m cluster up`` makes the
certificates there on first use (``python -m cluster certs``).

``load`` validates everything and raises ``TopologyError`` naming the file,
the replica and the fix.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "topologies"
TICK_MS_DEFAULT = 10
PRIMARY_HOLD_MS_DEFAULT = 3000
PEER_PORT_OFFSET_DEFAULT = 100  # peer_address when a replica table names none: port + this
SNAPSHOT_EVERY_SLOTS_DEFAULT = 4096
SNAPSHOT_KEEP_SLOTS_DEFAULT = 512


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class ReplicaSpec:
    id: str
    number: int  # the consensus replica id
    city: str
    data_center: str
    address: str
    metrics_port: int
    data_dir: Path
    join: bool = False  # not an initial voter: joins a running cluster as a learner
    peer_address: str = ""  # where peers send consensus messages; "" = default_peer_address

    def __post_init__(self) -> None:
        if not self.peer_address:
            object.__setattr__(self, "peer_address", default_peer_address(self.address))

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def peer_host(self) -> str:
        return self.peer_address.rsplit(":", 1)[0]

    @property
    def peer_port(self) -> int:
        return int(self.peer_address.rsplit(":", 1)[1])

    @property
    def zone(self) -> str:
        return f"{self.city}/{self.data_center}"


@dataclass(frozen=True)
class Topology:
    path: Path
    cluster_id: str
    primary_zone: str
    tick_ms: int
    replicas: tuple[ReplicaSpec, ...]
    tls_cert_dir: Path | None = None  # None: plaintext (loopback only)
    primary_zones: tuple[str, ...] = ()  # ordered preference; primary_zone is the first
    primary_hold_ms: int = PRIMARY_HOLD_MS_DEFAULT
    snapshot_every_slots: int = SNAPSHOT_EVERY_SLOTS_DEFAULT
    snapshot_keep_slots: int = SNAPSHOT_KEEP_SLOTS_DEFAULT

    @property
    def initial_voters(self) -> tuple[int, ...]:
        """Consensus ids of the cluster's first membership (replicas without ``join``)."""
        return tuple(r.number for r in self.replicas if not r.join)

    def zone_rank(self, spec: ReplicaSpec) -> int | None:
        """0 for the most preferred zone, 1 for the next...; None outside every primary zone."""
        for i, zone in enumerate(self.primary_zones or ((self.primary_zone,) if self.primary_zone else ())):
            if zone in (spec.city, spec.data_center):
                return i
        return None

    @property
    def all_loopback(self) -> bool:
        """True if every replica address is a loopback address (plaintext is allowed then)."""
        return all(is_loopback_host(r.host) and is_loopback_host(r.peer_host) for r in self.replicas)

    def replica(self, replica_id: str) -> ReplicaSpec:
        for r in self.replicas:
            if r.id == replica_id:
                return r
        ids = ", ".join(r.id for r in self.replicas)
        raise TopologyError(f"{self.path}: no replica {replica_id!r} (replicas: {ids})")

    def by_number(self, number: int) -> ReplicaSpec | None:
        for r in self.replicas:
            if r.number == number:
                return r
        return None

    def with_data_root(self, root: Path) -> "Topology":
        """The same topology with every data directory moved to ``root/<id>``."""
        replicas = tuple(
            replace(r, data_dir=root / r.id)
            for r in self.replicas
        )
        return replace(self, replicas=replicas)


def default_peer_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + PEER_PORT_OFFSET_DEFAULT}" if port.isdigit() else ""


def is_loopback_host(host: str) -> bool:
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_ID = re.compile(r"^r([1-9][0-9]{0,4})$")


def resolve(name_or_path: str | Path) -> Path:
    """A path, or the name of a shipped topology ("one-city", "three-cities.toml")."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for candidate in (SHIPPED / p, SHIPPED / f"{p}.toml"):
        if candidate.exists():
            return candidate
    shipped = ", ".join(sorted(x.stem for x in SHIPPED.glob("*.toml")))
    raise TopologyError(f"topology {name_or_path!r} not found (give a file path, or one of: {shipped})")


def load(name_or_path: str | Path) -> Topology:
    path = resolve(name_or_path)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{path}: not valid TOML: {e}") from None

    def need(ok: bool, why: str) -> None:
        if not ok:
            raise TopologyError(f"{path}: {why}")

    cluster_id = doc.get("cluster_id")
    need(isinstance(cluster_id, str) and 0 < len(cluster_id) <= 64, "cluster_id must be a string of 1..64 characters")
    primary_zone = doc.get("primary_zone", "")
    if isinstance(primary_zone, list):
        need(all(isinstance(z, str) and z for z in primary_zone), "primary_zone list must hold zone names")
        primary_zones = tuple(primary_zone)
    else:
        need(isinstance(primary_zone, str), "primary_zone must be a string or a list of strings")
        primary_zones = (primary_zone,) if primary_zone else ()
    primary_zone = primary_zones[0] if primary_zones else ""
    timing = doc.get("timing", {})
    tick_ms = timing.get("tick_ms", TICK_MS_DEFAULT)
    need(isinstance(tick_ms, int) and 1 <= tick_ms <= 1000, "timing.tick_ms must be an integer 1..1000")
    hold_ms = timing.get("primary_hold_ms", PRIMARY_HOLD_MS_DEFAULT)
    need(isinstance(hold_ms, int) and 0 <= hold_ms <= 3_600_000, "timing.primary_hold_ms must be 0..3600000")
    snap = doc.get("snapshot", {})
    every = snap.get("every_slots", SNAPSHOT_EVERY_SLOTS_DEFAULT)
    keep = snap.get("keep_slots", SNAPSHOT_KEEP_SLOTS_DEFAULT)
    need(isinstance(every, int) and every >= 1, "snapshot.every_slots must be an integer >= 1")
    need(isinstance(keep, int) and keep >= 0, "snapshot.keep_slots must be an integer >= 0")
    raw = doc.get("replica")
    need(isinstance(raw, list), "there must be [[replica]] tables")
    voters = [r for r in raw if not r.get("join", False)]
    need(len(voters) in (1, 3, 5, 7), "there must be 1, 3, 5 or 7 [[replica]] tables without join = true")
    replicas = []
    for i, r in enumerate(raw):
        where = f"replica #{i + 1}"
        rid = r.get("id")
        m = _ID.match(rid) if isinstance(rid, str) else None
        need(m is not None, f"{where}: id must look like r1, r2, ... (got {rid!r})")
        where = f"replica {rid}"
        for key in ("city", "data_center", "address", "data_dir"):
            need(isinstance(r.get(key), str) and r[key], f"{where}: {key} must be a non-empty string")
        host, _, port = r["address"].rpartition(":")
        need(bool(host) and port.isdigit() and 0 < int(port) < 65536, f"{where}: address must be host:port")
        peer_address = r.get("peer_address", default_peer_address(r["address"]))
        need(isinstance(peer_address, str), f"{where}: peer_address must be host:port")
        phost, _, pport = peer_address.rpartition(":")
        need(bool(phost) and pport.isdigit() and 0 < int(pport) < 65536,
             f"{where}: peer_address must be host:port (default: the address's port + {PEER_PORT_OFFSET_DEFAULT})")
        mp = r.get("metrics_port")
        need(isinstance(mp, int) and 0 < mp < 65536, f"{where}: metrics_port must be a port number")
        replicas.append(
            ReplicaSpec(rid, int(m.group(1)), r["city"], r["data_center"], r["address"], mp, Path(r["data_dir"]),
                        join=bool(r.get("join", False)), peer_address=peer_address)
        )
    ids = [r.id for r in replicas]
    need(len(set(ids)) == len(ids), f"replica ids must be distinct: {ids}")
    addrs = [a for r in replicas for a in (r.address, r.peer_address)]
    need(len(set(addrs)) == len(addrs), "addresses must be distinct (every replica's address and peer_address)")
    ports = [r.metrics_port for r in replicas]
    need(len(set(ports)) == len(ports), "metrics ports must be distinct")
    zones = {r.data_center for r in replicas} | {r.city for r in replicas}
    for zone in primary_zones:
        need(zone in zones, f"primary_zone {zone!r} names no city or data center")
    tls = doc.get("tls", {})
    need(isinstance(tls, dict), "[tls] must be a table")
    unknown = set(tls) - {"cert_dir"}
    need(not unknown, f"[tls]: unknown keys {sorted(unknown)} (known: cert_dir)")
    cert_dir = tls.get("cert_dir")
    need(cert_dir is None or (isinstance(cert_dir, str) and cert_dir), "[tls] cert_dir must be a non-empty string")
    return Topology(path, cluster_id, primary_zone, tick_ms, tuple(replicas), Path(cert_dir) if cert_dir else None,
                    primary_zones, hold_ms, every, keep)
