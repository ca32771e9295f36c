"""Nemeses: faults as start/heal pairs, usable alone or in a random schedule.

A nemesis is built with its parameters, then ``start(ctx)`` injects the fault
(and returns what it did, for the report) and ``heal(ctx)`` undoes it. ``ctx``
is a ``chaos.runner.Context``: the cluster (processes), its network (links),
``leader()`` and a seeded ``rng``.

    kill            SIGKILL a replica (random or the leader); heal restarts it
    pause           SIGSTOP / SIGCONT
    isolate         cut a replica from every peer and from the clients
    lose-dc         cut (or kill) every replica of one data center
    lose-city       cut (or kill) every replica of one city
    partition       random majority/minority split of the replicas
    leader-alone    the leader cut from its peers (clients still reach it)
    bridge          two halves that only one replica sees both of
    one-way         the leader cannot send to its peers; it still hears them
    clock-step      one replica's clocks jump (monotonic forward, wall ±)
    clock-drift     one replica's clocks run at another rate
    disk-full       fill the tmpfs under one replica's data dir (root)
    fsync-fail      one replica's fsync/fdatasync/msync fail with EIO
    toxic-latency   latency with jitter on one replica's links
    toxic-timeout   one replica's outgoing links go silent, then close
    toxic-reset     one replica's links are reset by peer
    replace         lose a replica for good (SIGKILL, data directory deleted) and
                    replace it: a spare of the same zone starts from an empty
                    directory (``--join``), ``ledgerctl members replace old new``
                    adds it as a learner, waits until it caught up, promotes it,
                    removes the old one; heal waits for that to finish

Toxics go through the Toxiproxy API (toxiproxy-python): of the bundled server
or a real Toxiproxy on loopback, of each host's delay stage in netns mode.

Clock and fsync faults work through the fault shim the replicas are started
with (``chaos/faultshim.c`` via LD_PRELOAD; see ``chaos.cluster``), so the
server needs no hook for them.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILLER_CHUNK_BYTES = 1 << 20
REPLACE_TIMEOUT_S = 120.0  # the whole replacement (catch-up, promote, remove) after the fault window


class Skip(Exception):
    """This nemesis cannot run here (no root, no shim, wrong network); the schedule skips it."""


@dataclass
class Nemesis:
    name: str
    target: str = "random"  # "random", "leader", "follower", a replica id, a zone name
    params: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    def start(self, ctx) -> str:
        return getattr(self, "_start_" + self.name.replace("-", "_"))(ctx)

    def heal(self, ctx) -> None:
        getattr(self, "_heal_" + self.name.replace("-", "_"), self._heal_links)(ctx)

    # ------------------------------------------------------------ helpers

    def _pick(self, ctx) -> str:
        ids = ctx.cluster.ids
        if self.target == "random":
            return ctx.rng.choice(ids)
        if self.target in ("leader", "follower"):
            leader = ctx.leader()
            if self.target == "leader":
                return leader or ctx.rng.choice(ids)
            return ctx.rng.choice([r for r in ids if r != leader])
        if self.target in ids:
            return self.target
        raise ValueError(f"nemesis {self.name}: unknown target {self.target!r}")

    def _cut_between(self, ctx, a: list[str], b: list[str], clients: bool = False) -> None:
        for x in a:
            for y in b:
                if x != y:
                    ctx.network.block(x, y)
                    ctx.network.block(y, x)
            if clients:
                ctx.network.block("client", x)

    def _heal_links(self, ctx) -> None:
        ctx.network.heal()

    def _zone(self, ctx, kind: str) -> tuple[str, list[str]]:
        topo = ctx.cluster.topology
        key = (lambda r: r.data_center) if kind == "dc" else (lambda r: r.city)
        current = [r for r in topo.replicas if r.id in ctx.cluster.ids]  # not spares, not replaced ones
        zones = sorted({key(r) for r in current})
        zone = ctx.rng.choice(zones) if self.target == "random" else self.target
        members = [r.id for r in current if key(r) == zone]
        if not members:
            raise ValueError(f"nemesis {self.name}: no replica in zone {zone!r} (zones: {zones})")
        return zone, members

    # ------------------------------------------------------------ processes

    def _start_kill(self, ctx) -> str:
        rid = self.state["rid"] = self._pick(ctx)
        ctx.cluster.kill(rid)
        return f"SIGKILL {rid}"

    def _heal_kill(self, ctx) -> None:
        ctx.cluster.start(self.state["rid"])

    def _start_pause(self, ctx) -> str:
        rid = self.state["rid"] = self._pick(ctx)
        ctx.cluster.pause(rid)
        return f"SIGSTOP {rid}"

    def _heal_pause(self, ctx) -> None:
        ctx.cluster.resume(self.state["rid"])

    # ------------------------------------------------------------ network

    def _start_isolate(self, ctx) -> str:
        rid = self._pick(ctx)
        self._cut_between(ctx, [rid], ctx.cluster.ids, clients=True)
        return f"isolate {rid}"

    def _lose_zone(self, ctx, kind: str) -> str:
        zone, members = self._zone(ctx, kind)
        self.state["members"] = members
        if self.params.get("mode") == "kill":
            for rid in members:
                ctx.cluster.kill(rid)
            return f"kill {kind} {zone} ({', '.join(members)})"
        others = [r for r in ctx.cluster.ids if r not in members]
        self._cut_between(ctx, members, others, clients=True)
        return f"cut {kind} {zone} ({', '.join(members)})"

    def _heal_zone(self, ctx) -> None:
        if self.params.get("mode") == "kill":
            for rid in self.state["members"]:
                ctx.cluster.start(rid)
        else:
            ctx.network.heal()

    def _start_lose_dc(self, ctx) -> str:
        return self._lose_zone(ctx, "dc")

    _heal_lose_dc = _heal_zone

    def _start_lose_city(self, ctx) -> str:
        return self._lose_zone(ctx, "city")

    _heal_lose_city = _heal_zone

    def _start_partition(self, ctx) -> str:
        ids = list(ctx.cluster.ids)
        ctx.rng.shuffle(ids)
        minority, majority = ids[: len(ids) // 2], ids[len(ids) // 2:]
        self._cut_between(ctx, minority, majority)
        return f"partition {sorted(minority)} | {sorted(majority)}"

    def _start_leader_alone(self, ctx) -> str:
        leader = ctx.leader() or ctx.rng.choice(ctx.cluster.ids)
        self._cut_between(ctx, [leader], ctx.cluster.ids)
        return f"leader {leader} alone"

    def _start_bridge(self, ctx) -> str:
        ids = list(ctx.cluster.ids)
        ctx.rng.shuffle(ids)
        bridge = ids[0]
        rest = ids[1:]
        a, b = rest[: len(rest) // 2], rest[len(rest) // 2:]
        self._cut_between(ctx, a, b)
        return f"bridge {bridge} between {sorted(a)} and {sorted(b)}"

    def _start_one_way(self, ctx) -> str:
        leader = ctx.leader() or ctx.rng.choice(ctx.cluster.ids)
        for r in ctx.cluster.ids:
            if r != leader:
                ctx.network.block(leader, r)
        return f"{leader} cannot send to its peers (one-way)"

    # ------------------------------------------------------------ clock and fsync (fault shim)

    def _shim(self, ctx) -> None:
        if ctx.cluster.shim is None:
            raise Skip("no fault shim (no C compiler)")

    def _write_faults(self, ctx, rid: str, *, rate: float | None = None, step_mono_s: float = 0.0,
                      step_real_s: float = 0.0, fail_sync: int | None = None) -> None:
        path = ctx.cluster.fault_file(rid)
        r, anchor, mono_off, real_off, fail = path.read_text().split()
        r, anchor, mono_off, real_off, fail = float(r), int(anchor), int(mono_off), int(real_off), int(fail)
        now = time.monotonic_ns()
        drift = int((now - anchor) * (r - 1.0))
        mono_off += drift + int(max(0.0, step_mono_s) * 1e9)  # monotonic never goes back
        real_off += drift + int(step_real_s * 1e9)
        new_rate = r if rate is None else rate
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{new_rate} {now} {mono_off} {real_off} {fail if fail_sync is None else fail_sync}\n")
        os.replace(tmp, path)

    def _start_clock_step(self, ctx) -> str:
        self._shim(ctx)
        rid = self.state["rid"] = self._pick(ctx)
        step = self.state["step"] = self.params.get("seconds", ctx.rng.choice([-30.0, 5.0, 60.0]))
        self._write_faults(ctx, rid, step_mono_s=step, step_real_s=step)
        return f"{rid} clock steps {step:+.0f}s (monotonic only forward)"

    def _heal_clock_step(self, ctx) -> None:
        # NTP puts the wall clock right again: a step back by the same amount (itself a fault);
        # the monotonic clock keeps running from where it jumped
        self._write_faults(ctx, self.state["rid"], step_real_s=-self.state["step"])

    def _start_clock_drift(self, ctx) -> str:
        self._shim(ctx)
        rid = self.state["rid"] = self._pick(ctx)
        rate = self.params.get("rate", ctx.rng.choice([0.5, 2.0]))
        self._write_faults(ctx, rid, rate=rate)
        return f"{rid} clock runs at {rate}x"

    def _heal_clock_drift(self, ctx) -> None:
        self._write_faults(ctx, self.state["rid"], rate=1.0)

    def _start_fsync_fail(self, ctx) -> str:
        self._shim(ctx)
        rid = self.state["rid"] = self._pick(ctx)
        self._write_faults(ctx, rid, fail_sync=1)
        return f"{rid} fsync fails (EIO)"

    def _heal_fsync_fail(self, ctx) -> None:
        self._write_faults(ctx, self.state["rid"], fail_sync=0)

    # ------------------------------------------------------------ disk

    def _start_disk_full(self, ctx) -> str:
        if not ctx.tmpfs:
            raise Skip("disk-full needs the replicas' data on tmpfs (root)")
        rid = self.state["rid"] = self._pick(ctx)
        filler = Path(ctx.cluster.data_root / rid / "chaos-filler")
        written = 0
        with open(filler, "wb") as f:
            chunk = b"\0" * FILLER_CHUNK_BYTES
            while True:
                try:
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        self.state["filler"] = str(filler)
        return f"{rid} disk full ({written >> 20} MiB filler)"

    def _heal_disk_full(self, ctx) -> None:
        try:
            os.unlink(self.state["filler"])
        except (FileNotFoundError, KeyError):
            pass

    # ------------------------------------------------------------ toxics (Toxiproxy API)

    def _toxic_links(self, ctx, rid: str, both: bool) -> list[tuple[str, str]]:
        links = [(rid, o) for o in ctx.cluster.ids if o != rid]
        if both:
            links += [(o, rid) for o in ctx.cluster.ids if o != rid]
        return links

    def _add_toxics(self, ctx, kind: str, attributes: dict, both: bool, stream: str = "downstream") -> str:
        rid = self._pick(ctx)
        links = self._toxic_links(ctx, rid, both)
        self.state["links"] = links
        self.state["toxic"] = f"nemesis_{kind}"
        for src, dst in links:
            ctx.network.toxic(src, dst, self.state["toxic"], kind, attributes, stream=stream)
        return f"{kind} {attributes} on the links of {rid}"

    def _remove_toxics(self, ctx) -> None:
        for src, dst in self.state.get("links", []):
            try:
                ctx.network.untoxic(src, dst, self.state["toxic"])
            except Exception:  # noqa: BLE001 - healing must go on with the other links
                pass

    def _start_toxic_latency(self, ctx) -> str:
        return self._add_toxics(ctx, "latency", {"latency": self.params.get("ms", 100), "jitter": 50}, both=True,
                                stream="upstream")

    _heal_toxic_latency = _remove_toxics

    def _start_toxic_timeout(self, ctx) -> str:
        return self._add_toxics(ctx, "timeout", {"timeout": self.params.get("ms", 2000)}, both=False,
                                stream="upstream")

    _heal_toxic_timeout = _remove_toxics

    def _start_toxic_reset(self, ctx) -> str:
        return self._add_toxics(ctx, "reset_peer", {"timeout": self.params.get("ms", 500)}, both=True,
                                stream="upstream")

    _heal_toxic_reset = _remove_toxics


    # ------------------------------------------------------------ replacement

    def _start_replace(self, ctx) -> str:
        pending = ctx.cluster.spares
        old = pending[0][0] if self.target == "random" and pending else self._pick(ctx)
        new = ctx.cluster.spare_for(old)
        if new is None:
            raise Skip(f"no spare replica for {old} (the runner adds one per replace in the schedule)")
        self.state.update(old=old, new=new, started=time.monotonic())
        ctx.cluster.kill(old)
        ctx.cluster.wipe(old)
        ctx.cluster.start(new, join=True)
        log = open(ctx.cluster.run_dir / f"replace-{old}-{new}.log", "ab")
        self.state["proc"] = subprocess.Popen(
            ctx.cluster.admin_argv("--deadline", "30", "members", "replace", old, new,
                                   "--timeout", str(REPLACE_TIMEOUT_S)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

        def finished(proc=self.state["proc"]):
            proc.wait()
            self.state["done_at"] = time.monotonic()

        threading.Thread(target=finished, daemon=True).start()
        return f"SIGKILL {old} and delete its data; {new} from an empty directory replaces it"

    def _heal_replace(self, ctx) -> None:
        # the old replica is gone for good whatever happens: never restart it on an empty disk
        ctx.cluster.retire(self.state["old"], self.state["new"])
        proc = self.state["proc"]
        try:
            proc.wait(REPLACE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # from the loss to the new voter set in effect (ledgerctl returns once the removal took effect)
        self.state["replaced_after_s"] = self.state.get("done_at", time.monotonic()) - self.state["started"]
        log = ctx.cluster.run_dir / f"replace-{self.state['old']}-{self.state['new']}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        try:
            members = {m["id"]: m["kind"] for m in json.loads(text)["members"]} if proc.returncode == 0 else {}
        except (ValueError, KeyError, TypeError):
            members = {}
        self.state["members"] = members
        if proc.returncode != 0 or members.get(self.state["new"]) != "voter" or self.state["old"] in members:
            self.state["error"] = (f"replacing {self.state['old']} by {self.state['new']} failed "
                                   f"(ledgerctl exit {proc.returncode}): {text.strip()[-300:]}")

    def report(self) -> dict:
        """What the runner keeps in the fault window beyond the description."""
        out = {k: self.state[k] for k in ("replaced_after_s", "members", "error") if k in self.state}
        return out


ALL = (
    "kill", "pause", "isolate", "lose-dc", "lose-city", "partition", "leader-alone", "bridge", "one-way",
    "clock-step", "clock-drift", "disk-full", "fsync-fail", "toxic-latency", "toxic-timeout", "toxic-reset",
    "replace",
)


def make(spec: str) -> Nemesis:
    """"kill", "kill:leader", "lose-city:paris", "lose-dc:random:kill" -> a Nemesis."""
    parts = spec.split(":")
    name = parts[0]
    if name not in ALL:
        raise ValueError(f"unknown nemesis {name!r} (known: {', '.join(ALL)})")
    target = parts[1] if len(parts) > 1 and parts[1] else "random"
    params: dict[str, Any] = {}
    if len(parts) > 2:
        params["mode"] = parts[2]
    return Nemesis(name, target, params)
