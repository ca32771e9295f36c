"""Applications (01 and 03 records): keys, re-sends, processing order, validation.

IMPORT: every application is identified by its order key (distributor code,
AppSheetSerialNo). ``take_new`` splits a read file into the records new to
the day and the identical re-sends (no-ops), and rejects the WHOLE file when a
key comes back with different content (``FileError.ORDER_KEY_REUSED``). The
digests it returns are what the import step must remember.

VALIDATE: ``validate_order`` answers one order with a ``ReturnCode``: every
bad record becomes a failure confirmation, never a silent drop. It is pure:
the clearing service passes in what it knows (fund terms, whether the account
exists, the shares available at this point of the processing order).

CONFIRM: ``processing_order`` is the fixed order of the day:
(TransactionDate, TransactionTime, AppSheetSerialNo), then distributor code
(AppSheetSerialNo is unique per distributor only).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Mapping

from ta.arith import PAR_NAV, purchase
from ta.codes import BusinessCode, DividendMethod, ReturnCode, first_failure
from ta.errors import FileError, FileRejected
from ta.files import DataFile, Record
from ta.fund import FundTerms
from ta.ids import record_digest
from ta.money import RATE_E4_SCALE

OrderKey = tuple[str, str]  # (distributor code, AppSheetSerialNo)

CUTOFF_TIME = "150000"  # orders of T are taken until 15:00:00
CURRENCIES = frozenset({"156"})  # CNY, the only currency cleared

# Header lines before the first field name: magic .. field count.
_LINES_BEFORE_FIELDS = 10


def record_line(data_file: DataFile, index: int) -> int:
    """The 1-based line number of record ``index`` (0-based) in the file."""
    return _LINES_BEFORE_FIELDS + len(data_file.fields) + 1 + index + 1


def order_key(data_file: DataFile, record: Record) -> OrderKey:
    """(distributor, AppSheetSerialNo); the distributor defaults to the
    file's creator when the file does not carry DistributorCode."""
    distributor = record.get("DistributorCode") or data_file.creator
    return str(distributor), str(record.get("AppSheetSerialNo", ""))


@dataclass(frozen=True)
class Intake:
    """The result of importing one application file."""

    new: tuple[Record, ...]  # first sightings, in file order
    resent: tuple[OrderKey, ...]  # identical re-sends: no-ops
    digests: dict[OrderKey, bytes]  # new keys -> content digest, to remember


def take_new(data_file: DataFile, known: Mapping[OrderKey, bytes]) -> Intake:
    """Split ``data_file`` against the keys already imported (``known``:
    key -> ``ta.ids.record_digest``). Raises FileRejected for a key re-used
    with different content (against ``known`` or earlier in the same file),
    or for a missing/blank AppSheetSerialNo."""
    if "AppSheetSerialNo" not in data_file.fields:
        raise FileRejected(
            FileError.MISSING_ORDER_KEY, "the file does not declare AppSheetSerialNo"
        )
    seen: dict[OrderKey, bytes] = {}
    new: list[Record] = []
    resent: list[OrderKey] = []
    for index, record in enumerate(data_file.records):
        key = order_key(data_file, record)
        line = record_line(data_file, index)
        if not key[1]:
            raise FileRejected(FileError.MISSING_ORDER_KEY, "blank AppSheetSerialNo", line)
        digest = record_digest(record)
        earlier = known.get(key, seen.get(key))
        if earlier is None:
            seen[key] = digest
            new.append(record)
        elif earlier == digest:
            resent.append(key)
        else:
            raise FileRejected(
                FileError.ORDER_KEY_REUSED,
                f"order {key[0]}/{key[1]} was already received with other content",
                line,
            )
    return Intake(tuple(new), tuple(resent), seen)


def processing_order(records: Iterable[Record]) -> list[Record]:
    """Records sorted in the day's fixed processing order."""
    return sorted(
        records,
        key=lambda r: (
            str(r.get("TransactionDate", "")),
            str(r.get("TransactionTime", "")),
            str(r.get("AppSheetSerialNo", "")),
            str(r.get("DistributorCode", "")),
        ),
    )


