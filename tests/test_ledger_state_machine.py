"""Focused examples for the ledger state machine: every result code is reachable
and means what ``ledger.codes`` says, pending transfers post, void and expire
exactly once, linked chains are all-or-nothing, KV commands version their
keys, queries page correctly, and a malformed slot value raises only
``MalformedCommand`` and changes nothing."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codes import CreateAccountResult as A
from ledger.codes import CreateTransferResult as T
from ledger.codes import KvResult
from ledger.commands import (
    EVENTS_PER_COMMAND_MAX,
    FORMAT_VERSION,
    KV_KEY_BYTES_MAX,
    KV_VALUE_BYTES_MAX,
    TIMESTAMP_MAX,
    CreateAccounts,
    CreateTransfers,
    KvCas,
    KvDelete,
    KvPut,
    MalformedCommand,
    Noop,
    decode_batch,
    encode_batch,
)
from ledger.model import U128_MAX, Account, AccountFlags, Transfer, TransferFlags
from ledger.state_machine import KvOutcome, LedgerStateMachine
from ledger.tables import MemoryTables

SECOND = 1_000_000_000
AF = AccountFlags
TF = TransferFlags


class Ledger:
    """A state machine on MemoryTables with a leader clock the test moves."""

    def __init__(self) -> None:
        self.tables = MemoryTables()
        self.sm = LedgerStateMachine(self.tables)
        self.now = 1_000 * SECOND

    def apply(self, *commands, advance: int = 1_000) -> list:
        self.now += advance
        return self.sm.apply_batch(encode_batch(self.now, list(commands)))

    def accounts(self, *accounts: Account) -> list:
        return self.apply(CreateAccounts.of(accounts))[0]

    def transfers(self, *transfers: Transfer, advance: int = 1_000) -> list:
        return self.apply(CreateTransfers.of(transfers), advance=advance)[0]

    def account(self, account_id: int) -> Account:
        (a,) = self.sm.lookup_accounts([account_id])
        return a

    def transfer(self, transfer_id: int) -> Transfer:
        (t,) = self.sm.lookup_transfers([transfer_id])
        return t


def tr(id_, dr=1, cr=2, amount=10, ledger=1, code=1, **kw) -> Transfer:
    return Transfer(id=id_, debit_account_id=dr, credit_account_id=cr, amount=amount,
                    ledger=ledger, code=code, **kw)


@pytest.fixture
def led() -> Ledger:
    led = Ledger()
    assert led.accounts(
        Account(id=1, ledger=1, code=1),
        Account(id=2, ledger=1, code=1),
        Account(id=3, ledger=2, code=1),
        Account(id=4, ledger=1, code=1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS),
        Account(id=5, ledger=1, code=1, flags=AF.CREDITS_MUST_NOT_EXCEED_DEBITS),
        Account(id=6, ledger=1, code=1, flags=AF.HISTORY),
    ) == []
    return led


# -- accounts -------------------------------------------------------------------------------


def test_create_account_codes():
    led = Ledger()
    raw = Account(id=9, ledger=1, code=1).pack()
    reserved = raw[:108] + b"\x00\x00\x00\x01" + raw[112:]
    assert led.apply(CreateAccounts(reserved))[0] == [(0, A.RESERVED_FIELD)]
    cases = [
        (Account(id=9, ledger=1, code=1, timestamp=1), A.TIMESTAMP_MUST_BE_ZERO),
        (Account(id=9, ledger=1, code=1, flags=1 << 10), A.RESERVED_FLAG),
        (Account(id=0, ledger=1, code=1), A.ID_MUST_NOT_BE_ZERO),
        (Account(id=U128_MAX, ledger=1, code=1), A.ID_MUST_NOT_BE_INT_MAX),
        (Account(id=9, ledger=1, code=1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS
                 | AF.CREDITS_MUST_NOT_EXCEED_DEBITS), A.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (Account(id=9, ledger=1, code=1, debits_pending=1), A.DEBITS_PENDING_MUST_BE_ZERO),
        (Account(id=9, ledger=1, code=1, debits_posted=1), A.DEBITS_POSTED_MUST_BE_ZERO),
        (Account(id=9, ledger=1, code=1, credits_pending=1), A.CREDITS_PENDING_MUST_BE_ZERO),
        (Account(id=9, ledger=1, code=1, credits_posted=1), A.CREDITS_POSTED_MUST_BE_ZERO),
        (Account(id=9, ledger=0, code=1), A.LEDGER_MUST_NOT_BE_ZERO),
        (Account(id=9, ledger=1, code=0), A.CODE_MUST_NOT_BE_ZERO),
    ]
    for account, code in cases:
        assert led.accounts(account) == [(0, code)], code
    assert led.sm.lookup_accounts([9]) == []

    base = dict(id=9, ledger=1, code=1, user_data_128=7, user_data_64=8, user_data_32=9)
    assert led.accounts(Account(**base)) == []
    exists = [
        (dict(flags=AF.HISTORY), A.EXISTS_WITH_DIFFERENT_FLAGS),
        (dict(user_data_128=1), A.EXISTS_WITH_DIFFERENT_USER_DATA_128),
        (dict(user_data_64=1), A.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        (dict(user_data_32=1), A.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        (dict(ledger=2), A.EXISTS_WITH_DIFFERENT_LEDGER),
        (dict(code=2), A.EXISTS_WITH_DIFFERENT_CODE),
        ({}, A.EXISTS),
    ]
    for change, code in exists:
        assert led.accounts(Account(**{**base, **change})) == [(0, code)], code


def test_account_precedence_first_failing_check_wins():
    led = Ledger()
    # id 0, no ledger, no code: the id is checked first.
    assert led.accounts(Account(id=0, ledger=0, code=0)) == [(0, A.ID_MUST_NOT_BE_ZERO)]
    assert led.accounts(Account(id=5, ledger=0, code=0)) == [(0, A.LEDGER_MUST_NOT_BE_ZERO)]


def test_account_gets_the_state_machine_timestamp(led):
    a = led.account(1)
    assert 0 < a.timestamp <= led.now + 10
    assert (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted) == (0, 0, 0, 0)


# -- transfers ------------------------------------------------------------------------------


def test_transfer_ok_moves_balances(led):
    assert led.transfers(tr(100, amount=25)) == []
    assert led.account(1).debits_posted == 25
    assert led.account(2).credits_posted == 25
    t = led.transfer(100)
    assert t.amount == 25 and t.timestamp > led.account(1).timestamp


def test_transfer_validation_codes(led):
    cases = [
        (tr(100, timestamp=1), T.TIMESTAMP_MUST_BE_ZERO),
        (tr(100, flags=1 << 9), T.RESERVED_FLAG),
        (tr(0), T.ID_MUST_NOT_BE_ZERO),
        (tr(U128_MAX), T.ID_MUST_NOT_BE_INT_MAX),
        (tr(100, flags=TF.PENDING | TF.POST_PENDING_TRANSFER), T.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (tr(100, flags=TF.POST_PENDING_TRANSFER | TF.VOID_PENDING_TRANSFER),
         T.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (tr(100, flags=TF.BALANCING_DEBIT | TF.VOID_PENDING_TRANSFER),
         T.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (tr(100, dr=0), T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (tr(100, dr=U128_MAX), T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
        (tr(100, cr=0), T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (tr(100, cr=U128_MAX), T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
        (tr(100, dr=1, cr=1), T.ACCOUNTS_MUST_BE_DIFFERENT),
        (tr(100, pending_id=5), T.PENDING_ID_MUST_BE_ZERO),
        (tr(100, timeout=5), T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
        (tr(100, ledger=0), T.LEDGER_MUST_NOT_BE_ZERO),
        (tr(100, code=0), T.CODE_MUST_NOT_BE_ZERO),
        (tr(100, dr=77), T.DEBIT_ACCOUNT_NOT_FOUND),
        (tr(100, cr=77), T.CREDIT_ACCOUNT_NOT_FOUND),
        (tr(100, cr=3), T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER),
        (tr(100, ledger=2), T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS),
        (tr(100, dr=4), T.EXCEEDS_CREDITS),
        (tr(100, cr=5), T.EXCEEDS_DEBITS),
    ]
    before = led.tables.snapshot_rows()
    for transfer, code in cases:
        assert led.transfers(transfer) == [(0, code)], code
    after = led.tables.snapshot_rows()
    for table in (b"accounts", b"transfers", b"transfers_by_ts", b"account_transfers"):
        assert before[table] == after[table]


def test_transfer_exists_codes(led):
    base = dict(id_=100, dr=1, cr=2, amount=10, user_data_128=1, user_data_64=2,
                user_data_32=3)
    assert led.transfers(tr(**base)) == []
    cases = [
        (dict(flags=TF.PENDING), T.EXISTS_WITH_DIFFERENT_FLAGS),
        (dict(dr=6), T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
        (dict(cr=6), T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
        (dict(amount=11), T.EXISTS_WITH_DIFFERENT_AMOUNT),
        (dict(user_data_128=9), T.EXISTS_WITH_DIFFERENT_USER_DATA_128),
        (dict(user_data_64=9), T.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        (dict(user_data_32=9), T.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        (dict(code=2), T.EXISTS_WITH_DIFFERENT_CODE),
        ({}, T.EXISTS),
    ]
    for change, code in cases:
        assert led.transfers(tr(**{**base, **change})) == [(0, code)], code
    assert led.account(1).debits_posted == 10  # booked once
    # A pending transfer compares its timeout too.
    assert led.transfers(tr(101, flags=TF.PENDING, timeout=5)) == []
    assert led.transfers(tr(101, flags=TF.PENDING, timeout=6)) == [
        (0, T.EXISTS_WITH_DIFFERENT_TIMEOUT)]


def test_same_id_twice_in_one_batch_books_once(led):
    assert led.transfers(tr(100), tr(100), tr(100, amount=3)) == [
        (1, T.EXISTS), (2, T.EXISTS_WITH_DIFFERENT_AMOUNT)]
    assert led.account(1).debits_posted == 10


def test_overflow_codes():
    led = Ledger()
    led.accounts(*(Account(id=i, ledger=1, code=1) for i in range(1, 7)))
    half, quarter = 1 << 127, 1 << 126
    assert led.transfers(tr(10, dr=1, cr=2, amount=half),
                         tr(11, dr=1, cr=2, amount=quarter, flags=TF.PENDING)) == []
    # Pending + posted would pass u128 although each alone would not.
    assert led.transfers(tr(12, dr=1, cr=3, amount=quarter)) == [(0, T.OVERFLOWS_DEBITS)]
    assert led.transfers(tr(13, dr=3, cr=2, amount=quarter)) == [(0, T.OVERFLOWS_CREDITS)]
    assert led.transfers(tr(14, dr=3, cr=4, amount=U128_MAX)) == []
    assert led.transfers(tr(15, dr=3, cr=1, amount=1)) == [(0, T.OVERFLOWS_DEBITS_POSTED)]
    assert led.transfers(tr(16, dr=1, cr=4, amount=1)) == [(0, T.OVERFLOWS_CREDITS_POSTED)]
    assert led.transfers(tr(17, dr=5, cr=6, amount=U128_MAX, flags=TF.PENDING)) == []
    assert led.transfers(tr(18, dr=5, cr=1, amount=1, flags=TF.PENDING)) == [
        (0, T.OVERFLOWS_DEBITS_PENDING)]
    assert led.transfers(tr(19, dr=1, cr=6, amount=1, flags=TF.PENDING)) == [
        (0, T.OVERFLOWS_CREDITS_PENDING)]


def test_overflows_timeout():
    """Unreachable with leader clocks below TIMESTAMP_MAX; forced through meta here."""
    led = Ledger()
    led.accounts(Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1))
    led.tables.put(b"meta", b"last_timestamp", ((1 << 64) - 10 * SECOND).to_bytes(8, "big"))
    assert led.transfers(tr(10, flags=TF.PENDING, timeout=1 << 31)) == [
        (0, T.OVERFLOWS_TIMEOUT)]


def test_limit_flags_allow_up_to_the_other_side(led):
    assert led.transfers(tr(100, dr=2, cr=4, amount=50)) == []  # 4 has credits 50
    assert led.transfers(tr(101, dr=4, cr=2, amount=30, flags=TF.PENDING)) == []
    assert led.transfers(tr(102, dr=4, cr=2, amount=21)) == [(0, T.EXCEEDS_CREDITS)]
    assert led.transfers(tr(103, dr=4, cr=2, amount=20)) == []
    a = led.account(4)
    assert a.debits_pending + a.debits_posted == a.credits_posted == 50


def test_balancing_debit_and_credit(led):
    """The amount is cut down to what the account's limit still allows."""
    assert led.transfers(tr(100, dr=2, cr=4, amount=40),
                         tr(99, dr=4, cr=1, amount=15, flags=TF.PENDING)) == []
    assert led.transfers(tr(101, dr=4, cr=1, amount=1000, flags=TF.BALANCING_DEBIT)) == []
    assert led.transfer(101).amount == 25
    assert led.account(4).debits_posted == 25
    assert led.transfers(tr(101, dr=4, cr=1, amount=1000, flags=TF.BALANCING_DEBIT)) == [
        (0, T.EXISTS)]
    assert led.transfers(tr(101, dr=4, cr=1, amount=24, flags=TF.BALANCING_DEBIT)) == [
        (0, T.EXISTS_WITH_DIFFERENT_AMOUNT)]
    assert led.transfers(tr(102, dr=2, cr=5, amount=1000, flags=TF.BALANCING_CREDIT)) == []
    assert led.transfer(102).amount == 0
    assert led.transfers(tr(103, dr=5, cr=1, amount=30),
                         tr(104, dr=2, cr=5, amount=7, flags=TF.PENDING),
                         tr(105, dr=2, cr=5, amount=1000, flags=TF.BALANCING_CREDIT)) == []
    assert led.transfer(105).amount == 23


