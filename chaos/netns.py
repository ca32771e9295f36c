"""Hosts as network namespaces: one per replica, one for the clients, joined by a switch.

Layout (every name starts with the run's prefix ``chaos-<owner pid>-<n>-``;
every address is in 10.77.0.0/24, which exists only inside these namespaces:
the root namespace gets none, so no test traffic can leave them)::

    chaos-<tag>-sw    the switch: a bridge ``br0`` with one veth port per host
    chaos-<tag>-r1 .. one per replica; ``eth0`` = 10.77.0.<n>, lo up
    chaos-<tag>-cl    the clients (workload process, status probes): 10.77.0.200

``<tag>`` is ``<pid>-<n>``: the PID of the process that made them and a
counter within that process, so two runs (a test and ``make chaos``, or two
test processes) never share a namespace. Everything else a run creates lives
inside its own namespaces: the veth ports (``p<n>`` in the switch, ``eth0`` in
a host; interface names are per namespace, so no name of one run can meet
another's, and all stay well under the kernel's 15 characters), the bridge,
the nftables table, the addresses, the ports and the processes.

Zone latency: the kernel has no netem, so each host namespace runs a
``chaos.toxiproxy_server`` with one proxy per peer, listening on
127.0.0.1:<PEER_PORT_BASE + peer number> and forwarding to the peer's real
address with latency toxics for the zones' RTT (``chaos.zones``). Replica
topologies name peers by those loopback addresses, so all replica-to-replica
and client-to-replica traffic crosses the delay stage and then the real
veth/bridge path, where the nftables rules of the nemeses act on real
addresses. The delay stage's HTTP API listens in the root namespace (on
127.0.0.1, any free port) while its proxies live in the host namespace (see
``chaos.toxiproxy_server --netns``), so the nemeses add toxics to the links of
a running cluster through the Toxiproxy API.

Faults are nftables rules in a table ``inet chaos`` of the host namespaces:
``block(src, dst, port)`` drops src's new connections to dst's port (one-way
at the connection level, like a disabled Toxiproxy proxy); blocking both
ways, or every port, isolates.

Cleanup: ``Namespaces`` is a context manager and registers an atexit hook; it
deletes only its own namespaces. ``cleanup_all()`` (``python -m chaos
cleanup``) kills every process inside, and deletes, the chaos namespaces
whose owner process is dead; ``cleanup_all(everything=True)`` (``--all``)
takes every ``chaos-*`` namespace, also those of live runs and those named
by older versions without an owner.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

PREFIX = "chaos-"
OWNED = re.compile(r"^chaos-(\d+)-(\d+)-")  # chaos-<owner pid>-<n>-<host>
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


_tags = itertools.count()


def new_tag() -> str:
    """A prefix part no other run has: this process's PID and a counter."""
    return f"{os.getpid()}-{next(_tags)}"


def owner_pid(name: str) -> int | None:
    """The PID of the process that made a chaos namespace, tmpfs or PID file (None: unknown)."""
    m = OWNED.match(name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def list_namespaces(tag: str | None = None) -> list[str]:
    """Every chaos namespace, or only those of the run with ``tag``."""
    prefix = PREFIX if tag is None else f"{PREFIX}{tag}-"
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


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


def abandoned(name: str) -> bool:
    """A chaos-made name whose owner process has died."""
    owner = owner_pid(name)
    return owner is not None and not pid_alive(owner)


def cleanup_all(everything: bool = False) -> list[str]:
    """Kill everything inside and delete the chaos namespaces whose owner is dead (``everything``:
    every namespace named PREFIX*); returns their names."""
    names = [n for n in list_namespaces() if everything or abandoned(n)]
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

    def __init__(self, replica_numbers: dict[str, int], tag: str | None = None) -> None:
        self.tag = tag or new_tag()
        self.prefix = f"{PREFIX}{self.tag}-"
        self.switch = self.prefix + "sw"
        self.hosts: dict[str, Host] = {
            rid: Host(rid, self.prefix + rid, f"{SUBNET}.{n}", n) for rid, n in replica_numbers.items()
        }
        self.hosts["client"] = Host("client", self.prefix + "cl", f"{SUBNET}.{CLIENT_HOST_NUMBER}",
                                    CLIENT_HOST_NUMBER)
        self.created = False

    def __enter__(self) -> "Namespaces":
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def create(self) -> None:
        if not is_root():
            raise NetnsError("network namespaces need root")
        left = list_namespaces(self.tag)
        if left:
            raise NetnsError(f"namespaces {left} exist already")
        atexit.register(self.delete)
        self.created = True
        run(["ip", "netns", "add", self.switch])
        sw = ["ip", "-n", self.switch]
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
        for ns in [h.ns for h in self.hosts.values()] + [self.switch]:
            run(["ip", "netns", "del", ns], check=False)
        atexit.unregister(self.delete)

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