def fee_discount(record: Record) -> Fraction:
    """DiscountRateOfCommission (N5.4) as a multiplier of the fee. Absent or
    zero-filled means "not given": the full fee (a waiver is a fund term)."""
    value = record.get("DiscountRateOfCommission", 0)
    assert isinstance(value, int)
    return Fraction(value, RATE_E4_SCALE) if value else Fraction(1)


_REQUIRED: Mapping[BusinessCode, tuple[str, ...]] = {
    BusinessCode.SUBSCRIPTION: ("FundCode", "TAAccountID", "ApplicationAmount"),
    BusinessCode.PURCHASE: ("FundCode", "TAAccountID", "ApplicationAmount"),
    BusinessCode.REDEMPTION: ("FundCode", "TAAccountID", "ApplicationVol"),
    BusinessCode.DIVIDEND_METHOD: ("FundCode", "TAAccountID", "DefDividendMethod"),
}
ORDER_CODES = frozenset(_REQUIRED)


def validate_order(
    record: Record,
    business_date: str,
    fund: FundTerms | None,
    account_known: bool,
    available_shares: int,
) -> ReturnCode:
    """The return code of one 03 order (SUCCESS if it can be confirmed).

    ``fund`` is None when the fund code is unknown; ``available_shares`` is
    the holder's available shares at this point of the processing order.
    When several failures apply the first in precedence order is answered.
    """
    failures: set[ReturnCode] = set()
    try:
        code = BusinessCode(str(record.get("BusinessCode", "")))
    except ValueError:
        return ReturnCode.BUSINESS_CODE_INVALID
    if code not in ORDER_CODES:
        return ReturnCode.BUSINESS_CODE_INVALID
    if any(record.get(name, "") == "" for name in _REQUIRED[code]):
        failures.add(ReturnCode.MISSING_FIELD)
    if record.get("TransactionDate") != business_date:
        failures.add(ReturnCode.DATE_INVALID)
    if str(record.get("TransactionTime", "")) > CUTOFF_TIME:
        failures.add(ReturnCode.TIME_AFTER_CUTOFF)
    currency = record.get("CurrencyType", "")
    if currency and currency not in CURRENCIES:
        failures.add(ReturnCode.CURRENCY_INVALID)
    if not account_known:
        failures.add(ReturnCode.ACCOUNT_UNKNOWN)
    if fund is None:
        failures.add(ReturnCode.FUND_UNKNOWN)
    elif not fund.status.allows(code):
        failures.add(
            ReturnCode.NOT_IN_OFFER_PERIOD
            if code is BusinessCode.SUBSCRIPTION
            else ReturnCode.FUND_CLOSED
        )
    if code in (BusinessCode.SUBSCRIPTION, BusinessCode.PURCHASE):
        amount = record.get("ApplicationAmount", 0)
        discount = record.get("DiscountRateOfCommission", 0)
        discount_ok = isinstance(discount, int) and discount <= RATE_E4_SCALE
        if not discount_ok:
            failures.add(ReturnCode.DISCOUNT_INVALID)
        if not isinstance(amount, int) or amount <= 0:
            failures.add(ReturnCode.AMOUNT_INVALID)
        elif fund is not None and amount < fund.min_purchase:
            failures.add(ReturnCode.BELOW_MINIMUM)
        elif fund is not None and discount_ok:
            nav = fund.nav if code is BusinessCode.PURCHASE else PAR_NAV
            result = purchase(
                amount, fund.purchase_fee_rate, fee_discount(record), nav, fund.rounding
            )
            if result.shares == 0:
                failures.add(ReturnCode.SHARES_ROUND_TO_ZERO)
    elif code is BusinessCode.REDEMPTION:
        volume = record.get("ApplicationVol", 0)
        if not isinstance(volume, int) or volume <= 0:
            failures.add(ReturnCode.VOLUME_INVALID)
        elif fund is not None and volume < fund.min_redemption:
            failures.add(ReturnCode.BELOW_MINIMUM)
        elif volume > available_shares:
            failures.add(ReturnCode.INSUFFICIENT_SHARES)
    else:
        method = record.get("DefDividendMethod", "")
        if method not in {m.value for m in DividendMethod}:
            failures.add(ReturnCode.DIVIDEND_METHOD_INVALID)
    return first_failure(failures)
