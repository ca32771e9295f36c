"""An account's transfers as the chains and checkpoints give them
(``ledger.state_machine.get_account_transfers``), against the plain answer
computed from every transfer by timestamp, over histories long enough to
cross many checkpoints, with pending, posted, voided and expired transfers
and linked chains that fail and leave no trace. Seeded."""

from __future__ import annotations

import random

import pytest

from ledger.model import Transfer
from ledger.state_machine import CHECKPOINT_EVERY, LedgerStateMachine, get_account_transfers, get_transfers
from ledger.tables import MemoryTables
from ledger_histories import random_batches

ACCOUNTS = 5


def _history(seed: int) -> tuple[MemoryTables, list[Transfer]]:
    tables = MemoryTables()
    sm = LedgerStateMachine(tables)
    for value in random_batches(seed, 60, ACCOUNTS):
        sm.apply_batch(value)
    return tables, get_transfers(tables)


@pytest.mark.parametrize("seed", range(6))
def test_queries_match_the_full_scan(seed):
    tables, everything = _history(seed)
    rng = random.Random(seed)
    stamps = [t.timestamp for t in everything]
    most = max(sum(1 for t in everything if a in (t.debit_account_id, t.credit_account_id))
               for a in range(1, ACCOUNTS + 1))
    assert most > 3 * CHECKPOINT_EVERY, "the history must cross several checkpoints"
    for _ in range(300):
        account = rng.randrange(1, ACCOUNTS + 2)  # one with no transfers
        lo = rng.choice([0, rng.choice(stamps), rng.choice(stamps) + 1])
        hi = rng.choice([0, rng.choice(stamps), rng.choice(stamps) - 1])
        limit = rng.choice([1, 2, 7, CHECKPOINT_EVERY, CHECKPOINT_EVERY + 1, 500, 10_000])
        reverse = rng.random() < 0.5
        debits, credits = rng.choice([(True, True), (True, False), (False, True), (False, False)])
        want = [t for t in everything
                if t.timestamp >= lo and (not hi or t.timestamp <= hi)
                and ((debits and t.debit_account_id == account) or (credits and t.credit_account_id == account))]
        if hi and lo > hi:
            want = []
        if reverse:
            want.reverse()
        got = get_account_transfers(tables, account, timestamp_min=lo, timestamp_max=hi, limit=limit,
                                    reverse=reverse, debits=debits, credits=credits)
        assert got == want[:min(limit, 8190)], (seed, account, lo, hi, limit, reverse, debits, credits)


def test_paging_walks_the_whole_history():
    tables, everything = _history(99)
    for account in range(1, ACCOUNTS + 1):
        want = [t for t in everything if account in (t.debit_account_id, t.credit_account_id)]
        for reverse in (False, True):
            got: list[Transfer] = []
            lo, hi = 0, 0
            while True:
                page = get_account_transfers(tables, account, timestamp_min=lo, timestamp_max=hi,
                                             limit=13, reverse=reverse)
                got += page
                if len(page) < 13:
                    break
                if reverse:
                    hi = page[-1].timestamp - 1
                else:
                    lo = page[-1].timestamp + 1
            assert got == (want[::-1] if reverse else want)
