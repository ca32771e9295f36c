"""Run a local cluster: every replica of a topology as its own process on this machine.

    python -m cluster up one-city [--data DIR]     start all replicas, wait for a leader
    python -m cluster status [--json]              id, zone, pid, role, chosen/applied index
    python -m cluster kill r2                      SIGKILL one replica (by its recorded PID)
    python -m cluster restart r2                   start it again (stopping it first if alive)
    python -m cluster down                         stop every replica (SIGTERM, then SIGKILL)
    python -m cluster run one-city [--data DIR]    up + a live status view until Ctrl-C, then down
    python -m cluster certs one-city [--out DIR]   cluster CA + replica, admin, client certificates

The run directory (``--data DIR``, default ``data/<cluster_id>``) holds each
replica's data directory (``DIR/<id>``), its log (``DIR/<id>.log``) and the
state file ``DIR/cluster.json`` with the PIDs. Without ``--data``, ``up``
also records the run directory in ``data/.current`` so that later commands
find it; with ``--data``, pass the same ``--data`` to later commands.

A PID is only signalled after checking, in /proc, that it still runs
``ledger.server`` for that replica, so a recycled PID is never killed.

TLS: a topology with ``[tls] cert_dir`` (every shipped one) runs with mutual
TLS. ``up`` and ``run`` make the certificates there when any is missing
(``python -m cluster certs``), so ``make run`` needs no manual step; the state
file records the cert dir so that ``status`` and ``ledgerctl`` find it. The
launcher's own status calls use the admin certificate. A topology without
``[tls]`` runs in plaintext, which the replicas allow on loopback addresses
only, with a warning in their logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster import topology as topo

ROOT = Path(__file__).resolve().parent.parent
CURRENT = Path("data") / ".current"
LEADER_WAIT_S = 30.0
STOP_WAIT_S = 5.0


class LauncherError(Exception):
    pass


# ---------------------------------------------------------------- state


def _run_dir(args, topology: topo.Topology | None = None) -> Path:
    if getattr(args, "data", None):
        return Path(args.data).resolve()
    if topology is not None:
        return (Path("data") / topology.cluster_id).resolve()
    if CURRENT.exists():
        return Path(CURRENT.read_text().strip())
    raise LauncherError(
        "no cluster is recorded here: start one with `python -m cluster up <topology>` "
        "(or pass the --data DIR it was started with)"
    )


def _state_path(run_dir: Path) -> Path:
    return run_dir / "cluster.json"


def load_state(run_dir: Path) -> dict:
    path = _state_path(run_dir)
    if not path.exists():
        raise LauncherError(f"{path} does not exist: no cluster was started with this data directory")
    return json.loads(path.read_text())


def save_state(run_dir: Path, state: dict) -> None:
    path = _state_path(run_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


# ---------------------------------------------------------------- processes


def pid_runs_replica(pid: int, replica_id: str) -> bool:
    """True if ``pid`` is alive and is the ledger.server process of ``replica_id``."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False  # a zombie: dead, not yet reaped
    return b"ledger.server" in cmdline and replica_id.encode() in cmdline


def spawn(topology_path: Path, spec: topo.ReplicaSpec, run_dir: Path, cert_dir: str | None = None) -> int:
    data_dir = run_dir / spec.id
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / f"{spec.id}.log", "ab")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger.server", "--topology", str(topology_path), "--id", spec.id,
         "--data", str(data_dir)] + (["--cert-dir", cert_dir] if cert_dir else []),
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=str(ROOT), env=env, start_new_session=True,
    )
    log.close()
    return proc.pid


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pid(pid: int, replica_id: str, timeout_s: float = STOP_WAIT_S) -> None:
    if not pid_runs_replica(pid, replica_id):
        return
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_runs_replica(pid, replica_id):
            return
        time.sleep(0.05)
    _signal(pid, signal.SIGKILL)
    while pid_runs_replica(pid, replica_id):
        _reap(pid)
        time.sleep(0.02)


# ---------------------------------------------------------------- status


def _admin_tls(state: dict):
    """The admin credentials of a cluster started with TLS (None: plaintext)."""
    from cluster.certs import TlsCredentials

    cert_dir = state.get("cert_dir")
    return TlsCredentials.from_cert_dir(Path(cert_dir), "admin") if cert_dir else None


async def _status_one(spec: topo.ReplicaSpec, timeout_s: float = 1.0, tls=None) -> dict | None:
    from cluster.certs import open_channel
    from ledger.api_proto import pb, pb_grpc

    try:
        async with open_channel(spec.address, tls) as ch:
            resp = await pb_grpc.ClusterStub(ch).Status(pb.StatusRequest(all=False), timeout=timeout_s)
    except Exception:
        return None
    r = resp.replicas[0]
    return {
        "role": r.role, "ballot": r.ballot, "chosen_index": r.chosen_index,
        "applied_index": r.applied_index, "state_digest": r.state_digest, "leader_id": r.leader_id,
    }


