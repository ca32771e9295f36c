"""Scenarios at the edges of leases, leadership transfer and snapshots.

Each test drives replicas message by message with the Harness of
``test_consensus_scenarios``. Each was a defect once and guards its fix.
"""

from __future__ import annotations

import pytest

from consensus import Role
from consensus.messages import CatchupReply, Prepare, TimeoutNow
from tests.test_consensus_scenarios import Harness


def _push(h: Harness, leader: int, allow=lambda m: True) -> None:
    h.r[leader]._heartbeat_now = True  # noqa: SLF001 - one heartbeat round now
    h.flush(leader)
    h.deliver(allow)


def _commit(h: Harness, leader: int, value: bytes, allow=lambda m: True) -> int:
    slot = h.r[leader].propose(value)
    h.flush(leader)
    h.deliver(allow)
    _push(h, leader, allow)
    assert h.r[leader].chosen_value(slot) == value
    return slot


def _tick_all(h: Harness, ticks: int, allow=lambda m: True) -> None:
    """Time passes on every live replica; allowed messages are delivered, the rest stay in flight."""
    for _ in range(ticks):
        for i in h.ids:
            if i not in h.down:
                h.r[i].tick()
                h.flush(i)
        h.deliver(allow)


def test_late_timeout_now_after_failed_transfer_allows_no_stale_lease_read():
    """A TimeoutNow that arrives after the transfer timed out must not void a lease the old leader holds.

    The target still follows the old leader at its ballot, so it campaigns past
    stickiness; the old leader must therefore not trust a lease at that ballot
    any more once it has sent a TimeoutNow.
    """
    h = Harness()
    h.elect(1)
    h.deliver()
    _push(h, 1)
    _commit(h, 1, b"before")
    # Leader 1 hands over to 3, but every copy of its TimeoutNow is held up.
    h.r[1].transfer_leadership(3)
    h.flush(1)
    held = [m for m in h.inflight if isinstance(m, TimeoutNow)]
    assert held
    not_timeout_now = lambda m: not isinstance(m, TimeoutNow)  # noqa: E731
    h.drop(lambda m: isinstance(m, TimeoutNow))
    # The transfer times out; 1 carries on leading.
    _tick_all(h, h.r[1].config.transfer_timeout_ticks + 1, not_timeout_now)
    h.drop(lambda m: isinstance(m, TimeoutNow))
    assert h.r[1].role is Role.LEADER
    _push(h, 1, not_timeout_now)
    # 1 is cut off now. The held TimeoutNow reaches 3 (it was sent before the
    # cut, so it is delivered by hand), and 3 campaigns.
    h.drop(lambda m: 1 in (m.src, m.dst))
    h.r[3].step(held[0])
    h.flush(3)
    cut = lambda m: 1 not in (m.src, m.dst)  # noqa: E731
    h.deliver(cut)
    slot = None
    if h.r[3].role is Role.LEADER:
        slot = _commit(h, 3, b"after", cut)
        h.drop(lambda m: 1 in (m.src, m.dst))
    # A read at 1 must not be answered with a state that misses "after".
    h.r[1].read(99)
    h.flush(1)
    ready = [r for r in h.reads[1] if r.token == 99]
    if slot is not None and ready:
        assert ready[0].index > slot, (
            f"stale lease read at the old leader: read index {ready[0].index}, "
            f"but slot {slot} was committed by leader 3 before the read"
        )


def test_snapshot_arriving_after_the_laggard_became_leader():
    h = Harness()
    h.elect(1)
    h.deliver()
    without_3 = lambda m: 3 not in (m.src, m.dst)  # noqa: E731
    h.drop(lambda m: 3 in (m.src, m.dst))
    for k in range(5):
        _commit(h, 1, b"w%d" % k, without_3)
        h.drop(lambda m: 3 in (m.src, m.dst))
    top = h.r[1].chosen_below
    # Only 1 compacts; 2 keeps its whole log.
    h.r[1].compact(top)
    # 3 hears 1 again, asks it for the slots it lacks, and is told to install a snapshot.
    h.r[3].step(CatchupReply(1, 3, (), top, top))
    needed = h.r[3].ready().snapshot_needed_from
    assert needed == top
    # Before the snapshot arrives, 1 crashes and 3 wins an election with 2's promise.
    h.crash(1)
    h.lapse()
    from consensus.messages import Accept, Accepted

    no_phase2 = lambda m: 1 not in (m.src, m.dst) and not isinstance(m, (Accept, Accepted))  # noqa: E731
    h.elect(3, allow=no_phase2)
    assert h.r[3].chosen_below < top
    # The snapshot the driver asked for arrives now: 3 stops leading (it
    # lacked chosen slots) and takes the snapshot's chosen point.
    h.r[3].install_snapshot(top, h.r[1].membership_for_snapshot(top))
    assert h.r[3].role is not Role.LEADER
    assert h.r[3].chosen_below == top


