"""Seeded ledger histories for tests: slot values with every kind of write."""

from __future__ import annotations

import os
import random

from ledger.commands import CreateAccounts, CreateTransfers, KvCas, KvDelete, KvPut, Noop, encode_batch
from ledger.model import Account, AccountFlags, Transfer, TransferFlags

TF = TransferFlags


def random_batches(seed: int, count: int, accounts: int = 12) -> list[bytes]:
    """Slot values with every kind of write: accounts (some with history),
    transfers, pending ones that are posted, voided or expire, failing
    linked chains, and key-value commands."""
    rng = random.Random(seed)
    ts = 1_000_000_000
    values = [encode_batch(ts, [CreateAccounts.of(
        Account(id=i, ledger=1, code=1, flags=AccountFlags.HISTORY if i % 3 == 0 else 0)
        for i in range(1, accounts + 1))])]
    next_id = 1
    pending: list[int] = []
    for _ in range(count):
        events = []
        for _ in range(rng.randrange(1, 60)):
            dr = rng.randrange(1, accounts + 1)
            cr = rng.choice([a for a in range(1, accounts + 1) if a != dr])
            x = rng.random()
            if x < 0.2:
                events.append(Transfer(id=next_id, debit_account_id=dr, credit_account_id=cr, amount=3,
                                       ledger=1, code=1, flags=TF.PENDING, timeout=rng.choice([0, 1])))
                pending.append(next_id)
            elif x < 0.3 and pending:
                flag = rng.choice([TF.POST_PENDING_TRANSFER, TF.VOID_PENDING_TRANSFER])
                events.append(Transfer(id=next_id, pending_id=pending.pop(0), flags=flag))
            elif x < 0.35:
                events.append(Transfer(id=next_id, debit_account_id=dr, credit_account_id=cr, amount=1,
                                       ledger=1, code=1, flags=TF.LINKED))
                next_id += 1
                events.append(Transfer(id=next_id, debit_account_id=dr, credit_account_id=99, amount=1,
                                       ledger=1, code=1))
            else:
                events.append(Transfer(id=next_id, debit_account_id=dr, credit_account_id=cr,
                                       amount=rng.randrange(1, 50), ledger=1, code=1))
            next_id += 1
        key = b"k%d" % rng.randrange(5)
        kv = rng.choice([KvPut(key, os.urandom(rng.randrange(0, 40))), KvDelete(key), KvCas(key, 0, b"x")])
        ts += rng.choice([1_000, 2 * 10**9])
        values.append(encode_batch(ts, [CreateTransfers.of(events), kv, Noop()]))
    return values
