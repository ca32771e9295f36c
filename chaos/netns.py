"""Hosts as network namespaces: one per replica, one for the clients, joined by a switch.

Layout (every name starts with ``PREFIX``; every address is in 10.77.0.0/24,
which exists only inside these namespaces: the root namespace gets none, so
no test traffic can leave them)::

    chaos-sw          the switch: a bridge ``br0`` with one veth port per host
    chaos-r1 ...      one per replica; ``eth0`` = 10.77.0.<n>, lo up
    chaos-cl          the clients (workload process, status probes): 10.77.0.200

Zone latency: the kernel has no netem, so each host namespace runs a
``chaos.toxiproxy_server`` with one proxy per peer, listening on
127.0.0.1:<PEER_PORT_BASE + peer number> and forwarding to the peer's real
address with latency toxics for the zones' RTT (``chaos.zones``). Replica
topologies name peers by those loopback addresses, so all replica-to-replica
and client-to-replica traffic crosses the delay stage and then the real
veth/bridge path, where the nftables rules of the nemeses act on real
addresses.

Faults are nftables rules in a table ``inet chaos`` of the host namespaces:
``block(src, dst, port)`` drops src's new connections to dst's port (one-way
at the connection level, like a disabled Toxiproxy proxy); blocking both
ways, or every port, isolates.

Cleanup: ``Namespaces`` is a context manager and registers an atexit hook;
``cleanup_all()`` (``python -m chaos cleanup``) kills every process inside,
and deletes every namespace whose name starts with ``PREFIX``.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from dataclasses import dataclass

PREFIX = "chaos-"
SWITCH = PREFIX + "sw"
CLIENT = PREFIX + "cl"
SUBNET = "10.77.0"
CLIENT_HOST_NUMBER = 200
PEER_PORT_BASE = 17000
CMD_TIMEOUT_S = 10.0


class NetnsError(Exception):
    pass


def is_root() -> bool:
    return os.geteuid() == 0


def run(argv: list[str], *, input: str | None = None, check: bool = True) -> str:
    try:
        p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(argv)} did not finish within {CMD_TIMEOUT_S:.0f}s") from None
    if check and p.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def ns_exec(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def _kill_inside(ns: str) -> None:
    pids = [int(x) for x in run(["ip", "netns", "pids", ns], check=False).split() if x.isdigit()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + CMD_TIMEOUT_S
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
        for p in pids:
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        if pids:
            time.sleep(0.02)


def cleanup_all() -> list[str]:
    """Kill everything inside and delete every namespace named PREFIX*; returns their names."""
    names = list_namespaces()
    for ns in names:
        _kill_inside(ns)
    for ns in names:
        run(["ip", "netns", "del", ns], check=False)
    return names


@dataclass(frozen=True)
class Host:
    name: str  # replica id, or "client"
    ns: str
    address: str  # 10.77.0.x
    number: int


class Namespaces:
    """Create the switch and the hosts; delete them all on exit (also at interpreter exit)."""

    def __init__(self, replica_numbers: dict[str, int]) -> None:
        self.hosts: dict[str, Host] = {
            rid: Host(rid, PREFIX + rid, f"{SUBNET}.{n}", n) for rid, n in replica_numbers.items()
        }
        self.hosts["client"] = Host("client", CLIENT, f"{SUBNET}.{CLIENT_HOST_NUMBER}", CLIENT_HOST_NUMBER)
        self.created = False

    def __enter__(self) -> "Namespaces":
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def create(self) -> None:
        if not is_root():
            raise NetnsError("network namespaces need root")
        left = list_namespaces()
        if left:
            raise NetnsError(f"namespaces {left} are left from an earlier run: `python -m chaos cleanup`")
        atexit.register(self.delete)
        self.created = True
        run(["ip", "netns", "add", SWITCH])
        sw = ["ip", "-n", SWITCH]
        run(sw + ["link", "add", "br0", "type", "bridge"])
        run(sw + ["link", "set", "br0", "up"])
        run(sw + ["link", "set", "lo", "up"])
        for h in self.hosts.values():
            run(["ip", "netns", "add", h.ns])
            port = f"p{h.number}"
            run(sw + ["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.ns])
            run(sw + ["link", "set", port, "master", "br0"])
            run(sw + ["link", "set", port, "up"])
            hn = ["ip", "-n", h.ns]
            run(hn + ["addr", "add", f"{h.address}/24", "dev", "eth0"])
            run(hn + ["link", "set", "eth0", "up"])
            run(hn + ["link", "set", "lo", "up"])
            run(ns_exec(h.ns) + ["nft", "add", "table", "inet", "chaos"])
            for chain, hook in (("input", "input"), ("output", "output")):
                run(ns_exec(h.ns) + ["nft", "add", "chain", "inet", "chaos", chain,
                                     f"{{ type filter hook {hook} priority 0; policy accept; }}"])

    def delete(self) -> None:
        if not self.created:
            return
        self.created = False
        for h in self.hosts.values():
            _kill_inside(h.ns)
        for ns in [h.ns for h in self.hosts.values()] + [SWITCH]:
            run(["ip", "netns", "del", ns], check=False)

    # ------------------------------------------------------------ faults

    def nft(self, host: str, rule: str) -> None:
        run(ns_exec(self.hosts[host].ns) + ["nft"] + rule.split())

    def block(self, src: str, dst: str, port: int | None = None) -> None:
        """``src`` can no longer open connections to ``dst`` (on ``port``, or at all)."""
        s, d = self.hosts[src], self.hosts[dst]
        match = f"ip daddr {d.address}" + (f" tcp dport {port}" if port else "")
        self.nft(src, f"add rule inet chaos output {match} drop")
        if port is None:
            self.nft(dst, f"add rule inet chaos input ip saddr {s.address} drop")

    def heal(self) -> None:
        for h in self.hosts.values():
            for chain in ("input", "output"):
                self.nft(h.name, f"flush chain inet chaos {chain}")

    def rules(self, host: str) -> str:
        return run(ns_exec(self.hosts[host].ns) + ["nft", "list", "table", "inet", "chaos"])
