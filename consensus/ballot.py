"""Ballots: (round, replica id), totally ordered.

Two replicas never use the same ballot because the replica id breaks ties, so
each ballot has at most one proposer (Paxos Made Simple, section 2.2: "different
proposers choose their numbers from disjoint sets").
"""

from __future__ import annotations

from typing import NamedTuple


class Ballot(NamedTuple):
    round: int
    replica_id: int

    def next_for(self, replica_id: int) -> "Ballot":
        """The smallest ballot owned by ``replica_id`` that is above this one."""
        return Ballot(self.round + 1, replica_id)

    def __str__(self) -> str:
        return f"{self.round}.{self.replica_id}"


ZERO_BALLOT = Ballot(0, 0)
