"""A cluster under test: replica processes, the links between them, and their fault controls.

Each replica gets its own view of the topology (``<run>/topo-<id>.toml``):
itself at the addresses it listens on, every peer at the addresses of the
link that carries its traffic to that peer. So links can be delayed or cut
one by one, and in one direction, without any change to the server. A link
between replicas is two proxies, one for the peer's gRPC address (snapshots,
admin calls) and one for its peer address (consensus messages); a fault on
the link acts on both.

Two networks:

``LoopbackNetwork`` (no root needed)
    every replica listens on 127.0.0.1:<topology port>; one Toxiproxy proxy
    per directed link ``rI-rJ`` (and ``client-rJ`` for the clients; plus
    ``rI-rJ-peer`` for the peer address), with
    latency toxics for the zones' RTT; cuts disable proxies. Driven through
    toxiproxy-python against ``chaos.toxiproxy_server`` (started here) or a
    real Toxiproxy server given by URL.

``NetnsNetwork`` (root)
    every replica on its own namespace host (``chaos.netns``), with a delay
    stage per host (a ``chaos.toxiproxy_server`` whose proxies live in the
    host and whose API listens in the root namespace); cuts are nftables
    rules, toxics go through the Toxiproxy API of the source host's stage.

Replica processes run with the fault shim (``chaos/faultshim.c``) preloaded,
which gives the clock and fsync nemeses a handle on them.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from chaos import netns, zones
from chaos.toxi import ToxiproxyAPI, ToxiproxyError
from cluster import topology as topo
from cluster.__main__ import pid_runs_replica

ROOT = Path(__file__).resolve().parent.parent
SHIM_SOURCE = Path(__file__).resolve().parent / "faultshim.c"
# Loopback ports: one block of 1000 per run, away from the shipped topologies' ports. In a block:
# proxies at +100 * source number + destination number (client: 0), peer-address proxies at
# +100 * source number + 50 + destination number, replicas at +900 + number, their peer
# addresses at +920 + number, metrics at +950 + number. A run takes the first free block from
# one its PID picks, so two runs on one machine do not meet.
LOOPBACK_BLOCKS = tuple(20000 + 1000 * k for k in range(10))
LOOPBACK_REPLICA_OFFSET = 900
LOOPBACK_PEER_OFFSET = 920
LOOPBACK_METRICS_OFFSET = 950
LOOPBACK_PEER_LINK_OFFSET = 50
NETNS_PEER_LINK_OFFSET = 500  # netns: peer-address proxies at PEER_PORT_BASE + this + number
PIDS_DIR = ROOT / "data" / "chaos" / "pids"  # <owner pid>.txt: "<pid> <command line marker>" per line
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def build_shim(out_dir: Path) -> Path | None:
    """Compile the fault shim; None when no C compiler is around (clock/fsync nemeses then skip)."""
    out = out_dir / "faultshim.so"
    try:
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(out), str(SHIM_SOURCE), "-ldl"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out


def pids_file(owner: int | None = None) -> Path:
    return PIDS_DIR / f"{owner or os.getpid()}.txt"


def remember_pid(pid: int, marker: str) -> None:
    """Record a process this run started (in this process's own file), for ``python -m chaos
    cleanup`` once this process is gone."""
    PIDS_DIR.mkdir(parents=True, exist_ok=True)
    with open(pids_file(), "a") as f:
        f.write(f"{pid} {marker}\n")


def forget_pids() -> None:
    """This process's runs are over and their processes stopped: nothing left to clean up."""
    pids_file().unlink(missing_ok=True)


def _ports_free(ports: list[int]) -> bool:
    import socket

    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_loopback_block(numbers: list[int]) -> int:
    """The first loopback port block, from one this PID picks, whose ports are all free."""
    k0 = os.getpid() % len(LOOPBACK_BLOCKS)
    for i in range(len(LOOPBACK_BLOCKS)):
        base = LOOPBACK_BLOCKS[(k0 + i) % len(LOOPBACK_BLOCKS)]
        ports = [base + off + n for n in numbers
                 for off in (LOOPBACK_REPLICA_OFFSET, LOOPBACK_PEER_OFFSET, LOOPBACK_METRICS_OFFSET)]
        ports += [base + s * 100 + d for s in [0] + numbers for d in numbers if s != d]
        ports += [base + s * 100 + LOOPBACK_PEER_LINK_OFFSET + d for s in numbers for d in numbers if s != d]
        if _ports_free(ports):
            return base
    raise RuntimeError("no free loopback port block for a chaos run (ports 20000-29999 busy)")


def make_certs(cert_dir: Path, cluster_id: str, hosts: dict[str, tuple[str, ...]]) -> None:
    """A cluster CA, admin and client certificates, and replica certificates naming every host
    a replica is dialled by: its own address and the loopback address of the link proxies."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from cluster import certs

    certs.generate(cluster_id, {rid: hs[0] for rid, hs in hosts.items()}, cert_dir)
    ca_cert = x509.load_pem_x509_certificate((cert_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((cert_dir / "ca.key").read_bytes(), password=None)
    for rid, hs in hosts.items():
        cert, key = certs.issue(ca_cert, ca_key, certs.Identity(cluster_id, "replica", rid), hs)
        p = certs.paths(cert_dir, rid)
        fd = os.open(p.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        p.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_topology(path: Path, topology: topo.Topology, addresses: dict[str, str], data_root: Path,
                   metrics_ports: dict[str, int], cert_dir: Path | None = None,
                   peer_addresses: dict[str, str] | None = None) -> None:
    lines = [f'cluster_id = "{topology.cluster_id}"', f'primary_zone = "{topology.primary_zone}"',
             "", "[timing]", f"tick_ms = {topology.tick_ms}", ""]
    if cert_dir is not None:
        lines += ["[tls]", f'cert_dir = "{cert_dir}"', ""]
    for r in topology.replicas:
        lines += ["[[replica]]", f'id = "{r.id}"', f'city = "{r.city}"', f'data_center = "{r.data_center}"',
                  f'address = "{addresses[r.id]}"',
                  f'peer_address = "{(peer_addresses or {}).get(r.id) or r.peer_address}"',
                  f"metrics_port = {metrics_ports[r.id]}",
                  f'data_dir = "{data_root / r.id}"', *(["join = true"] if r.join else []), ""]
    path.write_text("\n".join(lines))


SPARE_PORT_OFFSET = 50


def with_spares(topology: topo.Topology, replaced: list[str]) -> tuple[topo.Topology, list[tuple[str, str]]]:
    """The topology plus one spare per replacement: a ``join = true`` replica in the zone of the
    replica it will replace (same city and data center), numbered after the others. Returns the
    topology and the (old, new) pairs."""
    from dataclasses import replace as dc_replace

    replicas = list(topology.replicas)
    pairs = []
    for old in replaced:
        spec = topology.replica(old)
        n = max(r.number for r in replicas) + 1
        host, port = spec.address.rsplit(":", 1)
        offset = SPARE_PORT_OFFSET * (len(pairs) + 1)
        replicas.append(dc_replace(spec, id=f"r{n}", number=n, join=True,
                                   address=f"{host}:{int(port) + offset}",
                                   peer_address=f"{spec.peer_host}:{spec.peer_port + offset}",
                                   metrics_port=spec.metrics_port + offset,
                                   data_dir=spec.data_dir.parent / f"r{n}"))
        pairs.append((old, f"r{n}"))
    return dc_replace(topology, replicas=tuple(replicas)), pairs


def _link_proxies(network, src: str, dst: str, name: str) -> list[tuple[str, str, str]]:
    """The proxies of the link ``src`` -> ``dst`` as (name, listen, upstream): the one for the
    gRPC address, and between replicas ``<name>-peer`` for the peer address."""
    proxies = [(name, network.peer_address(src, dst), network.listen_address(dst))]
    if src != "client":
        proxies.append((f"{name}-peer", network.peer_link_address(src, dst), network.listen_peer_address(dst)))
    return proxies


def _zone(r: topo.ReplicaSpec) -> tuple[str, str]:
    return (r.city, r.data_center)


def client_zone(topology: topo.Topology) -> tuple[str, str]:
    """Clients sit in the primary zone (a data center or a city name)."""
    for r in topology.replicas:
        if topology.primary_zone in (r.data_center, r.city):
            return _zone(r)
    return _zone(topology.replicas[0])


# ---------------------------------------------------------------- networks


class LoopbackNetwork:
    kind = "loopback"

    def __init__(self, topology: topo.Topology, run_dir: Path, toxiproxy_url: str | None = None) -> None:
        self.topology = topology
        self.run_dir = run_dir
        self.external = toxiproxy_url is not None
        self.server: subprocess.Popen | None = None
        self.url = toxiproxy_url
        self.api: ToxiproxyAPI | None = None
        self.links: dict[tuple[str, str], str] = {}  # (src, dst) -> proxy listen address
        self.cut: set[tuple[str, str]] = set()
        self.base = pick_loopback_block([r.number for r in topology.replicas])
        # proxy names carry the run's owner: two runs may share one (real) Toxiproxy server
        self.tag = f"{os.getpid()}"

    def _port(self, src: str, dst: str) -> int:
        s = 0 if src == "client" else self.topology.replica(src).number
        return self.base + s * 100 + self.topology.replica(dst).number

    def _proxies(self, src: str, dst: str) -> list[tuple[str, str, str]]:
        return _link_proxies(self, src, dst, f"chaos{self.tag}-{src}-{dst}")

    def _names(self, src: str, dst: str) -> list[str]:
        return [name for name, _, _ in self._proxies(src, dst)]

    def listen_address(self, rid: str) -> str:
        return f"127.0.0.1:{self.base + LOOPBACK_REPLICA_OFFSET + self.topology.replica(rid).number}"

    def listen_peer_address(self, rid: str) -> str:
        return f"127.0.0.1:{self.base + LOOPBACK_PEER_OFFSET + self.topology.replica(rid).number}"

    def peer_link_address(self, src: str, dst: str) -> str:
        """Where ``src`` sends consensus messages for ``dst``."""
        s, d = self.topology.replica(src).number, self.topology.replica(dst).number
        return f"127.0.0.1:{self.base + s * 100 + LOOPBACK_PEER_LINK_OFFSET + d}"

    def metrics_port(self, rid: str) -> int:
        return self.base + LOOPBACK_METRICS_OFFSET + self.topology.replica(rid).number

    def peer_address(self, src: str, dst: str) -> str:
        return f"127.0.0.1:{self._port(src, dst)}"

    def client_addresses(self) -> list[str]:
        return [self.peer_address("client", r.id) for r in self.topology.replicas]

    def wrap(self, host: str, argv: list[str]) -> list[str]:
        return argv

    def start(self) -> None:
        if not self.external:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "chaos.toxiproxy_server", "--port", "0"], stdout=subprocess.PIPE,
                stderr=open(self.run_dir / "toxiproxy.log", "ab"), text=True, cwd=str(ROOT),
                start_new_session=True,
            )
            ready, _, _ = select.select([self.server.stdout], [], [], START_TIMEOUT_S)
            if not ready:
                raise ToxiproxyError("the proxy server did not start")
            self.url = json.loads(self.server.stdout.readline())["api"]
            remember_pid(self.server.pid, "chaos.toxiproxy_server")
        self.api = ToxiproxyAPI(self.url)
        rtts = {}
        for src in ["client"] + [r.id for r in self.topology.replicas]:
            zsrc = client_zone(self.topology) if src == "client" else _zone(self.topology.replica(src))
            for r in self.topology.replicas:
                if r.id == src:
                    continue
                self.links[(src, r.id)] = self.peer_address(src, r.id)
                rtt = zones.rtt_ms(zsrc, _zone(r))
                rtts[f"{src}-{r.id}"] = rtt
                for name, listen, upstream in self._proxies(src, r.id):
                    self.api.destroy(name)
                    self.api.create(name, listen, upstream)
                    for t in zones.latency_toxics(rtt):
                        attrs = dict(t["attributes"])
                        if self.external:  # a real Toxiproxy takes whole milliseconds
                            attrs["latency"] = max(1, round(attrs["latency"]))
                        self.api.add_toxic(name, t["name"], "latency", attrs, stream=t["stream"])
        self.rtts = rtts

    def block(self, src: str, dst: str) -> None:
        if (src, dst) in self.links and (src, dst) not in self.cut:
            for proxy in self._names(src, dst):
                self.api.set_enabled(proxy, False)
            self.cut.add((src, dst))

    def heal(self) -> None:
        for src, dst in sorted(self.cut):
            for proxy in self._names(src, dst):
                self.api.set_enabled(proxy, True)
        self.cut.clear()

    def toxic(self, src: str, dst: str, name: str, kind: str, attributes: dict, stream: str = "downstream") -> None:
        for proxy in self._names(src, dst):
            self.api.add_toxic(proxy, name, kind, attributes, stream=stream)

    def untoxic(self, src: str, dst: str, name: str) -> None:
        for proxy in self._names(src, dst):
            self.api.remove_toxic(proxy, name)

    def stop(self) -> None:
        if self.api is not None:
            try:
                for name in [n for s, d in self.links for n in self._names(s, d)]:
                    self.api.destroy(name)
            except ToxiproxyError:
                pass
            self.api.close()
            self.api = None
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            self.server = None


class NetnsNetwork:
    kind = "netns"

    def __init__(self, topology: topo.Topology, run_dir: Path) -> None:
        self.topology = topology
        self.run_dir = run_dir
        self.ns = netns.Namespaces({r.id: r.number for r in topology.replicas})
        self.delay_stages: list[subprocess.Popen] = []
        self.apis: dict[str, ToxiproxyAPI] = {}  # host -> its delay stage's Toxiproxy API
        self.rtts: dict[str, float] = {}
        self.cut: set[tuple[str, str]] = set()

    def listen_address(self, rid: str) -> str:
        return f"{self.ns.hosts[rid].address}:{self.topology.replica(rid).port}"

    def metrics_port(self, rid: str) -> int:
        return self.topology.replica(rid).metrics_port

    def peer_address(self, src: str, dst: str) -> str:
        return f"127.0.0.1:{netns.PEER_PORT_BASE + self.topology.replica(dst).number}"

    def listen_peer_address(self, rid: str) -> str:
        return f"{self.ns.hosts[rid].address}:{self.topology.replica(rid).peer_port}"

    def peer_link_address(self, src: str, dst: str) -> str:
        """Where ``src`` sends consensus messages for ``dst``."""
        return f"127.0.0.1:{netns.PEER_PORT_BASE + NETNS_PEER_LINK_OFFSET + self.topology.replica(dst).number}"

    def client_addresses(self) -> list[str]:
        return [self.peer_address("client", r.id) for r in self.topology.replicas]

    def wrap(self, host: str, argv: list[str]) -> list[str]:
        return netns.ns_exec(self.ns.hosts[host].ns) + argv

    def start(self) -> None:
        self.ns.create()
        for src in ["client"] + [r.id for r in self.topology.replicas]:
            zsrc = client_zone(self.topology) if src == "client" else _zone(self.topology.replica(src))
            proxies = []
            for r in self.topology.replicas:
                if r.id == src:
                    continue
                rtt = zones.rtt_ms(zsrc, _zone(r))
                self.rtts[f"{src}-{r.id}"] = rtt
                proxies += [{"name": name, "listen": listen, "upstream": upstream,
                             "toxics": zones.latency_toxics(rtt)}
                            for name, listen, upstream in _link_proxies(self, src, r.id, f"{src}-{r.id}")]
            config = self.run_dir / f"links-{src}.json"
            config.write_text(json.dumps(proxies, indent=1))
            # the API in the root namespace (any free port on 127.0.0.1), the proxies in the host's
            p = subprocess.Popen(
                [sys.executable, "-m", "chaos.toxiproxy_server", "--port", "0", "--config", str(config),
                 "--netns", self.ns.hosts[src].ns],
                stdout=subprocess.PIPE, stderr=open(self.run_dir / f"links-{src}.log", "ab"), text=True,
                cwd=str(ROOT), env=_env(), start_new_session=True,
            )
            self.delay_stages.append(p)
            remember_pid(p.pid, "chaos.toxiproxy_server")
            ready, _, _ = select.select([p.stdout], [], [], START_TIMEOUT_S)
            if not ready:
                raise netns.NetnsError(f"the delay stage of {src} did not start; see links-{src}.log")
            line = p.stdout.readline()
            if not line:
                raise netns.NetnsError(f"the delay stage of {src} exited; see links-{src}.log")
            self.apis[src] = ToxiproxyAPI(json.loads(line)["api"])

    def block(self, src: str, dst: str) -> None:
        """``src`` cannot open connections to ``dst``'s replica ports (clients: to the replica)."""
        if (src, dst) in self.cut:
            return
        self.ns.block(src, dst, self.topology.replica(dst).port)
        if src != "client":
            self.ns.block(src, dst, self.topology.replica(dst).peer_port)
        self.cut.add((src, dst))

    def heal(self) -> None:
        self.ns.heal()
        self.cut.clear()

    def toxic(self, src: str, dst: str, name: str, kind: str, attributes: dict, stream: str = "downstream") -> None:
        """A toxic on the link ``src`` -> ``dst``, in the delay stage of ``src``'s host (on top of the
        zone latency toxics)."""
        for proxy in self._names(src, dst):
            self.apis[src].add_toxic(proxy, name, kind, attributes, stream=stream)

    def untoxic(self, src: str, dst: str, name: str) -> None:
        for proxy in self._names(src, dst):
            self.apis[src].remove_toxic(proxy, name)

    def _names(self, src: str, dst: str) -> list[str]:
        return [name for name, _, _ in _link_proxies(self, src, dst, f"{src}-{dst}")]

    def stop(self) -> None:
        for api in self.apis.values():
            api.close()
        self.apis.clear()
        for p in self.delay_stages:
            p.terminate()
        for p in self.delay_stages:
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.delay_stages.clear()
        self.ns.delete()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---------------------------------------------------------------- the cluster


class ChaosCluster:
    """Replica processes of one topology on one network; start/kill/pause/restart them.

    ``ids`` are the current voters: the topology's initial ones, and after a replacement
    (``replace``) the new replica instead of the old. Spares (``join = true`` replicas of the
    topology, see ``with_spares``) have hosts, links and certificates from the start but run
    only once a replacement starts them."""

    def __init__(self, topology: topo.Topology, network, run_dir: Path, shim: Path | None,
                 spares: list[tuple[str, str]] | None = None) -> None:
        self.topology = topology
        self.network = network
        self.run_dir = run_dir
        self.data_root = run_dir / "data"
        self.shim = shim
        self.procs: dict[str, subprocess.Popen] = {}
        self.paused: set[str] = set()
        self.ids = [r.id for r in topology.replicas if not r.join]
        self.spares = list(spares or [])  # (old, new) replacements still to come
        self.retired: list[str] = []  # replaced for good: never restarted
        self.cert_dir: Path | None = None  # set by prepare() when the cluster uses TLS

    def fault_file(self, rid: str) -> Path:
        return self.run_dir / f"faults-{rid}.txt"

    def topology_file(self, rid: str) -> Path:
        return self.run_dir / f"topo-{rid}.toml"

    def prepare(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        if self.network.kind == "netns":
            # replicas on non-loopback addresses must use mutual TLS; the link proxies pass it through
            self.cert_dir = self.run_dir / "certs"
            make_certs(self.cert_dir, self.topology.cluster_id,
                       {r.id: (self.network.listen_address(r.id).rsplit(":", 1)[0], "127.0.0.1")
                        for r in self.topology.replicas})
        for r in self.topology.replicas:
            addresses = {o.id: (self.network.listen_address(o.id) if o.id == r.id
                                else self.network.peer_address(r.id, o.id)) for o in self.topology.replicas}
            peer_addresses = {o.id: (self.network.listen_peer_address(o.id) if o.id == r.id
                                     else self.network.peer_link_address(r.id, o.id))
                              for o in self.topology.replicas}
            write_topology(self.topology_file(r.id), self.topology, addresses, self.data_root,
                           {o.id: self.network.metrics_port(o.id) for o in self.topology.replicas},
                           self.cert_dir, peer_addresses)
            (self.data_root / r.id).mkdir(parents=True, exist_ok=True)
            self.fault_file(r.id).write_text("1.0 0 0 0 0\n")

    def start(self, rid: str, join: bool = False) -> None:
        if rid in self.retired:
            raise RuntimeError(f"{rid} was replaced; it must not come back with an empty disk")
        env = _env()
        if self.shim is not None:
            env["LD_PRELOAD"] = str(self.shim)
            env["CHAOS_FAULT_FILE"] = str(self.fault_file(rid))
        log = open(self.run_dir / f"{rid}.log", "ab")
        argv = [sys.executable, "-m", "ledger.server", "--topology", str(self.topology_file(rid)), "--id", rid]
        if join:
            argv.append("--join")
        self.procs[rid] = subprocess.Popen(
            self.network.wrap(rid, argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(ROOT), env=env, start_new_session=True,
        )
        log.close()
        remember_pid(self.procs[rid].pid, str(self.topology_file(rid)))
        self.paused.discard(rid)

    def start_all(self) -> None:
        self.prepare()
        for rid in self.ids:
            self.start(rid)

    def alive(self, rid: str) -> bool:
        p = self.procs.get(rid)
        return p is not None and p.poll() is None

    def signal(self, rid: str, sig: int) -> None:
        p = self.procs.get(rid)
        if p is not None and p.poll() is None and pid_runs_replica(p.pid, rid):
            os.kill(p.pid, sig)

    def kill(self, rid: str) -> None:
        p = self.procs.get(rid)
        if p is None:
            return
        self.signal(rid, signal.SIGCONT)
        self.signal(rid, signal.SIGKILL)
        try:
            p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self.paused.discard(rid)

    def pause(self, rid: str) -> None:
        self.signal(rid, signal.SIGSTOP)
        self.paused.add(rid)

    def resume(self, rid: str) -> None:
        self.signal(rid, signal.SIGCONT)
        self.paused.discard(rid)

    def restart(self, rid: str) -> None:
        self.kill(rid)
        self.start(rid)

    def wipe(self, rid: str) -> None:
        """Delete everything in the replica's data directory (the directory itself may be a mount)."""
        import shutil

        d = self.data_root / rid
        for child in d.iterdir() if d.exists() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def spare_for(self, old: str) -> str | None:
        for i, (o, new) in enumerate(self.spares):
            if o == old:
                del self.spares[i]
                return new
        return None

    def retire(self, old: str, new: str) -> None:
        """``new`` votes instead of ``old`` from now on; ``old`` is never started again."""
        self.retired.append(old)
        self.ids = [new if r == old else r for r in self.ids]

    def admin_argv(self, *args: str) -> list[str]:
        """``ledgerctl`` against the current voters, from the client host, with the admin identity."""
        addresses = ",".join(self.network.peer_address("client", r) for r in self.ids)
        tls = ["--cert-dir", str(self.cert_dir)] if self.cert_dir else []
        return self.network.wrap("client", [sys.executable, "-m", "ledger.ledgerctl", "--address", addresses,
                                            "--json", *tls, *args])

    def stop_all(self) -> None:
        for rid in list(self.procs):
            self.resume(rid)
            self.signal(rid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for rid, p in self.procs.items():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def exit_codes(self) -> dict[str, int | None]:
        return {rid: p.poll() for rid, p in self.procs.items() if rid not in self.retired}