def cluster_status(state: dict) -> list[dict]:
    topology = topo.load(state["topology"])
    tls = _admin_tls(state)

    async def gather():
        return await asyncio.gather(*(_status_one(r, tls=tls) for r in topology.replicas))

    answers = asyncio.run(gather())
    rows = []
    for spec, answer in zip(topology.replicas, answers):
        pid = state["pids"].get(spec.id, 0)
        alive = pid_runs_replica(pid, spec.id)
        row = {
            "id": spec.id, "zone": spec.zone, "address": spec.address, "peer_address": spec.peer_address,
            "metrics_port": spec.metrics_port, "pid": pid if alive else None,
            "alive": alive,
        }
        if answer:
            row.update(answer)
        else:
            row.update(role="down" if not alive else "unreachable")
        rows.append(row)
    return rows


def format_status(rows: list[dict], cluster_id: str) -> str:
    lines = [f"cluster {cluster_id}", f"{'id':<4} {'zone':<22} {'pid':>7} {'role':<12} {'ballot':>7} "
             f"{'chosen':>8} {'applied':>8}  digest"]
    for r in rows:
        lines.append(
            f"{r['id']:<4} {r['zone']:<22} {r.get('pid') or '-':>7} {r['role']:<12} {r.get('ballot', '-'):>7} "
            f"{r.get('chosen_index', '-'):>8} {r.get('applied_index', '-'):>8}  {r.get('state_digest', '')[:16]}"
        )
    return "\n".join(lines)


def wait_for_leader(state: dict, timeout_s: float = LEADER_WAIT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for row in cluster_status(state):
            if row.get("role") == "leader":
                return row["id"]
        time.sleep(0.1)
    raise LauncherError(
        f"no leader was elected within {timeout_s:.0f}s; look at the replica logs in {state['run_dir']}"
    )


# ---------------------------------------------------------------- commands


def cmd_up(args) -> int:
    topology = topo.load(args.topology)
    run_dir = _run_dir(args, topology)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _state_path(run_dir).exists():
        old = load_state(run_dir)
        running = [rid for rid, pid in old["pids"].items() if pid_runs_replica(pid, rid)]
        if running:
            raise LauncherError(
                f"replicas {', '.join(running)} of {run_dir} are already running; "
                "`python -m cluster down` first (or use another --data)"
            )
    cert_dir = ensure_certs(topology)
    # Replicas marked join = true are added later to the running cluster
    # (`python -m cluster add <id>`, then `ledgerctl members add <id>`).
    initial = [spec for spec in topology.replicas if not spec.join]
    state = {
        "topology": str(topology.path.resolve()), "cluster_id": topology.cluster_id,
        "run_dir": str(run_dir), "pids": {}, "cert_dir": cert_dir,
    }
    for spec in initial:
        state["pids"][spec.id] = spawn(topology.path.resolve(), spec, run_dir, cert_dir)
    save_state(run_dir, state)
    if not getattr(args, "data", None):
        CURRENT.parent.mkdir(parents=True, exist_ok=True)
        CURRENT.write_text(str(run_dir))
    try:
        leader = wait_for_leader(state, args.wait)
    except LauncherError:
        for spec in initial:
            if not pid_runs_replica(state["pids"][spec.id], spec.id):
                print(f"{spec.id} exited; last lines of {run_dir / (spec.id + '.log')}:", file=sys.stderr)
                print(_tail(run_dir / f"{spec.id}.log"), file=sys.stderr)
        # Leave nothing running behind a failed start.
        for spec in initial:
            stop_pid(state["pids"][spec.id], spec.id, timeout_s=2)
        raise
    for spec in initial:
        if not pid_runs_replica(state["pids"][spec.id], spec.id):
            print(f"warning: {spec.id} exited (the others elected {leader} without it); "
                  f"last lines of {run_dir / (spec.id + '.log')}:\n{_tail(run_dir / f'{spec.id}.log', 5)}",
                  file=sys.stderr)
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "leader": leader, "pids": state["pids"]}))
    else:
        pids = " ".join(f"{rid}={pid}" for rid, pid in state["pids"].items())
        print(f"cluster {topology.cluster_id} is up (leader {leader}); pids {pids}; data and logs in {run_dir}")
    return 0


def ensure_certs(topology: topo.Topology) -> str | None:
    """The absolute cert dir of a TLS topology, with every certificate made if missing (None: plaintext)."""
    if topology.tls_cert_dir is None:
        if topology.all_loopback:
            print(f"warning: {topology.path} has no [tls] table: the cluster runs in PLAINTEXT on loopback, "
                  "with no certificates checked (a dev cluster only)", file=sys.stderr)
        return None
    from cluster import certs

    cert_dir, written = certs.generate_for_topology(topology, topology.tls_cert_dir.resolve())
    if written:
        print(f"made TLS certificates for cluster {topology.cluster_id} in {cert_dir}", file=sys.stderr)
    return str(cert_dir)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cmd_status(args) -> int:
    run_dir = _run_dir(args)
    state = load_state(run_dir)
    rows = cluster_status(state)
    if args.json:
        print(json.dumps({"cluster_id": state["cluster_id"], "run_dir": str(run_dir), "replicas": rows}, indent=2))
    else:
        print(format_status(rows, state["cluster_id"]))
    return 0