class _MembersHarness(Harness):
    """Voters and learners of one's choosing, and any Config limits (a small window here)."""

    def __init__(self, voters=(1, 2, 3), learners=(4,), seed=1, **cfg) -> None:  # noqa: D107
        from sim.storage import SimStorage

        self.voters, self.learners, self.cfg = voters, learners, cfg
        self.ids = voters + learners
        self.disks = {i: SimStorage() for i in self.ids}
        self.r = {}
        self.inflight = []
        self.committed = {i: [] for i in self.ids}
        self.reads = {i: [] for i in self.ids}
        self.down = set()
        self.seed = seed
        for i in self.ids:
            self.boot(i)
        for _ in range(self.r[self.ids[0]].config.election_timeout_min_ticks):
            for i in self.ids:
                self.r[i].now += 1
        self.flush_all()
        self.inflight.clear()

    def boot(self, i: int) -> None:
        import random

        from consensus import Config, Replica

        cfg = Config(replica_id=i, replica_ids=self.voters, learner_ids=self.learners, **self.cfg)
        self.r[i] = Replica(cfg, self.disks[i].load(), random.Random(self.seed * 100 + i))
        self.down.discard(i)


def test_new_leader_behind_two_membership_changes_counts_the_right_quorum():
    """Acceptances of a recovered slot beyond the window count only once its membership is certain."""
    from consensus.messages import Accept, Accepted

    # alpha = 2; tiny messages, so a leader's Accepts go out in small batches.
    h = _MembersHarness(window_slots_max=2, slot_bytes_max=64, message_bytes_max=128)

    def settle(leader, allow, ticks=6):
        for _ in range(ticks):
            h.r[leader].tick()
            h.flush(leader)
            h.deliver(allow)
        _push(h, leader, allow)

    h.elect(1)
    h.deliver()
    _push(h, 1)
    # 2 is cut off from here on and lags at its chosen point.
    no2 = lambda m: 2 not in (m.src, m.dst)  # noqa: E731
    h.drop(lambda m: 2 in (m.src, m.dst))
    lag = h.r[2].chosen_below
    # Two changes take effect while 2 is away: promote 4, then remove 3.
    h.r[1].change_membership("promote", 4)
    h.flush(1)
    h.deliver(no2)
    settle(1, no2)
    t2 = h.r[1].change_membership("remove", 3)
    h.flush(1)
    h.deliver(no2)
    settle(1, no2)
    assert h.r[1].membership.voters == {1, 2, 4}
    alpha = h.r[1].config.window_slots_max
    # Leader 1 proposes v at slot s (only 1 holds it) and u at s + 1 (1 and 4 hold it).
    s = h.r[1].propose(b"v")
    h.flush(1)
    h.drop(lambda m: m.src == 1)
    h.r[1].propose(b"u")
    h.flush(1)
    h.deliver(lambda m: isinstance(m, Accept) and m.dst == 4)
    h.inflight.clear()
    assert s >= t2 + alpha and s >= lag + 2 * alpha
    # 1 is cut off; 2 comes back and is elected by 2, 3 and 4 (a majority of
    # every membership its recovered values name). It fills slot s with a no-op.
    no1 = lambda m: 1 not in (m.src, m.dst)  # noqa: E731
    h.lapse()
    h.r[2].campaign()
    h.flush(2)
    h.deliver(lambda m: no1(m) and not isinstance(m, (Accept, Accepted)))
    assert h.r[2].role is Role.LEADER and h.r[2].chosen_below == lag
    # Only the batch holding slot s reaches 3 (the earlier batches are lost).
    batch = [m for m in h.inflight if isinstance(m, Accept) and m.dst == 3 and any(e[0] == s for e in m.entries)]
    h.inflight = [m for m in h.inflight if not isinstance(m, Accept)] + batch
    h.deliver(lambda m: no1(m) and isinstance(m, (Accept, Accepted)))
    h.inflight.clear()
    # 2 and 3 accepted the no-op at s; the voters at s are {1, 2, 4}: that is no majority.
    premature = h.r[2].chosen_value(s)
    # 2 is cut off; 1 returns and leads with 4, a majority of {1, 2, 4}.
    for _ in range(3):
        h.lapse()
        h.r[1].campaign()
        h.flush(1)
        h.deliver(no2)
        if h.r[1].role is Role.LEADER:
            break
    assert h.r[1].role is Role.LEADER
    _push(h, 1, no2)
    _push(h, 1, no2)
    assert h.r[1].chosen_value(s) == b"v" and h.r[4].chosen_value(s) == b"v"
    assert premature is None, f"replica 2 holds slot {s} chosen as {premature!r}; 1 and 4 chose b'v' there"


