"""The ledger workload: clients book transfers through the real state machine.

Every value is a real ``ledger.commands`` batch: it (re)creates a small fixed
set of accounts (idempotent: ``exists`` after the first time) and books a
random mix of plain, pending, post, void and linked transfers among them,
some of them invalid on purpose. Each replica applies chosen values to its own
``LedgerStateMachine`` over ``MemoryTables``.

Checked after every applied value, on every replica: per ledger, posted debits
equal posted credits and pending debits equal pending credits; no account
whose flags forbid it has debits above credits. At the end: replicas at the
same applied index have the same state digest.
"""

from __future__ import annotations

import random
from typing import Callable

from consensus.membership import is_membership_value
from ledger.commands import CreateAccounts, CreateTransfers, encode_batch
from ledger.model import ACCOUNT_ROW, Account, AccountFlags, Transfer, TransferFlags
from ledger.state_machine import LedgerStateMachine
from ledger.tables import MemoryTables

ACCOUNTS = 8
LEDGERS = (1, 2)
# Account i is on ledger LEDGERS[i % 2]; even ids may not go negative.
_ACCOUNTS = [
    Account(
        id=i,
        ledger=LEDGERS[i % 2],
        code=1,
        flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) if i % 4 == 0 else 0,
    )
    for i in range(1, ACCOUNTS + 1)
]
SECOND_NS = 1_000_000_000
_NO_OVERDRAFT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)


class _State:
    __slots__ = ("tables", "machine", "applied")

    def __init__(self) -> None:
        self.tables = MemoryTables()
        self.machine = LedgerStateMachine(self.tables)
        self.applied = 0


class LedgerWorkload:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._n = 0
        self._next_id = 1_000
        self._pending: list[int] = []

    def new_state(self) -> _State:
        return _State()

    def make_value(self) -> bytes:
        rng = self._rng
        self._n += 1
        transfers: list[Transfer] = []
        for _ in range(rng.randint(1, 6)):
            self._next_id += 1
            tid = self._next_id
            debit = rng.randint(1, ACCOUNTS)
            credit = rng.randint(1, ACCOUNTS)
            ledger = LEDGERS[debit % 2]
            roll = rng.random()
            flags = 0
            pending_id = 0
            timeout = 0
            amount = rng.randint(0, 50)
            if roll < 0.2:
                flags = int(TransferFlags.PENDING)
                timeout = rng.choice([0, 0, 1, 5])
                self._pending.append(tid)
            elif roll < 0.35 and self._pending:
                pending_id = rng.choice(self._pending)
                flags = int(rng.choice([TransferFlags.POST_PENDING_TRANSFER, TransferFlags.VOID_PENDING_TRANSFER]))
                amount = rng.choice([0, amount])
                debit = credit = 0
                ledger = 0
            if rng.random() < 0.15:
                flags |= int(TransferFlags.LINKED)
            if rng.random() < 0.05:
                tid = rng.randint(1_001, self._next_id)  # a retry or a clash
            transfers.append(
                Transfer(
                    id=tid,
                    debit_account_id=debit,
                    credit_account_id=credit,
                    amount=amount,
                    ledger=ledger,
                    code=1,
                    flags=flags,
                    pending_id=pending_id,
                    timeout=timeout,
                    user_data_64=self._n,
                )
            )
        commands = [CreateTransfers.of(transfers)]
        if self._n <= 5 or rng.random() < 0.1:
            commands.insert(0, CreateAccounts.of(_ACCOUNTS))
        return encode_batch(self._n * SECOND_NS, commands)

    def copy_state(self, state: object) -> _State:
        assert isinstance(state, _State)
        c = _State()
        c.tables = state.tables.copy()
        c.machine = LedgerStateMachine(c.tables)
        c.applied = state.applied
        return c

    def apply(self, state: object, value: bytes) -> None:
        assert isinstance(state, _State)
        if not is_membership_value(value):
            state.machine.apply_batch(value)
        state.applied += 1
        _check_conservation(state.machine)

    def check_states(self, states: dict[int, tuple[int, object]], fail: Callable[[str], None]) -> None:
        by_index: dict[int, int] = {}
        for rid, (applied, state) in states.items():
            assert isinstance(state, _State)
            if state.applied != applied:
                fail(f"replica {rid} applied {state.applied} values but reports {applied}")
            prior = by_index.setdefault(applied, state.tables.digest)
            if prior != state.tables.digest:
                fail(f"replica {rid} ledger digest differs from another at applied index {applied}")


def _check_conservation(machine: LedgerStateMachine) -> None:
    # Raw rows, not Account objects: this runs after every applied value.
    posted = {ledger: [0, 0] for ledger in LEDGERS}
    pending = {ledger: [0, 0] for ledger in LEDGERS}
    for i in range(1, ACCOUNTS + 1):
        row = machine.tables.get(b"accounts", i.to_bytes(16, "big"))
        if row is None:
            continue
        (_, dp, dpo, cp, cpo, _, _, _, _, ledger, _, flags, _) = ACCOUNT_ROW.unpack(row)
        dp, dpo, cp, cpo = (int.from_bytes(x, "big") for x in (dp, dpo, cp, cpo))
        posted[ledger][0] += dpo
        posted[ledger][1] += cpo
        pending[ledger][0] += dp
        pending[ledger][1] += cp
        if flags & _NO_OVERDRAFT:
            assert dpo + dp <= cpo, f"account {i} debits exceed credits"
    for ledger in LEDGERS:
        assert posted[ledger][0] == posted[ledger][1], f"ledger {ledger}: posted debits != posted credits"
        assert pending[ledger][0] == pending[ledger][1], f"ledger {ledger}: pending debits != pending credits"
