"""The ledger's deterministic state machine: committed slot values in, table writes out.

``LedgerStateMachine(tables).apply_batch(value)`` applies one chosen slot
value (``ledger.commands``) to ``tables`` and returns one result per command,
in batch order:

* ``CreateAccounts`` / ``CreateTransfers``: a list of ``(index, code)`` for
  the events that did not succeed, in index order (TigerBeetle's shape); an
  empty list means every event is ``ok``. Codes are ``CreateAccountResult`` /
  ``CreateTransferResult`` (``ledger.codes``).
* ``KvPut`` / ``KvDelete`` / ``KvCas``: a ``KvOutcome(result, version)``; the
  version of a key is the timestamp of the command that last wrote it, so it
  is unique and never reused (no ABA for compare-and-set); 0 means absent.
* ``Noop``: ``None``.

Pure and deterministic: no clock, no randomness, no I/O besides ``Tables``;
the same log gives byte-identical tables and digest on every replica. Time is
the leader's batch timestamp: the batch's first timestamp is
``max(last_timestamp + 1, batch timestamp)`` and every expiry, create event and
KV command after it takes the next nanosecond (failed events too), so all
timestamps are unique and increasing. ``last_timestamp`` is kept in ``meta``.

Each batch is staged in memory (an overlay per table plus a cache of the
accounts it touches) and written through to ``tables`` only at its end, each
row once. A linked chain records an undo log while it runs, so a chain that
fails is rolled back out of the overlay and leaves no trace, neither in the
rows nor in the digest. A malformed value raises ``MalformedCommand`` before
anything is written. The empty value (the consensus NOOP) changes nothing.

At the start of each batch, pending transfers whose timeout has passed
(``timestamp + timeout * 1e9 <= batch time``) are voided, in ``pending_expiry``
key order, at most ``EXPIRIES_PER_BATCH_MAX`` per batch (the rest in the next
batch: a server should propose a ``Noop`` now and then so that expiries happen
on an idle cluster). A post or void of such a transfer is refused with
``pending_transfer_expired`` even before the sweep has reached it.

Table layout (keys big-endian)::

    accounts           id16 -> account row (ledger.model)
    transfers          id16 -> transfer row (post/void: resolved values)
    transfers_by_ts    ts8 -> id16 + debit account's previous ts8 + credit
                       account's previous ts8 (0: none)
    account_last       account id16 -> ts8 of its last transfer + count u64
    account_transfers  account id16 + ts8 -> transfer id16, for every
                       CHECKPOINT_EVERY-th transfer of an account (its 1st,
                       65th, ...)
    account_history    account id16 + ts8 -> 4 x u128 balances after (HISTORY)
    pending_expiry     expires_at ts8 + pending id16 -> b""
    pending_status     pending id16 -> status byte (codes.PendingStatus) +
                       resolving transfer id16 (zero for expiry); no row: pending
    kv                 key -> version u64 + value
    meta               b"last_timestamp" -> u64; b"counters" -> batches,
                       commands, events (u64 each)

An account's transfers form a chain, newest to oldest, through
``transfers_by_ts`` from ``account_last``; ``account_transfers`` holds
checkpoints into it, so a query starts at most CHECKPOINT_EVERY links from
where it wants to be. A batch then writes one row at the end of
``transfers_by_ts`` per transfer, and per account one ``account_last`` row
and a checkpoint now and then, instead of two rows keyed by account and time:
those land on random pages of a table that grows with the history, and a
B-tree commit rewrites every page it touched (with 1,000-transfer batches
after 300,000 transfers: ~51 KB written per transfer, ~5 KB with the chain).

Queries (``lookup_accounts``, ``lookup_transfers``, ``get_account_transfers``,
``get_transfers``, ``get_account_balances``, ``kv_get``, ``kv_range``,
``last_timestamp``, ``counters``) are read-only functions over any ``Tables``
and are also methods of ``LedgerStateMachine``.

``python -m ledger.state_machine --bench`` measures the apply rate.
"""

from __future__ import annotations

import struct
from typing import Iterable, NamedTuple

from ledger.codes import CreateAccountResult, CreateTransferResult, KvResult, PendingStatus
from ledger.commands import (
    EVENTS_PER_COMMAND_MAX,
    KV_KEY_BYTES_MAX,
    KV_VALUE_BYTES_MAX,
    CreateAccounts,
    CreateTransfers,
    KvCas,
    KvDelete,
    KvPut,
    Noop,
    decode_batch,
)
from ledger.model import (
    ACCOUNT_FLAGS_VALID,
    ACCOUNT_ROW,
    ID_INT_MAX,
    ID_ZERO,
    ROW_BYTES,
    TRANSFER_FLAGS_VALID,
    TRANSFER_ROW,
    U64_MAX,
    U128_MAX,
    Account,
    AccountBalance,
    AccountFlags,
    Transfer,
    TransferFlags,
)
from ledger.tables import Tables

EXPIRIES_PER_BATCH_MAX = 8190
QUERY_LIMIT_MAX = 8190
NS_PER_S = 1_000_000_000

T_ACCOUNTS = b"accounts"
T_TRANSFERS = b"transfers"
T_TRANSFERS_BY_TS = b"transfers_by_ts"
T_ACCOUNT_TRANSFERS = b"account_transfers"
T_ACCOUNT_LAST = b"account_last"
CHECKPOINT_EVERY = 64  # a power of two
_CHECKPOINT_MASK = CHECKPOINT_EVERY - 1
_NO_TS8 = bytes(8)
T_ACCOUNT_HISTORY = b"account_history"
T_PENDING_EXPIRY = b"pending_expiry"
T_PENDING_STATUS = b"pending_status"
T_KV = b"kv"
T_META = b"meta"
META_LAST_TIMESTAMP = b"last_timestamp"
META_COUNTERS = b"counters"
COUNTERS = struct.Struct(">QQQ")
U64 = struct.Struct(">Q")


class KvOutcome(NamedTuple):
    result: KvResult
    version: int  # the key's version after the command (0: absent)


class Counters(NamedTuple):
    batches: int  # non-empty slot values applied
    commands: int
    events: int  # create events processed, whatever their result