def test_transfer_campaign_respects_the_lease_of_a_different_leader():
    """A TimeoutNow of an old leader lets its target waive only that leader's stickiness."""
    h = Harness(n=5, seed=1)
    h.elect(1)
    h.deliver()
    _push(h, 1)
    _commit(h, 1, b"before")
    # A partition {1, 5} | {2, 3, 4}. Leader 1 hands over to 5 just as it starts,
    # and the TimeoutNow is held up.
    side_a, side_b = {1, 5}, {2, 3, 4}

    def same_side(m):
        ends = {m.src, m.dst}
        return (ends <= side_a or ends <= side_b) and not isinstance(m, TimeoutNow)

    h.r[1].transfer_leadership(5)
    h.flush(1)
    held = [m for m in h.inflight if isinstance(m, TimeoutNow)]
    assert held
    h.drop(lambda m: not same_side(m))
    # 1 loses its majority and steps down; {2, 3, 4} elect a leader that takes a lease.
    leader = None
    for _ in range(60):
        for i in h.ids:
            h.r[i].tick()
            h.flush(i)
        h.deliver(same_side)
        h.drop(lambda m: not same_side(m))
        leader = next((i for i in sorted(side_b) if h.r[i].role is Role.LEADER), None)
        if leader:
            break
    assert leader is not None
    _push(h, leader, same_side)
    h.drop(lambda m: True)
    assert h.r[leader].lease_valid()
    # 5 still follows 1 at 1's ballot when the TimeoutNow arrives; the new
    # leader is cut off from everybody, the rest of the network heals.
    assert h.r[5].role is Role.FOLLOWER and h.r[5].leader_id == 1
    rest = lambda m: leader not in (m.src, m.dst)  # noqa: E731
    h.r[5].step(held[0])
    h.flush(5)
    h.deliver(rest)
    if h.r[5].role is not Role.LEADER:
        return  # refused: 2, 3 and 4 keep protecting their own leader's lease
    slot = _commit(h, 5, b"after", rest)
    h.drop(lambda m: leader in (m.src, m.dst))
    assert h.r[leader].lease_valid()
    h.r[leader].read(7)
    h.flush(leader)
    ready = [r for r in h.reads[leader] if r.token == 7]
    assert ready and ready[0].index > slot, (
        f"stale lease read at {leader}: index {ready[0].index if ready else None}, slot {slot} committed by 5"
    )


def test_new_leader_far_behind_chooses_a_long_run_of_recovered_slots():
    from consensus.messages import Accept, Accepted

    # alpha = 2 and tiny messages: one or two entries per Accept.
    h = _MembersHarness(voters=(1, 2, 3), learners=(), window_slots_max=2, slot_bytes_max=64, message_bytes_max=128)
    h.elect(1)
    h.deliver()
    _push(h, 1)
    no2 = lambda m: 2 not in (m.src, m.dst)  # noqa: E731
    h.drop(lambda m: 2 in (m.src, m.dst))
    lag = h.r[2].chosen_below
    for k in range(700):  # well within promise_chosen_slots_max (1024)
        _commit(h, 1, b"v%d" % k, no2)
        h.drop(lambda m: 2 in (m.src, m.dst))
    h.crash(1)
    h.lapse()
    # 2, 700 slots behind, is elected with 3's promise and re-proposes all of them.
    h.r[2].campaign()
    h.flush(2)
    h.deliver(lambda m: m.dst != 1 and not isinstance(m, (Accept, Accepted)))
    assert h.r[2].role is Role.LEADER and h.r[2].chosen_below == lag
    # The batch holding the first slot reaches 3 last (say it was retransmitted).
    first = [m for m in h.inflight if isinstance(m, Accept) and m.dst == 3 and any(e[0] == lag for e in m.entries)]
    h.inflight = [m for m in h.inflight if m not in first]
    h.deliver(lambda m: m.dst != 1)
    h.inflight.extend(first)
    h.deliver(lambda m: m.dst != 1)
    _push(h, 2, lambda m: m.dst != 1)  # the follower learns the last chosen point
    assert h.r[2].chosen_below == h.r[3].chosen_below
