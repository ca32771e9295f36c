"""Simulated durable storage for one replica.

A step's writes are either synced (durable at once, and flushing every earlier
unsynced write, as an fsync does) or unsynced (kept in a volatile overlay that
a crash throws away). This is the in-memory twin of ``ledger.storage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus import Ballot, DurableState, Persist, ZERO_BALLOT


@dataclass
class _Layer:
    promised: Ballot | None = None
    accepted: dict[int, tuple[Ballot, bytes]] = field(default_factory=dict)
    chosen_below: int | None = None
    applied_below: int | None = None


class SimStorage:
    def __init__(self) -> None:
        self.promised: Ballot = ZERO_BALLOT
        self.accepted: dict[int, tuple[Ballot, bytes]] = {}
        self.chosen_below = 0
        self.applied_below = 0
        self.log_start = 0
        # (index, state machine copy, membership history) of the last snapshot.
        self.snapshot: tuple[int, object, tuple] | None = None
        self._volatile = _Layer()
        self.syncs = 0

    def write(self, persist: Persist, applied_below: int | None) -> None:
        layer = self._volatile
        if persist.promised is not None:
            layer.promised = persist.promised
        for slot, ballot, value in persist.accepted:
            layer.accepted[slot] = (ballot, value)
        if persist.chosen_below is not None:
            layer.chosen_below = persist.chosen_below
        if applied_below is not None:
            layer.applied_below = applied_below
        if persist.must_sync:
            self.sync()

    def sync(self) -> None:
        layer = self._volatile
        if layer.promised is not None:
            assert layer.promised >= self.promised, "durable promise went down"
            self.promised = layer.promised
        self.accepted.update(layer.accepted)
        if layer.chosen_below is not None:
            self.chosen_below = max(self.chosen_below, layer.chosen_below)
        if layer.applied_below is not None:
            self.applied_below = max(self.applied_below, layer.applied_below)
        self._volatile = _Layer()
        self.syncs += 1

    def compact(self, index: int, state_copy: object, memberships: tuple) -> None:
        """Atomically keep a snapshot of the state below ``index`` and drop that log prefix."""
        self.sync()
        assert index <= self.applied_below, "snapshot beyond the applied state"
        if index <= self.log_start:
            return
        self.snapshot = (index, state_copy, memberships)
        self.log_start = index
        for slot in [s for s in self.accepted if s < index]:
            del self.accepted[slot]

    def install(self, index: int, state_copy: object, memberships: tuple) -> None:
        """Atomically replace the state with a peer's snapshot at ``index``."""
        self.sync()
        self.snapshot = (index, state_copy, memberships)
        self.log_start = index
        self.chosen_below = max(self.chosen_below, index)
        self.applied_below = index
        for slot in [s for s in self.accepted if s < index]:
            del self.accepted[slot]

    def crash(self) -> None:
        """Lose everything not yet synced."""
        self._volatile = _Layer()

    def load(self) -> DurableState:
        return DurableState(
            promised=self.promised,
            accepted={s: e for s, e in self.accepted.items() if s >= self.log_start},
            chosen_below=self.chosen_below,
            applied_below=min(self.applied_below, self.chosen_below),
            log_start=self.log_start,
            memberships=self.snapshot[2] if self.snapshot else (),
        )