# -- pending transfers ----------------------------------------------------------------------


def test_post_full_partial_and_void(led):
    p = dict(flags=TF.PENDING)
    assert led.transfers(tr(100, amount=30, **p), tr(101, amount=30, **p),
                         tr(102, amount=30, **p)) == []
    assert led.account(1).debits_pending == 90
    post = TF.POST_PENDING_TRANSFER
    void = TF.VOID_PENDING_TRANSFER
    assert led.transfers(
        Transfer(id=200, pending_id=100, flags=post),  # amount 0: the full amount
        Transfer(id=201, pending_id=101, amount=10, flags=post),  # partial
        Transfer(id=202, pending_id=102, flags=void),
    ) == []
    a1, a2 = led.account(1), led.account(2)
    assert (a1.debits_pending, a1.debits_posted) == (0, 40)
    assert (a2.credits_pending, a2.credits_posted) == (0, 40)
    assert led.transfer(200).amount == 30 and led.transfer(200).debit_account_id == 1
    assert led.transfer(201).amount == 10 and led.transfer(202).amount == 30
    # Resolved exactly once.
    assert led.transfers(
        Transfer(id=203, pending_id=100, flags=post),
        Transfer(id=204, pending_id=101, flags=void),
        Transfer(id=205, pending_id=102, flags=post),
        Transfer(id=200, pending_id=100, flags=post),
        Transfer(id=200, pending_id=101, flags=post),
        Transfer(id=201, pending_id=101, amount=11, flags=post),
    ) == [(0, T.PENDING_TRANSFER_ALREADY_POSTED), (1, T.PENDING_TRANSFER_ALREADY_POSTED),
          (2, T.PENDING_TRANSFER_ALREADY_VOIDED), (3, T.EXISTS),
          (4, T.EXISTS_WITH_DIFFERENT_PENDING_ID), (5, T.EXISTS_WITH_DIFFERENT_AMOUNT)]


