"""Cluster membership as part of the replicated log.

A membership is a set of voters (whose majority chooses values) and a set of
learners (who receive everything and vote on nothing). It changes only through
the log: a *membership value* chosen at slot ``i`` takes effect at slot
``i + alpha`` where ``alpha`` is the pipeline window (``window_slots_max``).

The rule and why it is safe (Lamport, Malkhi and Zhou, "Reconfiguring a State
Machine", 2010, the alpha-window scheme):

* Phase 2. The leader proposes slot ``s`` only while ``s < chosen_below +
  alpha`` (the window), so every change that could affect ``s`` was chosen at a
  slot ``<= s - alpha < chosen_below``: the leader knows the membership of
  every slot it proposes, and so does every replica holding the chosen prefix.
* Phase 1. A candidate knows the membership at its ``from_slot`` from its
  chosen prefix. Before it leads, it needs promises from a majority of the
  voters of that membership AND of every membership that the values it
  recovers (highest ballot per slot) would put into effect. If a value was
  chosen at slot ``s``, every membership change that governed ``s`` was chosen
  earlier, and by induction the candidate's promises include a majority of the
  voters that governed it, so the candidate recovers it (P2c holds per slot).
* One change at a time: a new change is refused until the previous one has
  taken effect. Changes add a learner, promote a learner, or remove one
  replica, so a replacement is add + promote + remove.

A membership value is ``MEMBERSHIP_MAGIC`` followed by ASCII
``voters;learners`` (comma separated ids). Ledger batches never begin with the
magic byte 0xFF (a msgpack array cannot).
"""

from __future__ import annotations

from dataclasses import dataclass

MEMBERSHIP_MAGIC = b"\xffmembership1:"
MEMBERS_MAX = 16


class MembershipError(ValueError):
    """A change that cannot be made (unknown replica, not a learner, last voter...)."""


@dataclass(frozen=True, slots=True)
class Membership:
    voters: frozenset[int]
    learners: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        assert self.voters, "a membership needs at least one voter"
        assert not (self.voters & self.learners), "a replica is a voter or a learner, not both"

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def has_quorum(self, ids: set[int] | frozenset[int]) -> bool:
        return len(self.voters & ids) >= self.quorum

    def encode(self) -> bytes:
        voters = ",".join(str(i) for i in sorted(self.voters))
        learners = ",".join(str(i) for i in sorted(self.learners))
        return MEMBERSHIP_MAGIC + f"{voters};{learners}".encode()

    # Changes -----------------------------------------------------------------

    def add_learner(self, replica_id: int) -> "Membership":
        if not 0 < replica_id < 2**16:
            raise MembershipError(f"replica id {replica_id} out of range 1..65535")
        if replica_id in self.members:
            raise MembershipError(f"replica {replica_id} is already a member")
        if len(self.members) >= MEMBERS_MAX:
            raise MembershipError(f"at most {MEMBERS_MAX} members")
        return Membership(self.voters, self.learners | {replica_id})

    def promote(self, replica_id: int) -> "Membership":
        if replica_id not in self.learners:
            raise MembershipError(f"replica {replica_id} is not a learner")
        return Membership(self.voters | {replica_id}, self.learners - {replica_id})

    def remove(self, replica_id: int) -> "Membership":
        if replica_id in self.learners:
            return Membership(self.voters, self.learners - {replica_id})
        if replica_id not in self.voters:
            raise MembershipError(f"replica {replica_id} is not a member")
        if len(self.voters) == 1:
            raise MembershipError("cannot remove the last voter")
        return Membership(self.voters - {replica_id}, self.learners)


def is_membership_value(value: bytes) -> bool:
    return value.startswith(MEMBERSHIP_MAGIC)


def decode_membership(value: bytes) -> Membership:
    """Decode a membership value; MembershipError if it is malformed."""
    if not is_membership_value(value):
        raise MembershipError("not a membership value")
    try:
        voters_s, learners_s = value[len(MEMBERSHIP_MAGIC):].decode("ascii").split(";")
        voters = frozenset(int(x) for x in voters_s.split(",") if x)
        learners = frozenset(int(x) for x in learners_s.split(",") if x)
    except (UnicodeDecodeError, ValueError) as e:
        raise MembershipError(f"malformed membership value: {e}") from None
    if not voters or voters & learners or len(voters | learners) > MEMBERS_MAX:
        raise MembershipError("malformed membership value: bad sets")
    if any(not 0 < i < 2**16 for i in voters | learners):
        raise MembershipError("malformed membership value: id out of range")
    return Membership(voters, learners)


class MembershipHistory:
    """Memberships by the slot they take effect at; the first entry covers log_start."""

    def __init__(self, entries: list[tuple[int, Membership]]) -> None:
        assert entries, "membership history cannot be empty"
        self.entries = sorted(entries, key=lambda e: e[0])

    def at(self, slot: int) -> Membership:
        current = self.entries[0][1]
        for effective, m in self.entries:
            if effective <= slot:
                current = m
            else:
                break
        return current

    def from_slot(self, slot: int) -> list[Membership]:
        """The membership at ``slot`` and every later one."""
        out = [self.at(slot)]
        out.extend(m for effective, m in self.entries if effective > slot)
        return out

    def add(self, effective: int, m: Membership) -> None:
        assert not self.entries or effective > self.entries[-1][0], "membership changes out of order"
        self.entries.append((effective, m))

    def known_ids(self) -> frozenset[int]:
        ids: frozenset[int] = frozenset()
        for _, m in self.entries:
            ids |= m.members
        return ids

    def latest(self) -> tuple[int, Membership]:
        return self.entries[-1]

    def trim_below(self, slot: int) -> None:
        """Forget memberships superseded before ``slot`` (after log compaction)."""
        base = self.at(slot)
        self.entries = [(slot, base)] + [(e, m) for e, m in self.entries if e > slot]

    def to_tuple(self) -> tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]:
        return tuple((e, tuple(sorted(m.voters)), tuple(sorted(m.learners))) for e, m in self.entries)

    @classmethod
    def from_tuple(cls, data) -> "MembershipHistory":
        return cls([(e, Membership(frozenset(v), frozenset(l))) for e, v, l in data])