# Plain ints on the hot path; results are turned into the enums at the end.
_A = CreateAccountResult
_T = CreateTransferResult
A_LINKED_EVENT_FAILED = int(_A.LINKED_EVENT_FAILED)
A_LINKED_EVENT_CHAIN_OPEN = int(_A.LINKED_EVENT_CHAIN_OPEN)
T_LINKED_EVENT_FAILED = int(_T.LINKED_EVENT_FAILED)
T_LINKED_EVENT_CHAIN_OPEN = int(_T.LINKED_EVENT_CHAIN_OPEN)

F_LINKED = int(TransferFlags.LINKED)
F_PENDING = int(TransferFlags.PENDING)
F_POST = int(TransferFlags.POST_PENDING_TRANSFER)
F_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
F_BALANCING_DEBIT = int(TransferFlags.BALANCING_DEBIT)
F_BALANCING_CREDIT = int(TransferFlags.BALANCING_CREDIT)
F_POST_OR_VOID = F_POST | F_VOID
F_BALANCING = F_BALANCING_DEBIT | F_BALANCING_CREDIT
F_TRANSFER_RESERVED = ~TRANSFER_FLAGS_VALID & 0xFFFF
AF_LINKED = int(AccountFlags.LINKED)
AF_DEBITS_MUST_NOT_EXCEED_CREDITS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
AF_CREDITS_MUST_NOT_EXCEED_DEBITS = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
AF_HISTORY = int(AccountFlags.HISTORY)
AF_RESERVED = ~ACCOUNT_FLAGS_VALID & 0xFFFF
assert F_LINKED == AF_LINKED

# Cached account: [debits_pending, debits_posted, credits_pending,
# credits_posted, ledger, flags, row as loaded or created].
DP, DPO, CP, CPO, LEDGER, FLAGS, ROW = range(7)
# The fields of an account row that the hot path reads: the four balances as
# (high, low) u64 pairs, ledger and flags.
_ACCOUNT_HOT = struct.Struct(">16x8Q32xI2xH8x")
assert _ACCOUNT_HOT.size == ROW_BYTES

_MISS = object()

# Overlays that only ever hold new rows: a transfer id is looked up before it
# is booked, and the other keys carry the booking's fresh timestamp (history,
# indexes) or name a pending transfer whose status was just read as absent.
_INSERT_ONLY = frozenset((T_TRANSFERS, T_TRANSFERS_BY_TS, T_ACCOUNT_TRANSFERS, T_ACCOUNT_HISTORY,
                          T_PENDING_STATUS))


def _balances_row(a: list) -> bytes:
    return b"".join(
        (
            a[DP].to_bytes(16, "big"),
            a[DPO].to_bytes(16, "big"),
            a[CP].to_bytes(16, "big"),
            a[CPO].to_bytes(16, "big"),
        )
    )


def _account_row(a: list) -> bytes:
    row = a[ROW]
    return b"".join(
        (
            row[:16],
            a[DP].to_bytes(16, "big"),
            a[DPO].to_bytes(16, "big"),
            a[CP].to_bytes(16, "big"),
            a[CPO].to_bytes(16, "big"),
            row[80:],
        )
    )


