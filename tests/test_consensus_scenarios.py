"""Classic Paxos cases, driven message by message.

Goal: show, one situation at a time, that the replica follows the rules of
"Paxos Made Simple" (Lamport 2001): a value a majority may have accepted is
never replaced (P2c, section 2.2); an acceptor never accepts below its promise
(P1a); restarted replicas keep their promises; holes are filled with no-ops;
and the engineering around it (pre-vote, stickiness, catch-up, leadership
transfer, reads) behaves.
"""

from __future__ import annotations

import random

import pytest

from consensus import Config, DurableState, Refused, Replica, Role
from consensus.messages import NOOP, Accept, Message, Prepare, Reject, RejectReason
from sim.storage import SimStorage


class Harness:
    """Replicas with their own simulated disks; the test decides what is delivered."""

    def __init__(self, n: int = 3, seed: int = 1) -> None:
        self.ids = tuple(range(1, n + 1))
        self.disks = {i: SimStorage() for i in self.ids}
        self.r: dict[int, Replica] = {}
        self.inflight: list[Message] = []
        self.committed: dict[int, list[tuple[int, bytes]]] = {i: [] for i in self.ids}
        self.reads: dict[int, list] = {i: [] for i in self.ids}
        self.down: set[int] = set()
        self.seed = seed
        for i in self.ids:
            self.boot(i)
        # Let the start-up quiet period pass with no traffic.
        for _ in range(Config(replica_id=1, replica_ids=self.ids).election_timeout_min_ticks):
            for i in self.ids:
                self.r[i].now += 1
        self.flush_all()
        self.inflight.clear()

    def boot(self, i: int) -> None:
        cfg = Config(replica_id=i, replica_ids=self.ids, election_timeout_spread_ticks=20)
        self.r[i] = Replica(cfg, self.disks[i].load(), random.Random(self.seed * 100 + i))
        self.down.discard(i)

    def crash(self, i: int) -> None:
        self.disks[i].crash()
        self.down.add(i)
        self.inflight = [m for m in self.inflight if m.src != i]

    def flush(self, i: int) -> None:
        ready = self.r[i].ready()
        self.disks[i].write(ready.persist, None)
        self.disks[i].sync()
        self.inflight.extend(ready.messages)
        self.committed[i].extend(ready.committed)
        self.reads[i].extend(ready.reads)

    def flush_all(self) -> None:
        for i in self.ids:
            if i not in self.down:
                self.flush(i)

    def deliver(self, allow=lambda m: True, limit: int = 10_000) -> int:
        """Deliver allowed messages (and what they cause) until none is left."""
        count = 0
        while count < limit:
            pick = next((m for m in self.inflight if allow(m)), None)
            if pick is None:
                return count
            self.inflight.remove(pick)
            if pick.dst in self.down:
                continue
            self.r[pick.dst].step(pick)
            self.flush(pick.dst)
            count += 1
        raise AssertionError("message storm")

    def drop(self, pred) -> None:
        self.inflight = [m for m in self.inflight if not pred(m)]

    def lapse(self, ticks: int = 45) -> None:
        """Time passes with every message lost, so leader leases and stickiness run out."""
        for _ in range(ticks):
            for i in self.ids:
                if i not in self.down:
                    self.r[i].tick()
                    self.flush(i)
            self.inflight.clear()

    def elect(self, i: int, allow=lambda m: True) -> None:
        self.r[i].campaign()
        self.flush(i)
        self.deliver(allow)
        assert self.r[i].role is Role.LEADER

    def chosen(self, i: int, slot: int) -> bytes | None:
        return self.r[i].chosen_value(slot)


def test_election_then_commit_everywhere():
    """A campaign wins with a majority and a proposal is chosen on every replica."""
    h = Harness()
    h.elect(1)
    slot = h.r[1].propose(b"a")
    h.flush(1)
    h.deliver()
    h.r[1].tick()
    h.r[1]._heartbeat_now = True  # noqa: SLF001 - push the chosen point now
    h.flush(1)
    h.deliver()
    for i in h.ids:
        assert h.chosen(i, slot) == b"a"
        assert (slot, b"a") in h.committed[i]


