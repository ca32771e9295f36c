"""Deterministic 128-bit ledger ids for the TA's transfers and accounts.

A transfer id is derived from the business key of what it books, so a re-run
of any step derives the same ids and the ledger answers ``exists`` instead of
booking twice (the client-chosen id is the idempotency key):

- an order's legs: (TA code, distributor code, AppSheetSerialNo, leg)
- a TA event's legs (dividend, MMF income, share adjustment): (TA code,
  event kind, fund code, date, holder, leg)
- a reversal (rollback never deletes): (id of the transfer it reverses)

``attempt`` (default 0) tells apart a booking made again after its earlier
booking was reversed by a rollback: the re-run after a rollback must use the
next attempt, or its ids would collide with the reversed ones.

Account ids are derived the same way from what the account is: a holder's
share account (TA account + distributor + transaction account, per fund and
share class), a fund's issuance account, and the cash accounts.

Derivation: BLAKE2b with a 16-byte digest and a personalisation string that
separates accounts from transfers; every part is tagged and length-prefixed,
so no two different keys encode alike. An id is never 0 and never 2**128-1
(reserved by the ledger); on that (astronomically unlikely) digest the
derivation re-hashes with a counter, deterministically.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass
from typing import Mapping, Union

from ta.errors import InvalidInput

ID_BITS = 128
ID_MAX = 2**ID_BITS - 1  # reserved, like 0
ATTEMPT_MAX = 2**16 - 1
# Account ids are pure functions of their keys: the last ones are remembered.
ACCOUNT_ID_CACHE_MAX = 1 << 18

_PERSON_TRANSFER = b"ta.transfer.v1"
_PERSON_ACCOUNT = b"ta.account.v1"
_PERSON_RECORD = b"ta.record.v1"


class Leg(enum.IntEnum):
    """One transfer of a confirmation's linked chain. Numbers are stable."""

    SHARES = 1  # issuance <-> holder share account
    NET = 2  # distributor settlement <-> fund assets
    FEE = 3  # the fee's part for the fee account
    FEE_TO_FUND = 4  # the fee's part that stays in fund assets
    RESERVE = 5  # pending hold of a redemption's shares when accepted
    RESERVE_POST = 6  # posts the pending hold at confirmation
    RESERVE_VOID = 7  # voids the pending hold (failed redemption)
    RESIDUAL = 8  # rounding residual to the residual account
    DIVIDEND_CASH = 9  # fund assets -> dividend payable
    DIVIDEND_REINVEST = 10  # fund's dividend money reinvested
    DIVIDEND_SHARES = 11  # reinvested shares to the holder
    MMF_INCOME = 12  # income carried into units
    ADJUSTMENT = 13  # 144 / 145 share adjustment


class EventKind(enum.Enum):
    """TA-initiated events that book without an AppSheetSerialNo."""

    DIVIDEND = "143"
    SHARE_ADJUSTMENT_INCREASE = "144"
    SHARE_ADJUSTMENT_DECREASE = "145"
    MMF_INCOME = "MMF"


class AccountKind(enum.Enum):
    """What an account is for; part of its id."""

    HOLDER_SHARES = "holder_shares"
    ISSUANCE = "issuance"
    DISTRIBUTOR_SETTLEMENT = "distributor_settlement"
    FUND_ASSETS = "fund_assets"
    FEE = "fee"
    RESIDUAL = "residual"
    DIVIDEND_PAYABLE = "dividend_payable"


@dataclass(frozen=True, order=True)
class HolderKey:
    """An investor's holding at one distributor (sorts deterministically)."""

    ta_account_id: str
    distributor_code: str
    transaction_account_id: str


