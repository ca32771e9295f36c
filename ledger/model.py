"""Accounts and transfers: frozen values and their fixed 128-byte rows.

The same 128-byte layout is used on the wire (events of CREATE_ACCOUNTS and
CREATE_TRANSFERS, with timestamp 0) and in the ``accounts`` and ``transfers``
tables (with the timestamp the state machine assigned). All integers are
unsigned and big-endian, so a 16-byte id is also its table key and byte
order is numeric order.

Account row (128 bytes)::

    0   id               u128     80  user_data_128   u128
    16  debits_pending   u128     96  user_data_64    u64
    32  debits_posted    u128     104 user_data_32    u32
    48  credits_pending  u128     108 reserved        u32 (zero)
    64  credits_posted   u128     112 ledger u32, 116 code u16, 118 flags u16
                                  120 timestamp       u64 (ns)

Transfer row (128 bytes)::

    0   id                 u128   96  user_data_64    u64
    16  debit_account_id   u128   104 user_data_32    u32
    32  credit_account_id  u128   108 timeout         u32 (seconds)
    48  amount             u128   112 ledger u32, 116 code u16, 118 flags u16
    64  pending_id         u128   120 timestamp       u64 (ns)
    80  user_data_128      u128

A stored post or void transfer holds its resolved values: the accounts,
ledger, code and user data inherited from the pending transfer where the
event left them zero, and the amount actually posted (a void: the pending
amount).

Balance history row (``account_history``, key account id + timestamp): the
account's debits_pending, debits_posted, credits_pending, credits_posted
after the change, 4 x u128.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

U128_MAX = (1 << 128) - 1
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1

ROW_BYTES = 128
ID_BYTES = 16
TIMESTAMP_BYTES = 8
ID_ZERO = bytes(16)
ID_INT_MAX = b"\xff" * 16

# id, 4 balances, user_data_128 as 16-byte big-endian strings; then
# user_data_64, user_data_32, reserved, ledger, code, flags, timestamp.
ACCOUNT_ROW = struct.Struct(">16s16s16s16s16s16sQIIIHHQ")
# id, debit, credit, amount, pending_id, user_data_128; then user_data_64,
# user_data_32, timeout, ledger, code, flags, timestamp.
TRANSFER_ROW = struct.Struct(">16s16s16s16s16s16sQIIIHHQ")
BALANCE_ROW = struct.Struct(">16s16s16s16s")
assert ACCOUNT_ROW.size == ROW_BYTES
assert TRANSFER_ROW.size == ROW_BYTES
assert BALANCE_ROW.size == 64


class AccountFlags(IntFlag):
    LINKED = 1 << 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    HISTORY = 1 << 3


class TransferFlags(IntFlag):
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING_TRANSFER = 1 << 2
    VOID_PENDING_TRANSFER = 1 << 3
    BALANCING_DEBIT = 1 << 4
    BALANCING_CREDIT = 1 << 5


ACCOUNT_FLAGS_VALID = int(
    AccountFlags.LINKED
    | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    | AccountFlags.HISTORY
)
TRANSFER_FLAGS_VALID = int(
    TransferFlags.LINKED
    | TransferFlags.PENDING
    | TransferFlags.POST_PENDING_TRANSFER
    | TransferFlags.VOID_PENDING_TRANSFER
    | TransferFlags.BALANCING_DEBIT
    | TransferFlags.BALANCING_CREDIT
)


def u128_bytes(value: int) -> bytes:
    """16-byte big-endian form of an id or amount; ValueError out of range."""
    try:
        return value.to_bytes(16, "big")
    except OverflowError:
        raise ValueError(f"{value} is not a u128") from None


def u128_int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _check(name: str, value: int, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"{name}={value!r} is outside 0..{maximum}")


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    ledger: int
    code: int
    flags: int = 0
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    timestamp: int = 0

    def pack(self) -> bytes:
        """The 128-byte row; ValueError if a field is out of its range."""
        try:
            return ACCOUNT_ROW.pack(
                self.id.to_bytes(16, "big"),
                self.debits_pending.to_bytes(16, "big"),
                self.debits_posted.to_bytes(16, "big"),
                self.credits_pending.to_bytes(16, "big"),
                self.credits_posted.to_bytes(16, "big"),
                self.user_data_128.to_bytes(16, "big"),
                self.user_data_64,
                self.user_data_32,
                0,
                self.ledger,
                self.code,
                self.flags,
                self.timestamp,
            )
        except (OverflowError, struct.error, AttributeError, TypeError):
            pass
        # Slow path, only to say which field is wrong.
        for name in ("id", "debits_pending", "debits_posted", "credits_pending",
                     "credits_posted", "user_data_128"):
            _check(name, getattr(self, name), U128_MAX)
        for name, maximum in (("user_data_64", U64_MAX), ("user_data_32", U32_MAX),
                              ("ledger", U32_MAX), ("code", U16_MAX), ("flags", U16_MAX),
                              ("timestamp", U64_MAX)):
            _check(name, getattr(self, name), maximum)
        raise AssertionError("unreachable: every field is in range")

    @classmethod
    def unpack(cls, row: bytes) -> Account:
        (id_, dp, dpo, cp, cpo, ud128, ud64, ud32, _reserved, ledger, code, flags, ts) = (
            ACCOUNT_ROW.unpack(row)
        )
        return cls(
            id=int.from_bytes(id_, "big"),
            ledger=ledger,
            code=code,
            flags=flags,
            debits_pending=int.from_bytes(dp, "big"),
            debits_posted=int.from_bytes(dpo, "big"),
            credits_pending=int.from_bytes(cp, "big"),
            credits_posted=int.from_bytes(cpo, "big"),
            user_data_128=int.from_bytes(ud128, "big"),
            user_data_64=ud64,
            user_data_32=ud32,
            timestamp=ts,
        )


@dataclass(frozen=True, slots=True)
class Transfer:
    id: int
    debit_account_id: int = 0
    credit_account_id: int = 0
    amount: int = 0
    ledger: int = 0
    code: int = 0
    flags: int = 0
    pending_id: int = 0
    timeout: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    timestamp: int = 0

    def pack(self) -> bytes:
        """The 128-byte row; ValueError if a field is out of its range."""
        try:
            return TRANSFER_ROW.pack(
                self.id.to_bytes(16, "big"),
                self.debit_account_id.to_bytes(16, "big"),
                self.credit_account_id.to_bytes(16, "big"),
                self.amount.to_bytes(16, "big"),
                self.pending_id.to_bytes(16, "big"),
                self.user_data_128.to_bytes(16, "big"),
                self.user_data_64,
                self.user_data_32,
                self.timeout,
                self.ledger,
                self.code,
                self.flags,
                self.timestamp,
            )
        except (OverflowError, struct.error, AttributeError, TypeError):
            pass
        # Slow path, only to say which field is wrong.
        for name in ("id", "debit_account_id", "credit_account_id", "amount", "pending_id",
                     "user_data_128"):
            _check(name, getattr(self, name), U128_MAX)
        for name, maximum in (("user_data_64", U64_MAX), ("user_data_32", U32_MAX),
                              ("timeout", U32_MAX), ("ledger", U32_MAX), ("code", U16_MAX),
                              ("flags", U16_MAX), ("timestamp", U64_MAX)):
            _check(name, getattr(self, name), maximum)
        raise AssertionError("unreachable: every field is in range")

    @classmethod
    def unpack(cls, row: bytes) -> Transfer:
        (id_, dr, cr, amount, pending_id, ud128, ud64, ud32, timeout, ledger, code, flags,
         ts) = TRANSFER_ROW.unpack(row)
        return cls(
            id=int.from_bytes(id_, "big"),
            debit_account_id=int.from_bytes(dr, "big"),
            credit_account_id=int.from_bytes(cr, "big"),
            amount=int.from_bytes(amount, "big"),
            ledger=ledger,
            code=code,
            flags=flags,
            pending_id=int.from_bytes(pending_id, "big"),
            timeout=timeout,
            user_data_128=int.from_bytes(ud128, "big"),
            user_data_64=ud64,
            user_data_32=ud32,
            timestamp=ts,
        )


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """An account's balances just after the change made at ``timestamp``."""

    timestamp: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @classmethod
    def unpack(cls, timestamp: int, row: bytes) -> AccountBalance:
        dp, dpo, cp, cpo = BALANCE_ROW.unpack(row)
        return cls(
            timestamp,
            int.from_bytes(dp, "big"),
            int.from_bytes(dpo, "big"),
            int.from_bytes(cp, "big"),
            int.from_bytes(cpo, "big"),
        )
