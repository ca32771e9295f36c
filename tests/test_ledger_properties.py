"""Property tests: the ledger state machine agrees with an independent reference model.

Goal: for random batches of account and transfer events (pending, post, void,
linked chains, balance-limit flags, balancing, duplicates, overflow-sized
amounts, timeouts and a leader clock that jumps and goes back), every result
code, account, transfer, balance-history row and pending status equals that of
a small in-memory model written here from the rules in ``ledger.codes``; and
the ledger's invariants hold after every batch:

* per ledger, the sum of debits equals the sum of credits (posted and pending);
* no balance crosses its account's DEBITS/CREDITS_MUST_NOT_EXCEED flag;
* a pending transfer is resolved (posted, voided or expired) at most once;
* a failed linked chain leaves no trace (rows equal the model's);
* a resubmitted batch books nothing twice: each event that succeeded answers
  ``exists`` (or ``linked_event_failed`` behind the first event of its chain);
* the same batches on two MemoryTables, and on LMDB (``ReplicaStorage``),
  give identical results, rows and digests, and the incremental digest equals
  the digest recomputed from the rows.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import digest as digest_mod
from ledger.codes import CreateAccountResult as A
from ledger.codes import CreateTransferResult as T
from consensus.ready import Persist
from ledger.commands import CreateAccounts, CreateTransfers, KvCas, KvDelete, KvPut, encode_batch
from ledger.model import U64_MAX, U128_MAX, Account, AccountFlags, Transfer, TransferFlags
from ledger.state_machine import LedgerStateMachine
from ledger.storage import ReplicaStorage
from ledger.tables import TABLES, MemoryTables

SECOND = 1_000_000_000
LINKED = 1
# Account flags.
DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
HISTORY = int(AccountFlags.HISTORY)
# Transfer flags.
PENDING = int(TransferFlags.PENDING)
POST = int(TransferFlags.POST_PENDING_TRANSFER)
VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
BAL_DR = int(TransferFlags.BALANCING_DEBIT)
BAL_CR = int(TransferFlags.BALANCING_CREDIT)


# -- the reference model ----------------------------------------------------------------------


@dataclass
class ModelAccount:
    id: int
    ledger: int
    code: int
    flags: int
    user_data: tuple
    timestamp: int
    dp: int = 0
    dpo: int = 0
    cp: int = 0
    cpo: int = 0


@dataclass
class Model:
    accounts: dict = field(default_factory=dict)  # id -> ModelAccount
    transfers: dict = field(default_factory=dict)  # id -> Transfer (as stored)
    status: dict = field(default_factory=dict)  # pending id -> "posted" | "voided" | "expired"
    history: dict = field(default_factory=dict)  # account id -> [(ts, dp, dpo, cp, cpo)]
    last_ts: int = 0

    def record(self, a: ModelAccount, ts: int) -> None:
        if a.flags & HISTORY:
            self.history.setdefault(a.id, []).append((ts, a.dp, a.dpo, a.cp, a.cpo))

    def open_pending(self):
        for t in self.transfers.values():
            if t.flags & PENDING and t.id not in self.status:
                yield t

    # One batch: expiries, then each command.
    def apply(self, batch_ts: int, commands: list) -> list:
        now = max(self.last_ts + 1, batch_ts)
        clock = now
        due = sorted(
            (t.timestamp + t.timeout * SECOND, t.id)
            for t in self.open_pending()
            if t.timeout and t.timestamp + t.timeout * SECOND <= now
        )
        for _, pid in due:
            p = self.transfers[pid]
            dr, cr = self.accounts[p.debit_account_id], self.accounts[p.credit_account_id]
            dr.dp -= p.amount
            cr.cp -= p.amount
            self.status[pid] = "expired"
            self.record(dr, clock)
            self.record(cr, clock)
            clock += 1
        results = []
        for kind, events in commands:
            out = []
            chain_start = None
            saved = None
            broken = False
            for i, e in enumerate(events):
                ts = clock
                clock += 1
                linked = e.flags & LINKED
                if linked and chain_start is None:
                    chain_start = i
                    saved = copy.deepcopy((self.accounts, self.transfers, self.status, self.history))
                if linked and i == len(events) - 1:
                    code = 2  # linked_event_chain_open, same number for both kinds
                elif broken:
                    code = 1
                elif kind == "accounts":
                    code = self.create_account(e, ts)
                else:
                    code = self.create_transfer(e, ts)
                if code:
                    if chain_start is not None and not broken:
                        broken = True
                        self.accounts, self.transfers, self.status, self.history = saved
                        out.extend((j, 1) for j in range(chain_start, i))
                    out.append((i, code))
                if chain_start is not None and (not linked or code == 2):
                    chain_start, saved, broken = None, None, False
            results.append(out)
        if clock > now:
            self.last_ts = clock - 1
        return results

    def create_account(self, a: Account, ts: int) -> int:
        if a.timestamp:
            return A.TIMESTAMP_MUST_BE_ZERO
        if a.flags & ~(LINKED | DMNEC | CMNED | HISTORY):
            return A.RESERVED_FLAG
        if a.id == 0:
            return A.ID_MUST_NOT_BE_ZERO
        if a.id == U128_MAX:
            return A.ID_MUST_NOT_BE_INT_MAX
        if a.flags & DMNEC and a.flags & CMNED:
            return A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if a.debits_pending:
            return A.DEBITS_PENDING_MUST_BE_ZERO
        if a.debits_posted:
            return A.DEBITS_POSTED_MUST_BE_ZERO
        if a.credits_pending:
            return A.CREDITS_PENDING_MUST_BE_ZERO
        if a.credits_posted:
            return A.CREDITS_POSTED_MUST_BE_ZERO
        if a.ledger == 0:
            return A.LEDGER_MUST_NOT_BE_ZERO
        if a.code == 0:
            return A.CODE_MUST_NOT_BE_ZERO
        e = self.accounts.get(a.id)
        if e is not None:
            ud = (a.user_data_128, a.user_data_64, a.user_data_32)
            for differs, code in (
                (a.flags != e.flags, A.EXISTS_WITH_DIFFERENT_FLAGS),
                (ud[0] != e.user_data[0], A.EXISTS_WITH_DIFFERENT_USER_DATA_128),
                (ud[1] != e.user_data[1], A.EXISTS_WITH_DIFFERENT_USER_DATA_64),
                (ud[2] != e.user_data[2], A.EXISTS_WITH_DIFFERENT_USER_DATA_32),
                (a.ledger != e.ledger, A.EXISTS_WITH_DIFFERENT_LEDGER),
                (a.code != e.code, A.EXISTS_WITH_DIFFERENT_CODE),
            ):
                if differs:
                    return code
            return A.EXISTS
        self.accounts[a.id] = ModelAccount(
            a.id, a.ledger, a.code, a.flags, (a.user_data_128, a.user_data_64, a.user_data_32), ts)
        return 0

    def create_transfer(self, t: Transfer, ts: int) -> int:
        if t.timestamp:
            return T.TIMESTAMP_MUST_BE_ZERO
        if t.flags & ~(LINKED | PENDING | POST | VOID | BAL_DR | BAL_CR):
            return T.RESERVED_FLAG
        if t.id == 0:
            return T.ID_MUST_NOT_BE_ZERO
        if t.id == U128_MAX:
            return T.ID_MUST_NOT_BE_INT_MAX
        if sum(bool(t.flags & f) for f in (PENDING, POST, VOID)) > 1 or (
            t.flags & (BAL_DR | BAL_CR) and t.flags & (POST | VOID)
        ):
            return T.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if t.flags & (POST | VOID):
            return self.post_or_void(t, ts)
        for value, zero, int_max in (
            (t.debit_account_id, T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
             T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
            (t.credit_account_id, T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
             T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
        ):
            if value == 0:
                return zero
            if value == U128_MAX:
                return int_max
        if t.debit_account_id == t.credit_account_id:
            return T.ACCOUNTS_MUST_BE_DIFFERENT
        if t.pending_id:
            return T.PENDING_ID_MUST_BE_ZERO
        if t.timeout and not t.flags & PENDING:
            return T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if t.ledger == 0:
            return T.LEDGER_MUST_NOT_BE_ZERO
        if t.code == 0:
            return T.CODE_MUST_NOT_BE_ZERO
        dr = self.accounts.get(t.debit_account_id)
        if dr is None:
            return T.DEBIT_ACCOUNT_NOT_FOUND
        cr = self.accounts.get(t.credit_account_id)
        if cr is None:
            return T.CREDIT_ACCOUNT_NOT_FOUND
        if dr.ledger != cr.ledger:
            return T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != dr.ledger:
            return T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        e = self.transfers.get(t.id)
        if e is not None:
            balancing = t.flags & (BAL_DR | BAL_CR)
            for differs, code in (
                (t.flags != e.flags, T.EXISTS_WITH_DIFFERENT_FLAGS),
                (t.pending_id != e.pending_id, T.EXISTS_WITH_DIFFERENT_PENDING_ID),
                (t.debit_account_id != e.debit_account_id, T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
                (t.credit_account_id != e.credit_account_id,
                 T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
                (t.amount < e.amount if balancing else t.amount != e.amount,
                 T.EXISTS_WITH_DIFFERENT_AMOUNT),
                (t.user_data_128 != e.user_data_128, T.EXISTS_WITH_DIFFERENT_USER_DATA_128),
                (t.user_data_64 != e.user_data_64, T.EXISTS_WITH_DIFFERENT_USER_DATA_64),
                (t.user_data_32 != e.user_data_32, T.EXISTS_WITH_DIFFERENT_USER_DATA_32),
                (t.timeout != e.timeout, T.EXISTS_WITH_DIFFERENT_TIMEOUT),
                (t.ledger != e.ledger, T.EXISTS_WITH_DIFFERENT_LEDGER),
                (t.code != e.code, T.EXISTS_WITH_DIFFERENT_CODE),
            ):
                if differs:
                    return code
            return T.EXISTS
        amount = t.amount
        if t.flags & BAL_DR:
            amount = min(amount, max(0, dr.cpo - dr.dpo - dr.dp))
        if t.flags & BAL_CR:
            amount = min(amount, max(0, cr.dpo - cr.cpo - cr.cp))
        pending = t.flags & PENDING
        if pending and dr.dp + amount > U128_MAX:
            return T.OVERFLOWS_DEBITS_PENDING
        if pending and cr.cp + amount > U128_MAX:
            return T.OVERFLOWS_CREDITS_PENDING
        if dr.dpo + amount > U128_MAX:
            return T.OVERFLOWS_DEBITS_POSTED
        if cr.cpo + amount > U128_MAX:
            return T.OVERFLOWS_CREDITS_POSTED
        if dr.dp + dr.dpo + amount > U128_MAX:
            return T.OVERFLOWS_DEBITS
        if cr.cp + cr.cpo + amount > U128_MAX:
            return T.OVERFLOWS_CREDITS
        if ts + t.timeout * SECOND > U64_MAX:
            return T.OVERFLOWS_TIMEOUT
        if dr.flags & DMNEC and dr.dp + dr.dpo + amount > dr.cpo:
            return T.EXCEEDS_CREDITS
        if cr.flags & CMNED and cr.cp + cr.cpo + amount > cr.dpo:
            return T.EXCEEDS_DEBITS
        if pending:
            dr.dp += amount
            cr.cp += amount
        else:
            dr.dpo += amount
            cr.cpo += amount
        self.transfers[t.id] = Transfer(**{**_fields(t), "amount": amount, "timestamp": ts})
        self.record(dr, ts)
        self.record(cr, ts)
        return 0

    def post_or_void(self, t: Transfer, ts: int) -> int:
        if t.pending_id == 0:
            return T.PENDING_ID_MUST_NOT_BE_ZERO
        if t.pending_id == U128_MAX:
            return T.PENDING_ID_MUST_NOT_BE_INT_MAX
        if t.pending_id == t.id:
            return T.PENDING_ID_MUST_BE_DIFFERENT
        if t.timeout:
            return T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        p = self.transfers.get(t.pending_id)
        if p is None:
            return T.PENDING_TRANSFER_NOT_FOUND
        if not p.flags & PENDING:
            return T.PENDING_TRANSFER_NOT_PENDING
        if t.debit_account_id and t.debit_account_id != p.debit_account_id:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id and t.credit_account_id != p.credit_account_id:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.ledger and t.ledger != p.ledger:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if t.code and t.code != p.code:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        if t.amount > p.amount:
            return T.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if t.flags & VOID and t.amount not in (0, p.amount):
            return T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        resolved = Transfer(
            id=t.id, debit_account_id=p.debit_account_id, credit_account_id=p.credit_account_id,
            amount=t.amount or p.amount, ledger=p.ledger, code=p.code, flags=t.flags,
            pending_id=t.pending_id, timeout=0,
            user_data_128=t.user_data_128 or p.user_data_128,
            user_data_64=t.user_data_64 or p.user_data_64,
            user_data_32=t.user_data_32 or p.user_data_32, timestamp=ts)
        e = self.transfers.get(t.id)
        if e is not None:
            for differs, code in (
                (t.flags != e.flags, T.EXISTS_WITH_DIFFERENT_FLAGS),
                (t.pending_id != e.pending_id, T.EXISTS_WITH_DIFFERENT_PENDING_ID),
                (resolved.amount != e.amount, T.EXISTS_WITH_DIFFERENT_AMOUNT),
                (resolved.user_data_128 != e.user_data_128, T.EXISTS_WITH_DIFFERENT_USER_DATA_128),
                (resolved.user_data_64 != e.user_data_64, T.EXISTS_WITH_DIFFERENT_USER_DATA_64),
                (resolved.user_data_32 != e.user_data_32, T.EXISTS_WITH_DIFFERENT_USER_DATA_32),
            ):
                if differs:
                    return code
            return T.EXISTS
        status = self.status.get(p.id)
        if status == "posted":
            return T.PENDING_TRANSFER_ALREADY_POSTED
        if status == "voided":
            return T.PENDING_TRANSFER_ALREADY_VOIDED
        if status == "expired" or (p.timeout and p.timestamp + p.timeout * SECOND <= ts):
            return T.PENDING_TRANSFER_EXPIRED
        dr, cr = self.accounts[p.debit_account_id], self.accounts[p.credit_account_id]
        dr.dp -= p.amount
        cr.cp -= p.amount
        if t.flags & POST:
            dr.dpo += resolved.amount
            cr.cpo += resolved.amount
        self.status[p.id] = "posted" if t.flags & POST else "voided"
        self.transfers[t.id] = resolved
        self.record(dr, ts)
        self.record(cr, ts)
        return 0


def _fields(t: Transfer) -> dict:
    return {name: getattr(t, name) for name in Transfer.__slots__}


# -- strategies -------------------------------------------------------------------------------

ACCOUNT_ID_VALUES = [1, 2, 3, 4, 5, 6, 7]
TRANSFER_ID_VALUES = list(range(1, 9))
ACCOUNT_IDS = st.sampled_from(ACCOUNT_ID_VALUES)
AMOUNTS = st.sampled_from([0, 1, 1, 2, 3, 5, 5, 10, 10, 20, 40, 1 << 126, 1 << 127, U128_MAX])


def rarely(common: list, *rare: int):
    """One of ``common`` about 19 times in 20, else one of ``rare``."""
    k = -(-19 * len(rare) // len(common))
    return st.sampled_from(common * k + list(rare))


@st.composite
def accounts(draw):
    return Account(
        id=draw(rarely(ACCOUNT_ID_VALUES, 0, U128_MAX, 8)),
        ledger=draw(rarely([1, 1, 1, 2], 0)),
        code=draw(rarely([1, 1, 1, 2], 0)),
        flags=draw(st.sampled_from([0, 0, DMNEC, CMNED, HISTORY, DMNEC | HISTORY, LINKED,
                                    LINKED | DMNEC, DMNEC | CMNED, 1 << 7])),
        user_data_128=draw(rarely([0], 1)),
        user_data_64=draw(rarely([0], 7)),
        user_data_32=draw(rarely([0], 3)),
        debits_pending=draw(rarely([0], 1)),
        debits_posted=draw(rarely([0], 1)),
        credits_pending=draw(rarely([0], 1)),
        credits_posted=draw(rarely([0], 1)),
        timestamp=draw(rarely([0], 1)),
    )


@st.composite
def transfers(draw):
    flags = draw(st.sampled_from([
        0, 0, 0, 0, 0, 0, LINKED, LINKED, PENDING, PENDING, PENDING, PENDING, PENDING | LINKED,
        POST, POST, POST, POST, VOID, VOID, POST | LINKED, VOID | LINKED, BAL_DR, BAL_CR,
        BAL_DR | PENDING, BAL_CR | LINKED, PENDING | POST, BAL_CR | VOID, 1 << 9,
    ]))
    post_or_void = flags & (POST | VOID)
    inherit = st.one_of(st.just(0), st.just(0), st.just(0), ACCOUNT_IDS)
    return Transfer(
        id=draw(rarely(TRANSFER_ID_VALUES, 0, U128_MAX)),
        debit_account_id=draw(inherit if post_or_void else rarely(ACCOUNT_ID_VALUES, 0, U128_MAX, 9)),
        credit_account_id=draw(inherit if post_or_void else rarely(ACCOUNT_ID_VALUES, 0, U128_MAX, 9)),
        amount=draw(st.sampled_from([0, 0, 0, 1, 3, 50]) if post_or_void else AMOUNTS),
        ledger=draw(st.sampled_from([0, 0, 0, 0, 1, 2]) if post_or_void
                    else rarely([1, 1, 1, 2], 0)),
        code=draw(st.sampled_from([0, 0, 0, 0, 1, 2]) if post_or_void
                  else rarely([1, 1, 1, 2], 0)),
        flags=flags,
        pending_id=draw(rarely(TRANSFER_ID_VALUES, 0, U128_MAX) if post_or_void
                        else rarely([0], 3)),
        timeout=draw(st.sampled_from([0, 0, 1, 1, 2, (1 << 32) - 1]) if flags & PENDING
                     else rarely([0], 1)),
        user_data_128=draw(rarely([0], 5)),
        user_data_64=draw(rarely([0], 9)),
        user_data_32=draw(rarely([0], 2)),
        timestamp=draw(rarely([0], 1)),
    )


MUTATIONS = {
    "flags": [0, PENDING, LINKED], "debit_account_id": [1, 2], "credit_account_id": [3, 4],
    "amount": [1, 2, 1 << 127], "pending_id": [1, 2], "user_data_128": [1, 6],
    "user_data_64": [1, 8], "user_data_32": [1, 7], "timeout": [0, 2], "ledger": [1, 2],
    "code": [1, 3],
}


@st.composite
def transfer_command(draw):
    """Random transfers plus re-sent copies of some of them, some with one field changed."""
    events = draw(st.lists(transfers(), min_size=1, max_size=8))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(events) - 1))
        name = draw(st.sampled_from([None, None, *MUTATIONS]))
        copy_ = events[at]
        if name is not None:
            copy_ = Transfer(**{**_fields(copy_), name: draw(st.sampled_from(MUTATIONS[name]))})
        events.insert(draw(st.integers(at + 1, len(events))), copy_)
    return ("transfers", events)


@st.composite
def account_command(draw):
    events = draw(st.lists(accounts(), min_size=1, max_size=4))
    if draw(st.booleans()):
        a = draw(st.sampled_from(events))
        name = draw(st.sampled_from(["flags", "user_data_128", "user_data_64", "user_data_32",
                                     "ledger", "code", None]))
        if name is not None:
            a = Account(**{**{n: getattr(a, n) for n in Account.__slots__},
                           name: draw(st.sampled_from([1, 2, HISTORY]))})
        events.append(a)
    return ("accounts", events)


COMMANDS = st.one_of(account_command(), transfer_command(), transfer_command(),
                     transfer_command())
# Leader clock steps: small, a second or more (expiries), and backwards.
CLOCK_STEPS = st.sampled_from([1, 1_000, SECOND // 2, SECOND, 3 * SECOND, -5 * SECOND])
BATCHES = st.lists(
    st.tuples(CLOCK_STEPS, st.lists(COMMANDS, min_size=1, max_size=3)), min_size=1, max_size=6)

def _t(id_, dr, cr, amount, flags=0, timeout=0):
    return Transfer(id=id_, debit_account_id=dr, credit_account_id=cr, amount=amount, ledger=1,
                    code=1, flags=flags, timeout=timeout)


# Accounts 1-6 exist (5 on another ledger), 7 never does; transfers 1-4 are
# pending (2 and 3 with timeouts) so that random posts and voids find them.
SETUP = [
    ("accounts", [
        Account(id=1, ledger=1, code=1),
        Account(id=2, ledger=1, code=1, flags=HISTORY),
        Account(id=3, ledger=1, code=1, flags=DMNEC),
        Account(id=4, ledger=1, code=1, flags=CMNED | HISTORY),
        Account(id=5, ledger=2, code=1),
        Account(id=6, ledger=1, code=1, flags=HISTORY),
    ]),
    ("transfers", [
        _t(100, 1, 3, 20), _t(101, 4, 1, 20), _t(102, 2, 6, 1 << 127),
        _t(1, 1, 2, 10, PENDING), _t(2, 2, 6, 10, PENDING, 1), _t(3, 6, 1, 10, PENDING, 2),
        _t(4, 1, 6, 1 << 126, PENDING),
    ]),
]


def _value(batch_ts: int, commands: list) -> bytes:
    return encode_batch(batch_ts, [
        CreateAccounts.of(events) if kind == "accounts" else CreateTransfers.of(events)
        for kind, events in commands
    ])


# -- checks -----------------------------------------------------------------------------------


def _check_against_model(sm: LedgerStateMachine, tables: MemoryTables, model: Model) -> None:
    rows = tables.snapshot_rows()
    got_accounts = {a.id: a for a in map(Account.unpack, rows[b"accounts"].values())}
    assert set(got_accounts) == set(model.accounts)
    for account_id, m in model.accounts.items():
        a = got_accounts[account_id]
        assert (a.ledger, a.code, a.flags, a.timestamp) == (m.ledger, m.code, m.flags, m.timestamp)
        assert (a.user_data_128, a.user_data_64, a.user_data_32) == m.user_data
        assert (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted) == (
            m.dp, m.dpo, m.cp, m.cpo), account_id
        history = [(h.timestamp, h.debits_pending, h.debits_posted, h.credits_pending,
                    h.credits_posted) for h in sm.get_account_balances(account_id)]
        assert history == model.history.get(account_id, [])
        booked = [t.id for t in sm.get_account_transfers(account_id)]
        expected = sorted((t for t in model.transfers.values()
                           if account_id in (t.debit_account_id, t.credit_account_id)),
                          key=lambda t: t.timestamp)
        assert booked == [t.id for t in expected]
    got_transfers = {t.id: t for t in map(Transfer.unpack, rows[b"transfers"].values())}
    assert got_transfers == model.transfers
    assert len(rows[b"transfers_by_ts"]) == len(model.transfers)
    expected_status = {
        pid.to_bytes(16, "big"): {"posted": 2, "voided": 3, "expired": 4}[s]
        for pid, s in model.status.items()
    }
    assert {k: v[0] for k, v in rows[b"pending_status"].items()} == expected_status
    open_with_timeout = {
        (t.timestamp + t.timeout * SECOND).to_bytes(8, "big") + t.id.to_bytes(16, "big")
        for t in model.open_pending() if t.timeout
    }
    assert set(rows[b"pending_expiry"]) == open_with_timeout
    assert sm.last_timestamp() == model.last_ts


def _check_invariants(tables: MemoryTables) -> None:
    rows = tables.snapshot_rows()
    sums: dict[int, list[int]] = {}
    for a in map(Account.unpack, rows[b"accounts"].values()):
        s = sums.setdefault(a.ledger, [0, 0, 0, 0])
        s[0] += a.debits_pending
        s[1] += a.debits_posted
        s[2] += a.credits_pending
        s[3] += a.credits_posted
        if a.flags & DMNEC:
            assert a.debits_pending + a.debits_posted <= a.credits_posted
        if a.flags & CMNED:
            assert a.credits_pending + a.credits_posted <= a.debits_posted
    for dp, dpo, cp, cpo in sums.values():
        assert dp == cp and dpo == cpo
    resolutions: dict[int, int] = {}
    for t in map(Transfer.unpack, rows[b"transfers"].values()):
        if t.flags & (POST | VOID):
            resolutions[t.pending_id] = resolutions.get(t.pending_id, 0) + 1
    assert all(n == 1 for n in resolutions.values())
    for pid in resolutions:
        assert pid.to_bytes(16, "big") in rows[b"pending_status"]
    recomputed = 0
    for table, table_rows in rows.items():
        for key, value in table_rows.items():
            recomputed = digest_mod.combine(recomputed, table, key, None, value)
    assert recomputed == tables.digest


# -- the properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES)
def test_state_machine_matches_the_model(batches):
    tables, twin = MemoryTables(), MemoryTables()
    sm, sm_twin = LedgerStateMachine(tables), LedgerStateMachine(twin)
    model = Model()
    batch_ts = 1_000 * SECOND
    for step, commands in [(0, SETUP)] + batches:
        batch_ts += step
        value = _value(batch_ts, commands)
        expected = model.apply(batch_ts, commands)
        got = sm.apply_batch(value)
        assert got == expected
        assert sm_twin.apply_batch(value) == got
        _check_against_model(sm, tables, model)
        _check_invariants(tables)
    assert twin.digest == tables.digest
    assert twin.snapshot_rows() == tables.snapshot_rows()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES)
def test_a_resubmitted_batch_books_nothing_twice(batches):
    tables = MemoryTables()
    sm = LedgerStateMachine(tables)
    model = Model()
    batch_ts = 1_000 * SECOND
    for step, commands in [(0, SETUP)] + batches:
        batch_ts += step
        value = _value(batch_ts, commands)
        first = sm.apply_batch(value)
        assert first == model.apply(batch_ts, commands)
        before = {t: rows for t, rows in tables.snapshot_rows().items()
                  if t in (b"accounts", b"transfers", b"pending_status")}
        # The same batch again, a little later (a client retry).
        batch_ts += 1
        again = sm.apply_batch(_value(batch_ts, commands))
        assert again == model.apply(batch_ts, commands)
        for (kind, events), failed_first, failed_again in zip(commands, first, again):
            failed_first = dict(failed_first)
            failed_again = dict(failed_again)
            for index in range(len(events)):
                if index not in failed_first:
                    allowed = (A.EXISTS, A.LINKED_EVENT_FAILED) if kind == "accounts" else (
                        T.EXISTS, T.LINKED_EVENT_FAILED)
                    assert failed_again.get(index) in allowed, (
                        kind, index, failed_again.get(index))
        after = {t: rows for t, rows in tables.snapshot_rows().items()
                 if t in (b"accounts", b"transfers", b"pending_status")}
        # Nothing that had succeeded is booked again; only events that failed
        # the first time (e.g. for want of an account created since) may book.
        assert set(before[b"transfers"]) <= set(after[b"transfers"])
        for key, row in before[b"transfers"].items():
            assert after[b"transfers"][key] == row
        _check_invariants(tables)


KV_COMMANDS = st.one_of(
    st.builds(KvPut, st.sampled_from([b"a", b"b", b"k" * 511]), st.binary(max_size=8)),
    st.builds(KvDelete, st.sampled_from([b"a", b"b", b""])),
    st.builds(KvCas, st.sampled_from([b"a", b"b"]), st.sampled_from([0, 1, 5]),
              st.binary(max_size=8)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES, st.lists(KV_COMMANDS, max_size=4))
def test_lmdb_and_memory_tables_apply_identically(batches, kv_commands):
    memory = MemoryTables()
    values = [_value(1_000 * SECOND, SETUP)]
    batch_ts = 1_000 * SECOND
    for step, commands in batches:
        batch_ts += step
        values.append(_value(batch_ts, commands))
    if kv_commands:
        values.append(encode_batch(batch_ts, kv_commands))
    with tempfile.TemporaryDirectory() as tmp:
        with ReplicaStorage(tmp, cluster_id="ledger-prop", replica_id=1) as storage:
            for applied, value in enumerate(values, start=1):
                expected = LedgerStateMachine(memory).apply_batch(value)
                got = []

                def apply(tables):
                    got.append(LedgerStateMachine(tables).apply_batch(value))
                    return applied

                storage.write_step(Persist(), apply)
                assert got == [expected]
                assert storage.state_digest() == memory.digest
            with storage.reader() as view:
                rows = {t: dict(view.range(t, b"", None, 10**9)) for t in TABLES}
            assert rows == memory.snapshot_rows()
            assert storage.recompute_digest() == memory.digest


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES)
def test_failed_events_leave_no_trace(batches):
    """Model-free: a batch gives the same tables and digest as the same batch in
    which every event that failed (linked chains included) is replaced by an
    event that fails at its first check (id 0)."""
    tables, twin = MemoryTables(), MemoryTables()
    sm, sm_twin = LedgerStateMachine(tables), LedgerStateMachine(twin)
    batch_ts = 1_000 * SECOND
    for step, commands in [(0, SETUP)] + batches:
        batch_ts += step
        results = sm.apply_batch(_value(batch_ts, commands))
        inert = []
        for (kind, events), failed in zip(commands, results):
            failed = dict(failed)
            blank = Account(id=0, ledger=1, code=1) if kind == "accounts" else Transfer(id=0)
            inert.append((kind, [blank if i in failed else e for i, e in enumerate(events)]))
        twin_results = sm_twin.apply_batch(_value(batch_ts, inert))
        for (kind, events), failed, twin_failed in zip(commands, results, twin_results):
            zero = A.ID_MUST_NOT_BE_ZERO if kind == "accounts" else T.ID_MUST_NOT_BE_ZERO
            assert twin_failed == [(i, zero) for i, _ in failed]
        assert twin.digest == tables.digest
        assert twin.snapshot_rows() == tables.snapshot_rows()
