"""What the simulated clients propose and how replicas apply it.

A workload makes unique values, applies them to a per-replica state, and at
the end checks the replicas' states against each other. ``LogWorkload`` is
the consensus-only one (state: a hash chain of applied values).
``LedgerWorkload`` (in ``sim.ledger_workload``) drives the real ledger state
machine and checks that balances are conserved.
"""

from __future__ import annotations

import random
from hashlib import blake2b
from typing import Callable, Protocol


class Workload(Protocol):
    def new_state(self) -> object: ...

    def make_value(self) -> bytes: ...

    def apply(self, state: object, value: bytes) -> None: ...

    def copy_state(self, state: object) -> object: ...

    def check_states(self, states: dict[int, tuple[int, object]], fail: Callable[[str], None]) -> None: ...


class _Chain:
    __slots__ = ("digest", "count")

    def __init__(self) -> None:
        self.digest = b""
        self.count = 0


class LogWorkload:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._n = 0

    def new_state(self) -> _Chain:
        return _Chain()

    def make_value(self) -> bytes:
        self._n += 1
        return b"v%d:%d" % (self._n, self._rng.getrandbits(32))

    def apply(self, state: object, value: bytes) -> None:
        assert isinstance(state, _Chain)
        if value.startswith(b"\xff"):
            value = b""  # a membership value: no state machine effect
        state.digest = blake2b(state.digest + value, digest_size=16).digest()
        state.count += 1

    def copy_state(self, state: object) -> _Chain:
        assert isinstance(state, _Chain)
        c = _Chain()
        c.digest, c.count = state.digest, state.count
        return c

    def check_states(self, states: dict[int, tuple[int, object]], fail: Callable[[str], None]) -> None:
        by_index: dict[int, bytes] = {}
        for rid, (applied, state) in states.items():
            assert isinstance(state, _Chain)
            if state.count != applied:
                fail(f"replica {rid} applied {state.count} values but reports {applied}")
            prior = by_index.setdefault(applied, state.digest)
            if prior != state.digest:
                fail(f"replica {rid} state differs from another at applied index {applied}")
