"""A throwaway local cluster for tests and benchmarks: real processes, real sockets on 127.0.0.1.

``LocalCluster`` writes a topology with free ports into a temporary directory,
starts it with ``python -m cluster up``, and on ``stop()`` kills every process
it started by PID (SIGKILL after a short SIGTERM grace) and removes the
directory. Waits are polls with deadlines, never sleeps standing in for them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.__main__ import pid_runs_replica
from ledger.client import Client

ROOT = Path(__file__).resolve().parent.parent

PY = sys.executable


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as e:  # the cluster may be between states
            last = e
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last})")


class LocalCluster:
    def __init__(self, replicas: int = 3, cluster_id: str = "itest", *, joiners: int = 0,
                 primary_zone: str = "", extra_toml: str = "") -> None:
        """``joiners`` more replicas are listed with ``join = true`` (started by
        ``add``); ``extra_toml`` goes before the replicas (``[snapshot]``, ...).
        No primary zone by default: leadership then stays where elections put
        it, as tests of failover and leadership transfer expect (data centers
        are dc1, dc2, ... in replica order)."""
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-itest-"))
        total = replicas + joiners
        ports = free_ports(3 * total)
        all_ids = [f"r{i + 1}" for i in range(total)]
        self.ids = all_ids[:replicas]
        self.joiners = all_ids[replicas:]
        self.addresses = {rid: f"127.0.0.1:{ports[i]}" for i, rid in enumerate(self.ids)}
        self.joiner_addresses = {rid: f"127.0.0.1:{ports[replicas + i]}" for i, rid in enumerate(self.joiners)}
        self.metrics_ports = {rid: ports[total + i] for i, rid in enumerate(all_ids)}
        self.peer_addresses = {rid: f"127.0.0.1:{ports[2 * total + i]}" for i, rid in enumerate(all_ids)}
        lines = [f'cluster_id = "{cluster_id}"', f'primary_zone = "{primary_zone}"', extra_toml, ""]
        for i, rid in enumerate(all_ids):
            address = self.addresses.get(rid) or self.joiner_addresses[rid]
            lines += [
                "[[replica]]", f'id = "{rid}"', 'city = "test"', f'data_center = "dc{i + 1}"',
                f'address = "{address}"', f'peer_address = "{self.peer_addresses[rid]}"',
                f"metrics_port = {self.metrics_ports[rid]}",
                f'data_dir = "{self.dir / rid}"', "join = true" if rid in self.joiners else "", "",
            ]
        self.topology = self.dir / "topology.toml"
        self.topology.write_text("\n".join(lines))
        self.data = self.dir / "run"
        self.all_pids: set[int] = set()

    # ------------------------------------------------------------ processes

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PY, "-m", "cluster", *args, "--data", str(self.data)],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
        )

    def start(self) -> "LocalCluster":
        result = subprocess.run(
            [PY, "-m", "cluster", "up", str(self.topology), "--data", str(self.data), "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=90,
        )
        self._remember_pids()
        assert result.returncode == 0, f"cluster up failed:\n{result.stdout}\n{result.stderr}"
        return self

    def _remember_pids(self) -> dict[str, int]:
        path = self.data / "cluster.json"
        if not path.exists():
            return {}
        pids = json.loads(path.read_text())["pids"]
        self.all_pids.update(p for p in pids.values() if p)
        return pids

    def pid(self, rid: str) -> int:
        return self._remember_pids()[rid]

    def kill(self, rid: str) -> None:
        """SIGKILL one replica, by its recorded PID."""
        pid = self.pid(rid)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_runs_replica(pid, rid), 10, f"{rid} (pid {pid}) to die")

    def add(self, rid: str) -> None:
        """Start a joining replica (``python -m cluster add``) from an empty data directory."""
        result = self.cli("add", rid)
        self._remember_pids()
        assert result.returncode == 0, result.stderr
        self.ids.append(rid)
        self.addresses[rid] = self.joiner_addresses[rid]

    def forget(self, rid: str) -> None:
        """Stop counting ``rid`` in statuses and convergence (after removing it)."""
        self.ids.remove(rid)
        self.addresses.pop(rid, None)

    def restart(self, rid: str) -> None:
        result = self.cli("restart", rid)
        self._remember_pids()
        assert result.returncode == 0, result.stderr

    def stop(self) -> None:
        try:
            self.cli("down", timeout_s=30)
        except Exception:
            pass
        self._remember_pids()
        for pid in self.all_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.all_pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ views

    def client(self, **kwargs) -> Client:
        return Client(list(self.addresses.values()), **kwargs)

    def statuses(self) -> dict[str, object]:
        """Each reachable replica's own status (id -> pb ReplicaStatus)."""
        out = {}
        for rid, address in self.addresses.items():
            c = Client([address], attempt_timeout_s=1.0)
            try:
                out[rid] = c.status(all=False, address=address).replicas[0]
            except Exception:
                pass
            finally:
                c.close()
        return out

    def leader(self, exclude: tuple[str, ...] = ()) -> str | None:
        for rid, st in self.statuses().items():
            if st.role == "leader" and rid not in exclude:
                return rid
        return None

    def wait_leader(self, exclude: tuple[str, ...] = (), timeout_s: float = 30) -> str:
        return wait_until(lambda: self.leader(exclude), timeout_s, "a leader")

    def wait_converged(self, timeout_s: float = 60) -> str:
        """All replicas applied (and committed) everything chosen, the same
        index with the same digest; returns the digest."""

        def converged():
            st = self.statuses()
            if len(st) != len(self.ids):
                return None
            # Applies are committed a little after they run: a replica has
            # converged once its committed applies reach its chosen point.
            marks = {(s.applied_index, s.chosen_index, s.state_digest) for s in st.values()}
            if len(marks) == 1:
                applied, chosen, digest = next(iter(marks))
                if applied == chosen:
                    return digest
            return None

        return wait_until(converged, timeout_s, "all replicas to reach the same state digest")
