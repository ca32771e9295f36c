"""Messages between replicas: frozen dataclasses, no behaviour.

Every message names its sender ``src`` and receiver ``dst``. Slot values are
opaque ``bytes`` (a batch of client commands encoded by the layer above);
``NOOP`` (the empty value) fills holes. Entries travel as tuples so that a
message is hashable and immutable.

Phase 1 (Paxos Made Simple, 2.2): ``Prepare`` / ``Promise`` / ``Reject``,
preceded by a state-free ``PreVote`` round.
Phase 2: ``Accept`` / ``Accepted`` / ``Reject``.
Learning: the chosen point rides on ``Accept`` and ``Heartbeat``; replicas
that miss values fetch them with ``CatchupRequest`` / ``CatchupReply``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from consensus.ballot import Ballot

NOOP = b""

# (slot, value)
Entry = tuple[int, bytes]
# (slot, ballot accepted at, value)
AcceptedEntry = tuple[int, Ballot, bytes]


class RejectReason(IntEnum):
    """Why an acceptor refused a Prepare or an Accept. Numbers are stable."""

    LOWER_BALLOT = 1  # it has promised a higher ballot
    LEADER_ALIVE = 2  # it still hears a live leader (stickiness)
    CANDIDATE_BEHIND = 3  # the candidate lacks too many chosen slots


@dataclass(frozen=True, slots=True)
class Message:
    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class PreVote(Message):
    """Would you promise ``ballot`` now? Changes no state on either side.

    A replica runs this round before a real Prepare so that a replica coming
    back from a partition with a high ballot cannot depose a healthy leader
    (the acceptors that hear the leader answer no).
    """

    ballot: Ballot
    from_slot: int


@dataclass(frozen=True, slots=True)
class PreVoteReply(Message):
    ballot: Ballot
    granted: bool
    promised: Ballot  # the replier's promise, so a stale asker can catch up
    leader_id: int  # the leader the replier follows, 0 if none


@dataclass(frozen=True, slots=True)
class Prepare(Message):
    """Phase 1a: promise ``ballot`` for every slot from ``from_slot`` on."""

    ballot: Ballot
    from_slot: int
    transfer: bool = False  # sent on the request of the leader of transfer_from
    # The ballot of the leader that asked for the transfer. Only acceptors
    # still following exactly that leader (which gave up its lease) waive
    # stickiness; one that follows a newer leader protects that leader's lease.
    transfer_from: Ballot = Ballot(0, 0)


@dataclass(frozen=True, slots=True)
class Promise(Message):
    """Phase 1b: everything accepted at slots >= from_slot, with ballots.

    ``chosen_below`` is the promiser's chosen point (the entries below it are
    known chosen). The new leader re-proposes every slot from ``from_slot``
    on anyway: a chosen value is recovered by the highest-ballot rule.
    """

    ballot: Ballot
    from_slot: int
    accepted: tuple[AcceptedEntry, ...]
    chosen_below: int


@dataclass(frozen=True, slots=True)
class Accept(Message):
    """Phase 2a for consecutive slots, with the leader's chosen point."""

    ballot: Ballot
    entries: tuple[Entry, ...]
    chosen_below: int


@dataclass(frozen=True, slots=True)
class Accepted(Message):
    """Phase 2b: the listed slots were accepted (and made durable) at ballot."""

    ballot: Ballot
    slots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reject(Message):
    """A Prepare or Accept at ``ballot`` was refused."""

    ballot: Ballot
    promised: Ballot
    reason: RejectReason
    chosen_below: int
    leader_id: int = 0  # the leader the rejecter follows, 0 if none


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Leader liveness, chosen point, and the read/lease round ``seq``."""

    ballot: Ballot
    chosen_below: int
    seq: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck(Message):
    ballot: Ballot
    seq: int
    chosen_below: int  # the follower's own chosen point, to spot laggards


@dataclass(frozen=True, slots=True)
class CatchupRequest(Message):
    """Send me the chosen values of slots [from_slot, to_slot)."""

    from_slot: int
    to_slot: int


@dataclass(frozen=True, slots=True)
class CatchupReply(Message):
    """Chosen values. ``log_start`` > requested slot means: install a snapshot."""

    entries: tuple[Entry, ...]
    chosen_below: int
    log_start: int


@dataclass(frozen=True, slots=True)
class TimeoutNow(Message):
    """Leadership transfer: the leader asks ``dst`` to campaign at once."""

    ballot: Ballot


ALL_MESSAGE_TYPES = (
    PreVote,
    PreVoteReply,
    Prepare,
    Promise,
    Accept,
    Accepted,
    Reject,
    Heartbeat,
    HeartbeatAck,
    CatchupRequest,
    CatchupReply,
    TimeoutNow,
)


SENDABLE_BEFORE_PERSIST = (Accept, Heartbeat, CatchupRequest, CatchupReply, TimeoutNow)
"""Messages a driver may send before the step that produced them is durable.

None of them speaks for the sender's acceptor state: ``Accept`` and
``Heartbeat`` come from a leader whose ballot a quorum (itself included, on
disk) already promised, and the leader counts its own acceptance only when a
later input arrives, which the driver steps after this step's persist; a
leader that crashes first restarts as a follower and never proposes in that
ballot again (``Replica._next_ballot`` is above its promise). Catch-up
carries only chosen values and slot numbers; ``TimeoutNow`` only asks its
target to campaign. Promises, acknowledgements and
refusals (``Promise``, ``Accepted``, ``Reject``, ``HeartbeatAck``, and the
rest) wait for the persist. Sending the leader's accepts first overlaps its
own disk write with the followers' (the Raft dissertation, 10.2.1, argues
the same for a Raft leader).
"""


def sendable_before_persist(message: Message) -> bool:
    return type(message) in SENDABLE_BEFORE_PERSIST

