"""Order intake, validation, codes and fund terms (ta.orders, ta.codes, ta.fund).

Intake must make an identical re-send a no-op and reject a file that re-uses
an order key with different content; validation must answer every order with
one stable return code, the same one whatever other failures also apply.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ta import confirm, orders
from ta.codes import (
    BusinessCode,
    FileType,
    FundStatus,
    ReturnCode,
    confirmation_code,
    first_failure,
)
from ta.errors import FileError, FileRejected, InvalidInput
from ta.files import STANDARD_FIELDS, DataFile, read_data_file, write_data_file
from ta.fund import FundTerms
from ta.ids import record_digest
from ta.money import cents, nav, rate

ta_settings = settings(max_examples=200, deadline=None)
T = "20261126"
FIELDS = STANDARD_FIELDS[FileType.ORDER_APPLICATIONS]
FUND = FundTerms(
    fund_code="000001",
    status=FundStatus.OPEN,
    nav=nav("1.2345"),
    purchase_fee_rate=rate("1.5%"),
    redemption_fee_schedule=((0, rate("1.5%")), (7, rate("0.5%")), (730, Fraction(0))),
    min_purchase=cents("10.00"),
)


def make_order(**values) -> dict:
    record = {name: 0 if name in ("ApplicationAmount", "ApplicationVol",
                                  "DiscountRateOfCommission") else "" for name in FIELDS}  # fmt: skip
    record.update(
        AppSheetSerialNo="S1", TransactionDate=T, TransactionTime="093000", FundCode="000001",
        ShareClass="A", BusinessCode="022", DistributorCode="ZS001",
        TransactionAccountID="TX1", TAAccountID="010000000001", CurrencyType="156",
        ApplicationAmount=cents("1,000.00"),
    )  # fmt: skip
    record.update(values)
    return record


def orders_file(*records) -> DataFile:
    return DataFile("ZS001", "01", T, FileType.ORDER_APPLICATIONS, FIELDS, tuple(records))


def test_identical_resend_is_a_no_op() -> None:
    """Goal: a record whose key and content were already imported (earlier
    file or same file) is reported as re-sent and not taken again."""
    first = orders.take_new(orders_file(make_order(), make_order()), {})
    assert len(first.new) == 1 and first.resent == (("ZS001", "S1"),)
    again = orders.take_new(orders_file(make_order(AppSheetSerialNo="S2"), make_order()), first.digests)
    assert [r["AppSheetSerialNo"] for r in again.new] == ["S2"]
    assert again.resent == (("ZS001", "S1"),)
    assert first.digests[("ZS001", "S1")] == record_digest(make_order())


def test_reused_key_with_other_content_rejects_the_file() -> None:
    """Goal: same key, different content rejects the whole file (F016) at
    the offending record's line, against earlier files or the same file."""
    f = orders_file(make_order(), make_order(ApplicationAmount=cents("1,000.01")))
    with pytest.raises(FileRejected) as info:
        orders.take_new(f, {})
    assert info.value.code is FileError.ORDER_KEY_REUSED
    raw_lines = write_data_file(f).split(b"\r\n")
    assert raw_lines[info.value.line - 1].startswith(b"S1 ")
    assert orders.record_line(f, 1) == info.value.line
    with pytest.raises(FileRejected) as info:
        orders.take_new(orders_file(make_order()), {("ZS001", "S1"): b"\x00" * 16})
    assert info.value.code is FileError.ORDER_KEY_REUSED


def test_same_serial_at_another_distributor_is_another_order() -> None:
    """Goal: AppSheetSerialNo is unique per distributor only."""
    intake = orders.take_new(orders_file(make_order(), make_order(DistributorCode="ZS002")), {})
    assert len(intake.new) == 2