def _text(what: str, value: object, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidInput(f"{what} must not be empty")
    if value.endswith(" "):  # file padding: the reader strips it, so must the caller
        raise InvalidInput(f"{what} has trailing padding: {value!r}")
    return value


def _encode(parts: tuple[Union[str, int], ...]) -> bytes:
    out = bytearray()
    for part in parts:
        if isinstance(part, bool):
            raise TypeError("a bool is not an id part")
        if isinstance(part, int):
            assert 0 <= part <= ID_MAX
            out += b"i" + part.to_bytes(16, "big")
        else:
            raw = part.encode("utf-8")
            out += b"s" + len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _derive(person: bytes, parts: tuple[Union[str, int], ...]) -> int:
    payload = _encode(parts)
    for counter in range(1 << 16):
        digest = hashlib.blake2b(
            payload + counter.to_bytes(2, "big") if counter else payload,
            digest_size=16,
            person=person,
        ).digest()
        value = int.from_bytes(digest, "big")
        if valid_id(value):
            return value
    raise AssertionError("no valid id in 65536 digests")  # pragma: no cover


def valid_id(value: int) -> bool:
    """An id the ledger accepts: 1 .. 2**128-2."""
    return 0 < value < ID_MAX


def _attempt(attempt: int) -> int:
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise TypeError("attempt must be an int")
    if not 0 <= attempt <= ATTEMPT_MAX:
        raise InvalidInput(f"attempt must be 0..{ATTEMPT_MAX}, got {attempt}")
    return attempt


def _leg(leg: Union[Leg, int]) -> int:
    if isinstance(leg, bool) or not isinstance(leg, int) or not 0 < int(leg) < 256:
        raise InvalidInput(f"leg must be a Leg or 1..255, got {leg!r}")
    return int(leg)


# ---------------------------------------------------------------- transfers


def transfer_id(
    ta_code: str,
    distributor_code: str,
    app_sheet_serial_no: str,
    leg: Union[Leg, int],
    attempt: int = 0,
) -> int:
    """The id of one leg of the confirmation of a distributor's order."""
    return _derive(
        _PERSON_TRANSFER,
        (
            "order",
            _text("ta_code", ta_code),
            _text("distributor_code", distributor_code),
            _text("app_sheet_serial_no", app_sheet_serial_no),
            _leg(leg),
            _attempt(attempt),
        ),
    )


def event_transfer_id(
    ta_code: str,
    kind: EventKind,
    fund_code: str,
    date: str,
    holder: HolderKey | None,
    leg: Union[Leg, int],
    attempt: int = 0,
) -> int:
    """The id of one leg of a TA event for ``holder`` (None: the fund's own
    leg, e.g. the MMF residual of the day)."""
    if not isinstance(kind, EventKind):
        raise TypeError(f"kind must be an EventKind, got {kind!r}")
    holder_parts: tuple[str, ...] = (
        ("-",)
        if holder is None
        else (
            "+",
            _text("ta_account_id", holder.ta_account_id),
            _text("distributor_code", holder.distributor_code),
            _text("transaction_account_id", holder.transaction_account_id, allow_empty=True),
        )
    )
    return _derive(
        _PERSON_TRANSFER,
        (
            "event",
            _text("ta_code", ta_code),
            kind.value,
            _text("fund_code", fund_code),
            _text("date", date),
            *holder_parts,
            _leg(leg),
            _attempt(attempt),
        ),
    )


def reversal_id(original_id: int, attempt: int = 0) -> int:
    """The id of the transfer that reverses ``original_id`` in a rollback."""
    is_int = isinstance(original_id, int) and not isinstance(original_id, bool)
    if not is_int or not valid_id(original_id):
        raise InvalidInput(f"not a transfer id: {original_id!r}")
    return _derive(_PERSON_TRANSFER, ("reversal", original_id, _attempt(attempt)))


# ---------------------------------------------------------------- accounts


@functools.lru_cache(maxsize=ACCOUNT_ID_CACHE_MAX, typed=True)
def holder_share_account_id(
    ta_code: str, fund_code: str, holder: HolderKey, share_class: str = ""
) -> int:
    """A holder's share account in one fund (and share class)."""
    return _derive(
        _PERSON_ACCOUNT,
        (
            AccountKind.HOLDER_SHARES.value,
            _text("ta_code", ta_code),
            _text("fund_code", fund_code),
            _text("share_class", share_class, allow_empty=True),
            _text("ta_account_id", holder.ta_account_id),
            _text("distributor_code", holder.distributor_code),
            _text("transaction_account_id", holder.transaction_account_id, allow_empty=True),
        ),
    )


@functools.lru_cache(maxsize=ACCOUNT_ID_CACHE_MAX, typed=True)
def issuance_account_id(ta_code: str, fund_code: str, share_class: str = "") -> int:
    """A fund's issuance account: its balance is the fund's total shares."""
    return _derive(
        _PERSON_ACCOUNT,
        (
            AccountKind.ISSUANCE.value,
            _text("ta_code", ta_code),
            _text("fund_code", fund_code),
            _text("share_class", share_class, allow_empty=True),
        ),
    )


@functools.lru_cache(maxsize=ACCOUNT_ID_CACHE_MAX, typed=True)
def distributor_settlement_account_id(ta_code: str, distributor_code: str) -> int:
    """A distributor's cash settlement account."""
    return _derive(
        _PERSON_ACCOUNT,
        (
            AccountKind.DISTRIBUTOR_SETTLEMENT.value,
            _text("ta_code", ta_code),
            _text("distributor_code", distributor_code),
        ),
    )


@functools.lru_cache(maxsize=ACCOUNT_ID_CACHE_MAX, typed=True)
def fund_cash_account_id(ta_code: str, fund_code: str, kind: AccountKind) -> int:
    """One of a fund's cash accounts: FUND_ASSETS, FEE, RESIDUAL, DIVIDEND_PAYABLE."""
    if kind not in _FUND_CASH_KINDS:
        raise InvalidInput(f"{kind!r} is not a fund cash account kind")
    return _derive(
        _PERSON_ACCOUNT,
        (kind.value, _text("ta_code", ta_code), _text("fund_code", fund_code)),
    )


_FUND_CASH_KINDS = frozenset(
    {AccountKind.FUND_ASSETS, AccountKind.FEE, AccountKind.RESIDUAL, AccountKind.DIVIDEND_PAYABLE}
)


def fund_assets_account_id(ta_code: str, fund_code: str) -> int:
    return fund_cash_account_id(ta_code, fund_code, AccountKind.FUND_ASSETS)


def fee_account_id(ta_code: str, fund_code: str) -> int:
    return fund_cash_account_id(ta_code, fund_code, AccountKind.FEE)


def residual_account_id(ta_code: str, fund_code: str) -> int:
    return fund_cash_account_id(ta_code, fund_code, AccountKind.RESIDUAL)


def dividend_payable_account_id(ta_code: str, fund_code: str) -> int:
    return fund_cash_account_id(ta_code, fund_code, AccountKind.DIVIDEND_PAYABLE)


# ---------------------------------------------------------------- content


def record_digest(record: Mapping[str, Union[str, int]]) -> bytes:
    """A 16-byte digest of a record's content, independent of field order:
    the same order key (distributor, AppSheetSerialNo) with another digest is
    a re-used key with different content; with the same digest, a re-send."""
    parts: list[Union[str, int]] = []
    for name in sorted(record):
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (
            isinstance(value, int) and not 0 <= value <= ID_MAX
        ):
            raise InvalidInput(f"field {name} has an unsupported value {value!r}")
        parts += [name, value]
    return hashlib.blake2b(_encode(tuple(parts)), digest_size=16, person=_PERSON_RECORD).digest()


# ---------------------------------------------------------------- serials

TA_SERIAL_NO_WIDTH = 20  # TASerialNO A20: 80 bits in upper-case hex
_PERSON_SERIAL = b"ta.serial.v1"


def ta_serial_no(ta_code: str, distributor_code: str, app_sheet_serial_no: str) -> str:
    """The TA's serial number for the confirmation of an order: a function of
    the order key only, so it is the same in every run and shard layout."""
    digest = hashlib.blake2b(
        _encode(
            (
                "order",
                _text("ta_code", ta_code),
                _text("distributor_code", distributor_code),
                _text("app_sheet_serial_no", app_sheet_serial_no),
            )
        ),
        digest_size=TA_SERIAL_NO_WIDTH // 2,
        person=_PERSON_SERIAL,
    ).digest()
    return digest.hex().upper()


def event_serial_no(
    ta_code: str, kind: EventKind, fund_code: str, date: str, holder: HolderKey
) -> str:
    """The TA's serial number of a TA event's row for one holder (06 file)."""
    if not isinstance(kind, EventKind):
        raise TypeError(f"kind must be an EventKind, got {kind!r}")
    digest = hashlib.blake2b(
        _encode(
            (
                "event",
                _text("ta_code", ta_code),
                kind.value,
                _text("fund_code", fund_code),
                _text("date", date),
                _text("ta_account_id", holder.ta_account_id),
                _text("distributor_code", holder.distributor_code),
                _text("transaction_account_id", holder.transaction_account_id, allow_empty=True),
            )
        ),
        digest_size=TA_SERIAL_NO_WIDTH // 2,
        person=_PERSON_SERIAL,
    ).digest()
    return digest.hex().upper()