class _BatchApply:
    """One batch in flight: the overlay, the account cache, the undo log, the clock."""

    def __init__(self, tables: Tables, batch_timestamp_ns: int) -> None:
        self.tables = tables
        raw = tables.get(T_META, META_LAST_TIMESTAMP)
        self.last_timestamp = U64.unpack(raw)[0] if raw is not None else 0
        # The next timestamp to hand out; the batch's time is its first.
        self.now = max(self.last_timestamp + 1, batch_timestamp_ns)
        self.clock = self.now
        self.events = 0
        # Overlays: key -> new value, None for a delete.
        self.w_transfers: dict[bytes, bytes | None] = {}
        self.w_by_ts: dict[bytes, bytes | None] = {}
        self.w_account_transfers: dict[bytes, bytes | None] = {}
        self.w_history: dict[bytes, bytes | None] = {}
        self.w_expiry: dict[bytes, bytes | None] = {}
        self.w_status: dict[bytes, bytes | None] = {}
        self.w_kv: dict[bytes, bytes | None] = {}
        self.overlays = (
            (T_TRANSFERS, self.w_transfers),
            (T_TRANSFERS_BY_TS, self.w_by_ts),
            (T_ACCOUNT_TRANSFERS, self.w_account_transfers),
            (T_ACCOUNT_HISTORY, self.w_history),
            (T_PENDING_EXPIRY, self.w_expiry),
            (T_PENDING_STATUS, self.w_status),
            (T_KV, self.w_kv),
        )
        self.accounts: dict[bytes, list] = {}
        self.accounts_loaded: dict[bytes, bytes | None] = {}
        # Chain heads: account id -> [ts8 of its last transfer, transfer count].
        self.last: dict[bytes, list] = {}
        self.last_loaded: dict[bytes, bytes | None] = {}
        # Undo log of the open linked chain, None outside a chain. Entries:
        # (dict, key, previous value or _MISS) or (account list, old balances).
        self.undo: list | None = None

    # -- reads through the overlay -------------------------------------------------

    def account(self, account_id: bytes) -> list | None:
        a = self.accounts.get(account_id)
        if a is None:
            row = self.tables.get(T_ACCOUNTS, account_id)
            if row is None:
                return None
            h1, l1, h2, l2, h3, l3, h4, l4, ledger, flags = _ACCOUNT_HOT.unpack(row)
            a = [h1 << 64 | l1, h2 << 64 | l2, h3 << 64 | l3, h4 << 64 | l4, ledger, flags, row]
            self.accounts[account_id] = a
            self.accounts_loaded[account_id] = row
        return a

    def _last(self, account_id: bytes) -> list:
        raw = self.tables.get(T_ACCOUNT_LAST, account_id)
        entry = [raw[:8], int.from_bytes(raw[8:16], "big")] if raw is not None else [_NO_TS8, 0]
        self.last[account_id] = entry
        self.last_loaded[account_id] = raw
        return entry

    def _index(self, id_: bytes, ts8: bytes, dr_id: bytes, cr_id: bytes) -> None:
        """Book a transfer's timestamp row and link it into both accounts' chains."""
        last = self.last
        dl = last.get(dr_id) or self._last(dr_id)
        cl = last.get(cr_id) or self._last(cr_id)
        undo = self.undo
        if undo is None:
            self.w_by_ts[ts8] = id_ + dl[0] + cl[0]
            w = self.w_account_transfers
            if not dl[1] & _CHECKPOINT_MASK:
                w[dr_id + ts8] = id_
            if not cl[1] & _CHECKPOINT_MASK:
                w[cr_id + ts8] = id_
        else:
            undo.append((dl, dl[0:2]))
            undo.append((cl, cl[0:2]))
            put = self._put
            put(self.w_by_ts, ts8, id_ + dl[0] + cl[0])
            if not dl[1] & _CHECKPOINT_MASK:
                put(self.w_account_transfers, dr_id + ts8, id_)
            if not cl[1] & _CHECKPOINT_MASK:
                put(self.w_account_transfers, cr_id + ts8, id_)
        dl[0] = ts8
        dl[1] += 1
        cl[0] = ts8
        cl[1] += 1

    def transfer_row(self, transfer_id: bytes) -> bytes | None:
        row = self.w_transfers.get(transfer_id, _MISS)
        if row is _MISS:
            return self.tables.get(T_TRANSFERS, transfer_id)
        return row

    def _get(self, table: bytes, overlay: dict, key: bytes) -> bytes | None:
        value = overlay.get(key, _MISS)
        if value is _MISS:
            return self.tables.get(table, key)
        return value

    def _put(self, overlay: dict, key: bytes, value: bytes | None) -> None:
        if self.undo is not None:
            self.undo.append((overlay, key, overlay.get(key, _MISS)))
        overlay[key] = value

    def _rollback(self) -> None:
        undo = self.undo
        assert undo is not None
        for entry in reversed(undo):
            if len(entry) == 2:
                a, old = entry
                a[0:4] = old
            else:
                d, key, old = entry
                if old is _MISS:
                    del d[key]
                else:
                    d[key] = old
        undo.clear()

    def _history(self, account_id: bytes, a: list, ts8: bytes) -> None:
        self._put(self.w_history, account_id + ts8, _balances_row(a))

    # -- expiry ---------------------------------------------------------------------

    def expire_pending(self) -> None:
        assert self.undo is None
        end = (self.now + 1).to_bytes(8, "big") if self.now < U64_MAX else None
        due = list(self.tables.range(T_PENDING_EXPIRY, b"", end, EXPIRIES_PER_BATCH_MAX))
        for key, _ in due:
            pending_id = key[8:]
            ts = self.clock
            self.clock = ts + 1
            ts8 = ts.to_bytes(8, "big")
            row = self.transfer_row(pending_id)
            assert row is not None, "an expiry row names a missing transfer"
            assert self._get(T_PENDING_STATUS, self.w_status, pending_id) is None, (
                "a resolved pending transfer kept its expiry row"
            )
            dr_id, cr_id, amount = row[16:32], row[32:48], int.from_bytes(row[48:64], "big")
            dr = self.account(dr_id)
            cr = self.account(cr_id)
            assert dr is not None and cr is not None
            assert dr[DP] >= amount and cr[CP] >= amount
            dr[DP] -= amount
            cr[CP] -= amount
            self.w_status[pending_id] = bytes((PendingStatus.EXPIRED,)) + ID_ZERO
            self.w_expiry[key] = None
            if dr[FLAGS] & AF_HISTORY:
                self._history(dr_id, dr, ts8)
            if cr[FLAGS] & AF_HISTORY:
                self._history(cr_id, cr, ts8)

    # -- linked chains ----------------------------------------------------------------

    def _run_events(self, events: bytes, row_struct: struct.Struct, create, failed: int,
                    chain_open: int) -> list[tuple[int, int]]:
        """Apply each event with ``create``; link chains; (index, code) of failures."""
        count = len(events) // ROW_BYTES
        assert count <= EVENTS_PER_COMMAND_MAX
        self.events += count
        results: list[tuple[int, int]] = []
        chain_start = -1
        chain_broken = False
        last = count - 1
        offset = 0
        for index, event in enumerate(row_struct.iter_unpack(events)):
            ts = self.clock
            self.clock = ts + 1
            linked = event[11] & F_LINKED
            if linked and chain_start < 0:
                chain_start = index
                self.undo = []
            if linked and index == last:
                code = chain_open
            elif chain_broken:
                code = failed
            else:
                code = create(event, events, offset, ts)
            offset += ROW_BYTES
            if code:
                if chain_start >= 0 and not chain_broken:
                    chain_broken = True
                    self._rollback()
                    results.extend((i, failed) for i in range(chain_start, index))
                results.append((index, code))
            if chain_start >= 0 and (not linked or code == chain_open):
                chain_start = -1
                chain_broken = False
                self.undo = None
        assert self.undo is None
        return results

    # -- accounts -----------------------------------------------------------------------

    def create_accounts(self, events: bytes) -> list[tuple[int, CreateAccountResult]]:
        results = self._run_events(
            events, ACCOUNT_ROW, self._create_account, A_LINKED_EVENT_FAILED,
            A_LINKED_EVENT_CHAIN_OPEN,
        )
        return [(i, CreateAccountResult(code)) for i, code in results]

    def _create_account(self, event: tuple, events: bytes, offset: int, ts: int) -> int:
        (id_, dp, dpo, cp, cpo, ud128, ud64, ud32, reserved, ledger, code, flags, event_ts) = event
        if event_ts:
            return _A.TIMESTAMP_MUST_BE_ZERO
        if reserved:
            return _A.RESERVED_FIELD
        if flags & AF_RESERVED:
            return _A.RESERVED_FLAG
        if id_ == ID_ZERO:
            return _A.ID_MUST_NOT_BE_ZERO
        if id_ == ID_INT_MAX:
            return _A.ID_MUST_NOT_BE_INT_MAX
        if flags & AF_DEBITS_MUST_NOT_EXCEED_CREDITS and flags & AF_CREDITS_MUST_NOT_EXCEED_DEBITS:
            return _A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if dp != ID_ZERO:
            return _A.DEBITS_PENDING_MUST_BE_ZERO
        if dpo != ID_ZERO:
            return _A.DEBITS_POSTED_MUST_BE_ZERO
        if cp != ID_ZERO:
            return _A.CREDITS_PENDING_MUST_BE_ZERO
        if cpo != ID_ZERO:
            return _A.CREDITS_POSTED_MUST_BE_ZERO
        if not ledger:
            return _A.LEDGER_MUST_NOT_BE_ZERO
        if not code:
            return _A.CODE_MUST_NOT_BE_ZERO
        existing = self.account(id_)
        if existing is not None:
            e = ACCOUNT_ROW.unpack(existing[ROW])
            if flags != e[11]:
                return _A.EXISTS_WITH_DIFFERENT_FLAGS
            if ud128 != e[5]:
                return _A.EXISTS_WITH_DIFFERENT_USER_DATA_128
            if ud64 != e[6]:
                return _A.EXISTS_WITH_DIFFERENT_USER_DATA_64
            if ud32 != e[7]:
                return _A.EXISTS_WITH_DIFFERENT_USER_DATA_32
            if ledger != e[9]:
                return _A.EXISTS_WITH_DIFFERENT_LEDGER
            if code != e[10]:
                return _A.EXISTS_WITH_DIFFERENT_CODE
            return _A.EXISTS
        row = events[offset : offset + 120] + ts.to_bytes(8, "big")
        self._put(self.accounts, id_, [0, 0, 0, 0, ledger, flags, row])
        self.accounts_loaded.setdefault(id_, None)
        return 0

    # -- transfers ----------------------------------------------------------------------

    def create_transfers(self, events: bytes) -> list[tuple[int, CreateTransferResult]]:
        results = self._run_events(
            events, TRANSFER_ROW, self._create_transfer, T_LINKED_EVENT_FAILED,
            T_LINKED_EVENT_CHAIN_OPEN,
        )
        return [(i, CreateTransferResult(code)) for i, code in results]

    def _create_transfer(self, event: tuple, events: bytes, offset: int, ts: int) -> int:
        (id_, dr_id, cr_id, amount_raw, pending_id, ud128, ud64, ud32, timeout, ledger, code,
         flags, event_ts) = event
        if event_ts:
            return _T.TIMESTAMP_MUST_BE_ZERO
        if flags & F_TRANSFER_RESERVED:
            return _T.RESERVED_FLAG
        if id_ == ID_ZERO:
            return _T.ID_MUST_NOT_BE_ZERO
        if id_ == ID_INT_MAX:
            return _T.ID_MUST_NOT_BE_INT_MAX
        kind = flags & (F_PENDING | F_POST | F_VOID)
        if kind & (kind - 1) or (flags & F_BALANCING and flags & F_POST_OR_VOID):
            return _T.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if flags & F_POST_OR_VOID:
            return self._post_or_void(event, ts)
        if dr_id == ID_ZERO:
            return _T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if dr_id == ID_INT_MAX:
            return _T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if cr_id == ID_ZERO:
            return _T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if cr_id == ID_INT_MAX:
            return _T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if dr_id == cr_id:
            return _T.ACCOUNTS_MUST_BE_DIFFERENT
        if pending_id != ID_ZERO:
            return _T.PENDING_ID_MUST_BE_ZERO
        pending = flags & F_PENDING
        if timeout and not pending:
            return _T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if not ledger:
            return _T.LEDGER_MUST_NOT_BE_ZERO
        if not code:
            return _T.CODE_MUST_NOT_BE_ZERO
        accounts = self.accounts
        dr = accounts.get(dr_id) or self.account(dr_id)
        if dr is None:
            return _T.DEBIT_ACCOUNT_NOT_FOUND
        cr = accounts.get(cr_id) or self.account(cr_id)
        if cr is None:
            return _T.CREDIT_ACCOUNT_NOT_FOUND
        if dr[LEDGER] != cr[LEDGER]:
            return _T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if ledger != dr[LEDGER]:
            return _T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        existing = self.w_transfers.get(id_) or self.tables.get(T_TRANSFERS, id_)
        if existing is not None:
            return _transfer_exists(event, existing)
        amount = int.from_bytes(amount_raw, "big")
        if flags & F_BALANCING:
            if flags & F_BALANCING_DEBIT:
                amount = min(amount, max(0, dr[CPO] - dr[DPO] - dr[DP]))
            if flags & F_BALANCING_CREDIT:
                amount = min(amount, max(0, cr[DPO] - cr[CPO] - cr[CP]))
        if pending:
            if amount + dr[DP] > U128_MAX:
                return _T.OVERFLOWS_DEBITS_PENDING
            if amount + cr[CP] > U128_MAX:
                return _T.OVERFLOWS_CREDITS_PENDING
        if amount + dr[DPO] > U128_MAX:
            return _T.OVERFLOWS_DEBITS_POSTED
        if amount + cr[CPO] > U128_MAX:
            return _T.OVERFLOWS_CREDITS_POSTED
        if amount + dr[DP] + dr[DPO] > U128_MAX:
            return _T.OVERFLOWS_DEBITS
        if amount + cr[CP] + cr[CPO] > U128_MAX:
            return _T.OVERFLOWS_CREDITS
        if timeout and ts + timeout * NS_PER_S > U64_MAX:
            return _T.OVERFLOWS_TIMEOUT
        if dr[FLAGS] & AF_DEBITS_MUST_NOT_EXCEED_CREDITS and dr[DP] + dr[DPO] + amount > dr[CPO]:
            return _T.EXCEEDS_CREDITS
        if cr[FLAGS] & AF_CREDITS_MUST_NOT_EXCEED_DEBITS and cr[CP] + cr[CPO] + amount > cr[DPO]:
            return _T.EXCEEDS_DEBITS

        # Every check passed: book it.
        ts8 = ts.to_bytes(8, "big")
        if flags & F_BALANCING:
            row = b"".join((events[offset : offset + 48], amount.to_bytes(16, "big"),
                            events[offset + 64 : offset + 120], ts8))
        else:
            row = events[offset : offset + 120] + ts8
        undo = self.undo
        if undo is None:
            if pending:
                dr[DP] += amount
                cr[CP] += amount
            else:
                dr[DPO] += amount
                cr[CPO] += amount
            self.w_transfers[id_] = row
            self._index(id_, ts8, dr_id, cr_id)
            if pending and timeout:
                self.w_expiry[(ts + timeout * NS_PER_S).to_bytes(8, "big") + id_] = b""
        else:
            undo.append((dr, dr[0:4]))
            undo.append((cr, cr[0:4]))
            if pending:
                dr[DP] += amount
                cr[CP] += amount
            else:
                dr[DPO] += amount
                cr[CPO] += amount
            put = self._put
            put(self.w_transfers, id_, row)
            self._index(id_, ts8, dr_id, cr_id)
            if pending and timeout:
                put(self.w_expiry, (ts + timeout * NS_PER_S).to_bytes(8, "big") + id_, b"")
        if dr[FLAGS] & AF_HISTORY:
            self._history(dr_id, dr, ts8)
        if cr[FLAGS] & AF_HISTORY:
            self._history(cr_id, cr, ts8)
        return 0

    def _post_or_void(self, event: tuple, ts: int) -> int:
        (id_, dr_id, cr_id, amount_raw, pending_id, ud128, ud64, ud32, timeout, ledger, code,
         flags, _event_ts) = event
        if pending_id == ID_ZERO:
            return _T.PENDING_ID_MUST_NOT_BE_ZERO
        if pending_id == ID_INT_MAX:
            return _T.PENDING_ID_MUST_NOT_BE_INT_MAX
        if pending_id == id_:
            return _T.PENDING_ID_MUST_BE_DIFFERENT
        if timeout:
            return _T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        p_row = self.transfer_row(pending_id)
        if p_row is None:
            return _T.PENDING_TRANSFER_NOT_FOUND
        p = TRANSFER_ROW.unpack(p_row)
        (_, p_dr_id, p_cr_id, p_amount_raw, _, p_ud128, p_ud64, p_ud32, p_timeout, p_ledger,
         p_code, p_flags, p_ts) = p
        if not p_flags & F_PENDING:
            return _T.PENDING_TRANSFER_NOT_PENDING
        if dr_id != ID_ZERO and dr_id != p_dr_id:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if cr_id != ID_ZERO and cr_id != p_cr_id:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if ledger and ledger != p_ledger:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if code and code != p_code:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        amount = int.from_bytes(amount_raw, "big")
        p_amount = int.from_bytes(p_amount_raw, "big")
        if amount > p_amount:
            return _T.EXCEEDS_PENDING_TRANSFER_AMOUNT
        void = flags & F_VOID
        if void and amount and amount != p_amount:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        resolved_amount = amount or p_amount
        ud128 = ud128 if ud128 != ID_ZERO else p_ud128
        ud64 = ud64 or p_ud64
        ud32 = ud32 or p_ud32
        existing = self.transfer_row(id_)
        if existing is not None:
            e = TRANSFER_ROW.unpack(existing)
            if flags != e[11]:
                return _T.EXISTS_WITH_DIFFERENT_FLAGS
            if pending_id != e[4]:
                return _T.EXISTS_WITH_DIFFERENT_PENDING_ID
            if resolved_amount != int.from_bytes(e[3], "big"):
                return _T.EXISTS_WITH_DIFFERENT_AMOUNT
            if ud128 != e[5]:
                return _T.EXISTS_WITH_DIFFERENT_USER_DATA_128
            if ud64 != e[6]:
                return _T.EXISTS_WITH_DIFFERENT_USER_DATA_64
            if ud32 != e[7]:
                return _T.EXISTS_WITH_DIFFERENT_USER_DATA_32
            return _T.EXISTS
        status = self._get(T_PENDING_STATUS, self.w_status, pending_id)
        if status is not None:
            if status[0] == PendingStatus.POSTED:
                return _T.PENDING_TRANSFER_ALREADY_POSTED
            if status[0] == PendingStatus.VOIDED:
                return _T.PENDING_TRANSFER_ALREADY_VOIDED
            assert status[0] == PendingStatus.EXPIRED
            return _T.PENDING_TRANSFER_EXPIRED
        expires_at = p_ts + p_timeout * NS_PER_S
        if p_timeout and expires_at <= ts:
            return _T.PENDING_TRANSFER_EXPIRED

        dr = self.account(p_dr_id)
        cr = self.account(p_cr_id)
        assert dr is not None and cr is not None, "a pending transfer names a missing account"
        assert dr[DP] >= p_amount and cr[CP] >= p_amount
        if self.undo is not None:
            self.undo.append((dr, dr[0:4]))
            self.undo.append((cr, cr[0:4]))
        dr[DP] -= p_amount
        cr[CP] -= p_amount
        if not void:
            dr[DPO] += resolved_amount
            cr[CPO] += resolved_amount
        ts8 = ts.to_bytes(8, "big")
        row = TRANSFER_ROW.pack(id_, p_dr_id, p_cr_id, resolved_amount.to_bytes(16, "big"),
                                pending_id, ud128, ud64, ud32, 0, p_ledger, p_code, flags, ts)
        put = self._put
        put(self.w_transfers, id_, row)
        self._index(id_, ts8, p_dr_id, p_cr_id)
        status_byte = PendingStatus.VOIDED if void else PendingStatus.POSTED
        put(self.w_status, pending_id, bytes((status_byte,)) + id_)
        if p_timeout:
            put(self.w_expiry, expires_at.to_bytes(8, "big") + pending_id, None)
        if dr[FLAGS] & AF_HISTORY:
            self._history(p_dr_id, dr, ts8)
        if cr[FLAGS] & AF_HISTORY:
            self._history(p_cr_id, cr, ts8)
        return 0

    # -- key-value ------------------------------------------------------------------------

    def kv(self, command: KvPut | KvDelete | KvCas) -> KvOutcome:
        ts = self.clock
        self.clock = ts + 1
        key = command.key
        if not key:
            return KvOutcome(KvResult.KEY_MUST_NOT_BE_EMPTY, 0)
        if len(key) > KV_KEY_BYTES_MAX:
            return KvOutcome(KvResult.KEY_TOO_LONG, 0)
        current = self._get(T_KV, self.w_kv, key)
        version = U64.unpack_from(current)[0] if current is not None else 0
        if type(command) is KvDelete:
            if current is None:
                return KvOutcome(KvResult.NOT_FOUND, 0)
            self.w_kv[key] = None
            return KvOutcome(KvResult.OK, 0)
        if len(command.value) > KV_VALUE_BYTES_MAX:
            return KvOutcome(KvResult.VALUE_TOO_LONG, version)
        if type(command) is KvCas and command.expected_version != version:
            return KvOutcome(KvResult.VERSION_MISMATCH, version)
        self.w_kv[key] = U64.pack(ts) + command.value
        return KvOutcome(KvResult.OK, ts)

    # -- write-through ----------------------------------------------------------------------

    def flush(self, commands: int) -> None:
        """Write the staged rows to the tables, each once, in key order.

        Rows the batch created (a transfer and its index rows, history,
        a pending status) go in with ``insert_rows``, accounts with
        ``replace_rows`` from the row each was loaded as: one call per table,
        instead of one read-and-write per row."""
        assert self.undo is None
        tables = self.tables
        loaded = self.accounts_loaded
        changed = []
        for account_id, a in self.accounts.items():
            row = _account_row(a)
            old = loaded[account_id]
            if row != old:
                changed.append((account_id, old, row))
        changed.sort()
        tables.replace_rows(T_ACCOUNTS, changed)
        heads_loaded = self.last_loaded
        heads = []
        for account_id, (ts8, count) in self.last.items():
            row = ts8 + count.to_bytes(8, "big")
            old = heads_loaded[account_id]
            if row != old and count:  # (0: a rolled-back chain's first transfer)
                heads.append((account_id, old, row))
        heads.sort()
        tables.replace_rows(T_ACCOUNT_LAST, heads)
        for table, overlay in self.overlays:
            if table in _INSERT_ONLY:
                tables.insert_rows(table, sorted(overlay.items()))
                continue
            for key in sorted(overlay):
                value = overlay[key]
                if value is None:
                    tables.delete(table, key)
                else:
                    tables.put(table, key, value)
        if self.clock > self.now:
            assert self.clock - 1 <= U64_MAX, "timestamps ran past u64"
            tables.put(T_META, META_LAST_TIMESTAMP, U64.pack(self.clock - 1))
        raw = tables.get(T_META, META_COUNTERS)
        batches, total_commands, events = COUNTERS.unpack(raw) if raw is not None else (0, 0, 0)
        tables.put(T_META, META_COUNTERS,
                   COUNTERS.pack(batches + 1, total_commands + commands, events + self.events))