def test_missing_order_key_rejects_the_file() -> None:
    """Goal: an order without AppSheetSerialNo cannot be answered: F017."""
    with pytest.raises(FileRejected) as info:
        orders.take_new(orders_file(make_order(AppSheetSerialNo="")), {})
    assert info.value.code is FileError.MISSING_ORDER_KEY
    no_key = DataFile("ZS001", "01", T, FileType.ORDER_APPLICATIONS, ("FundCode",), ({"FundCode": "1"},))
    with pytest.raises(FileRejected) as info:
        orders.take_new(no_key, {})
    assert info.value.code is FileError.MISSING_ORDER_KEY


def test_distributor_defaults_to_file_creator() -> None:
    """Goal: without a DistributorCode field, the creator is the distributor."""
    f = DataFile("ZS009", "01", T, FileType.ORDER_APPLICATIONS, ("AppSheetSerialNo",),
                 ({"AppSheetSerialNo": "S1"},))  # fmt: skip
    assert orders.order_key(f, f.records[0]) == ("ZS009", "S1")


@ta_settings
@given(st.permutations([make_order(AppSheetSerialNo=f"S{i}", TransactionTime=t)
                        for i, t in enumerate(["093000", "093000", "100000", "145959"])]))  # fmt: skip
def test_processing_order_is_fixed(records) -> None:
    """Goal: (TransactionDate, TransactionTime, AppSheetSerialNo) order, the
    same for any input order."""
    assert [r["AppSheetSerialNo"] for r in orders.processing_order(records)] == ["S0", "S1", "S2", "S3"]


VALIDATION = [
    ("ok purchase", make_order(), True, 0, ReturnCode.SUCCESS),
    ("ok redemption", make_order(BusinessCode="024", ApplicationVol=500), True, 500, ReturnCode.SUCCESS),
    ("ok 029", make_order(BusinessCode="029", DefDividendMethod="1"), True, 0, ReturnCode.SUCCESS),
    ("unknown business code", make_order(BusinessCode="099"), True, 0, ReturnCode.BUSINESS_CODE_INVALID),
    ("confirmation code sent", make_order(BusinessCode="122"), True, 0, ReturnCode.BUSINESS_CODE_INVALID),
    ("no fund code", make_order(FundCode=""), True, 0, ReturnCode.MISSING_FIELD),
    ("other day", make_order(TransactionDate="20261125"), True, 0, ReturnCode.DATE_INVALID),
    ("after cut-off", make_order(TransactionTime="150001"), True, 0, ReturnCode.TIME_AFTER_CUTOFF),
    ("dollars", make_order(CurrencyType="840"), True, 0, ReturnCode.CURRENCY_INVALID),
    ("bad method", make_order(BusinessCode="029", DefDividendMethod="2"), True, 0,
     ReturnCode.DIVIDEND_METHOD_INVALID),
    ("discount over 1", make_order(DiscountRateOfCommission=10001), True, 0, ReturnCode.DISCOUNT_INVALID),
    ("unknown account", make_order(), False, 0, ReturnCode.ACCOUNT_UNKNOWN),
    ("zero amount", make_order(ApplicationAmount=0), True, 0, ReturnCode.AMOUNT_INVALID),
    ("below minimum", make_order(ApplicationAmount=999), True, 0, ReturnCode.BELOW_MINIMUM),
    ("zero volume", make_order(BusinessCode="024", ApplicationVol=0), True, 0, ReturnCode.VOLUME_INVALID),
    ("too many shares", make_order(BusinessCode="024", ApplicationVol=cents("3,500.00")), True,
     cents("3,000.00"), ReturnCode.INSUFFICIENT_SHARES),
    ("precedence: malformed before account before amount",
     make_order(TransactionDate="20261125", ApplicationAmount=0), False, 0, ReturnCode.DATE_INVALID),
    ("precedence: account before amount", make_order(ApplicationAmount=0), False, 0,
     ReturnCode.ACCOUNT_UNKNOWN),
]  # fmt: skip


@pytest.mark.parametrize("record, known, available, expected", [v[1:] for v in VALIDATION],
                         ids=[v[0] for v in VALIDATION])  # fmt: skip
