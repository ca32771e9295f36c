"""The worked day of TA.md as inputs for the clearing service: reference data
(fund 000001, NAVs, the dividend, the BP0 register as 144 adjustments on the
day before) and the distributor's 01/03 files with their index."""

from __future__ import annotations

from pathlib import Path

from ta.codes import BusinessCode, FileType
from ta.files import STANDARD_FIELDS, DataFile, IndexFile, write_data_file, write_index_file
from ta.ids import HolderKey
from ta.money import cents

TA = "01"
DIST = "ZS001"
T0 = "20261125"  # the day before: the opening register is booked (144)
T = "20261126"
A = HolderKey("010000000001", DIST, "TX0000000000000A")
B = HolderKey("010000000002", DIST, "TX0000000000000B")
C = HolderKey("010000000003", DIST, "TX0000000000000C")

REFERENCE = {
    "ta_code": TA,
    "effective_date": T0,
    "distributors": [{"code": DIST}],
    "funds": [{
        "code": "000001", "status": "0", "rounding": "HALF_UP", "purchase_fee": "1.5%",
        "redemption_fees": [[0, "1.5%"], [7, "0.5%"]], "fund_fee_share_min": "25%",
        "nav": {T0: "1.2000", T: "1.2345"},
    }],
    "dividends": [{"fund": "000001", "registration_date": T, "xr_date": T, "per_unit": "0.05"}],
    "holders": [
        {"ta_account": A.ta_account_id, "distributor": DIST, "transaction_account": A.transaction_account_id,
         "opened": "20250101", "method": "0"},
        {"ta_account": B.ta_account_id, "distributor": DIST, "transaction_account": B.transaction_account_id,
         "opened": "20250101", "method": "1"},
    ],
    "adjustments": [
        {"id": "OPEN-A", "date": T0, "fund": "000001", "ta_account": A.ta_account_id, "distributor": DIST,
         "transaction_account": A.transaction_account_id, "code": "144", "shares": "10000.00"},
        {"id": "OPEN-B", "date": T0, "fund": "000001", "ta_account": B.ta_account_id, "distributor": DIST,
         "transaction_account": B.transaction_account_id, "code": "144", "shares": "5000.00"},
    ],
}


def order(serial: str, time: str, who: HolderKey, code: BusinessCode, **values) -> dict:
    fields = STANDARD_FIELDS[FileType.ORDER_APPLICATIONS]
    record = {name: 0 if name in ("ApplicationAmount", "ApplicationVol",
                                  "DiscountRateOfCommission") else "" for name in fields}  # fmt: skip
    record.update(
        AppSheetSerialNo=serial, TransactionDate=T, TransactionTime=time, FundCode="000001",
        ShareClass="A", BusinessCode=code.value, DistributorCode=DIST,
        TransactionAccountID=who.transaction_account_id, TAAccountID=who.ta_account_id,
        CurrencyType="156",
    )  # fmt: skip
    record.update(values)
    return record


ORDERS = [
    order("T1126000001", "093000", A, BusinessCode.PURCHASE, ApplicationAmount=cents("10,000.00")),
    order("T1126000002", "100000", B, BusinessCode.REDEMPTION, ApplicationVol=cents("2,000.00")),
    order("T1126000003", "110000", C, BusinessCode.PURCHASE, ApplicationAmount=cents("1,000.00")),
    order("T1126000004", "133000", B, BusinessCode.REDEMPTION, ApplicationVol=cents("3,500.00")),
    order("T1126000005", "140000", A, BusinessCode.DIVIDEND_METHOD, DefDividendMethod="1"),
]
ACCOUNT_APPLICATION = {
    "AppSheetSerialNo": "T1126A00001", "TransactionDate": T, "TransactionTime": "090000",
    "BusinessCode": "001", "DistributorCode": DIST,
    "TransactionAccountID": C.transaction_account_id, "TAAccountID": C.ta_account_id,
    "IndividualOrInstitution": "1", "InvestorName": "陈小明", "CertificateType": "0",
    "CertificateNo": "110101199001011234",
}  # fmt: skip


def write_inbox(directory: Path, order_records=ORDERS) -> dict[str, bytes]:
    """The distributor's 01 and 03 files and its index, written to ``directory``."""
    files = [
        DataFile(DIST, TA, T, FileType.ACCOUNT_APPLICATIONS,
                 STANDARD_FIELDS[FileType.ACCOUNT_APPLICATIONS], (ACCOUNT_APPLICATION,)),
        DataFile(DIST, TA, T, FileType.ORDER_APPLICATIONS,
                 STANDARD_FIELDS[FileType.ORDER_APPLICATIONS], tuple(order_records)),
    ]  # fmt: skip
    out = {f.name: write_data_file(f) for f in files}
    index = IndexFile(DIST, TA, T, tuple(out))
    out[index.name] = write_index_file(index)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in out.items():
        (directory / name).write_bytes(data)
    return out


def resent_order_file() -> tuple[str, bytes]:
    """Order 6 of TA.md: a re-sent copy of order 1 (a file of its own)."""
    f = DataFile(DIST, TA, T, FileType.ORDER_APPLICATIONS,
                 STANDARD_FIELDS[FileType.ORDER_APPLICATIONS], (ORDERS[0],))
    return f.name, write_data_file(f)
