"""The Multi-Paxos replica: acceptor, proposer and learner in one state machine.

Public surface, used by the replica server and the simulator::

    r = Replica(config, durable_state, rng)    # rng: a seeded random.Random
    r.tick()                                   # one unit of time passed
    r.step(message)                            # a message from a peer arrived
    slot = r.propose(value)                    # leader only; raises Refused
    r.read(token)                              # linearizable read request
    r.transfer_leadership(target_id)           # leader only; raises Refused
    ready = r.ready()                          # drain: persist, send, apply
    r.role, r.leader_id, r.ballot, r.promised, r.chosen_below

``propose`` returns the slot the value will be proposed in. The value is
committed when ``ready().committed`` contains (slot, the same value); if a
later leader filled that slot with another value, the proposal failed and the
client may retry (client-chosen ids make retries idempotent).

The algorithm (Lamport, "Paxos Made Simple", section 3, with the usual
Multi-Paxos engineering):

* Phase 1 runs once per leadership for every slot from the candidate's first
  unchosen slot on (``Prepare``/``Promise``). From a majority of promises the
  new leader takes, for each slot, the value accepted at the highest ballot
  ("P2c"), re-proposes it at its own ballot and fills holes with no-ops. It then
  proposes one no-op of its own so that it knows every slot chosen before it.
* Phase 2 (``Accept``/``Accepted``) is pipelined: up to ``window_slots_max``
  slots in flight; a slot is chosen once a majority accepted it. The chosen
  point rides on every ``Accept`` and ``Heartbeat``; a follower marks slot *s*
  chosen when it accepted *s* at the leader's ballot, and fetches everything
  else by ``CatchupRequest``.
* A state-free pre-vote round and leader stickiness keep a healthy leader in
  place: an acceptor that heard its leader within the minimum election timeout
  refuses to promise anybody else (unless the leader itself asked for the
  transfer).
* Reads: a lease (see ``consensus.config``) or, as a fallback, a read-index
  round confirmed by a majority of heartbeat acknowledgements.

Invariants asserted here (a broken one means a bug, so the replica crashes):
the promised ballot never decreases; an acceptor never accepts below its
promise; a slot known chosen never changes value; the chosen point only grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from consensus.ballot import Ballot, ZERO_BALLOT
from consensus.config import Config
from consensus.membership import (
    Membership,
    MembershipError,
    MembershipHistory,
    decode_membership,
    is_membership_value,
)
from consensus.messages import (
    NOOP,
    Accept,
    Accepted,
    AcceptedEntry,
    CatchupReply,
    CatchupRequest,
    Entry,
    Heartbeat,
    HeartbeatAck,
    Message,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Reject,
    RejectReason,
    TimeoutNow,
)
if TYPE_CHECKING:
    import random  # only the type: the caller hands in a seeded instance

from consensus.ready import (
    DurableState,
    Persist,
    ReadReady,
    ReadRefused,
    Ready,
    RefuseReason,
    Refused,
)

# A ballot above every real one, stored with values learned to be chosen from
# a peer's catch-up reply rather than accepted in phase 2. Reporting such an
# entry in a promise is safe: every ballot at or above the one that chose a
# value proposes that same value, so the highest-ballot rule picks it anyway.
CHOSEN_BALLOT = Ballot(1 << 62, 0)

# Per-entry framing allowance when sizing messages.
_ENTRY_OVERHEAD_BYTES = 32


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class _PendingRead:
    token: int
    seq: int  # heartbeat round that must be acknowledged by a majority
    index: int  # chosen point when the read arrived


@dataclass(slots=True)
class _LeaderState:
    ballot: Ballot
    next_slot: int
    noop_slot: int  # the leader's own first no-op; reads wait for it
    acks: dict[int, set[int]] = field(default_factory=dict)  # slot -> acceptors
    sent_tick: dict[int, int] = field(default_factory=dict)  # slot -> last send
    hb_seq: int = 0
    hb_sent_tick: dict[int, int] = field(default_factory=dict)  # seq -> tick
    hb_acked: dict[int, int] = field(default_factory=dict)  # peer -> highest seq
    quorum_seq: int = 0  # highest seq acknowledged by a majority
    lease_until: int = -1  # tick until which lease reads are allowed
    last_quorum_tick: int = 0  # send tick of the newest majority-acked round
    reads: list[_PendingRead] = field(default_factory=list)
    transfer_to: int = 0
    transfer_deadline: int = 0
    # Once a transfer was attempted, a TimeoutNow may still be in flight and
    # let the target campaign past stickiness at any time: no more lease
    # reads under this ballot (read index stays safe).
    lease_forfeited: bool = False
    timeout_now_tick: int = -(1 << 30)
    heartbeat_tick: int = 0  # when the timers last sent a heartbeat round
    retransmit_tick: int = 0
    peer_chosen: dict[int, int] = field(default_factory=dict)
    membership_slot: int | None = None  # slot of a membership change in flight
    membership_pending: Membership | None = None


class Replica:
    def __init__(self, config: Config, durable: DurableState, rng: random.Random) -> None:
        self.config = config
        self.id = config.replica_id
        self._rng = rng
        self.now = 0

        # Acceptor state (durable).
        self.promised: Ballot = durable.promised
        self.accepted: dict[int, tuple[Ballot, bytes]] = dict(durable.accepted)
        self.chosen_below = durable.chosen_below
        self.log_start = durable.log_start
        assert durable.applied_below <= durable.chosen_below or durable.applied_below <= durable.log_start, (
            "applied beyond the chosen point"
        )
        self._emit_below = max(durable.applied_below, durable.log_start)
        self.chosen_below = max(self.chosen_below, self.log_start)
        self._alpha = config.window_slots_max
        self._leader: _LeaderState | None = None
        if durable.memberships:
            self.members = MembershipHistory.from_tuple(durable.memberships)
        else:
            self.members = MembershipHistory(
                [(0, Membership(frozenset(config.replica_ids), frozenset(config.learner_ids)))]
            )
        for slot in range(self.log_start, self.chosen_below):
            self._on_chosen(slot)
        # Slots known chosen above the contiguous chosen point (learned by
        # catch-up or by the leader's acks).
        self._chosen_above: set[int] = {
            s for s, (b, _) in self.accepted.items() if b == CHOSEN_BALLOT and s >= self.chosen_below
        }

        self.role = Role.FOLLOWER
        self.leader_id = 0
        self._last_heard = 0
        # After a restart we may have forgotten that we heard a leader and
        # acknowledged its lease: refuse to promise for one full timeout.
        self._quiet_until = config.election_timeout_min_ticks
        self._election_deadline = 0
        self._reset_election_timer()
        self._max_round_seen = self.promised.round

        # Campaign state.
        self._campaign_ballot: Ballot = ZERO_BALLOT
        self._campaign_from = 0
        self._votes: dict[int, Promise | None] = {}
        self._asked: set[int] = set()
        self._transfer_from: Ballot = ZERO_BALLOT
        self._prevotes: set[int] = set()
        self._transfer_campaign = False

        # Follower catch-up.
        self._catchup_sent_tick = -(1 << 30)
        self._catchup_from = -1

        # Output being built for the next ready().
        self._persist_promised: Ballot | None = None
        self._persist_accepted: dict[int, tuple[Ballot, bytes]] = {}
        self._persist_chosen = False
        self._messages: list[Message] = []
        self._reads_ready: list[ReadReady] = []
        self._reads_refused: list[ReadRefused] = []
        self._snapshot_needed_from: int | None = None
        self._snapshot_peer = 0
        self._accept_queue: list[int] = []  # leader: slots to broadcast
        self._heartbeat_now = False

    # ------------------------------------------------------------------ views

    @property
    def ballot(self) -> Ballot:
        return self._leader.ballot if self._leader else self.promised

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def chosen_value(self, slot: int) -> bytes | None:
        """The chosen value of ``slot`` if this replica knows it, else None."""
        if slot < self.log_start:
            return None
        if slot < self.chosen_below or slot in self._chosen_above:
            entry = self.accepted.get(slot)
            return entry[1] if entry else None
        return None

    @property
    def membership(self) -> Membership:
        """The membership in effect at the first unchosen slot."""
        return self.members.at(self.chosen_below)

    def is_voter(self) -> bool:
        return self.id in self.membership.voters

    def membership_changing(self) -> bool:
        """A change is in flight or chosen but not yet in effect."""
        ls = self._leader
        if ls is not None and ls.membership_slot is not None:
            return True
        return self.members.latest()[0] > self.chosen_below

    def membership_for_snapshot(self, index: int) -> tuple:
        """The membership history a snapshot of slots below ``index`` carries."""
        keep = [(e, m) for e, m in self.members.entries if e < index + self._alpha]
        return MembershipHistory(keep or self.members.entries[:1]).to_tuple()

    def lease_valid(self) -> bool:
        ls = self._leader
        return bool(
            ls is not None
            and self.config.lease_reads
            and not self.membership_changing()
            and not ls.lease_forfeited
            and ls.transfer_to == 0
            and self.now < ls.lease_until
            and self.chosen_below > ls.noop_slot
        )

    # ----------------------------------------------------------------- inputs

    def tick(self, ticks: int = 1) -> None:
        """``ticks`` units of time passed: advance the clock, then run the timers."""
        self.advance(ticks)
        self.run_timers()

    def advance(self, ticks: int) -> None:
        """Advance the clock without running timers.

        A driver that stalled (a long disk step, a paused process) advances by
        every tick it missed, then steps the messages that arrived meanwhile,
        then calls ``run_timers``: a follower whose leader's heartbeats are in
        that backlog does not start a needless election, and a leader judges
        its lease on the advanced clock. Stepping messages late only lengthens
        stickiness, which is the safe direction for leases.
        """
        assert ticks >= 0
        self.now += ticks

    def run_timers(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        elif self.now >= self._election_deadline:
            if self.role is Role.CANDIDATE and self._transfer_campaign:
                self._transfer_campaign = False
            if self.is_voter():
                self._start_prevote()
            else:
                self._step_down(self.leader_id if self.role is Role.FOLLOWER else 0)
                self._reset_election_timer()

    def step(self, msg: Message) -> None:
        assert msg.dst == self.id, f"message for {msg.dst} delivered to {self.id}"
        if msg.src == self.id:
            return
        # Messages from replicas outside the membership are handled like any
        # other: votes count only through voter sets, and the wire layer
        # refuses frames from outside the cluster.
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            return
        handler(self, msg)

    def propose(self, value: bytes) -> int:
        ls = self._leader
        if ls is None:
            raise Refused(RefuseReason.NOT_LEADER, self.leader_id)
        if ls.transfer_to:
            raise Refused(RefuseReason.TRANSFERRING, ls.transfer_to)
        if len(value) > self.config.slot_bytes_max:
            raise Refused(RefuseReason.TOO_LARGE, self.id)
        if ls.next_slot - self.chosen_below >= self.config.window_slots_max:
            raise Refused(RefuseReason.WINDOW_FULL, self.id)
        return self._leader_propose(value)

    def read(self, token: int) -> None:
        ls = self._leader
        if ls is None:
            self._reads_refused.append(ReadRefused(token, RefuseReason.NOT_LEADER, self.leader_id))
            return
        if ls.transfer_to:
            self._reads_refused.append(ReadRefused(token, RefuseReason.TRANSFERRING, ls.transfer_to))
            return
        if self.lease_valid():
            self._reads_ready.append(ReadReady(token, self.chosen_below))
            return
        if len(ls.reads) >= self.config.reads_pending_max:
            self._reads_refused.append(ReadRefused(token, RefuseReason.READS_FULL, self.id))
            return
        # Read index: confirm leadership with a heartbeat round sent from now on.
        ls.reads.append(_PendingRead(token, ls.hb_seq + 1, self.chosen_below))
        self._heartbeat_now = True

    def campaign(self) -> None:
        """Start an election now (pre-vote first), as if the timeout had run out.

        For operators and tests. It ends this replica's own stickiness at once,
        so only call it when no leader whose lease this replica acknowledged
        can still be serving reads (its timeout ran out, or it is gone).
        """
        if self.role is not Role.LEADER and self.is_voter():
            self._start_prevote()

    def change_membership(self, kind: str, replica_id: int) -> int:
        """Propose a membership change: ``add_learner``, ``promote`` or ``remove``.

        Returns the slot of the change; it takes effect ``window_slots_max``
        slots after it is chosen. Raises Refused (not leader, a change already
        under way, window full) or MembershipError (the change makes no sense).
        """
        ls = self._leader
        if ls is None:
            raise Refused(RefuseReason.NOT_LEADER, self.leader_id)
        if ls.transfer_to:
            raise Refused(RefuseReason.TRANSFERRING, ls.transfer_to)
        if self.membership_changing():
            raise Refused(RefuseReason.MEMBERSHIP_CHANGING, self.id)
        if kind not in ("add_learner", "promote", "remove"):
            raise MembershipError(f"unknown membership change {kind!r}")
        if kind == "remove" and replica_id == self.id:
            raise MembershipError("the leader cannot remove itself: transfer leadership first")
        new = getattr(self.membership, kind)(replica_id)
        if ls.next_slot - self.chosen_below >= self.config.window_slots_max:
            raise Refused(RefuseReason.WINDOW_FULL, self.id)
        slot = self._leader_propose(new.encode())
        ls.membership_slot = slot
        ls.membership_pending = new
        return slot

    def compact(self, below_slot: int) -> None:
        """Forget log entries below ``below_slot``: a snapshot now covers them."""
        assert below_slot <= self._emit_below, "compacting slots not yet applied"
        if below_slot <= self.log_start:
            return
        for s in [s for s in self.accepted if s < below_slot]:
            del self.accepted[s]
        self.log_start = below_slot

    def install_snapshot(self, index: int, memberships: tuple) -> None:
        """A snapshot of every slot below ``index`` was installed in the state machine.

        The driver has already made it durable (state tables, applied and
        chosen point, log start, memberships) in one transaction.
        """
        if index <= self.chosen_below:
            return
        if self.role is not Role.FOLLOWER:
            # We won an election while the snapshot was on its way (with
            # promisers that still had the log). Stepping down is always safe;
            # the snapshot holds only chosen slots.
            self._step_down(leader_id=0)
            self._reset_election_timer()
        for s in [s for s in self.accepted if s < index]:
            del self.accepted[s]
        self._chosen_above = {s for s in self._chosen_above if s >= index}
        self.chosen_below = index
        self.log_start = index
        self._emit_below = index
        self.members = MembershipHistory.from_tuple(memberships)
        while self.chosen_below in self._chosen_above:
            self._chosen_above.discard(self.chosen_below)
            self._on_chosen(self.chosen_below)
            self.chosen_below += 1

    def transfer_leadership(self, target: int, *, at_once: bool = False) -> None:
        """Ask ``target`` to campaign: TimeoutNow once it has acknowledged every
        slot in flight, or, ``at_once``, right away (for a leader that cannot
        go on, e.g. its disk failed: the target recovers what it lacks in
        phase 1, and waiting for acknowledgements this leader cannot process
        would wait for ever)."""
        ls = self._leader
        if ls is None:
            raise Refused(RefuseReason.NOT_LEADER, self.leader_id)
        if target == self.id:
            return
        if target not in self.membership.voters or self.membership_changing():
            raise Refused(RefuseReason.NOT_LEADER, self.id)
        ls.transfer_to = target
        ls.lease_forfeited = True
        ls.transfer_deadline = self.now + self.config.transfer_timeout_ticks
        # Give up the lease at once: the target's transfer Prepare is promised
        # by acceptors that still hear us.
        ls.lease_until = -1
        for r in ls.reads:
            self._reads_refused.append(ReadRefused(r.token, RefuseReason.TRANSFERRING, target))
        ls.reads.clear()
        if at_once:
            ls.timeout_now_tick = self.now
            self._messages.append(TimeoutNow(self.id, target, ls.ballot))
            return
        self._maybe_send_timeout_now()

    def ready(self) -> Ready:
        if self._leader is not None:
            self._flush_accepts()
            if self._heartbeat_now:
                self._send_heartbeats()
        persist = Persist(
            promised=self._persist_promised,
            accepted=tuple((s, b, v) for s, (b, v) in sorted(self._persist_accepted.items())),
            chosen_below=self.chosen_below if self._persist_chosen else None,
        )
        committed: list[Entry] = []
        if self._emit_below < self.chosen_below:
            for s in range(self._emit_below, self.chosen_below):
                committed.append((s, self.accepted[s][1]))
            self._emit_below = self.chosen_below
        ready = Ready(
            persist=persist,
            messages=self._messages,
            committed=committed,
            reads=self._reads_ready,
            reads_refused=self._reads_refused,
            snapshot_needed_from=self._snapshot_needed_from,
            snapshot_peer=self._snapshot_peer,
        )
        self._persist_promised = None
        self._persist_accepted = {}
        self._persist_chosen = False
        self._messages = []
        self._reads_ready = []
        self._reads_refused = []
        self._snapshot_needed_from = None
        return ready

    # ------------------------------------------------------------ durability

    def _promise(self, ballot: Ballot) -> None:
        if ballot > self.promised:
            self.promised = ballot
            self._persist_promised = ballot
        if ballot.round > self._max_round_seen:
            self._max_round_seen = ballot.round

    def _store(self, slot: int, ballot: Ballot, value: bytes) -> None:
        assert ballot <= self.promised or ballot == CHOSEN_BALLOT, "accepting below the promise"
        known = self.chosen_value(slot)
        if known is not None:
            assert known == value, f"slot {slot} chosen as one value, now offered another"
            return
        self.accepted[slot] = (ballot, value)
        self._persist_accepted[slot] = (ballot, value)

    def _mark_chosen(self, slot: int) -> None:
        if slot < self.chosen_below:
            return
        assert slot in self.accepted, f"slot {slot} chosen but its value is unknown"
        self._chosen_above.add(slot)
        start = self.chosen_below
        ls = self._leader
        while True:
            before = self.chosen_below
            while self.chosen_below in self._chosen_above:
                self._chosen_above.discard(self.chosen_below)
                self._on_chosen(self.chosen_below)
                self.chosen_below += 1
            if ls is None or self.chosen_below == before:
                break
            # Slots whose membership just became certain may be chosen now
            # (a loop, not recursion: a new leader may release a long run).
            for s in range(before + self._alpha, self.chosen_below + self._alpha):
                acks = ls.acks.get(s)
                if acks is not None and s not in self._chosen_above and self.members.at(s).has_quorum(acks):
                    self._chosen_above.add(s)
        if self.chosen_below > start:
            self._persist_chosen = True
            if ls is not None:
                for s in [s for s in ls.acks if s < self.chosen_below]:
                    del ls.acks[s]
                    ls.sent_tick.pop(s, None)

    def _maybe_choose(self, slot: int) -> None:
        """Leader: mark ``slot`` chosen if a majority of its membership accepted it.

        The membership of ``slot`` is certain only once every slot up to
        ``slot - alpha`` is chosen. A new leader re-proposes recovered slots
        that can lie further ahead; their acceptances wait until then.
        """
        ls = self._leader
        assert ls is not None
        if slot >= self.chosen_below + self._alpha or slot in self._chosen_above:
            return
        acks = ls.acks.get(slot)
        if acks is not None and self.members.at(slot).has_quorum(acks):
            self._mark_chosen(slot)

    # --------------------------------------------------------------- timers

    def _reset_election_timer(self) -> None:
        cfg = self.config
        self._election_deadline = (
            self.now + cfg.election_timeout_min_ticks + self._rng.randrange(cfg.election_timeout_spread_ticks)
        )

    def _hears_leader(self) -> bool:
        """Stickiness: a live leader was heard within the minimum timeout."""
        if self.now < self._quiet_until:
            return True
        if self.role is Role.LEADER:
            ls = self._leader
            assert ls is not None
            return self.now - ls.last_quorum_tick < self.config.election_timeout_min_ticks
        return self.leader_id != 0 and self.now - self._last_heard < self.config.election_timeout_min_ticks

    def _peers(self) -> list[int]:
        """Everyone who must hear the leader: members now and of changes ahead."""
        ids: set[int] = set()
        for m in self.members.from_slot(self.chosen_below):
            ids |= m.members
        ls = self._leader
        if ls is not None and ls.membership_pending is not None:
            ids |= ls.membership_pending.members
        ids.discard(self.id)
        return sorted(ids)

    def _quorum_memberships(self) -> list[Membership]:
        """Memberships whose majorities must confirm the leader (lease, read index)."""
        ms = self.members.from_slot(self.chosen_below)
        ls = self._leader
        if ls is not None and ls.membership_pending is not None:
            ms.append(ls.membership_pending)
        return ms

    def _on_chosen(self, slot: int) -> None:
        """``slot`` just became part of the chosen prefix."""
        value = self.accepted[slot][1] if slot in self.accepted else b""
        if is_membership_value(value):
            effective = slot + self._alpha
            if effective > self.members.latest()[0]:
                self.members.add(effective, decode_membership(value))
            ls = self._leader
            if ls is not None and ls.membership_slot == slot:
                ls.membership_slot = None
                ls.membership_pending = None

    # ------------------------------------------------------------- elections

    def _next_ballot(self) -> Ballot:
        return Ballot(max(self._max_round_seen, self.promised.round) + 1, self.id)

    def _start_prevote(self) -> None:
        self._step_down(leader_id=0)
        self.role = Role.PRE_CANDIDATE
        self._reset_election_timer()
        ballot = self._next_ballot()
        self._campaign_ballot = ballot
        self._prevotes = {self.id}
        if self.membership.has_quorum(self._prevotes):
            self._start_campaign(transfer=False)
            return
        for peer in self._peers():
            self._messages.append(PreVote(self.id, peer, ballot, self.chosen_below))

    def _start_campaign(self, transfer: bool, transfer_from: Ballot = ZERO_BALLOT) -> None:
        self._transfer_from = transfer_from
        self.role = Role.CANDIDATE
        self.leader_id = 0
        self._transfer_campaign = transfer
        self._reset_election_timer()
        ballot = self._next_ballot()
        self._campaign_ballot = ballot
        self._campaign_from = self.chosen_below
        self._promise(ballot)
        own = Promise(
            self.id, self.id, ballot, self._campaign_from, self._accepted_from(self._campaign_from), self.chosen_below
        )
        self._votes = {self.id: own}
        self._asked = {self.id} | set(self._peers())
        if self._phase1_complete():
            self._become_leader()
            return
        for peer in self._peers():
            self._messages.append(Prepare(self.id, peer, ballot, self._campaign_from, transfer, transfer_from))

    def _accepted_from(self, from_slot: int) -> tuple[AcceptedEntry, ...]:
        return tuple(
            (s, b, v) for s, (b, v) in sorted(self.accepted.items()) if s >= from_slot
        )

    def _on_prevote(self, m: PreVote) -> None:
        granted = (
            m.ballot > self.promised
            and not self._hears_leader()
            and m.from_slot + self.config.promise_chosen_slots_max >= self.chosen_below
        )
        self._messages.append(PreVoteReply(self.id, m.src, m.ballot, granted, self.promised, self.leader_id))

    def _on_prevote_reply(self, m: PreVoteReply) -> None:
        if m.promised.round > self._max_round_seen:
            self._max_round_seen = m.promised.round
        if self.role is not Role.PRE_CANDIDATE or m.ballot != self._campaign_ballot:
            return
        if m.granted:
            self._prevotes.add(m.src)
            if self.membership.has_quorum(self._prevotes):
                self._start_campaign(transfer=False)

    def _on_prepare(self, m: Prepare) -> None:
        if m.ballot < self.promised or (m.ballot == self.promised and m.src != m.ballot.replica_id):
            self._reject(m.src, m.ballot, RejectReason.LOWER_BALLOT)
            return
        waived = m.transfer and m.transfer_from == self.promised and m.transfer_from.replica_id != 0
        if m.ballot > self.promised and not waived and self._hears_leader():
            self._reject(m.src, m.ballot, RejectReason.LEADER_ALIVE)
            return
        if m.from_slot + self.config.promise_chosen_slots_max < self.chosen_below or m.from_slot < self.log_start:
            self._reject(m.src, m.ballot, RejectReason.CANDIDATE_BEHIND)
            return
        if m.ballot > self.promised:
            self._step_down(leader_id=0)
            self._promise(m.ballot)
            self._reset_election_timer()
        # (m.ballot == promised: a duplicate Prepare; answer it again.)
        self._messages.append(
            Promise(self.id, m.src, m.ballot, m.from_slot, self._accepted_from(m.from_slot), self.chosen_below)
        )

    def _reject(self, dst: int, ballot: Ballot, reason: RejectReason) -> None:
        self._messages.append(Reject(self.id, dst, ballot, self.promised, reason, self.chosen_below, self.leader_id))

    def _on_promise(self, m: Promise) -> None:
        if self.role is not Role.CANDIDATE or m.ballot != self._campaign_ballot:
            return
        if m.from_slot != self._campaign_from:
            return
        self._votes[m.src] = m
        if self._phase1_complete():
            self._become_leader()

    def _phase1_complete(self) -> bool:
        """Promises from a majority of every membership the recovery may involve."""
        recovered = self._recover_values(
            [p for p in self._votes.values() if p is not None], self._campaign_from
        )
        needed = self.members.from_slot(self._campaign_from)
        for s in sorted(recovered):
            if s >= self.chosen_below and is_membership_value(recovered[s]):
                try:
                    needed.append(decode_membership(recovered[s]))
                except MembershipError:
                    pass  # never chosen by a correct leader; it cannot govern anything
        voted = set(self._votes)
        for m in needed:
            for peer in m.members - self._asked:
                # A member we learned of from the promises: ask it too.
                self._asked.add(peer)
                self._messages.append(
                    Prepare(
                        self.id,
                        peer,
                        self._campaign_ballot,
                        self._campaign_from,
                        self._transfer_campaign,
                        self._transfer_from,
                    )
                )
        return all(m.has_quorum(voted) for m in needed)

    def _on_reject(self, m: Reject) -> None:
        if m.promised.round > self._max_round_seen:
            self._max_round_seen = m.promised.round
        mine = self._campaign_ballot if self.role is Role.CANDIDATE else self.ballot
        if m.ballot != mine:
            return
        if m.reason is RejectReason.CANDIDATE_BEHIND:
            if self.role is Role.CANDIDATE:
                self._step_down(leader_id=0)
            self._request_catchup(m.src, m.chosen_below, force=True)
            return
        if m.promised > mine:
            # Someone promised a higher ballot: our ballot cannot win.
            self._step_down(leader_id=m.leader_id if m.leader_id != self.id else 0)

    def _become_leader(self) -> None:
        ballot = self._campaign_ballot
        from_slot = self._campaign_from
        best = self._recover_values([p for p in self._votes.values() if p is not None], from_slot)
        top = max(best) if best else from_slot - 1
        self.role = Role.LEADER
        self.leader_id = self.id
        self._votes = {}
        self._transfer_campaign = False
        ls = _LeaderState(ballot=ballot, next_slot=max(from_slot, self.chosen_below), noop_slot=0)
        ls.last_quorum_tick = self.now
        ls.heartbeat_tick = ls.retransmit_tick = self.now
        self._leader = ls
        for s in range(from_slot, top + 1):
            if s < self.chosen_below:
                continue
            value = best.get(s, NOOP)
            if is_membership_value(value):
                try:
                    ls.membership_pending = decode_membership(value)
                    ls.membership_slot = s
                except MembershipError:
                    value = NOOP  # malformed: cannot have been chosen
            self._leader_accept(s, value)
        ls.next_slot = max(ls.next_slot, top + 1)
        # A no-op of our own: once it is chosen we know every slot chosen
        # before our leadership, which reads need.
        ls.noop_slot = self._leader_propose(NOOP)
        self._heartbeat_now = True

    def _recover_values(self, promises: list[Promise], from_slot: int) -> dict[int, bytes]:
        """P2c: for every slot, the value accepted at the highest ballot in a majority."""
        best: dict[int, tuple[Ballot, bytes]] = {}
        for promise in promises:
            for s, b, v in promise.accepted:
                if s < from_slot:
                    continue
                cur = best.get(s)
                if cur is None or b > cur[0]:
                    best[s] = (b, v)
        return {s: v for s, (_, v) in best.items()}

    def _leader_propose(self, value: bytes) -> int:
        ls = self._leader
        assert ls is not None
        slot = ls.next_slot
        ls.next_slot += 1
        self._leader_accept(slot, value)
        return slot

    def _leader_accept(self, slot: int, value: bytes) -> None:
        ls = self._leader
        assert ls is not None
        self._store(slot, ls.ballot, value)
        if slot < self.chosen_below:
            return
        ls.acks[slot] = {self.id}
        ls.sent_tick[slot] = self.now
        self._accept_queue.append(slot)
        self._maybe_choose(slot)

    def _step_down(self, leader_id: int) -> None:
        ls = self._leader
        if ls is not None:
            for r in ls.reads:
                self._reads_refused.append(ReadRefused(r.token, RefuseReason.LEADERSHIP_LOST, leader_id))
            self._leader = None
            self._accept_queue.clear()
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self._votes = {}
        self._prevotes = set()
        self._transfer_campaign = False
        if leader_id:
            self._last_heard = self.now

    # ------------------------------------------------------------- phase 2

    def _follow(self, ballot: Ballot) -> None:
        """A message of the leader of ``ballot`` (>= promised) arrived."""
        self._promise(ballot)
        if self.role is not Role.FOLLOWER or self.leader_id != ballot.replica_id:
            self._step_down(leader_id=ballot.replica_id)
        self._last_heard = self.now
        self._reset_election_timer()

    def _on_accept(self, m: Accept) -> None:
        if m.ballot < self.promised:
            self._reject(m.src, m.ballot, RejectReason.LOWER_BALLOT)
            return
        self._follow(m.ballot)
        slots = []
        for s, v in m.entries:
            if s >= self.log_start:
                self._store(s, m.ballot, v)
            slots.append(s)
        self._messages.append(Accepted(self.id, m.src, m.ballot, tuple(slots)))
        self._learn(m.src, m.ballot, m.chosen_below)

    def _learn(self, src: int, ballot: Ballot, leader_chosen_below: int) -> None:
        """Mark chosen what the leader of ``ballot`` reports chosen, if we hold it."""
        s = self.chosen_below
        while s < leader_chosen_below:
            entry = self.accepted.get(s)
            if entry is None or (entry[0] != ballot and entry[0] != CHOSEN_BALLOT):
                if s not in self._chosen_above:
                    break
            self._mark_chosen(s)
            s = self.chosen_below
        if self.chosen_below < leader_chosen_below:
            self._request_catchup(src, leader_chosen_below, force=False)

    def _on_accepted(self, m: Accepted) -> None:
        ls = self._leader
        if ls is None or m.ballot != ls.ballot:
            return
        for s in m.slots:
            acks = ls.acks.get(s)
            if acks is None:
                continue
            acks.add(m.src)
            self._maybe_choose(s)
        self._maybe_send_timeout_now()

    def _flush_accepts(self) -> None:
        ls = self._leader
        assert ls is not None
        if not self._accept_queue:
            return
        slots = sorted(set(s for s in self._accept_queue if s in ls.acks))
        self._accept_queue = []
        for peer in self._peers():
            self._send_accepts(peer, slots)

    def _send_accepts(self, peer: int, slots: list[int]) -> None:
        ls = self._leader
        assert ls is not None
        limit = self.config.message_bytes_max // 2
        batch: list[Entry] = []
        size = 0
        for s in slots:
            v = self.accepted[s][1]
            if batch and size + len(v) + _ENTRY_OVERHEAD_BYTES > limit:
                self._messages.append(Accept(self.id, peer, ls.ballot, tuple(batch), self.chosen_below))
                batch, size = [], 0
            batch.append((s, v))
            size += len(v) + _ENTRY_OVERHEAD_BYTES
        if batch:
            self._messages.append(Accept(self.id, peer, ls.ballot, tuple(batch), self.chosen_below))

    def _tick_leader(self) -> None:
        ls = self._leader
        assert ls is not None
        cfg = self.config
        unacked = next(iter(ls.hb_sent_tick.values()), None)  # oldest round no majority acked
        if (unacked is not None and self.now - unacked >= cfg.check_quorum_ticks) or not self.is_voter():
            # A heartbeat round went unacknowledged by a majority for
            # check_quorum_ticks (we may be cut off), or we are no longer a
            # voter. Counted from a round we sent, not from the last round
            # acknowledged: a leader that could not send for a while (a long
            # storage step) has no evidence of being cut off.
            self._step_down(leader_id=0)
            self._reset_election_timer()
            return
        if self.members.latest()[0] > self.chosen_below and not ls.acks:
            # A chosen membership change waits for the log to reach the slot
            # where it takes effect: fill an idle log with no-ops.
            room = self.config.window_slots_max - (ls.next_slot - self.chosen_below)
            for _ in range(min(room, self.members.latest()[0] - ls.next_slot)):
                self._leader_propose(NOOP)
        if ls.transfer_to and self.now >= ls.transfer_deadline:
            ls.transfer_to = 0  # the transfer failed; carry on leading
        if self.now - ls.heartbeat_tick >= cfg.heartbeat_ticks:
            ls.heartbeat_tick = self.now
            self._heartbeat_now = True
        if self.now - ls.retransmit_tick >= cfg.retransmit_ticks:
            ls.retransmit_tick = self.now
            self._retransmit()

    def _retransmit(self) -> None:
        ls = self._leader
        assert ls is not None
        stale = [s for s, t in ls.sent_tick.items() if self.now - t >= self.config.retransmit_ticks]
        if not stale:
            return
        stale.sort()
        for peer in self._peers():
            missing = [s for s in stale if peer not in ls.acks.get(s, ())]
            if missing:
                self._send_accepts(peer, missing)
        for s in stale:
            ls.sent_tick[s] = self.now

    def _send_heartbeats(self) -> None:
        ls = self._leader
        assert ls is not None
        self._heartbeat_now = False
        ls.hb_seq += 1
        ls.hb_sent_tick[ls.hb_seq] = self.now
        for peer in self._peers():
            self._messages.append(Heartbeat(self.id, peer, ls.ballot, self.chosen_below, ls.hb_seq))
        self._check_quorum_round()

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if m.ballot < self.promised:
            self._reject(m.src, m.ballot, RejectReason.LOWER_BALLOT)
            return
        self._follow(m.ballot)
        self._messages.append(HeartbeatAck(self.id, m.src, m.ballot, m.seq, self.chosen_below))
        self._learn(m.src, m.ballot, m.chosen_below)

    def heartbeat_ack(self, m: Heartbeat) -> HeartbeatAck | None:
        """The acknowledgement ``step(m)`` would send now if it changed nothing
        else, without stepping: ``m`` comes from the leader this follower
        follows, at the ballot it promised. Changes no state. A driver busy
        with a long storage step may send it at once, provided it steps ``m``
        later before anything else that arrived after the leader's messages
        (``ledger.server.Driver._ack_heartbeats_now``)."""
        if self.role is not Role.FOLLOWER or m.src != self.leader_id or m.ballot != self.promised:
            return None
        return HeartbeatAck(self.id, m.src, m.ballot, m.seq, self.chosen_below)

    def _on_heartbeat_ack(self, m: HeartbeatAck) -> None:
        ls = self._leader
        if ls is None or m.ballot != ls.ballot:
            return
        if m.seq > ls.hb_acked.get(m.src, 0):
            ls.hb_acked[m.src] = m.seq
        ls.peer_chosen[m.src] = m.chosen_below
        self._check_quorum_round()
        self._maybe_send_timeout_now()

    def _check_quorum_round(self) -> None:
        """Find the newest heartbeat round every relevant majority acknowledged."""
        ls = self._leader
        assert ls is not None
        seq = None
        for m in self._quorum_memberships():
            acked = sorted(
                (ls.hb_seq if v == self.id else ls.hb_acked.get(v, 0) for v in m.voters), reverse=True
            )
            mseq = acked[m.quorum - 1]
            seq = mseq if seq is None else min(seq, mseq)
        if seq is not None and seq > ls.quorum_seq:
            self._quorum_round(seq)

    def _quorum_round(self, seq: int) -> None:
        """Heartbeat round ``seq`` (and all before it) reached a majority."""
        ls = self._leader
        assert ls is not None
        ls.quorum_seq = seq
        sent = ls.hb_sent_tick.get(seq, self.now)
        ls.last_quorum_tick = max(ls.last_quorum_tick, sent)
        for old in [k for k in ls.hb_sent_tick if k <= seq]:
            del ls.hb_sent_tick[old]
        if ls.transfer_to == 0:
            ls.lease_until = max(ls.lease_until, sent + self.config.lease_ticks)
        self._release_reads()

    def _release_reads(self) -> None:
        ls = self._leader
        assert ls is not None
        if self.chosen_below <= ls.noop_slot or not ls.reads:
            return
        keep = []
        for r in ls.reads:
            if r.seq <= ls.quorum_seq:
                self._reads_ready.append(ReadReady(r.token, max(r.index, ls.noop_slot + 1)))
            else:
                keep.append(r)
        ls.reads = keep

    # ---------------------------------------------------------- transfer

    def _maybe_send_timeout_now(self) -> None:
        ls = self._leader
        if ls is None or not ls.transfer_to:
            return
        target = ls.transfer_to
        if any(target not in acks for acks in ls.acks.values()):
            return  # the target still misses slots; wait for its acks
        if self.now - ls.timeout_now_tick < self.config.retransmit_ticks:
            return  # sent recently; once per retransmit interval is enough
        ls.timeout_now_tick = self.now
        self._messages.append(TimeoutNow(self.id, target, ls.ballot))

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        if m.ballot != self.promised or m.src != self.leader_id or self.role is not Role.FOLLOWER:
            return
        self._start_campaign(transfer=True, transfer_from=m.ballot)

    # ------------------------------------------------------------ catch-up

    def _request_catchup(self, peer: int, upto: int, force: bool) -> None:
        if self.chosen_below >= upto:
            return
        if (
            not force
            and self._catchup_from == self.chosen_below
            and self.now - self._catchup_sent_tick < self.config.catchup_retry_ticks
        ):
            return
        self._catchup_from = self.chosen_below
        self._catchup_sent_tick = self.now
        to_slot = min(upto, self.chosen_below + self.config.catchup_slots_max)
        self._messages.append(CatchupRequest(self.id, peer, self.chosen_below, to_slot))

    def _on_catchup_request(self, m: CatchupRequest) -> None:
        if m.from_slot < self.log_start:
            self._messages.append(CatchupReply(self.id, m.src, (), self.chosen_below, self.log_start))
            return
        entries: list[Entry] = []
        size = 0
        limit = self.config.message_bytes_max // 2
        end = min(m.to_slot, self.chosen_below, m.from_slot + self.config.catchup_slots_max)
        for s in range(m.from_slot, end):
            v = self.accepted[s][1]
            if entries and size + len(v) + _ENTRY_OVERHEAD_BYTES > limit:
                break
            entries.append((s, v))
            size += len(v) + _ENTRY_OVERHEAD_BYTES
        self._messages.append(CatchupReply(self.id, m.src, tuple(entries), self.chosen_below, self.log_start))

    def _on_catchup_reply(self, m: CatchupReply) -> None:
        if m.log_start > self.chosen_below and not m.entries:
            self._snapshot_needed_from = m.log_start
            self._snapshot_peer = m.src
            return
        for s, v in m.entries:
            if s < self.chosen_below:
                continue
            known = self.chosen_value(s)
            if known is not None:
                assert known == v, f"catch-up for slot {s} disagrees with its known chosen value"
                continue
            self.accepted[s] = (CHOSEN_BALLOT, v)
            self._persist_accepted[s] = (CHOSEN_BALLOT, v)
            self._mark_chosen(s)
        self._catchup_from = -1
        if self.chosen_below < m.chosen_below:
            self._request_catchup(m.src, m.chosen_below, force=True)


_HANDLERS = {
    PreVote: Replica._on_prevote,
    PreVoteReply: Replica._on_prevote_reply,
    Prepare: Replica._on_prepare,
    Promise: Replica._on_promise,
    Reject: Replica._on_reject,
    Accept: Replica._on_accept,
    Accepted: Replica._on_accepted,
    Heartbeat: Replica._on_heartbeat,
    HeartbeatAck: Replica._on_heartbeat_ack,
    CatchupRequest: Replica._on_catchup_request,
    CatchupReply: Replica._on_catchup_reply,
    TimeoutNow: Replica._on_timeout_now,
}