def test_leader_crash_after_minority_accept_value_survives_when_seen():
    """P2c: a value accepted by a minority is re-proposed if any promiser reports it."""
    h = Harness(n=5)
    h.elect(1)
    h.deliver()
    slot = h.r[1].propose(b"v")
    h.flush(1)
    # Only replica 2 receives the accept; then the leader crashes.
    h.deliver(lambda m: isinstance(m, Accept) and m.dst == 2)
    h.drop(lambda m: m.src == 1 or isinstance(m, Accept))
    h.crash(1)
    h.lapse()
    # Replica 3 campaigns; the promise of 2 (which holds v) is among the majority.
    h.elect(3, allow=lambda m: m.src != 1 and m.dst != 1)
    h.deliver(lambda m: m.dst != 1)
    assert h.chosen(3, slot) == b"v"


def test_leader_crash_after_minority_accept_hole_becomes_noop_when_unseen():
    """A value seen by no promiser was never chosen; the new leader fills the slot with a no-op."""
    h = Harness(n=5)
    h.elect(1)
    h.deliver()
    slot = h.r[1].propose(b"v")
    h.flush(1)
    h.deliver(lambda m: isinstance(m, Accept) and m.dst == 2)
    h.drop(lambda m: m.src == 1 or isinstance(m, Accept))
    h.crash(1)
    h.crash(2)
    h.lapse()
    # 3, 4, 5 form a majority that never saw v.
    h.elect(3, allow=lambda m: m.dst in (3, 4, 5) and m.src in (3, 4, 5))
    h.deliver(lambda m: m.dst in (3, 4, 5))
    assert h.chosen(3, slot) == NOOP


def test_holes_are_filled_with_noops():
    """Slots between recovered values are filled with no-ops by the new leader."""
    h = Harness()
    h.elect(1)
    h.deliver()
    s1 = h.r[1].propose(b"a")
    h.flush(1)
    h.drop(lambda m: isinstance(m, Accept))  # slot s1 reaches nobody
    s2 = h.r[1].propose(b"b")
    h.flush(1)
    h.deliver(lambda m: isinstance(m, Accept) and m.dst == 2)  # s2 reaches 2
    h.drop(lambda m: m.src == 1)
    h.crash(1)
    h.lapse()
    h.elect(2, allow=lambda m: 1 not in (m.src, m.dst))
    h.deliver(lambda m: 1 not in (m.src, m.dst))
    assert h.chosen(2, s1) == NOOP
    assert h.chosen(2, s2) == b"b"


def test_dueling_proposers_higher_ballot_wins_and_values_agree():
    """Two candidates at once: at most one leads per ballot and no slot gets two values."""
    h = Harness()
    h.r[1].campaign()
    h.r[2].campaign()
    h.flush(1)
    h.flush(2)
    h.deliver()
    leaders = [i for i in h.ids if h.r[i].role is Role.LEADER]
    assert len({h.r[i].ballot for i in leaders}) == len(leaders)
    top = max(leaders, key=lambda i: h.r[i].ballot)
    slot = h.r[top].propose(b"x")
    h.flush(top)
    h.deliver()
    for i in h.ids:
        v = h.chosen(i, slot)
        assert v in (None, b"x")


def test_late_accept_from_deposed_leader_is_rejected():
    """An acceptor that promised a higher ballot refuses an older leader's accept (P1a)."""
    h = Harness()
    h.elect(1)
    h.deliver()
    old_ballot = h.r[1].ballot
    h.r[1].propose(b"late")
    h.flush(1)
    late = [m for m in h.inflight if isinstance(m, Accept) and m.dst == 3]
    h.drop(lambda m: isinstance(m, Accept))
    h.crash(1)
    h.lapse()
    h.elect(2, allow=lambda m: 1 not in (m.src, m.dst))
    h.deliver(lambda m: 1 not in (m.src, m.dst))
    assert h.r[3].promised > old_ballot
    before = dict(h.r[3].accepted)
    h.r[3].step(late[0])
    h.flush(3)
    rejects = [m for m in h.inflight if isinstance(m, Reject) and m.dst == 1]
    assert rejects and rejects[0].reason is RejectReason.LOWER_BALLOT
    assert h.r[3].accepted == before


def test_restart_keeps_promise_and_accepted_values():
    """A replica restarted from its disk remembers its promise and refuses lower ballots."""
    h = Harness()
    h.elect(1)
    h.deliver()
    slot = h.r[1].propose(b"kept")
    h.flush(1)
    h.deliver(lambda m: isinstance(m, Accept) and m.dst == 2)
    promised = h.r[2].promised
    h.crash(2)
    h.boot(2)
    assert h.r[2].promised == promised
    assert h.r[2].accepted[slot][1] == b"kept"
    h.r[2].step(Prepare(3, 2, type(promised)(0, 3), 0))
    h.flush(2)
    assert any(isinstance(m, Reject) and m.dst == 3 for m in h.inflight)


