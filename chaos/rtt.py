"""Measure the round-trip times the delay stage gives between zones.

    python -m chaos rtt [--network netns|loopback] [--topology three-cities]

Builds the topology's network (namespaces and delay stages, or the loopback
proxies), puts a TCP echo server where each replica would listen, and from
each host measures 1-byte ping-pongs to every peer through its link (and, in
netns mode, straight over the veth/bridge path for the baseline). Prints a
table of target and measured median / p90 RTT per link.

Helper modes run inside the namespaces:

    python -m chaos.rtt echo HOST:PORT
    python -m chaos.rtt measure ADDR [ADDR ...]     -> JSON {addr: [median_ms, p90_ms]}
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PINGS = 300
CONNECT_TIMEOUT_S = 5.0


def echo(address: str) -> None:
    host, port = address.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(64)
    print("ready", flush=True)

    def serve(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def measure(addresses: list[str]) -> dict:
    out = {}
    for a in addresses:
        host, port = a.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for i in range(PINGS + 20):
            t = time.perf_counter()
            s.sendall(b"x")
            if not s.recv(1):
                break
            if i >= 20:  # warm-up
                samples.append((time.perf_counter() - t) * 1000)
        s.close()
        samples.sort()
        out[a] = [samples[len(samples) // 2], samples[int(len(samples) * 0.9)]] if samples else None
    return out


def main(topology_name: str, network_kind: str) -> int:
    from chaos import zones
    from chaos.cluster import ROOT, LoopbackNetwork, NetnsNetwork, _zone, client_zone
    from cluster import topology as topo

    topology = topo.load(topology_name)
    run_dir = Path(tempfile.mkdtemp(prefix="chaos-rtt-"))
    network = NetnsNetwork(topology, run_dir) if network_kind == "netns" else LoopbackNetwork(topology, run_dir)
    echoes: list[subprocess.Popen] = []
    rows = []
    try:
        network.start()
        for r in topology.replicas:
            p = subprocess.Popen(network.wrap(r.id, [sys.executable, "-m", "chaos.rtt", "echo",
                                                      network.listen_address(r.id)]),
                                 stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
            echoes.append(p)
            ready, _, _ = select.select([p.stdout], [], [], CONNECT_TIMEOUT_S)
            assert ready, "echo server did not start"
            p.stdout.readline()
        for src in ["client"] + [r.id for r in topology.replicas]:
            zsrc = client_zone(topology) if src == "client" else _zone(topology.replica(src))
            dsts = [r for r in topology.replicas if r.id != src]
            targets = [network.peer_address(src, d.id) for d in dsts]
            direct = [network.listen_address(d.id) for d in dsts] if network_kind == "netns" else []
            out = subprocess.run(network.wrap(src, [sys.executable, "-m", "chaos.rtt", "measure", *targets,
                                                    *direct]),
                                 capture_output=True, text=True, timeout=120, cwd=str(ROOT))
            got = json.loads(out.stdout)
            for d, t in zip(dsts, targets):
                base = got.get(network.listen_address(d.id)) if direct else None
                rows.append((src, d.id, zones.rtt_ms(zsrc, _zone(d)), got[t], base))
    finally:
        for p in echoes:
            p.kill()
            p.wait()
        network.stop()
    print(f"{topology.cluster_id} on {network_kind}: RTT through the delay stage (median / p90, ms), "
          f"{PINGS} 1-byte ping-pongs per link")
    print(f"{'link':<12} {'target':>8} {'median':>8} {'p90':>8}   {'raw path median':>16}")
    for src, dst, target, (med, p90), base in rows:
        raw = f"{base[0]:.3f}" if base else "-"
        print(f"{src + '->' + dst:<12} {target:>8.2f} {med:>8.3f} {p90:>8.3f}   {raw:>16}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2])
    elif sys.argv[1] == "measure":
        print(json.dumps(measure(sys.argv[2:])))
