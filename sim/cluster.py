"""One seeded run: real ``consensus.Replica`` objects over a simulated world.

Everything random comes from one ``random.Random(seed)``: the fault profile,
the network, the replicas' own election jitter, the clients. Time is a
discrete event queue in time units; a replica ticks every ``TICK_UNITS``
scaled by its own clock rate, which drifts from the nominal rate within the
configured bound.

A run has two phases:

* safety: faults drawn from the seed's profile (loss, duplication, delay,
  partitions of every shape, crashes that lose unsynced writes, pauses) while
  clients propose and read concurrently;
* liveness: all faults healed; a leader must be elected and every slot a
  leader handed out must be chosen everywhere within ``liveness_ticks``.

Then a failover probe: the leader is crashed in a healthy network and the
ticks until another replica leads (with its first no-op chosen) are recorded.

The driver of each replica does what the real server does, in the same
order: persist the Ready (synced when asked), then send, then apply, then
answer clients; after a pause it first delivers every tick it missed.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Callable

from consensus import Config, DurableState, Refused, Replica, Role
from consensus.membership import MembershipError
from consensus.messages import Accepted, Message, Promise, sendable_before_persist
from sim.checker import Checker
from sim.network import Network, NetworkProfile
from sim.storage import SimStorage
from sim.workload import LogWorkload, Workload

TICK_UNITS = 10


@dataclass
class FaultProfile:
    replicas: int
    network: NetworkProfile
    crash_rate: float  # per replica per tick
    crash_mid_step: float  # probability a step's writes are lost with its crash
    partition_rate: float  # per tick
    pause_rate: float  # per replica per tick
    propose_rate: float  # client proposals per tick
    read_rate: float  # client reads per tick
    drift: float  # clock rates differ by at most this factor minus one
    transfer_rate: float  # leadership transfers per leader tick
    membership_rate: float  # membership changes per leader tick
    compact_rate: float  # snapshots + log compaction per replica tick
    leader_fault_rate: float  # per leader tick: crash or cut off the leader itself
    window_slots: int  # the pipeline window, which is also the membership alpha

    @classmethod
    def draw(cls, rng: random.Random, replicas: int | None, drift_bound: float) -> "FaultProfile":
        return cls(
            replicas=replicas or rng.choice([3, 3, 5]),
            network=NetworkProfile.draw(rng),
            crash_rate=rng.choice([0.0, 0.001, 0.003, 0.01]),
            crash_mid_step=rng.choice([0.0, 0.3, 1.0]),
            partition_rate=rng.choice([0.0, 0.005, 0.02, 0.05]),
            pause_rate=rng.choice([0.0, 0.0, 0.002, 0.005]),
            propose_rate=rng.choice([0.2, 0.5, 1.0, 3.0]),
            read_rate=rng.choice([0.0, 0.2, 1.0]),
            drift=rng.uniform(0.0, drift_bound),
            transfer_rate=rng.choice([0.0, 0.002, 0.01]),
            membership_rate=rng.choice([0.0, 0.003, 0.01]),
            compact_rate=rng.choice([0.0, 0.005, 0.02]),
            leader_fault_rate=rng.choice([0.0, 0.005, 0.02, 0.05]),
            window_slots=rng.choice([2, 4, 16, 256, 256]),
        )

    def describe(self) -> str:
        n = self.network
        return (
            f"replicas={self.replicas} loss={n.loss} dup={n.duplicate} delay={n.delay_min}-{n.delay_max} "
            f"crash={self.crash_rate} mid_step={self.crash_mid_step} partition={self.partition_rate} "
            f"tail={n.tail} pause={self.pause_rate} propose={self.propose_rate} read={self.read_rate} drift={self.drift:.3f} "
            f"transfer={self.transfer_rate} membership={self.membership_rate} compact={self.compact_rate} "
            f"leader_fault={self.leader_fault_rate} window={self.window_slots}"
        )


@dataclass
class _Node:
    id: int
    rate: float  # time units per tick = TICK_UNITS * rate
    storage: SimStorage
    replica: Replica | None = None
    state: object = None  # the workload's state machine
    applied_below: int = 0
    paused_until: int = -1
    missed_ticks: int = 0
    proposals: dict[int, bytes] = field(default_factory=dict)  # slot -> value
    reads: dict[int, tuple[int, int]] = field(default_factory=dict)  # token -> (floor, index)
    inbox_while_paused: list[Message] = field(default_factory=list)


@dataclass
class RunResult:
    seed: int
    profile: FaultProfile
    violations: list
    chosen_slots: int
    acked: int
    election_ticks: int | None  # ticks from leader loss to a new leader
    events: int
    liveness_ok: bool
    log: list[str]


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        replicas: int | None = None,
        safety_ticks: int = 300,
        liveness_ticks: int = 400,
        workload_factory: Callable[[random.Random], Workload] | None = None,
        replica_class: type[Replica] = Replica,
        verbose: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        base = Config(replica_id=1, replica_ids=(1, 2, 3))
        self.profile = FaultProfile.draw(self.rng, replicas, base.clock_drift_ppm / 1e6)
        self.voters0 = tuple(range(1, self.profile.replicas + 1))
        # Two spare machines that membership changes may add.
        self.ids = tuple(range(1, self.profile.replicas + 3))
        self.safety_ticks = safety_ticks
        self.liveness_ticks = liveness_ticks
        self.replica_class = replica_class
        self.verbose = verbose
        self.workload: Workload = (workload_factory or LogWorkload)(random.Random(self.rng.random()))
        self.net = Network(random.Random(self.rng.random()), self.profile.network)
        self.checker = Checker()
        self.time = 0
        self.events = 0
        self._queue: list[tuple[int, int, str, object]] = []
        self._seq = 0
        self._token = 0
        self.log_lines: list[str] = []
        self.faults_on = True
        self.nodes: dict[int, _Node] = {}
        for rid in self.ids:
            rate = 1.0 + self.rng.uniform(0.0, self.profile.drift)
            node = _Node(rid, rate, SimStorage())
            self.nodes[rid] = node
            self._boot(node)
            self._schedule(self.rng.randint(1, TICK_UNITS), "tick", rid)

    # ------------------------------------------------------------ plumbing

    def _say(self, text: str) -> None:
        if self.verbose:
            self.log_lines.append(f"t={self.time} {text}")

    def _schedule(self, delay: int, kind: str, data: object) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.time + delay, self._seq, kind, data))

    def _config(self, rid: int) -> Config:
        learners = () if rid in self.voters0 else (rid,)
        return Config(
            replica_id=rid,
            replica_ids=self.voters0,
            learner_ids=learners,
            window_slots_max=self.profile.window_slots,
            promise_chosen_slots_max=max(1024, self.profile.window_slots),
        )

    def _boot(self, node: _Node) -> None:
        durable = node.storage.load()
        node.replica = self.replica_class(self._config(node.id), durable, random.Random(self.rng.random()))
        snap = node.storage.snapshot
        if snap is not None:
            node.state = self.workload.copy_state(snap[1])
            start = snap[0]
        else:
            node.state = self.workload.new_state()
            start = 0
        # Rebuild the state machine from the snapshot and the durable log, as
        # a restarted server reopens its applied tables.
        for slot in range(start, durable.applied_below):
            self.workload.apply(node.state, durable.accepted[slot][1])
        node.applied_below = durable.applied_below
        node.proposals.clear()
        node.reads.clear()
        self.checker.on_restart(node.id, durable.promised)

    def alive(self, rid: int) -> bool:
        return self.nodes[rid].replica is not None

    # -------------------------------------------------------------- driver

    def _drive(self, node: _Node) -> None:
        """Persist, send, apply, answer: what the server does after each input."""
        r = node.replica
        assert r is not None
        self.checker.on_promised(node.id, r.promised)
        ready = r.ready()
        # As the server does: the leader's accepts and heartbeats leave before
        # its own persist, so a crash here may follow a partial send.
        late = []
        for msg in ready.messages:
            if sendable_before_persist(msg):
                self._send(msg)
            else:
                late.append(msg)
        if self.faults_on and self.rng.random() < self.profile.crash_rate * self.profile.crash_mid_step:
            self._say(f"r{node.id} crashes before persisting a step")
            self._crash(node)
            return
        applied_below = node.applied_below + len(ready.committed) if ready.committed else None
        node.storage.write(ready.persist, applied_below)
        if ready.persist.promised is not None and ready.persist.must_sync:
            self.checker.on_durable_promised(node.id, ready.persist.promised)
        self._check_durable_before_send(node, late)
        for msg in late:
            self._send(msg)
        for slot, value in ready.committed:
            assert slot == node.applied_below, "committed entries out of order"
            self.checker.on_chosen(node.id, slot, value)
            self.workload.apply(node.state, value)
            node.applied_below = slot + 1
            mine = node.proposals.pop(slot, None)
            if mine is not None and mine == value:
                self.checker.on_acked(slot, value)
        for rr in ready.reads:
            floor, _ = node.reads.get(rr.token, (0, 0))
            node.reads[rr.token] = (floor, rr.index)
        for rr in ready.reads_refused:
            node.reads.pop(rr.token, None)
        self._finish_reads(node)
        if ready.snapshot_needed_from is not None:
            for delay in self.net.delays(ready.snapshot_peer, node.id):
                self._schedule(delay * 3, "snapshot", (ready.snapshot_peer, node.id))
                break

    def _send(self, msg: Message) -> None:
        for delay in self.net.delays(msg.src, msg.dst):
            self._schedule(delay, "msg", msg)

    def _check_durable_before_send(self, node: _Node, messages: list) -> None:
        """A promise or an acceptance may leave only once it is on disk."""
        disk = node.storage
        for msg in messages:
            if isinstance(msg, Promise) and disk.promised < msg.ballot:
                self.checker.fail(f"r{node.id} sent a promise of {msg.ballot} before persisting it")
            elif isinstance(msg, Accepted):
                if disk.promised < msg.ballot:
                    self.checker.fail(f"r{node.id} acknowledged ballot {msg.ballot} before persisting it")
                for slot in msg.slots:
                    if slot < disk.log_start or node.replica.chosen_value(slot) is not None:
                        continue  # a chosen slot keeps its value whatever ballot is on disk
                    entry = disk.accepted.get(slot)
                    if entry is None or entry[0] < msg.ballot:
                        self.checker.fail(f"r{node.id} acknowledged slot {slot} before persisting it")

    def _finish_reads(self, node: _Node) -> None:
        for token, (floor, index) in list(node.reads.items()):
            if index > 0 and node.applied_below >= index:
                del node.reads[token]
                self.checker.on_read(node.id, floor, node.applied_below)

    def _on_snapshot(self, src: int, dst: int) -> None:
        """A peer's snapshot arrives (it may be stale or overtaken by then)."""
        peer, node = self.nodes[src], self.nodes[dst]
        snap = peer.storage.snapshot
        if node.replica is None or snap is None or not self.net.delivers(src, dst):
            return
        index, state, memberships = snap
        if index <= node.replica.chosen_below:
            return
        self._say(f"r{dst} installs r{src}'s snapshot at {index}")
        state_copy = self.workload.copy_state(state)
        node.storage.install(index, self.workload.copy_state(state), memberships)
        node.state = state_copy
        node.applied_below = index
        for slot in [s for s in node.proposals if s < index]:
            del node.proposals[slot]
        node.replica.install_snapshot(index, memberships)
        self._drive(node)

    def _compact(self, node: _Node) -> None:
        r = node.replica
        assert r is not None
        index = node.applied_below - self.rng.randint(0, 20)
        if index <= r.log_start:
            return
        node.storage.sync()
        # The state at ``index`` is rebuilt from the previous snapshot and log.
        snap = node.storage.snapshot
        state = self.workload.copy_state(snap[1]) if snap else self.workload.new_state()
        for slot in range(snap[0] if snap else 0, index):
            self.workload.apply(state, node.storage.accepted[slot][1])
        node.storage.compact(index, state, r.membership_for_snapshot(index))
        r.compact(index)
        self._say(f"r{node.id} compacts its log below {index}")

    def _change_membership(self, node: _Node) -> None:
        r = node.replica
        assert r is not None
        m = r.membership
        rng = self.rng
        options = [("add_learner", i) for i in self.ids if i not in m.members]
        options += [("promote", i) for i in m.learners]
        options += [("remove", i) for i in m.learners]
        if len(m.voters) > 3:
            options += [("remove", i) for i in m.voters if i != node.id]
        if not options:
            return
        kind, rid = rng.choice(options)
        try:
            new = getattr(m, kind)(rid)
            self.checker.on_proposed(new.encode())
            r.change_membership(kind, rid)
        except (Refused, MembershipError):
            return
        self._say(f"r{node.id} proposes membership change {kind} r{rid}")
        self._drive(node)

    def _crash(self, node: _Node) -> None:
        node.storage.crash()
        node.replica = None
        node.proposals.clear()
        node.reads.clear()
        node.inbox_while_paused.clear()
        node.paused_until = -1
        node.missed_ticks = 0

    # -------------------------------------------------------------- events

    def _on_tick(self, rid: int) -> None:
        node = self.nodes[rid]
        self._schedule(max(1, round(TICK_UNITS * node.rate)), "tick", rid)
        if node.replica is None:
            return
        if node.paused_until > self.time:
            node.missed_ticks += 1
            return
        if node.missed_ticks or node.inbox_while_paused:
            self._on_resume(rid)
            if node.replica is None:
                return
        node.replica.tick()
        self._drive(node)
        if self.faults_on:
            self._maybe_fault(node)
        self._maybe_client(node)

    def _on_msg(self, msg: Message) -> None:
        node = self.nodes[msg.dst]
        if node.replica is None or not self.net.delivers(msg.src, msg.dst):
            return
        if node.paused_until > self.time:
            node.inbox_while_paused.append(msg)
            return
        if node.missed_ticks or node.inbox_while_paused:
            self._on_resume(msg.dst)
            if node.replica is None:
                return
        node.replica.step(msg)
        self._drive(node)

    def _on_resume(self, rid: int) -> None:
        node = self.nodes[rid]
        if node.replica is None or node.paused_until > self.time:
            return
        if not node.missed_ticks and not node.inbox_while_paused:
            return
        self._say(f"r{rid} resumes after {node.missed_ticks} ticks")
        # The server advances its clock by every tick it missed before
        # anything else, steps the backlog, and only then runs its timers.
        node.replica.advance(node.missed_ticks)
        node.missed_ticks = 0
        inbox, node.inbox_while_paused = node.inbox_while_paused, []
        for msg in inbox:
            if node.replica is None:
                return
            node.replica.step(msg)
            self._drive(node)
        if node.replica is not None:
            node.replica.run_timers()
            self._drive(node)

    def _on_restart(self, rid: int) -> None:
        node = self.nodes[rid]
        if node.replica is not None:
            return
        self._say(f"r{rid} restarts")
        self._boot(node)

    # -------------------------------------------------------------- faults

    def _maybe_fault(self, node: _Node) -> None:
        p = self.profile
        rng = self.rng
        if rng.random() < p.crash_rate:
            self._say(f"r{node.id} crashes")
            self._crash(node)
            self._schedule(rng.randint(1, 60) * TICK_UNITS, "restart", node.id)
            return
        if node.replica is not None and node.replica.is_leader and rng.random() < p.leader_fault_rate:
            # Leaders die with slots in flight that only they (or a minority) hold.
            if rng.random() < 0.5:
                self._say(f"leader r{node.id} crashes")
                self._crash(node)
                self._schedule(rng.randint(1, 40) * TICK_UNITS, "restart", node.id)
                return
            self.net.isolate({node.id}, self.ids)
            self._say(f"leader r{node.id} cut off")
            self._schedule(rng.randint(5, 60) * TICK_UNITS, "heal_net", None)
        if rng.random() < p.pause_rate:
            ticks = rng.randint(1, 60)
            node.paused_until = self.time + ticks * TICK_UNITS
            self._say(f"r{node.id} pauses for {ticks} ticks")
            self._schedule(ticks * TICK_UNITS + 1, "resume", node.id)
        r = node.replica
        if r is not None and rng.random() < p.compact_rate:
            self._compact(node)
        if r is not None and r.is_leader and rng.random() < p.membership_rate:
            self._change_membership(node)
        if r is not None and r.is_leader and rng.random() < p.transfer_rate:
            target = rng.choice([i for i in self.ids if i != node.id] or [node.id])
            at_once = rng.random() < 0.5  # as a leader with a failed disk does
            try:
                r.transfer_leadership(target, at_once=at_once)
                self._say(f"r{node.id} hands leadership to r{target}{' at once' if at_once else ''}")
            except Refused:
                pass
            self._drive(node)
        if node.id == self.ids[0] and rng.random() < p.partition_rate * len(self.ids):
            self._partition()

    def _partition(self) -> None:
        rng = self.rng
        ids = self.ids
        self.net.heal()
        kind = rng.choice(["heal", "heal", "minority", "leader", "one_way", "bridge", "majority_split"])
        leader = next((r for r in ids if self.alive(r) and self.nodes[r].replica.is_leader), None)
        if kind == "minority":
            group = set(rng.sample(ids, rng.randint(1, (len(ids) - 1) // 2)))
            self.net.isolate(group, ids)
        elif kind == "leader" and leader is not None:
            self.net.isolate({leader}, ids)
        elif kind == "one_way":
            a = rng.choice(ids)
            self.net.isolate({a}, ids, one_way=True)
        elif kind == "bridge":
            # One replica sees both halves; the halves do not see each other.
            shuffled = list(ids)
            rng.shuffle(shuffled)
            rest = shuffled[1:]  # shuffled[0] is the bridge: it keeps every link
            half = len(rest) // 2
            for a in rest[:half]:
                for b in rest[half:]:
                    self.net.blocked.add((a, b))
                    self.net.blocked.add((b, a))
        elif kind == "majority_split":
            shuffled = list(ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            self.net.isolate(set(shuffled[:cut]), ids)
        self._say(f"network: {kind} blocked={sorted(self.net.blocked)}")
        self._schedule(rng.randint(5, 80) * TICK_UNITS, "heal_net", None)

    def _heal_all(self) -> None:
        self.faults_on = False
        self.net.heal()
        self.net.profile = NetworkProfile(loss=0.0, duplicate=0.0, delay_min=1, delay_max=5)
        for rid, node in self.nodes.items():
            if node.replica is None:
                self._boot(node)
            if node.paused_until > self.time:
                node.paused_until = self.time
                self._on_resume(rid)

    # -------------------------------------------------------------- clients

    def _maybe_client(self, node: _Node) -> None:
        r = node.replica
        if r is None or not r.is_leader or not self.faults_on:
            return  # clients go quiet in the liveness phase
        p = self.profile
        rate = p.propose_rate
        n = int(rate) + (1 if self.rng.random() < rate - int(rate) else 0)
        for _ in range(n):
            value = self.workload.make_value()
            self.checker.on_proposed(value)
            try:
                slot = r.propose(value)
            except Refused:
                continue
            node.proposals[slot] = value
        if self.rng.random() < p.read_rate:
            self._token += 1
            node.reads[self._token] = (self.checker.observed_below, 0)
            r.read(self._token)
        self._drive(node)

    # ----------------------------------------------------------------- run

    def _run_until(self, end_time: int, stop: Callable[[], bool] | None = None) -> bool:
        while self._queue and self._queue[0][0] <= end_time:
            t, _, kind, data = heapq.heappop(self._queue)
            self.time = t
            self.checker.now = t
            self.events += 1
            try:
                if kind == "tick":
                    self._on_tick(data)  # type: ignore[arg-type]
                elif kind == "msg":
                    self._on_msg(data)  # type: ignore[arg-type]
                elif kind == "resume":
                    self._on_resume(data)  # type: ignore[arg-type]
                elif kind == "restart":
                    if self.faults_on:
                        self._on_restart(data)  # type: ignore[arg-type]
                elif kind == "snapshot":
                    self._on_snapshot(*data)  # type: ignore[misc]
                elif kind == "heal_net":
                    if self.faults_on:
                        self.net.heal()
            except AssertionError as e:
                # A replica's own invariant broke: that is a found bug.
                self.checker.fail(f"invariant broken during {kind}: {e}")
            if self.checker.violations:
                return False
            if stop is not None and self.events % 16 == 0 and stop():
                return True
        self.time = max(self.time, end_time)
        return stop() if stop is not None else True

    def _leader(self) -> int | None:
        for rid in self.ids:
            r = self.nodes[rid].replica
            if r is not None and r.is_leader and r.chosen_below > r._leader.noop_slot:  # noqa: SLF001
                return rid
        return None

    def _converged(self) -> bool:
        leader = self._leader()
        if leader is None:
            return False
        lr = self.nodes[leader].replica
        assert lr is not None
        if lr.membership_changing():
            return False
        handed_out = max(
            [s + 1 for s in self.checker.chosen] + [lr._leader.next_slot]  # noqa: SLF001
        )
        return all(
            self.nodes[rid].replica is not None and self.nodes[rid].applied_below >= handed_out
            for rid in self._members()
        )

    def _members(self) -> frozenset[int]:
        leader = self._leader()
        if leader is None:
            return frozenset(self.voters0)
        return self.nodes[leader].replica.membership.members

    def run(self) -> RunResult:
        self._say(f"profile: {self.profile.describe()}")
        ok = self._run_until(self.safety_ticks * TICK_UNITS)
        liveness_ok = False
        election_ticks = None
        if ok:
            self._say("liveness phase: faults healed")
            self._heal_all()
            liveness_ok = self._run_until(self.time + self.liveness_ticks * TICK_UNITS, self._converged)
            if not liveness_ok and not self.checker.violations:
                self.checker.fail(
                    f"liveness: no convergence within {self.liveness_ticks} ticks after healing "
                    f"(leader={self._leader()}, applied={[self.nodes[r].applied_below for r in self.ids]})"
                )
        if liveness_ok:
            election_ticks = self._failover_probe()
        if not self.checker.violations:
            members = self._members()
            logs = {
                rid: (
                    node.replica.log_start,
                    [
                        node.replica.chosen_value(s) or b""
                        for s in range(node.replica.log_start, node.replica.chosen_below)
                    ],
                )
                for rid, node in self.nodes.items()
                if node.replica is not None and rid in members
            }
            self.checker.check_final(logs)
            self.workload.check_states(
                {
                    rid: (n.applied_below, n.state)
                    for rid, n in self.nodes.items()
                    if n.replica is not None and rid in members
                },
                self.checker.fail,
            )
        return RunResult(
            seed=self.seed,
            profile=self.profile,
            violations=list(self.checker.violations),
            chosen_slots=len(self.checker.chosen),
            acked=len(self.checker.acked),
            election_ticks=election_ticks,
            events=self.events,
            liveness_ok=liveness_ok,
            log=self.log_lines,
        )

    def _failover_probe(self) -> int | None:
        """Crash the leader in a healthy network; ticks until another leads."""
        old = self._leader()
        if old is None or len(self.ids) == 1:
            return None
        self._say(f"failover probe: crash leader r{old}")
        self._crash(self.nodes[old])
        start = self.time

        def new_leader() -> bool:
            leader = self._leader()
            return leader is not None and leader != old

        budget = self.liveness_ticks * TICK_UNITS
        if not self._run_until(self.time + budget, new_leader):
            if not self.checker.violations:
                self.checker.fail(f"liveness: no new leader within {self.liveness_ticks} ticks of losing r{old}")
            return None
        ticks = (self.time - start) // TICK_UNITS
        # Bring the old leader back: it must catch up to the same log.
        self._boot(self.nodes[old])
        if not self._run_until(self.time + budget, self._converged) and not self.checker.violations:
            self.checker.fail("liveness: the restarted leader did not catch up")
        return ticks
