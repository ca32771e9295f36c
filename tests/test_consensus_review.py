"""Scenarios at the edges of leases, leadership transfer and snapshots.

Each test drives replicas message by message with the Harness of
``test_consensus_scenarios``. Tests marked ``xfail(strict=True)`` describe a
known defect: they pass (as expected failures) while the defect is there, and
turn into an unexpected pass once it is fixed, so the mark must then go.
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


@pytest.mark.xfail(
    strict=True,
    reason="a TimeoutNow (or transfer Prepare) that arrives after the transfer timed out still "
    "bypasses stickiness, while the old leader has taken a fresh lease at the same ballot",
)
def test_late_timeout_now_after_failed_transfer_allows_stale_lease_read():
    h = Harness()
    h.elect(1)
    h.deliver()
    _push(h, 1)
    _commit(h, 1, b"before")
    # Leader 1 hands over to 3, but its TimeoutNow is held up in the network
    # (every copy of it: one goes out with each acknowledgement).
    h.r[1].transfer_leadership(3)
    h.flush(1)
    late = [m for m in h.inflight if isinstance(m, TimeoutNow)]
    assert late
    not_timeout_now = lambda m: not isinstance(m, TimeoutNow)  # noqa: E731
    held: list = []

    def hold(m):
        if isinstance(m, TimeoutNow):
            held.append(m)
            return False
        return True

    h.drop(lambda m: isinstance(m, TimeoutNow))
    held.extend(late)
    # The transfer times out; 1 carries on leading and takes a new lease.
    _tick_all(h, h.r[1].config.transfer_timeout_ticks + 1, hold)
    h.drop(lambda m: isinstance(m, TimeoutNow))
    assert h.r[1].role is Role.LEADER
    _push(h, 1, not_timeout_now)
    assert h.r[1].lease_valid(), "the old leader holds a lease again after the failed transfer"
    # 1 is cut off now (its lease says nobody else can be elected yet).
    h.drop(lambda m: 1 in (m.src, m.dst))
    # The held TimeoutNow finally reaches 3, which campaigns ignoring stickiness.
    # (It was sent before the cut, so it is delivered by hand.)
    h.r[3].step(held[0])
    h.flush(3)
    cut = lambda m: 1 not in (m.src, m.dst)  # noqa: E731
    h.deliver(cut)
    if h.r[3].role is not Role.LEADER:
        pytest.fail("3 was not elected: the late TimeoutNow was refused (the defect is fixed)")
    h.deliver(cut)
    slot = _commit(h, 3, b"after", cut)
    h.drop(lambda m: 1 in (m.src, m.dst))
    # A client saw "after" committed; a lease read at 1 must not miss it.
    assert h.r[1].lease_valid()
    h.r[1].read(99)
    h.flush(1)
    ready = [r for r in h.reads[1] if r.token == 99]
    assert ready, "lease read answered at once"
    assert ready[0].index > slot, (
        f"stale lease read at the old leader: read index {ready[0].index}, "
        f"but slot {slot} was committed by leader 3 before the read"
    )


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="install_snapshot asserts the replica is not the leader, but a replica that asked for "
    "a snapshot can win an election (with promisers that kept their log) before it arrives",
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
    # The snapshot the driver asked for arrives now.
    h.r[3].install_snapshot(top, h.r[1].membership_for_snapshot(top))