def test_validate_order(record, known, available, expected) -> None:
    """Goal: each failure has its code; when several apply the first in
    precedence order is answered."""
    assert orders.validate_order(record, T, FUND, known, available) is expected


def test_validate_order_against_fund_state() -> None:
    """Goal: unknown or closed funds and offer-period rules are answered."""
    assert orders.validate_order(make_order(), T, None, True, 0) is ReturnCode.FUND_UNKNOWN
    closed = FundTerms(**{**FUND.__dict__, "status": FundStatus.SUSPENDED})
    assert orders.validate_order(make_order(), T, closed, True, 0) is ReturnCode.FUND_CLOSED
    offer = FundTerms(**{**FUND.__dict__, "status": FundStatus.OFFER})
    assert orders.validate_order(make_order(BusinessCode="020"), T, offer, True, 0).ok
    assert orders.validate_order(make_order(BusinessCode="020"), T, FUND, True, 0) is (
        ReturnCode.NOT_IN_OFFER_PERIOD)  # fmt: skip
    dear = FundTerms(**{**FUND.__dict__, "nav": 9_999_999, "min_purchase": 1})
    assert orders.validate_order(make_order(ApplicationAmount=1), T, dear, True, 0) is (
        ReturnCode.SHARES_ROUND_TO_ZERO)  # fmt: skip


def test_fee_discount() -> None:
    """Goal: N5.4 discount 0.4000 is 40% of the fee; absent or 0 is the full fee."""
    assert orders.fee_discount(make_order(DiscountRateOfCommission=4000)) == Fraction(2, 5)
    assert orders.fee_discount(make_order()) == 1
    assert orders.fee_discount({}) == 1


def test_fund_terms() -> None:
    """Goal: the redemption fee follows the schedule by holding days, and the
    fund keeps all of a short holding's fee."""
    assert [FUND.redemption_fee_rate(d) for d in (0, 6, 7, 729, 730, 5000)] == [
        rate("1.5%"), rate("1.5%"), rate("0.5%"), rate("0.5%"), 0, 0]  # fmt: skip
    assert FUND.fund_fee_share(6) == 1 and FUND.fund_fee_share(7) == Fraction(1, 4)
    with pytest.raises(InvalidInput):
        FundTerms(**{**FUND.__dict__, "redemption_fee_schedule": ((1, rate("1%")),)})
    with pytest.raises(InvalidInput):
        FundTerms(**{**FUND.__dict__, "redemption_fee_schedule": ((0, rate("1%")), (0, 0))})
    with pytest.raises(InvalidInput):
        FundTerms(**{**FUND.__dict__, "fund_fee_share_min": Fraction(1, 5)})


def test_business_codes() -> None:
    """Goal: 0xx confirms as 1xx; TA events are their own confirmations."""
    pairs = {"001": "101", "020": "120", "022": "122", "024": "124", "029": "129",
             "143": "143", "144": "144", "145": "145"}  # fmt: skip
    for application, confirmation in pairs.items():
        assert confirmation_code(BusinessCode(application)).value == confirmation
    with pytest.raises(InvalidInput):
        confirmation_code(BusinessCode.PURCHASE_CFM)
    with pytest.raises(InvalidInput):
        BusinessCode.parse("999")


def test_fund_status_allows() -> None:
    """Goal: each status allows exactly its business."""
    assert FundStatus.OPEN.allows(BusinessCode.PURCHASE) and FundStatus.OPEN.allows(BusinessCode.REDEMPTION)
    assert not FundStatus.OPEN.allows(BusinessCode.SUBSCRIPTION)
    assert FundStatus.PURCHASE_SUSPENDED.allows(BusinessCode.REDEMPTION)
    assert not FundStatus.PURCHASE_SUSPENDED.allows(BusinessCode.PURCHASE)
    assert not FundStatus.CLOSED.allows(BusinessCode.DIVIDEND_METHOD)


