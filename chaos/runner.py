"""One chaos run: a cluster, the workloads, a schedule of nemeses, the final heal, the verdicts.

    run = RunConfig(topology="one-city", network="loopback", schedule=["kill:leader", "partition"])
    result = execute(run)          # a run folder under data/chaos/, result["valid"]

Timeline (monotonic seconds, the same clock in every process of the machine)::

    cluster up -> leader -> workload ready -> warm-up ->
        [nemesis start ... fault_s ... heal ... gap_s] for each scheduled nemesis
    -> final heal (every link, process, clock, disk) -> "healed" -> post_heal_s -> "stop"
    -> workload: first write after heal, convergence of every replica's digest, final reads

The run folder holds the replicas' logs and data, the histories
(``bank.jsonl``, ``register.jsonl``, ``set.jsonl``), ``final.json``,
``windows.json`` (the fault windows), ``verdict.json`` and the report
(``report.html`` with PNG plots, see ``chaos.report``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chaos import nemesis as nem
from chaos import netns
from chaos.checkers import check_bank, check_register, check_set
from chaos.cluster import (ROOT, ChaosCluster, LoopbackNetwork, NetnsNetwork, build_shim, forget_pids,
                           remember_pid, with_spares)
from chaos.history import OK, History
from chaos.workload import BANK_ACCOUNTS, BANK_TOTAL
from cluster import topology as topo

RUNS_ROOT = ROOT / "data" / "chaos"
LEADER_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 90.0
WORKLOAD_EXIT_TIMEOUT_S = 300.0  # the workload's final phase is bounded at ~200 s
PROBE_TIMEOUT_S = 15.0
TMPFS_SOURCE = "chaos-tmpfs"
TMPFS_SIZE = "256m"
WRITE_FS = ("transfer", "add", "write", "cas")


@dataclass
class RunConfig:
    topology: str = "one-city"
    network: str = "loopback"  # or "netns"
    schedule: list[str] = field(default_factory=lambda: ["kill:leader"])
    fault_s: float = 6.0
    gap_s: float = 5.0
    warmup_s: float = 3.0
    post_heal_s: float = 4.0
    seed: int = 1
    concurrency: int = 3
    workloads: str = "bank,register,set"
    toxiproxy_url: str | None = None
    stale_reads: bool = False  # a deliberate bug in the workload, to show the register checker failing
    out: Path | None = None
    label: str = ""


@dataclass
class Context:
    cluster: ChaosCluster
    network: object
    rng: random.Random
    tmpfs: bool
    probe_argv: list[str]

    def statuses(self) -> dict:
        try:
            p = subprocess.run(self.probe_argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                               cwd=str(ROOT))
            return json.loads(p.stdout or "{}")
        except (subprocess.TimeoutExpired, ValueError):
            return {}

    def leader(self) -> str | None:
        statuses = [s for s in self.statuses().values() if s]
        leaders = [s["id"] for s in statuses if s.get("role") == "leader"]
        if leaders:
            return leaders[0]
        votes = [s["leader_id"] for s in statuses if s.get("leader_id")]
        return max(set(votes), key=votes.count) if votes else None


def replace_target(topology: topo.Topology, spec: str) -> str:
    """The replica a ``replace[:rN]`` spec loses for good: the one named, else the last initial
    voter (outside the primary zone in the shipped topologies, so leadership stays put)."""
    parts = spec.split(":")
    voters = [r.id for r in topology.replicas if not r.join]
    if len(parts) > 1 and parts[1] not in ("", "random"):
        if parts[1] not in voters:
            raise ValueError(f"{spec}: replace takes a replica id of the topology ({', '.join(voters)})")
        return parts[1]
    return voters[-1]


def _mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    # the source names the owner: "chaos-tmpfs-<pid>"
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", f"{TMPFS_SOURCE}-{os.getpid()}",
                        str(path)], capture_output=True, text=True)
    return p.returncode == 0


def _tmpfs_owner(source: str) -> int | None:
    tail = source[len(TMPFS_SOURCE) + 1:]
    return int(tail) if source.startswith(TMPFS_SOURCE + "-") and tail.isdigit() else None


def unmount_tmpfs(under: Path | None = None, everything: bool = False) -> list[str]:
    """Unmount our tmpfs mounts: those under ``under``; else those whose owner process is dead
    (``everything``: all of them)."""
    gone = []
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return gone
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[0].startswith(TMPFS_SOURCE):
            owner = _tmpfs_owner(parts[0])
            if under is not None:
                take = parts[1].startswith(str(under))
            else:
                take = everything or (owner is not None and not netns.pid_alive(owner))
            if take:
                subprocess.run(["umount", "-l", parts[1]], capture_output=True)
                gone.append(parts[1])
    return gone


def _wait_file(path: Path, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc is not None and proc.poll() is not None:
            return path.exists()
        time.sleep(0.05)
    return False


def _log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def execute(cfg: RunConfig, progress=None) -> dict:
    topology = topo.load(cfg.topology)
    replaced = [replace_target(topology, spec) for spec in cfg.schedule if spec.split(":")[0] == "replace"]
    topology, spares = with_spares(topology, replaced)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = cfg.out or (RUNS_ROOT / f"{stamp}-{topology.cluster_id}-{cfg.network}-s{cfg.seed}")
    run_dir = Path(run_dir).resolve()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    control = run_dir / "control"
    control.mkdir()
    (run_dir / "config.json").write_text(json.dumps({**asdict(cfg), "out": str(run_dir)}, indent=2, default=str))
    rng = random.Random(cfg.seed)
    shim = build_shim(run_dir)
    if cfg.network == "netns":
        network = NetnsNetwork(topology, run_dir)
    else:
        network = LoopbackNetwork(topology, run_dir, cfg.toxiproxy_url)
    cluster = ChaosCluster(topology, network, run_dir, shim, spares)
    windows: list[dict] = []
    workload: subprocess.Popen | None = None
    tmpfs = False
    result: dict = {"run_dir": str(run_dir), "topology": topology.cluster_id, "network": cfg.network}
    try:
        network.start()
        if os.geteuid() == 0 and any(s.startswith("disk-full") for s in cfg.schedule):
            tmpfs = all(_mount_tmpfs(cluster.data_root / r.id) for r in topology.replicas)
        cluster.start_all()
        addresses = ",".join(network.client_addresses())
        tls_args = ["--cert-dir", str(cluster.cert_dir)] if cluster.cert_dir else []
        probe = network.wrap("client", [sys.executable, "-m", "chaos.workload", "--probe", "--addresses", addresses,
                                        *tls_args])
        ctx = Context(cluster, network, rng, tmpfs, probe)
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        leader = None
        while leader is None and time.monotonic() < deadline:
            leader = ctx.leader()
        if leader is None:
            raise RuntimeError(f"no leader within {LEADER_TIMEOUT_S:.0f}s; see the logs in {run_dir}")
        _log(f"{topology.cluster_id} on {cfg.network}: leader {leader}; starting the workloads")
        wl_log = open(run_dir / "workload.log", "ab")
        workload = subprocess.Popen(
            network.wrap("client", [sys.executable, "-m", "chaos.workload", "--addresses", addresses,
                                    "--out", str(run_dir), "--control", str(control), "--seed", str(cfg.seed),
                                    "--concurrency", str(cfg.concurrency), "--workloads", cfg.workloads,
                                    *tls_args]
                              + (["--stale-reads"] if cfg.stale_reads else [])),
            stdout=wl_log, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True,
        )
        remember_pid(workload.pid, "chaos.workload")
        if not _wait_file(control / "ready", READY_TIMEOUT_S, workload):
            raise RuntimeError(f"the workload did not get ready; see {run_dir / 'workload.log'}")
        t0 = float((control / "ready").read_text())
        result["t0"] = t0
        time.sleep(cfg.warmup_s)
        for i, spec in enumerate(cfg.schedule):
            n = nem.make(spec)
            window = {"spec": spec, "start": time.monotonic()}
            try:
                window["what"] = n.start(ctx)
            except nem.Skip as e:
                window.update(what=f"skipped: {e}", skipped=True, end=time.monotonic())
                windows.append(window)
                _log(f"[{i + 1}/{len(cfg.schedule)}] {spec}: skipped ({e})")
                continue
            _log(f"[{i + 1}/{len(cfg.schedule)}] {window['what']}")
            if progress:
                progress(spec)
            time.sleep(cfg.fault_s)
            try:
                n.heal(ctx)
            except Exception as e:  # noqa: BLE001 - a harness fault: the run is invalid, the suite goes on
                window["error"] = f"healing {spec} failed: {type(e).__name__}: {e}"
                ctx.network.heal()
            window["end"] = time.monotonic()
            window.update({k: v for k, v in n.report().items() if k not in window})
            if window.get("error"):
                _log(f"[{i + 1}/{len(cfg.schedule)}] {window['error']}")
            windows.append(window)
            time.sleep(cfg.gap_s)
        _final_heal(ctx)
        # the members at the end (after replacements): the workload checks convergence across them
        (control / "members").write_text(",".join(network.peer_address("client", r) for r in cluster.ids))
        healed_at = time.monotonic()
        (control / "healed").write_text(str(healed_at))
        time.sleep(cfg.post_heal_s)
        (control / "stop").write_text(str(time.monotonic()))
        try:
            workload.wait(WORKLOAD_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            workload.kill()
            workload.wait()
        result["workload_exit"] = workload.returncode
        result["replica_exits_before_stop"] = {r: c for r, c in cluster.exit_codes().items() if c is not None}
    finally:
        if workload is not None and workload.poll() is None:
            workload.kill()
            workload.wait()
        cluster.stop_all()
        network.stop()
        if tmpfs:
            unmount_tmpfs(run_dir)
        forget_pids()
    (run_dir / "windows.json").write_text(json.dumps(windows, indent=2))
    result.update(judge(run_dir, windows, result))
    (run_dir / "verdict.json").write_text(json.dumps(result, indent=2, default=str))
    try:
        from chaos import report

        report.write(run_dir, result, windows)
    except Exception as e:  # noqa: BLE001 - a failed plot must not hide the verdict
        result["report_error"] = f"{type(e).__name__}: {e}"
    return result


def _final_heal(ctx: Context) -> None:
    ctx.network.heal()
    for rid in ctx.cluster.ids:
        ctx.cluster.resume(rid)
        nem.Nemesis("clock-drift", rid)._write_faults(ctx, rid, rate=1.0, fail_sync=0)
        filler = ctx.cluster.data_root / rid / "chaos-filler"
        if filler.exists():
            filler.unlink()
        if not ctx.cluster.alive(rid):
            ctx.cluster.start(rid)


# ---------------------------------------------------------------- verdicts and survival


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def _load(run_dir: Path, name: str) -> History:
    path = run_dir / f"{name}.jsonl"
    return History.load(path) if path.exists() else History()


def judge(run_dir: Path, windows: list[dict], result: dict) -> dict:
    histories = {w: _load(run_dir, w) for w in ("bank", "register", "set")}
    verdicts = []
    if len(histories["bank"]):
        verdicts.append(check_bank(histories["bank"], BANK_ACCOUNTS, BANK_TOTAL, nonnegative=BANK_ACCOUNTS))
    if len(histories["register"]):
        verdicts.append(check_register(histories["register"]))
    if len(histories["set"]):
        verdicts.append(check_set(histories["set"]))
    final_path = run_dir / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else {}
    healed = final.get("healed_at")
    converged = final.get("converged_at") is not None
    out: dict = {
        "verdicts": [v.as_dict() for v in verdicts],
        "converged": converged,
        "heal_to_first_write_s": _heal_to_first_write(histories, final),
        # measured from the moment the clients stop writing (digests cannot agree while writes flow)
        "stop_to_converged_s": (final["converged_at"] - final["stopped_at"]) if converged and "stopped_at" in final else None,
        "digests": {a: (s or {}).get("state_digest", "")[:16] for a, s in (final.get("statuses") or {}).items()},
    }
    checkers_ok = all(v.valid is not False for v in verdicts)
    decided = all(v.valid is not None for v in verdicts) and bool(verdicts)
    window_errors = [w["error"] for w in windows if w.get("error")]
    out["valid"] = bool(checkers_ok and converged and decided and not result.get("replica_exits_before_stop")
                        and not window_errors)
    out["why_not_valid"] = [
        *(f"{v.checker}: {v.errors[:3]}" for v in verdicts if v.valid is False),
        *(f"{v.checker}: undecided ({v.errors[:1]})" for v in verdicts if v.valid is None),
        *([] if converged else ["replicas did not converge to one digest after the heal"]),
        *([] if verdicts else ["no history was recorded"]),
        *window_errors,
        *(f"replica {rid} exited (code {code}) before the end of the run: {_last_line(run_dir / (rid + '.log'))}"
          for rid, code in (result.get("replica_exits_before_stop") or {}).items()),
    ]
    out["survival"] = survival(histories, windows, result.get("t0"), final)
    ops = sum(len(h) for h in histories.values())
    ok_writes = sum(1 for h in histories.values() for o in h if o.f in WRITE_FS and o.status == OK)
    out["ops"] = ops
    out["ok_writes"] = ok_writes
    return out


def _heal_to_first_write(histories: dict[str, History], final: dict) -> float | None:
    healed = final.get("healed_at")
    if healed is None:
        return None
    after = [t for t in _write_times(histories) if t >= healed]
    if after:
        return after[0] - healed
    return (final["write_ok_at"] - healed) if final.get("write_ok_at") else None


def _write_times(histories: dict[str, History]) -> list[float]:
    return sorted(o.complete_t for h in histories.values() for o in h
                  if o.f in WRITE_FS and o.status == OK and o.complete_t is not None)


def survival(histories: dict[str, History], windows: list[dict], t0: float | None, final: dict) -> list[dict]:
    """Per fault window: did writes continue, longest write gap (RTO), acknowledged writes lost (RPO)."""
    times = _write_times(histories)
    set_h = histories.get("set")
    final_read = None
    if set_h is not None:
        reads = [o for o in set_h if o.f == "read" and o.status == OK]
        final_read = set(reads[-1].result) if reads else None
    rows = []
    prev_end = float("-inf")
    for w in windows:
        if w.get("skipped"):
            rows.append({"fault": w["spec"], "what": w["what"], "skipped": True})
            continue
        start, end = w["start"], w["end"]
        inside = [t for t in times if start <= t <= end]
        # the longest gap between successful writes that overlaps the window
        around = [start] + inside + [next((t for t in times if t > end), end)]
        before = [t for t in times if t < start]
        if before:
            around[0] = before[-1]
        gaps = [b - a for a, b in zip(around, around[1:])]
        late = [t for t in inside if t >= start + (end - start) / 2]
        lost = None
        if final_read is not None and set_h is not None:
            lost = sum(1 for o in set_h if o.f == "add" and o.status == OK and o.complete_t is not None
                       and prev_end < o.complete_t <= end and o.args not in final_read)
        rows.append({
            "fault": w["spec"], "what": w["what"], "start_s": start - (t0 or start), "duration_s": end - start,
            "writes_continued": bool(late), "writes_in_window": len(inside),
            "rto_s": max(gaps) if gaps else None, "rpo_lost_acknowledged": lost,
            **({"replaced_after_s": w["replaced_after_s"]} if "replaced_after_s" in w else {}),
        })
        prev_end = end
    return rows


def write_gaps(run_dir: Path, top: int = 10) -> list[dict]:
    """The longest gaps between acknowledged writes of a finished run (whole run, not only fault
    windows), each with the fault windows it overlaps: where to look for stalls."""
    run_dir = Path(run_dir)
    times = _write_times({w: _load(run_dir, w) for w in ("bank", "register", "set")})
    windows = json.loads((run_dir / "windows.json").read_text()) if (run_dir / "windows.json").exists() else []
    verdict = json.loads((run_dir / "verdict.json").read_text()) if (run_dir / "verdict.json").exists() else {}
    t0 = verdict.get("t0") or (times[0] if times else 0.0)
    gaps = sorted(((b - a, a, b) for a, b in zip(times, times[1:])), reverse=True)[:top]
    polls = []
    if (run_dir / "status.jsonl").exists():
        for line in (run_dir / "status.jsonl").read_text().splitlines():
            try:
                polls.append(json.loads(line))
            except ValueError:
                pass  # a line torn by the run's end: the polls before it still count
    names = {address: st["id"] for poll in polls for address, st in poll["replicas"].items() if st}
    out = []
    for gap, a, b in gaps:
        during = [f"{w['spec']} ({w['what']})" for w in windows
                  if not w.get("skipped") and w["start"] <= b and w.get("end", w["start"]) >= a]
        # what each replica said while no write got through: its roles (leader), or "-" for no answer
        seen: dict[str, list[str]] = {}
        for poll in polls:
            if a <= poll["t"] <= b:
                for address, st in poll["replicas"].items():
                    word = "-" if st is None else f"{st['role']}({st['leader_id'] or '?'})"
                    states = seen.setdefault(names.get(address, address), [])
                    if not states or states[-1] != word:
                        states.append(word)
        out.append({"gap_s": round(gap, 3), "from_s": round(a - t0, 3), "to_s": round(b - t0, 3),
                    "from_monotonic": a, "windows": during or ["(no fault window)"],
                    "replicas": {k: " > ".join(v) for k, v in sorted(seen.items())}})
    return out


def summary_line(results: list[dict]) -> str:
    valid = bool(results) and all(r.get("valid") for r in results)
    ops = sum(r.get("ops", 0) for r in results)
    writes = sum(r.get("ok_writes", 0) for r in results)
    lost = sum((row.get("rpo_lost_acknowledged") or 0) for r in results for row in r.get("survival", []))
    conv = [r["stop_to_converged_s"] for r in results if r.get("stop_to_converged_s") is not None]
    first = [r["heal_to_first_write_s"] for r in results if r.get("heal_to_first_write_s") is not None]
    checks = ",".join(f"{v['checker']}={str(v['valid']).lower()}" for r in results for v in r.get("verdicts", []))
    fmt = lambda xs: f"{max(xs):.3f}" if xs else "n/a"  # noqa: E731
    report = results[-1]["run_dir"] + "/report.html" if results else "-"
    return (f"chaos: valid={str(valid).lower()} runs={len(results)} ops={ops} ok_writes={writes} "
            f"lost_acknowledged={lost} converged={str(all(r.get('converged') for r in results)).lower()} "
            f"heal_to_first_write_s={fmt(first)} stop_to_converged_s={fmt(conv)} {checks} report={report}")


def cleanup(everything: bool = False) -> tuple[list[str], list[str]]:
    """Remove what chaos runs left behind once their process died: processes, namespaces, tmpfs
    mounts (``everything``: also those of live runs and of older versions without an owner).
    Returns (what was removed, what was kept because its run is still alive)."""
    gone: list[str] = []
    kept: list[str] = []
    if netns.is_root():
        gone += [f"namespace {n}" for n in netns.cleanup_all(everything)]
        kept += [f"namespace {n}" for n in netns.list_namespaces()]
        gone += [f"tmpfs {m}" for m in unmount_tmpfs(everything=everything)]
    # processes that runs recorded, per owner (only those whose command line still matches)
    from chaos.cluster import PIDS_DIR

    files = sorted(PIDS_DIR.glob("*.txt")) if PIDS_DIR.exists() else []
    legacy = PIDS_DIR.parent / "pids.txt"  # one file for every run, before runs had owners
    if legacy.exists():
        files.append(legacy)
    for path in files:
        owner = int(path.stem) if path.stem.isdigit() else None
        if not everything and (owner is None or netns.pid_alive(owner)):
            if owner is not None and owner != os.getpid():
                kept.append(f"processes of the live run {owner}")
            continue
        for line in path.read_text().splitlines():
            pid_text, _, marker = line.partition(" ")
            try:
                cmd = Path(f"/proc/{pid_text}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if marker.encode() in cmd:
                try:
                    os.kill(int(pid_text), 9)
                    gone.append(f"process {pid_text}")
                except (ProcessLookupError, PermissionError):
                    pass
        path.unlink()
    return gone, kept