def _transfer_exists(event: tuple, existing: bytes) -> int:
    """The result for a regular or pending transfer whose id is already booked."""
    e = TRANSFER_ROW.unpack(existing)
    if event[11] != e[11]:
        return _T.EXISTS_WITH_DIFFERENT_FLAGS
    if event[4] != e[4]:
        return _T.EXISTS_WITH_DIFFERENT_PENDING_ID
    if event[1] != e[1]:
        return _T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if event[2] != e[2]:
        return _T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if event[11] & F_BALANCING:
        # The booked amount may be less than the asked maximum.
        if int.from_bytes(event[3], "big") < int.from_bytes(e[3], "big"):
            return _T.EXISTS_WITH_DIFFERENT_AMOUNT
    elif event[3] != e[3]:
        return _T.EXISTS_WITH_DIFFERENT_AMOUNT
    if event[5] != e[5]:
        return _T.EXISTS_WITH_DIFFERENT_USER_DATA_128
    if event[6] != e[6]:
        return _T.EXISTS_WITH_DIFFERENT_USER_DATA_64
    if event[7] != e[7]:
        return _T.EXISTS_WITH_DIFFERENT_USER_DATA_32
    if event[8] != e[8]:
        return _T.EXISTS_WITH_DIFFERENT_TIMEOUT
    # Same debit account, and the ledger was checked against that account's.
    assert event[9] == e[9], "exists_with_different_ledger is unreachable"
    if event[10] != e[10]:
        return _T.EXISTS_WITH_DIFFERENT_CODE
    return _T.EXISTS