def cmd_kill(args) -> int:
    run_dir = _run_dir(args)
    state = load_state(run_dir)
    pid = state["pids"].get(args.id)
    if pid is None:
        raise LauncherError(f"no replica {args.id!r} in {run_dir} (replicas: {', '.join(state['pids'])})")
    if not pid_runs_replica(pid, args.id):
        print(f"{args.id} is not running")
        return 0
    _signal(pid, signal.SIGKILL)
    while pid_runs_replica(pid, args.id):
        _reap(pid)
        time.sleep(0.01)
    print(f"killed {args.id} (pid {pid})")
    return 0


def cmd_restart(args) -> int:
    run_dir = _run_dir(args)
    state = load_state(run_dir)
    topology = topo.load(state["topology"])
    spec = topology.replica(args.id)
    stop_pid(state["pids"].get(args.id, 0), args.id)
    state["pids"][args.id] = spawn(Path(state["topology"]), spec, run_dir, state.get("cert_dir"))
    save_state(run_dir, state)
    print(f"restarted {args.id} (pid {state['pids'][args.id]})")
    return 0


def cmd_add(args) -> int:
    """Start a replica listed in the topology (join = true) to join the running cluster."""
    run_dir = _run_dir(args)
    state = load_state(run_dir)
    topology = topo.load(state["topology"])  # re-read: the operator has just listed the replica
    spec = topology.replica(args.id)
    pid = state["pids"].get(args.id, 0)
    if pid and pid_runs_replica(pid, args.id):
        raise LauncherError(f"{args.id} is already running (pid {pid})")
    if state.get("cert_dir"):  # a replica listed after `up` gets its certificate from the same CA
        from cluster import certs

        _dir, written = certs.generate_for_topology(topology, Path(state["cert_dir"]))
        if written:
            print(f"made TLS certificates {', '.join(written)} in {_dir}", file=sys.stderr)
    state["pids"][args.id] = spawn(Path(state["topology"]), spec, run_dir, state.get("cert_dir"))
    save_state(run_dir, state)
    print(f"started {args.id} (pid {state['pids'][args.id]}) as a learner-to-be; now add it: "
          f"ledgerctl members add {args.id} (or: ledgerctl members replace <old> {args.id})")
    return 0


def cmd_down(args) -> int:
    run_dir = _run_dir(args)
    state = load_state(run_dir)
    for rid, pid in state["pids"].items():
        if pid_runs_replica(pid, rid):
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for rid, pid in state["pids"].items():
        while pid_runs_replica(pid, rid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        stop_pid(pid, rid, timeout_s=0)
    state["pids"] = {rid: 0 for rid in state["pids"]}
    save_state(run_dir, state)
    print(f"cluster {state['cluster_id']} is down (data kept in {run_dir})")
    return 0


def cmd_run(args) -> int:
    """Foreground: up, then a live status view until Ctrl-C, then down."""
    args.json = False
    cmd_up(args)
    run_dir = _run_dir(args, topo.load(args.topology))
    state = load_state(run_dir)
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    first = True
    try:
        while not stopping:
            text = format_status(cluster_status(state), state["cluster_id"])
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J" if not first else "\x1b[2J\x1b[H")
            print(text)
            print(f"\nlogs: {run_dir}/<id>.log   metrics: http://127.0.0.1:<metrics port>/metrics")
            print("try: .venv/bin/python -m ledger.ledgerctl status      (in another terminal)")
            print("Ctrl-C stops the cluster (data is kept).", flush=True)
            first = False
            deadline = time.monotonic() + 1.0
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        ns = argparse.Namespace(data=str(run_dir))
        cmd_down(ns)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def data_arg(p):
        p.add_argument("--data", help="run directory (default: data/<cluster_id>, or the one `up` recorded)")

    p = sub.add_parser("up", help="start every replica and wait for a leader")
    p.add_argument("topology", help="topology file or shipped name (one-city, two-cities, three-cities)")
    data_arg(p)
    p.add_argument("--wait", type=float, default=LEADER_WAIT_S, help="seconds to wait for a leader")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("run", help="up, live status until Ctrl-C, then down")
    p.add_argument("topology")
    data_arg(p)
    p.add_argument("--wait", type=float, default=LEADER_WAIT_S)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="each replica's id, zone, pid, role, chosen and applied index")
    data_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    for name, func, doc in (("kill", cmd_kill, "SIGKILL one replica"), ("restart", cmd_restart, "restart one replica")):
        p = sub.add_parser(name, help=doc)
        p.add_argument("id", help="replica id, e.g. r2")
        data_arg(p)
        p.set_defaults(func=func)

    p = sub.add_parser("add", help="start a replica the topology lists with join = true (joins the running cluster)")
    p.add_argument("id", help="replica id, e.g. r4")
    data_arg(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("down", help="stop every replica")
    data_arg(p)
    p.set_defaults(func=cmd_down)

    sub.add_parser("certs", help="make the cluster CA and certificates (see cluster.certs)", add_help=False)

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "certs":
        from cluster import certs

        return certs.main(argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (LauncherError, topo.TopologyError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