def test_unsynced_writes_are_lost_in_a_crash():
    """Only what was persisted before sending survives: an unpersisted step leaves no trace."""
    h = Harness()
    h.elect(1)
    h.deliver()
    h.r[1].propose(b"gone")
    # No flush: the Ready was never persisted, so nothing was sent either.
    h.crash(1)
    h.boot(1)
    assert all(v != b"gone" for _, v in h.r[1].accepted.values())


def test_partitioned_replica_rejoins_without_disrupting_and_catches_up():
    """Pre-vote and stickiness keep the leader; the rejoining replica fetches what it missed."""
    h = Harness()
    h.elect(1)
    h.deliver()
    cut = lambda m: 3 not in (m.src, m.dst)  # noqa: E731
    for k in range(5):
        h.r[1].propose(b"w%d" % k)
        h.flush(1)
        h.deliver(cut)
    h.drop(lambda m: 3 in (m.src, m.dst))
    # Replica 3, cut off, times out and tries to campaign many times.
    for _ in range(200):
        h.r[3].tick()
        h.flush(3)
        h.drop(lambda m: m.src == 3)
    leader_ballot = h.r[1].ballot
    # Heal: 3 campaigns once more while 1 and 2 still hear their leader.
    h.r[3].campaign()
    h.flush(3)
    for _ in range(3):
        h.r[1].tick()
        h.flush(1)
        h.r[2].tick()
        h.flush(2)
        h.deliver()
    assert h.r[1].role is Role.LEADER and h.r[1].ballot == leader_ballot
    assert h.r[3].chosen_below >= h.r[1].chosen_below - 1
    for s in range(h.r[3].chosen_below):
        assert h.chosen(3, s) == h.chosen(1, s)


def test_leadership_transfer_moves_leader_to_target():
    """transfer_leadership hands over to the named replica, which then leads."""
    h = Harness()
    h.elect(1)
    h.deliver()
    h.r[1].transfer_leadership(3)
    h.flush(1)
    with pytest.raises(Refused):
        h.r[1].propose(b"during")
    h.deliver()
    assert h.r[3].role is Role.LEADER
    assert h.r[1].role is Role.FOLLOWER


def test_follower_refuses_proposals_with_leader_hint():
    """A proposal sent to a follower is refused and names the leader."""
    h = Harness()
    h.elect(1)
    h.deliver()
    with pytest.raises(Refused) as info:
        h.r[2].propose(b"x")
    assert info.value.leader_id == 1


def test_read_index_waits_for_majority_then_reports_index():
    """Without a lease, a read is released only after a majority confirms the leader."""
    h = Harness()
    h.elect(1)
    h.deliver()
    h.r[1]._leader.lease_until = -1  # noqa: SLF001 - force the read-index path
    h.r[1].read(7)
    h.flush(1)
    assert not any(r.token == 7 for r in h.reads[1])
    h.deliver()
    released = [r for r in h.reads[1] if r.token == 7]
    assert released and released[0].index >= 1


def test_lease_read_is_immediate_and_lost_with_leadership():
    """A leader holding a lease answers at once; after stepping down it refuses reads."""
    h = Harness()
    h.elect(1)
    h.deliver()
    h.r[1]._heartbeat_now = True  # noqa: SLF001 - one round to establish the lease
    h.flush(1)
    h.deliver()
    assert h.r[1].lease_valid()
    h.r[1].read(1)
    h.flush(1)
    assert any(r.token == 1 for r in h.reads[1])
    h.r[1].transfer_leadership(2)
    assert not h.r[1].lease_valid()


def _push_chosen_point(h: Harness, leader: int) -> None:
    h.r[leader]._heartbeat_now = True  # noqa: SLF001
    h.flush(leader)
    h.deliver()