class LedgerStateMachine:
    """Applies chosen slot values to ``tables``; see the module docstring."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables

    def apply_batch(self, value: bytes) -> list:
        """One result per command of the batch in ``value``, in order.

        ``b""`` (the consensus NOOP) changes nothing and answers ``[]``.
        Raises ``commands.MalformedCommand`` (and writes nothing) if ``value``
        is not a well-formed batch.
        """
        if value == b"":
            return []
        batch = decode_batch(value)
        apply = _BatchApply(self.tables, batch.timestamp_ns)
        apply.expire_pending()
        results: list = []
        for command in batch.commands:
            t = type(command)
            if t is CreateTransfers:
                results.append(apply.create_transfers(command.events))
            elif t is CreateAccounts:
                results.append(apply.create_accounts(command.events))
            elif t is Noop:
                results.append(None)
            else:
                assert t is KvPut or t is KvDelete or t is KvCas
                results.append(apply.kv(command))
        apply.flush(len(batch.commands))
        return results

    # Queries over this machine's tables.
    def lookup_accounts(self, ids: Iterable[int]) -> list[Account]:
        return lookup_accounts(self.tables, ids)

    def lookup_transfers(self, ids: Iterable[int]) -> list[Transfer]:
        return lookup_transfers(self.tables, ids)

    def get_account_transfers(self, account_id: int, **kw) -> list[Transfer]:
        return get_account_transfers(self.tables, account_id, **kw)

    def get_transfers(self, **kw) -> list[Transfer]:
        return get_transfers(self.tables, **kw)

    def get_account_balances(self, account_id: int, **kw) -> list[AccountBalance]:
        return get_account_balances(self.tables, account_id, **kw)

    def kv_get(self, key: bytes) -> tuple[int, bytes] | None:
        return kv_get(self.tables, key)

    def kv_range(self, **kw) -> list[tuple[bytes, int, bytes]]:
        return kv_range(self.tables, **kw)

    def last_timestamp(self) -> int:
        return last_timestamp(self.tables)

    def counters(self) -> Counters:
        return counters(self.tables)


# -- queries: read-only, over any Tables --------------------------------------------------


def _id_key(value: int) -> bytes | None:
    return value.to_bytes(16, "big") if 0 <= value <= U128_MAX else None


def _lookup(tables: Tables, table: bytes, ids: Iterable[int], unpack):
    found = []
    for id_ in ids:
        key = _id_key(id_)
        row = tables.get(table, key) if key is not None else None
        if row is not None:
            found.append(unpack(row))
    return found


def lookup_accounts(tables: Tables, ids: Iterable[int]) -> list[Account]:
    """The accounts that exist among ``ids``, in the order asked (absent ones left out)."""
    return _lookup(tables, T_ACCOUNTS, ids, Account.unpack)


def lookup_transfers(tables: Tables, ids: Iterable[int]) -> list[Transfer]:
    """The transfers that exist among ``ids``, in the order asked (absent ones left out)."""
    return _lookup(tables, T_TRANSFERS, ids, Transfer.unpack)


def _ts_bounds(account_id: int, timestamp_min: int, timestamp_max: int) -> tuple[bytes, bytes | None]:
    prefix = account_id.to_bytes(16, "big")
    start = prefix + timestamp_min.to_bytes(8, "big")
    if timestamp_max and timestamp_max < U64_MAX:
        return start, prefix + (timestamp_max + 1).to_bytes(8, "big")
    if account_id < U128_MAX:
        return start, (account_id + 1).to_bytes(16, "big")
    return start, None


def _link(tables: Tables, prefix: bytes, ts8: bytes) -> tuple[bytes, bytes]:
    """(transfer row, the account's previous ts8) of account ``prefix``'s transfer at ``ts8``."""
    link = tables.get(T_TRANSFERS_BY_TS, ts8)
    assert link is not None, "an account's chain names a missing timestamp"
    row = tables.get(T_TRANSFERS, link[:16])
    assert row is not None, "transfers_by_ts names a missing transfer"
    return row, (link[16:24] if row[16:32] == prefix else link[24:32])


def get_account_transfers(
    tables: Tables,
    account_id: int,
    timestamp_min: int = 0,
    timestamp_max: int = 0,
    limit: int = QUERY_LIMIT_MAX,
    reverse: bool = False,
    debits: bool = True,
    credits: bool = True,
) -> list[Transfer]:
    """Transfers debiting and/or crediting ``account_id``, by timestamp.

    Timestamps are inclusive bounds; ``timestamp_max`` 0 means no upper bound.
    Page by passing the last timestamp seen + 1 as ``timestamp_min`` (or - 1 as
    ``timestamp_max`` with ``reverse``). ``limit`` is capped at QUERY_LIMIT_MAX.

    Walks the account's chain (module docstring): backwards from the first
    checkpoint after ``timestamp_max`` (or the newest transfer); forwards one
    stretch between checkpoints at a time, each walked backwards and turned.
    """
    limit = min(limit, QUERY_LIMIT_MAX)
    if limit <= 0 or not (debits or credits) or _id_key(account_id) is None:
        return []
    if timestamp_max and timestamp_min > timestamp_max:
        return []
    lo, hi = timestamp_min, timestamp_max or U64_MAX
    prefix = account_id.to_bytes(16, "big")
    after = (account_id + 1).to_bytes(16, "big") if account_id < U128_MAX else None
    head = tables.get(T_ACCOUNT_LAST, prefix)
    if head is None:
        return []
    found: list[Transfer] = []

    def wanted(row: bytes) -> bool:
        return (debits and row[16:32] == prefix) or (credits and row[32:48] == prefix)

    if reverse:
        ts8 = head[:8]
        if hi < U64_MAX:
            nxt = list(tables.range(T_ACCOUNT_TRANSFERS, prefix + (hi + 1).to_bytes(8, "big"), after, 1))
            if nxt:
                ts8 = nxt[0][0][16:24]
        while ts8 != _NO_TS8:
            ts = int.from_bytes(ts8, "big")
            if ts < lo:
                break
            row, prev = _link(tables, prefix, ts8)
            if ts <= hi and wanted(row):
                found.append(Transfer.unpack(row))
                if len(found) == limit:
                    break
            ts8 = prev
        return found

    # Forwards: stretches ending at each checkpoint at or after lo, then the newest.
    behind = lo - 1  # everything at or before this is done
    start = prefix + lo.to_bytes(8, "big")
    while True:
        checkpoints = list(tables.range(T_ACCOUNT_TRANSFERS, start, after, 256))
        ends = [key[16:24] for key, _ in checkpoints]
        if len(checkpoints) < 256:
            ends.append(head[:8])
        for end8 in ends:
            if int.from_bytes(end8, "big") <= behind:
                continue
            stretch = []
            ts8 = end8
            while ts8 != _NO_TS8 and int.from_bytes(ts8, "big") > behind:
                row, prev = _link(tables, prefix, ts8)
                stretch.append(row)
                ts8 = prev
            for row in reversed(stretch):
                if int.from_bytes(row[120:128], "big") > hi:
                    return found
                if wanted(row):
                    found.append(Transfer.unpack(row))
                    if len(found) == limit:
                        return found
            behind = int.from_bytes(end8, "big")
        if len(checkpoints) < 256:
            return found
        start = checkpoints[-1][0] + b"\x00"


def get_transfers(
    tables: Tables,
    timestamp_min: int = 0,
    timestamp_max: int = 0,
    limit: int = QUERY_LIMIT_MAX,
    reverse: bool = False,
) -> list[Transfer]:
    """All transfers by timestamp (bounds and paging as ``get_account_transfers``).

    For a reversal from a backup point: every transfer booked after it.
    """
    limit = min(limit, QUERY_LIMIT_MAX)
    if limit <= 0 or (timestamp_max and timestamp_min > timestamp_max):
        return []
    start = timestamp_min.to_bytes(8, "big")
    end = (timestamp_max + 1).to_bytes(8, "big") if timestamp_max and timestamp_max < U64_MAX else None
    found = []
    for _, link in tables.range(T_TRANSFERS_BY_TS, start, end, limit, reverse):
        row = tables.get(T_TRANSFERS, link[:16])
        assert row is not None, "transfers_by_ts names a missing transfer"
        found.append(Transfer.unpack(row))
    return found


def get_account_balances(
    tables: Tables,
    account_id: int,
    timestamp_min: int = 0,
    timestamp_max: int = 0,
    limit: int = QUERY_LIMIT_MAX,
    reverse: bool = False,
) -> list[AccountBalance]:
    """Balance history of an account with the HISTORY flag, by timestamp (bounds as above)."""
    limit = min(limit, QUERY_LIMIT_MAX)
    if limit <= 0 or _id_key(account_id) is None:
        return []
    if timestamp_max and timestamp_min > timestamp_max:
        return []
    start, end = _ts_bounds(account_id, timestamp_min, timestamp_max)
    return [
        AccountBalance.unpack(int.from_bytes(key[16:24], "big"), row)
        for key, row in tables.range(T_ACCOUNT_HISTORY, start, end, limit, reverse)
    ]


def kv_get(tables: Tables, key: bytes) -> tuple[int, bytes] | None:
    """(version, value) of ``key``, or None if absent."""
    row = tables.get(T_KV, key) if key else None
    if row is None:
        return None
    return U64.unpack_from(row)[0], row[8:]


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def kv_range(
    tables: Tables,
    start: bytes = b"",
    end: bytes | None = None,
    prefix: bytes | None = None,
    limit: int = QUERY_LIMIT_MAX,
    reverse: bool = False,
) -> list[tuple[bytes, int, bytes]]:
    """(key, version, value) for start <= key < end, or for keys under ``prefix``."""
    limit = min(limit, QUERY_LIMIT_MAX)
    if prefix is not None:
        start, end = prefix, _prefix_end(prefix)
    if limit <= 0:
        return []
    return [
        (key, U64.unpack_from(row)[0], row[8:])
        for key, row in tables.range(T_KV, start, end, limit, reverse)
    ]


def last_timestamp(tables: Tables) -> int:
    raw = tables.get(T_META, META_LAST_TIMESTAMP)
    return U64.unpack(raw)[0] if raw is not None else 0


def counters(tables: Tables) -> Counters:
    raw = tables.get(T_META, META_COUNTERS)
    return Counters(*COUNTERS.unpack(raw)) if raw is not None else Counters(0, 0, 0)


# -- benchmark ------------------------------------------------------------------------------


class _BenchDictTables:
    """A Tables with no digest and no ordering, to time the state machine alone."""

    def __init__(self) -> None:
        from ledger.tables import TABLES

        self.rows: dict[bytes, dict[bytes, bytes]] = {t: {} for t in TABLES}
        self.digest = 0

    def get(self, table: bytes, key: bytes) -> bytes | None:
        return self.rows[table].get(key)

    def put(self, table: bytes, key: bytes, value: bytes) -> None:
        self.rows[table][key] = value

    def delete(self, table: bytes, key: bytes) -> bool:
        return self.rows[table].pop(key, None) is not None

    def insert_rows(self, table: bytes, rows: list[tuple[bytes, bytes]]) -> None:
        self.rows[table].update(rows)

    def replace_rows(self, table: bytes, rows: list[tuple[bytes, bytes | None, bytes]]) -> None:
        self.rows[table].update((key, new) for key, _, new in rows)

    def range(self, table, start, end, limit, reverse=False):
        rows = self.rows[table]
        keys = sorted(k for k in rows if k >= start and (end is None or k < end))
        for key in (keys[::-1] if reverse else keys)[:limit]:
            yield key, rows[key]


def bench(batch_events: int, batches: int, accounts: int = 10_000, memory: bool = True) -> float:
    """Transfers applied per second (apply only; the values are encoded beforehand).

    ``memory``: on MemoryTables (digest and sorted keys included), else on a
    plain dict per table (the state machine's own cost).
    """
    import random
    import time

    from ledger.commands import encode_batch
    from ledger.tables import MemoryTables

    rng = random.Random(1)
    sm = LedgerStateMachine(MemoryTables() if memory else _BenchDictTables())
    ts = 1_000_000_000
    for first in range(1, accounts + 1, EVENTS_PER_COMMAND_MAX):
        last = min(first + EVENTS_PER_COMMAND_MAX, accounts + 1)
        events = CreateAccounts.of(Account(id=i, ledger=1, code=1) for i in range(first, last))
        sm.apply_batch(encode_batch(ts, [events]))
    values = []
    next_id = 1
    for _ in range(batches):
        transfers = []
        for _ in range(batch_events):
            dr = rng.randrange(1, accounts + 1)
            cr = rng.randrange(1, accounts)
            cr += cr >= dr
            transfers.append(Transfer(id=next_id, debit_account_id=dr, credit_account_id=cr,
                                      amount=rng.randrange(1, 1000), ledger=1, code=1))
            next_id += 1
        commands = [
            CreateTransfers.of(transfers[i : i + EVENTS_PER_COMMAND_MAX])
            for i in range(0, len(transfers), EVENTS_PER_COMMAND_MAX)
        ]
        ts += 1_000_000
        values.append(encode_batch(ts, commands))
    start = time.perf_counter()
    for value in values:
        results = sm.apply_batch(value)
        assert all(r == [] for r in results)
    elapsed = time.perf_counter() - start
    return batch_events * batches / elapsed


if __name__ == "__main__":
    import sys

    if "--bench" not in sys.argv[1:]:
        sys.exit("usage: python -m ledger.state_machine --bench")
    for accounts in (1_000, 10_000):
        for size, count in ((1_000, 100), (8_000, 13)):
            for memory in (True, False):
                rate = bench(size, count, accounts, memory)
                where = "MemoryTables" if memory else "dict tables, no digest"
                print(f"{accounts:>6} accounts, batches of {size:>5} transfers: "
                      f"{rate:>9,.0f} transfers/s ({where})")