# The published codes: changing one breaks distributors' parsers.
STABLE_RETURN_CODES = {
    "0000": "SUCCESS", "1001": "MISSING_FIELD", "1002": "BUSINESS_CODE_INVALID",
    "1003": "DATE_INVALID", "1004": "TIME_AFTER_CUTOFF", "1005": "CURRENCY_INVALID",
    "1006": "DIVIDEND_METHOD_INVALID", "1007": "DISCOUNT_INVALID", "2001": "ACCOUNT_UNKNOWN",
    "2002": "ACCOUNT_EXISTS", "2003": "TRANSACTION_ACCOUNT_UNKNOWN", "2004": "ACCOUNT_FROZEN",
    "2005": "DISTRIBUTOR_UNKNOWN", "2006": "INVESTOR_INFO_INVALID", "3001": "FUND_UNKNOWN",
    "3002": "FUND_CLOSED", "3003": "NOT_IN_OFFER_PERIOD", "3004": "NAV_MISSING",
    "4001": "AMOUNT_INVALID", "4002": "VOLUME_INVALID", "4003": "INSUFFICIENT_SHARES",
    "4004": "BELOW_MINIMUM", "4005": "SHARES_ROUND_TO_ZERO", "5001": "DUPLICATE_ORDER_DIFFERENT",
}  # fmt: skip
STABLE_FILE_ERRORS = {f"F{n:03d}": name for n, name in enumerate([
    "BAD_ENCODING", "BAD_LINE_END", "BAD_HEADER", "BAD_DATE", "UNKNOWN_FIELD",
    "DUPLICATE_FIELD", "BAD_FIELD_COUNT", "BAD_RECORD_COUNT", "BAD_RECORD_LENGTH",
    "BAD_NUMBER", "BAD_TRAILER", "NAME_MISMATCH", "BAD_FILE_NAME", "DUPLICATE_ENTRY",
    "BAD_TEXT", "ORDER_KEY_REUSED", "MISSING_ORDER_KEY"], start=1)}  # fmt: skip


def test_codes_are_stable_and_fit_their_fields() -> None:
    """Goal: return and file-error codes never change meaning; each return
    code is 4 digits and its reason fits ErrorDetail (60 GB18030 bytes)."""
    assert {rc.code: rc.name for rc in ReturnCode} == STABLE_RETURN_CODES
    assert {fe.value: fe.name for fe in FileError} == STABLE_FILE_ERRORS
    for rc in ReturnCode:
        assert len(rc.code) == 4 and rc.code.isdigit()
        assert 0 < len(rc.reason.encode("gb18030")) <= 60
        assert ReturnCode.from_code(rc.code) is rc
    assert first_failure(set()) is ReturnCode.SUCCESS


@ta_settings
@given(st.sampled_from(list(ReturnCode)).filter(lambda rc: not rc.ok),
       st.sampled_from(["020", "022", "024", "029", "999"]))  # fmt: skip
def test_failure_confirmations_are_writable(rc, code) -> None:
    """Goal: every failure row (even for an unknown business code) fits the
    standard 04 layout and reads back with its code and reason."""
    row = confirm.failure_confirmation(make_order(BusinessCode=code), rc, ta_code="01",
                                       cfm_date=T, distributor_code="ZS001")  # fmt: skip
    f = DataFile("01", "ZS001", T, FileType.ORDER_CONFIRMATIONS,
                 STANDARD_FIELDS[FileType.ORDER_CONFIRMATIONS], (row,))  # fmt: skip
    back = read_data_file(write_data_file(f)).records[0]
    assert (back["ReturnCode"], back["ErrorDetail"]) == (rc.code, rc.reason)
    assert back["BusinessCode"] == ("1" + code[1:] if code != "999" else "999")
    assert back["ConfirmedAmount"] == back["ConfirmedVol"] == back["Charge"] == 0
