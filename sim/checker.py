"""The outside observer: invariants checked after every simulation step.

It watches every replica and every client from outside the replicas and
records a violation (with the time it happened) when:

* two replicas choose different values for one slot (agreement);
* a chosen value was never proposed (validity);
* a proposal reported as committed is later missing from the chosen log;
* a replica's promised ballot decreases (in memory, or on disk across a crash);
* a linearizable read observes a state older than one a client already saw
  (an acknowledged write, or an earlier read that had completed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus import Ballot, ZERO_BALLOT
from consensus.messages import NOOP


@dataclass
class Violation:
    time: int
    what: str

    def __str__(self) -> str:
        return f"t={self.time}: {self.what}"


@dataclass
class Checker:
    proposed: set[bytes] = field(default_factory=set)
    chosen: dict[int, bytes] = field(default_factory=dict)
    acked: dict[int, bytes] = field(default_factory=dict)  # slot -> value acknowledged
    promised: dict[int, Ballot] = field(default_factory=dict)
    durable_promised: dict[int, Ballot] = field(default_factory=dict)
    # Highest state (applied index) any client has been shown as complete.
    observed_below: int = 0
    violations: list[Violation] = field(default_factory=list)
    now: int = 0

    def fail(self, what: str) -> None:
        self.violations.append(Violation(self.now, what))

    def on_proposed(self, value: bytes) -> None:
        self.proposed.add(value)

    def on_chosen(self, replica: int, slot: int, value: bytes) -> None:
        prior = self.chosen.get(slot)
        if prior is None:
            if value != NOOP and value not in self.proposed:
                self.fail(f"replica {replica} chose a value nobody proposed at slot {slot}")
            self.chosen[slot] = value
        elif prior != value:
            self.fail(
                f"replica {replica} chose {value[:16]!r} at slot {slot}, another chose {prior[:16]!r}"
            )

    def on_acked(self, slot: int, value: bytes) -> None:
        """A client was told its proposal committed at ``slot``."""
        if self.chosen.get(slot) != value:
            self.fail(f"acknowledged slot {slot} is not chosen with the acknowledged value")
        self.acked[slot] = value
        self.observed_below = max(self.observed_below, slot + 1)

    def on_promised(self, replica: int, ballot: Ballot) -> None:
        prev = self.promised.get(replica, ZERO_BALLOT)
        if ballot < prev:
            self.fail(f"replica {replica} promised ballot went down from {prev} to {ballot}")
        self.promised[replica] = ballot

    def on_restart(self, replica: int, ballot: Ballot) -> None:
        """After a crash the in-memory promise restarts from the durable one."""
        prev = self.durable_promised.get(replica, ZERO_BALLOT)
        if ballot < prev:
            self.fail(f"replica {replica} durable promise went down from {prev} to {ballot}")
        self.promised[replica] = ballot

    def on_durable_promised(self, replica: int, ballot: Ballot) -> None:
        prev = self.durable_promised.get(replica, ZERO_BALLOT)
        if ballot < prev:
            self.fail(f"replica {replica} persisted a lower promise {ballot} after {prev}")
        self.durable_promised[replica] = ballot

    def on_read(self, replica: int, invoked_floor: int, state_below: int) -> None:
        """A read invoked when clients had seen ``invoked_floor`` returned ``state_below``."""
        if state_below < invoked_floor:
            self.fail(
                f"read at replica {replica} saw state {state_below}, older than {invoked_floor} "
                "already observed when it was invoked"
            )
        self.observed_below = max(self.observed_below, state_below)

    def check_final(self, logs: dict[int, tuple[int, list[bytes]]]) -> None:
        """After the liveness phase: every acknowledged value is in every member's log.

        ``logs`` maps a replica to (log start, chosen values from there on);
        slots below the log start live in the replica's snapshot, whose
        digest the workload compares.
        """
        for slot, value in self.acked.items():
            for rid, (start, log) in logs.items():
                if slot < start:
                    continue
                if slot - start >= len(log):
                    self.fail(f"replica {rid} never learned acknowledged slot {slot}")
                elif log[slot - start] != value:
                    self.fail(f"replica {rid} lost acknowledged value at slot {slot}")