def test_membership_change_takes_effect_after_the_window():
    """A learner added, promoted and a voter removed: each takes effect alpha slots after it is chosen."""
    ids = (1, 2, 3)
    h = Harness()
    # Replica 4 joins as a learner of the initial membership.
    h.disks[4] = SimStorage()
    h.ids = ids + (4,)
    h.committed[4], h.reads[4] = [], []
    h.r[4] = Replica(Config(replica_id=4, replica_ids=ids, learner_ids=(4,)), DurableState(), random.Random(4))
    h.elect(1)
    h.deliver()
    slot = h.r[1].change_membership("add_learner", 4)
    h.flush(1)
    h.deliver()
    with pytest.raises(Refused):
        h.r[1].change_membership("promote", 4)  # one change at a time
    alpha = h.r[1].config.window_slots_max
    for _ in range(3):
        h.r[1].tick()
        h.flush(1)
        h.deliver()
    _push_chosen_point(h, 1)
    assert h.r[1].chosen_below >= slot + alpha
    assert 4 in h.r[1].membership.learners
    assert h.r[4].chosen_below == h.r[1].chosen_below  # the learner follows the log
    h.r[1].change_membership("promote", 4)
    h.flush(1)
    h.deliver()
    for _ in range(3):
        h.r[1].tick()
        h.flush(1)
        h.deliver()
    _push_chosen_point(h, 1)
    assert h.r[1].membership.voters == {1, 2, 3, 4}
    h.r[1].change_membership("remove", 3)
    h.flush(1)
    h.deliver()
    for _ in range(3):
        h.r[1].tick()
        h.flush(1)
        h.deliver()
    _push_chosen_point(h, 1)
    assert h.r[1].membership.voters == {1, 2, 4}
    with pytest.raises(Exception):
        h.r[1].change_membership("remove", 1)  # the leader cannot remove itself


def test_lagging_replica_is_told_to_install_a_snapshot_after_compaction():
    """Peers that compacted their log answer catch-up with their log start; the laggard installs a snapshot."""
    h = Harness()
    h.elect(1)
    h.deliver()
    cut = lambda m: 3 not in (m.src, m.dst)  # noqa: E731
    for k in range(10):
        h.r[1].propose(b"w%d" % k)
        h.flush(1)
        h.deliver(cut)
        h.drop(lambda m: 3 in (m.src, m.dst))
    h.r[1]._heartbeat_now = True  # noqa: SLF001
    h.flush(1)
    h.deliver(cut)
    h.drop(lambda m: 3 in (m.src, m.dst))
    top = h.r[1].chosen_below
    assert h.r[3].chosen_below < top
    for i in (1, 2):
        h.r[i].compact(top)
    h.r[1]._heartbeat_now = True  # noqa: SLF001
    h.flush(1)
    h.deliver(lambda m: m.dst == 3 or m.src == 3)
    ready = h.r[3].ready()
    needed = ready.snapshot_needed_from
    if needed is None:  # the request went out in the flush above; answer it again
        h.r[3].step(__import__("consensus.messages", fromlist=["CatchupReply"]).CatchupReply(1, 3, (), top, top))
        ready = h.r[3].ready()
        needed = ready.snapshot_needed_from
    assert needed == top and ready.snapshot_peer == 1, (h.r[3].chosen_below, h.r[3].role, top)
    h.r[3].install_snapshot(top, h.r[1].membership_for_snapshot(top))
    assert h.r[3].chosen_below == top
    h.r[1].propose(b"after")
    h.flush(1)
    h.deliver()
    _push_chosen_point(h, 1)
    assert h.r[3].chosen_value(top + 0) is not None or h.r[3].chosen_below > top


def test_heartbeat_ack_is_what_step_would_send_and_changes_nothing():
    """A follower's heartbeat_ack answers only its leader's heartbeat at the
    promised ballot, equals the ack step() sends for it, and leaves no step."""
    from consensus.messages import Heartbeat, HeartbeatAck

    h = Harness()
    h.elect(1)
    f = h.r[2]
    hb = Heartbeat(1, 2, ballot=h.r[1].ballot, chosen_below=h.r[1].chosen_below, seq=7)
    before = (f.role, f.promised, f.leader_id, f.chosen_below)
    ack = f.heartbeat_ack(hb)
    assert ack == HeartbeatAck(2, 1, ballot=h.r[1].ballot, seq=7, chosen_below=f.chosen_below)
    assert (f.role, f.promised, f.leader_id, f.chosen_below) == before
    assert f.ready().empty
    assert f.heartbeat_ack(Heartbeat(3, 2, ballot=h.r[1].ballot, chosen_below=0, seq=7)) is None  # not its leader
    assert h.r[1].heartbeat_ack(Heartbeat(2, 1, ballot=h.r[1].ballot, chosen_below=0, seq=7)) is None  # a leader answers nothing
    f.step(hb)
    assert ack in f.ready().messages
