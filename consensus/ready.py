"""What the core hands back to its driver, and what it is restarted from.

The driver loop is always (as in etcd's raft ``Ready``)::

    ready = replica.ready()
    network.send(early)                 # the messages sendable_before_persist allows
    storage.persist(ready.persist)      # one transaction, synced if must_sync
    network.send(the rest)              # only after the persist is durable
    state_machine.apply(ready.committed)
    answer clients (ready.reads, ready.reads_refused, applied results)

Sending a promise or an acknowledgement before persisting would let a replica
promise or accept something it then forgets in a crash, which breaks Paxos;
``consensus.messages.SENDABLE_BEFORE_PERSIST`` names the messages that speak
for nothing on this replica's disk. A driver may always send everything after
the persist instead.

A client's answer is a message too, but one about a chosen slot: it may leave
as soon as the state machine has computed it, before the apply is durable
(the chosen log alone determines it), unless the chosen slot's own acceptance
is in the persist of this same step (a one-replica cluster's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from consensus.ballot import Ballot, ZERO_BALLOT
from consensus.messages import AcceptedEntry, Entry, Message


@dataclass(frozen=True, slots=True)
class Persist:
    """Acceptor state changes to make durable, in one transaction."""

    promised: Ballot | None = None  # new promised ballot, if it changed
    accepted: tuple[AcceptedEntry, ...] = ()  # (slot, ballot, value) to store
    chosen_below: int | None = None  # new chosen point, if it moved

    @property
    def empty(self) -> bool:
        return self.promised is None and not self.accepted and self.chosen_below is None

    @property
    def must_sync(self) -> bool:
        """Promises and accepts must be on disk before their reply is sent.

        A moved chosen point alone need not be synced: it can be relearned
        from peers after a crash.
        """
        return self.promised is not None or bool(self.accepted)


class RefuseReason(IntEnum):
    """Why a proposal or read could not be ordered. Numbers are stable."""

    NOT_LEADER = 1
    WINDOW_FULL = 2
    TOO_LARGE = 3
    TRANSFERRING = 4  # leadership is moving; retry at the new leader
    LEADERSHIP_LOST = 5  # the outcome of an earlier proposal is unknown
    READS_FULL = 6
    MEMBERSHIP_CHANGING = 7  # one membership change at a time


class Refused(Exception):
    """``Replica.propose`` could not order a value: why, and who leads (0 if unknown)."""

    def __init__(self, reason: RefuseReason, leader_id: int) -> None:
        super().__init__(f"{reason.name.lower()} (leader {leader_id or 'unknown'})")
        self.reason = reason
        self.leader_id = leader_id

    def __reduce__(self):
        return (Refused, (self.reason, self.leader_id))


@dataclass(frozen=True, slots=True)
class ReadReady:
    """A linearizable read may run once the applied index reaches ``index``."""

    token: int
    index: int


@dataclass(frozen=True, slots=True)
class ReadRefused:
    token: int
    reason: RefuseReason
    leader_id: int


@dataclass(slots=True)
class Ready:
    persist: Persist = field(default_factory=Persist)
    messages: list[Message] = field(default_factory=list)
    # Newly chosen slots, consecutive and in slot order, to apply.
    committed: list[Entry] = field(default_factory=list)
    reads: list[ReadReady] = field(default_factory=list)
    reads_refused: list[ReadRefused] = field(default_factory=list)
    # Set when peers no longer hold slots this replica lacks: it needs a
    # snapshot taken at or after ``from`` slot, which ``peer`` can provide.
    snapshot_needed_from: int | None = None
    snapshot_peer: int = 0

    @property
    def empty(self) -> bool:
        return (
            self.persist.empty
            and not self.messages
            and not self.committed
            and not self.reads
            and not self.reads_refused
            and self.snapshot_needed_from is None
        )


@dataclass(frozen=True, slots=True)
class DurableState:
    """What a replica restarts from: exactly what it persisted, plus applied."""

    promised: Ballot = ZERO_BALLOT
    accepted: dict[int, tuple[Ballot, bytes]] = field(default_factory=dict)
    chosen_below: int = 0
    applied_below: int = 0  # slots below this are in the state machine
    log_start: int = 0  # slots below this were compacted into a snapshot
    # Membership history as of log_start: ((effective slot, voters, learners), ...);
    # empty means the configured initial membership.
    memberships: tuple = ()