def test_post_void_validation_codes(led):
    assert led.transfers(tr(100, amount=30, flags=TF.PENDING, user_data_64=4), tr(101)) == []
    post = TF.POST_PENDING_TRANSFER
    void = TF.VOID_PENDING_TRANSFER
    cases = [
        (Transfer(id=200, flags=post), T.PENDING_ID_MUST_NOT_BE_ZERO),
        (Transfer(id=200, pending_id=U128_MAX, flags=post), T.PENDING_ID_MUST_NOT_BE_INT_MAX),
        (Transfer(id=200, pending_id=200, flags=post), T.PENDING_ID_MUST_BE_DIFFERENT),
        (Transfer(id=200, pending_id=100, timeout=1, flags=post),
         T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
        (Transfer(id=200, pending_id=999, flags=post), T.PENDING_TRANSFER_NOT_FOUND),
        (Transfer(id=200, pending_id=101, flags=post), T.PENDING_TRANSFER_NOT_PENDING),
        (Transfer(id=200, pending_id=100, debit_account_id=2, flags=post),
         T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID),
        (Transfer(id=200, pending_id=100, credit_account_id=1, flags=post),
         T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID),
        (Transfer(id=200, pending_id=100, ledger=2, flags=post),
         T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER),
        (Transfer(id=200, pending_id=100, code=2, flags=post),
         T.PENDING_TRANSFER_HAS_DIFFERENT_CODE),
        (Transfer(id=200, pending_id=100, amount=31, flags=post),
         T.EXCEEDS_PENDING_TRANSFER_AMOUNT),
        (Transfer(id=200, pending_id=100, amount=29, flags=void),
         T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT),
    ]
    for transfer, code in cases:
        assert led.transfers(transfer) == [(0, code)], code
    assert led.account(1).debits_pending == 30
    # Matching explicit fields are fine; user data is inherited where left zero.
    assert led.transfers(Transfer(id=200, pending_id=100, debit_account_id=1,
                                  credit_account_id=2, ledger=1, code=1, amount=30,
                                  flags=void)) == []
    assert led.transfer(200).user_data_64 == 4
    assert led.transfers(Transfer(id=200, pending_id=100, flags=void, user_data_64=5)) == [
        (0, T.EXISTS_WITH_DIFFERENT_USER_DATA_64)]
    assert led.transfers(Transfer(id=200, pending_id=100, flags=void)) == [(0, T.EXISTS)]


def test_pending_expires_at_the_first_batch_past_its_timeout(led):
    assert led.transfers(tr(100, amount=30, flags=TF.PENDING, timeout=2),
                         tr(101, dr=6, cr=2, amount=5, flags=TF.PENDING, timeout=3)) == []
    assert led.account(1).debits_pending == 30
    led.apply(Noop(), advance=SECOND)  # not yet
    assert led.account(1).debits_pending == 30
    assert led.transfers(Transfer(id=200, pending_id=100, amount=1,
                                  flags=TF.POST_PENDING_TRANSFER), advance=0) == []
    led.apply(Noop(), advance=3 * SECOND)
    a6 = led.account(6)
    assert a6.debits_pending == 0 and led.account(2).credits_pending == 0
    assert led.transfers(Transfer(id=201, pending_id=101, flags=TF.VOID_PENDING_TRANSFER)) == [
        (0, T.PENDING_TRANSFER_EXPIRED)]
    assert led.tables.snapshot_rows()[b"pending_expiry"] == {}
    history = led.sm.get_account_balances(6)
    assert [h.debits_pending for h in history] == [5, 0]


def test_post_past_timeout_is_expired_even_before_the_sweep(led):
    assert led.transfers(tr(100, amount=30, flags=TF.PENDING, timeout=1)) == []
    expires_at = led.transfer(100).timestamp + SECOND
    # The sweep at the batch's start (time expires_at - 1) finds nothing due;
    # the batch's second event runs at expires_at and is refused.
    led.now = expires_at - 1
    post = Transfer(id=200, pending_id=100, flags=TF.POST_PENDING_TRANSFER)
    assert led.apply(CreateTransfers.of([tr(101), post]), advance=0)[0] == [
        (1, T.PENDING_TRANSFER_EXPIRED)]
    assert led.account(1).debits_pending == 30  # still reserved until the sweep
    led.apply(Noop(), advance=1)
    a1 = led.account(1)
    assert (a1.debits_pending, a1.debits_posted) == (0, 10)
    assert led.transfers(post) == [(0, T.PENDING_TRANSFER_EXPIRED)]


# -- linked chains --------------------------------------------------------------------------


def test_failed_chain_leaves_no_trace(led):
    digest = led.tables.digest
    rows = led.tables.snapshot_rows()
    linked = TF.LINKED
    results = led.transfers(
        tr(100, flags=linked), tr(101, flags=linked | TF.PENDING, timeout=9),
        tr(102, dr=77, flags=linked), tr(103),
    )
    assert results == [(0, T.LINKED_EVENT_FAILED), (1, T.LINKED_EVENT_FAILED),
                       (2, T.DEBIT_ACCOUNT_NOT_FOUND), (3, T.LINKED_EVENT_FAILED)]
    after = led.tables.snapshot_rows()
    for table in after:
        if table != b"meta":
            assert after[table] == rows[table], table
    assert digest != led.tables.digest  # only meta moved
    assert led.sm.lookup_transfers([100, 101, 102, 103]) == []


def test_chains_are_independent_and_open_chain_fails(led):
    linked = TF.LINKED
    results = led.transfers(
        tr(100, flags=linked), tr(101),  # ok chain
        tr(102, flags=linked), tr(102),  # the second repeats the id: the chain fails
        tr(103),  # ok alone
        tr(104, flags=linked), tr(105, flags=linked),  # open at the end
    )
    assert results == [(2, T.LINKED_EVENT_FAILED), (3, T.EXISTS_WITH_DIFFERENT_FLAGS),
                       (5, T.LINKED_EVENT_FAILED), (6, T.LINKED_EVENT_CHAIN_OPEN)]
    assert [t.id for t in led.sm.lookup_transfers(range(100, 106))] == [100, 101, 103]
    assert led.account(1).debits_posted == 30


def test_linked_accounts_and_chain_rollback_of_account_creation():
    led = Ledger()
    linked = AF.LINKED
    assert led.accounts(Account(id=1, ledger=1, code=1, flags=linked),
                        Account(id=2, ledger=1, code=0)) == [
        (0, A.LINKED_EVENT_FAILED), (1, A.CODE_MUST_NOT_BE_ZERO)]
    assert led.sm.lookup_accounts([1, 2]) == []
    assert led.accounts(Account(id=1, ledger=1, code=1, flags=linked)) == [
        (0, A.LINKED_EVENT_CHAIN_OPEN)]
    assert led.accounts(Account(id=1, ledger=1, code=1, flags=linked),
                        Account(id=2, ledger=1, code=1)) == []
    assert len(led.sm.lookup_accounts([1, 2])) == 2


def test_chain_rollback_restores_balances_used_later_in_the_batch(led):
    linked = TF.LINKED
    assert led.transfers(tr(100, dr=2, cr=4, amount=10)) == []
    # The chain spends 4's credit and then fails; the next event may spend it.
    results = led.transfers(tr(101, dr=4, cr=2, amount=10, flags=linked), tr(102, dr=77),
                            tr(103, dr=4, cr=2, amount=10))
    assert results == [(0, T.LINKED_EVENT_FAILED), (1, T.DEBIT_ACCOUNT_NOT_FOUND)]
    assert led.account(4).debits_posted == 10


# -- history and queries --------------------------------------------------------------------


def test_account_transfers_paging_and_filters(led):
    assert led.transfers(*(tr(100 + i, dr=6 if i % 2 else 1, cr=2 if i % 2 else 6, amount=i + 1)
                           for i in range(10))) == []
    all_ = led.sm.get_account_transfers(6)
    assert [t.id for t in all_] == list(range(100, 110))
    debits = led.sm.get_account_transfers(6, credits=False)
    assert [t.id for t in debits] == [101, 103, 105, 107, 109]
    credits = led.sm.get_account_transfers(6, debits=False, limit=2)
    assert [t.id for t in credits] == [100, 102]
    page2 = led.sm.get_account_transfers(6, debits=False, limit=2,
                                         timestamp_min=credits[-1].timestamp + 1)
    assert [t.id for t in page2] == [104, 106]
    rev = led.sm.get_account_transfers(6, reverse=True, limit=3)
    assert [t.id for t in rev] == [109, 108, 107]
    rev2 = led.sm.get_account_transfers(6, reverse=True, limit=3,
                                        timestamp_max=rev[-1].timestamp - 1)
    assert [t.id for t in rev2] == [106, 105, 104]
    assert led.sm.get_account_transfers(77) == []


def test_all_transfers_by_timestamp(led):
    assert led.transfers(tr(100), tr(101, flags=TF.PENDING), tr(102)) == []
    mark = led.transfer(100).timestamp
    assert led.transfers(Transfer(id=103, pending_id=101, flags=TF.VOID_PENDING_TRANSFER)) == []
    assert [t.id for t in led.sm.get_transfers()] == [100, 101, 102, 103]
    assert [t.id for t in led.sm.get_transfers(timestamp_min=mark + 1)] == [101, 102, 103]
    assert [t.id for t in led.sm.get_transfers(timestamp_max=mark + 1)] == [100, 101]
    assert [t.id for t in led.sm.get_transfers(reverse=True, limit=2)] == [103, 102]
    assert led.sm.get_transfers(timestamp_min=mark + 5, timestamp_max=mark) == []


def test_balance_history_only_for_history_accounts(led):
    assert led.transfers(tr(100, dr=6, cr=1, amount=5), tr(101, dr=1, cr=6, amount=7)) == []
    history = led.sm.get_account_balances(6)
    assert [(h.debits_posted, h.credits_posted) for h in history] == [(5, 0), (5, 7)]
    assert history[0].timestamp == led.transfer(100).timestamp
    assert led.sm.get_account_balances(1) == []
    assert led.sm.get_account_balances(6, reverse=True, limit=1)[0].credits_posted == 7


def test_timestamps_increase_even_when_the_leader_clock_goes_back(led):
    assert led.transfers(tr(100)) == []
    t1 = led.transfer(100).timestamp
    assert led.transfers(tr(101), advance=-100 * SECOND) == []
    assert led.transfer(101).timestamp == t1 + 1
    assert led.sm.last_timestamp() == t1 + 1
    c = led.sm.counters()
    assert c.batches == 3 and c.commands == 3 and c.events == 8


def test_empty_value_is_a_noop(led):
    digest = led.tables.digest
    assert led.sm.apply_batch(b"") == []
    assert led.tables.digest == digest


# -- KV -------------------------------------------------------------------------------------


def test_kv_commands():
    led = Ledger()
    (put,) = led.apply(KvPut(b"a/1", b"x"))
    assert put.result == KvResult.OK and put.version > 0
    assert led.sm.kv_get(b"a/1") == (put.version, b"x")
    (put2,) = led.apply(KvPut(b"a/1", b"y"))
    assert put2.version > put.version
    assert led.apply(KvCas(b"a/1", put.version, b"z")) == [
        KvOutcome(KvResult.VERSION_MISMATCH, put2.version)]
    (cas,) = led.apply(KvCas(b"a/1", put2.version, b"z"))
    assert cas.result == KvResult.OK and led.sm.kv_get(b"a/1") == (cas.version, b"z")
    assert led.apply(KvCas(b"a/2", 0, b"new"))[0].result == KvResult.OK
    assert led.apply(KvCas(b"a/2", 0, b"again"))[0].result == KvResult.VERSION_MISMATCH
    assert led.apply(KvCas(b"a/3", 5, b"v"))[0] == KvOutcome(KvResult.VERSION_MISMATCH, 0)
    assert led.apply(KvDelete(b"a/9")) == [KvOutcome(KvResult.NOT_FOUND, 0)]
    led.apply(KvPut(b"b", b"1"), KvPut(b"a\xff", b"2"))
    assert [k for k, _, _ in led.sm.kv_range(prefix=b"a/")] == [b"a/1", b"a/2"]
    assert [k for k, _, _ in led.sm.kv_range(prefix=b"a")] == [b"a/1", b"a/2", b"a\xff"]
    assert [k for k, _, _ in led.sm.kv_range(start=b"a/2", end=b"b")] == [b"a/2", b"a\xff"]
    assert [k for k, _, _ in led.sm.kv_range(limit=1, reverse=True)] == [b"b"]
    assert led.apply(KvDelete(b"a/1")) == [KvOutcome(KvResult.OK, 0)]
    assert led.sm.kv_get(b"a/1") is None
    # A re-created key never reuses an old version.
    (again,) = led.apply(KvCas(b"a/1", 0, b"q"))
    assert again.version > cas.version


def test_kv_limits():
    led = Ledger()
    assert led.apply(
        KvPut(b"", b"v"),
        KvPut(b"k" * (KV_KEY_BYTES_MAX + 1), b"v"),
        KvPut(b"k", b"v" * (KV_VALUE_BYTES_MAX + 1)),
        KvCas(b"k" * KV_KEY_BYTES_MAX, 0, b"v" * KV_VALUE_BYTES_MAX),
    )[:3] == [KvOutcome(KvResult.KEY_MUST_NOT_BE_EMPTY, 0), KvOutcome(KvResult.KEY_TOO_LONG, 0),
              KvOutcome(KvResult.VALUE_TOO_LONG, 0)]
    assert led.sm.kv_get(b"k" * KV_KEY_BYTES_MAX)[1] == b"v" * KV_VALUE_BYTES_MAX


def test_mixed_batch_results_in_command_order(led):
    results = led.apply(Noop(), KvPut(b"k", b"v"), CreateTransfers.of([tr(100), tr(0)]),
                        CreateAccounts.of([Account(id=1, ledger=1, code=1)]))
    assert results[0] is None
    assert results[1].result == KvResult.OK
    assert results[2] == [(1, T.ID_MUST_NOT_BE_ZERO)]
    assert results[3] == [(0, A.EXISTS)]


# -- encoding -------------------------------------------------------------------------------


def test_encode_decode_round_trip():
    commands = [
        CreateAccounts.of([Account(id=1, ledger=1, code=1, user_data_128=U128_MAX)]),
        CreateTransfers.of([tr(5, amount=U128_MAX, flags=TF.LINKED)]),
        KvPut(b"k", b"v"), KvDelete(b"k"), KvCas(b"k", 3, b"w"), Noop(),
    ]
    batch = decode_batch(encode_batch(123, commands))
    assert batch.timestamp_ns == 123 and batch.version == FORMAT_VERSION
    assert list(batch.commands) == commands
    assert batch.commands[1].transfers()[0].amount == U128_MAX
    assert batch.commands[0].accounts()[0].user_data_128 == U128_MAX


def test_encode_refuses_what_decode_would():
    with pytest.raises(MalformedCommand):
        encode_batch(1, [])
    with pytest.raises(MalformedCommand):
        encode_batch(-1, [Noop()])
    with pytest.raises(MalformedCommand):
        encode_batch(TIMESTAMP_MAX + 1, [Noop()])
    with pytest.raises(MalformedCommand):
        encode_batch(1, [CreateTransfers(b"x" * 127)])
    too_many = CreateTransfers.of([tr(i + 1) for i in range(EVENTS_PER_COMMAND_MAX + 1)])
    with pytest.raises(MalformedCommand):
        encode_batch(1, [too_many])
    with pytest.raises(ValueError):
        Transfer(id=-1).pack()


def _hostile_values():
    rng = random.Random(7)
    good = encode_batch(5, [CreateTransfers.of([tr(1), tr(2)]), KvPut(b"k", b"v"),
                            KvCas(b"k", 1, b"w"), KvDelete(b"k"), Noop()])
    yield from (good[:i] for i in range(1, len(good)))
    for _ in range(300):
        b = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        yield bytes(b)
    for _ in range(300):
        yield rng.randbytes(rng.randrange(1, 64))
    pack = msgpack.packb
    yield from (
        pack([FORMAT_VERSION, 1]), pack([2, 1, [[0]]]), pack([FORMAT_VERSION, -1, [[0]]]),
        pack([FORMAT_VERSION, TIMESTAMP_MAX + 1, [[0]]]),
        pack([FORMAT_VERSION, 1, []]),
        pack([FORMAT_VERSION, 1, [[99]]]), pack([FORMAT_VERSION, 1, [[2, b"x" * 129]]]),
        pack([FORMAT_VERSION, 1, [[2, b"x" * 128 * 8191]]]),
        pack([FORMAT_VERSION, 1, [[3, "k", b"v", 1]]]), pack([FORMAT_VERSION, 1, [[5, b"k", -1, b"v"]]]),
        pack([FORMAT_VERSION, 1, [{1: 2}]]), pack([FORMAT_VERSION, True, [[0]]]),
        pack([FORMAT_VERSION, 1, [[0, 1]]]), pack({b"a": 1}), pack(None), pack(1.5),
        b"\x91" * 100_000, b"\xc1", pack(msgpack.ExtType(1, b"x")),
        pack([FORMAT_VERSION, 1, [[4]]]), pack([FORMAT_VERSION, 1, [[3, b"k"]]]),
    )


def test_decode_hostile_bytes_raises_only_malformed_command():
    for value in _hostile_values():
        try:
            decode_batch(value)
        except MalformedCommand:
            pass


def test_apply_of_a_malformed_value_changes_nothing(led):
    digest = led.tables.digest
    rows = led.tables.snapshot_rows()
    with pytest.raises(MalformedCommand):
        led.sm.apply_batch(b"\x93\x01\x05\x91\x91\x63")
    with pytest.raises(MalformedCommand):
        led.sm.apply_batch(None)  # type: ignore[arg-type]
    assert led.tables.digest == digest and led.tables.snapshot_rows() == rows


MSGPACK_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1),
              st.binary(max_size=300), st.text(max_size=5), st.floats(allow_nan=False)),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.tuples(st.integers(0, 2), st.integers(0, TIMESTAMP_MAX), MSGPACK_VALUES).map(list),
    st.lists(st.tuples(st.integers(0, 6), MSGPACK_VALUES, MSGPACK_VALUES).map(list), max_size=3)
    .map(lambda commands: [FORMAT_VERSION, 1, commands]),
    MSGPACK_VALUES,
))
def test_decode_structured_garbage_raises_only_malformed_command(obj):
    """Well-formed msgpack of the wrong shape: a batch or MalformedCommand, nothing else."""
    value = msgpack.packb(obj, use_bin_type=True)
    try:
        batch = decode_batch(value)
    except MalformedCommand:
        return
    # What decodes applies without error.
    LedgerStateMachine(MemoryTables()).apply_batch(value)
    assert batch.commands
