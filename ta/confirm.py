"""Rows of the TA's outgoing files, built from orders and arithmetic results.

Each function returns one record in the project's standard layout
(``ta.files.STANDARD_FIELDS``) for its file type, ready for
``ta.files.write_data_file``. Every value is a function of its inputs only,
so a re-run or a different shard layout gives byte-identical files.

- 04 ``order_confirmation`` (+ ``purchase_/redemption_/dividend_method_/
  failure_confirmation``): ConfirmedAmount is the gross amount (a purchase's
  money incl. fee, a redemption's shares * NAV before the fee), Charge the
  fee, BusinessCode the confirmation code (022 -> 122).
- 02 ``account_confirmation``: the answer to a 01 account application.
- 05 ``balance_row``, 06 ``dividend_row``, 07 ``fund_status_row``.

AgencyFee is written as 0: the project does not yet split a distributor's
commission out of the fee.
"""

from __future__ import annotations

from ta.arith import Dividend, Purchase, Redemption
from ta.codes import BusinessCode, FileType, FundStatus, ReturnCode, confirmation_code
from ta.files import FIELD_DICTIONARY, STANDARD_FIELDS, Record
from ta.fund import FundTerms
from ta.ids import EventKind, HolderKey, event_serial_no, ta_serial_no

_ORDER_ECHO = (
    "AppSheetSerialNo",
    "TransactionDate",
    "FundCode",
    "ShareClass",
    "DistributorCode",
    "TransactionAccountID",
    "TAAccountID",
    "ApplicationAmount",
    "ApplicationVol",
)


def _blank(name: str) -> str | int:
    return 0 if FIELD_DICTIONARY[name].kind == "N" else ""


def _confirmed_code(order: Record) -> str:
    text = str(order.get("BusinessCode", ""))
    try:
        return confirmation_code(BusinessCode(text)).value
    except ValueError:
        return text  # an unknown code is echoed in its failure confirmation


def order_confirmation(
    order: Record,
    *,
    ta_code: str,
    cfm_date: str,
    distributor_code: str,
    return_code: ReturnCode,
    confirmed_amount: int = 0,
    confirmed_vol: int = 0,
    charge: int = 0,
    nav: int = 0,
) -> Record:
    """One 04 row answering ``order`` (a 03 record)."""
    fields = STANDARD_FIELDS[FileType.ORDER_CONFIRMATIONS]
    row: dict[str, str | int] = {name: _blank(name) for name in fields}
    for name in _ORDER_ECHO:
        if name in order:
            row[name] = order[name]
    row["DistributorCode"] = distributor_code
    row["TransactionCfmDate"] = cfm_date
    row["BusinessCode"] = _confirmed_code(order)
    row["ConfirmedAmount"] = confirmed_amount
    row["ConfirmedVol"] = confirmed_vol
    row["Charge"] = charge
    row["AgencyFee"] = 0
    row["NAV"] = nav
    row["ReturnCode"] = return_code.code
    row["ErrorDetail"] = "" if return_code.ok else return_code.reason
    row["TASerialNO"] = ta_serial_no(ta_code, distributor_code, str(order["AppSheetSerialNo"]))
    return row


def purchase_confirmation(
    order: Record, result: Purchase, *, ta_code: str, cfm_date: str, distributor_code: str
) -> Record:
    """A 122 (or 120) success row: money incl. fee, shares, fee, NAV."""
    return order_confirmation(
        order,
        ta_code=ta_code,
        cfm_date=cfm_date,
        distributor_code=distributor_code,
        return_code=ReturnCode.SUCCESS,
        confirmed_amount=result.amount,
        confirmed_vol=result.shares,
        charge=result.fee,
        nav=result.nav,
    )


def redemption_confirmation(
    order: Record, result: Redemption, *, ta_code: str, cfm_date: str, distributor_code: str
) -> Record:
    """A 124 success row: gross (shares * NAV before fee), shares, fee, NAV."""
    return order_confirmation(
        order,
        ta_code=ta_code,
        cfm_date=cfm_date,
        distributor_code=distributor_code,
        return_code=ReturnCode.SUCCESS,
        confirmed_amount=result.gross,
        confirmed_vol=result.shares,
        charge=result.fee,
        nav=result.nav,
    )


def dividend_method_confirmation(
    order: Record, *, ta_code: str, cfm_date: str, distributor_code: str
) -> Record:
    """A 129 success row (no money, no shares)."""
    return order_confirmation(
        order,
        ta_code=ta_code,
        cfm_date=cfm_date,
        distributor_code=distributor_code,
        return_code=ReturnCode.SUCCESS,
    )


def failure_confirmation(
    order: Record, return_code: ReturnCode, *, ta_code: str, cfm_date: str, distributor_code: str
) -> Record:
    """A failure row: nothing confirmed, the code and its reason."""
    assert not return_code.ok, "a failure confirmation needs a failure code"
    return order_confirmation(
        order,
        ta_code=ta_code,
        cfm_date=cfm_date,
        distributor_code=distributor_code,
        return_code=return_code,
    )


def account_confirmation(
    application: Record,
    return_code: ReturnCode,
    *,
    ta_code: str,
    cfm_date: str,
    distributor_code: str,
    ta_account_id: str = "",
) -> Record:
    """One 02 row answering a 01 application; ``ta_account_id`` is the TA
    account opened (or the one the application named)."""
    serial = str(application["AppSheetSerialNo"])
    return {
        "AppSheetSerialNo": serial,
        "TransactionDate": application.get("TransactionDate", ""),
        "TransactionCfmDate": cfm_date,
        "BusinessCode": _confirmed_code(application),
        "DistributorCode": distributor_code,
        "TransactionAccountID": application.get("TransactionAccountID", ""),
        "TAAccountID": ta_account_id or application.get("TAAccountID", ""),
        "ReturnCode": return_code.code,
        "ErrorDetail": "" if return_code.ok else return_code.reason,
        "TASerialNO": ta_serial_no(ta_code, distributor_code, serial),
    }


def balance_row(
    fund: FundTerms, holder: HolderKey, *, cfm_date: str, available: int, frozen: int = 0
) -> Record:
    """One 05 row: a holder's shares in a fund at the close of the day."""
    return {
        "TransactionCfmDate": cfm_date,
        "FundCode": fund.fund_code,
        "ShareClass": fund.share_class,
        "DistributorCode": holder.distributor_code,
        "TransactionAccountID": holder.transaction_account_id,
        "TAAccountID": holder.ta_account_id,
        "AvailableVol": available,
        "TotalVolOfDistributorInTA": available + frozen,
        "TotalFrozenVol": frozen,
    }


def dividend_row(
    fund: FundTerms,
    holder: HolderKey,
    result: Dividend,
    *,
    ta_code: str,
    cfm_date: str,
    registration_date: str,
    xr_date: str,
    per_unit_dividend: int,
    ex_nav: int,
) -> Record:
    """One 06 row (business code 143) for one holder's dividend."""
    return {
        "TransactionCfmDate": cfm_date,
        "FundCode": fund.fund_code,
        "ShareClass": fund.share_class,
        "BusinessCode": BusinessCode.DIVIDEND.value,
        "DistributorCode": holder.distributor_code,
        "TransactionAccountID": holder.transaction_account_id,
        "TAAccountID": holder.ta_account_id,
        "RegistrationDate": registration_date,
        "XRDate": xr_date,
        "DividendPerUnit": per_unit_dividend,
        "BasisforCalculatingDividend": result.entitled_shares,
        "DividendAmount": result.cash,
        "VolOfDividendforReinvestment": result.reinvested_shares,
        "DefDividendMethod": result.method.value,
        "NAV": ex_nav,
        "TASerialNO": event_serial_no(
            ta_code, EventKind.DIVIDEND, fund.fund_code, registration_date, holder
        ),
    }


def fund_status_row(
    fund: FundTerms, *, cfm_date: str, total_fund_vol: int, fund_income: int = 0
) -> Record:
    """The 07 row of a fund: NAV, total shares (= issuance balance), status."""
    status: FundStatus = fund.status
    return {
        "FundCode": fund.fund_code,
        "TransactionCfmDate": cfm_date,
        "NAV": fund.nav,
        "TotalFundVol": total_fund_vol,
        "FundStatus": status.value,
        "FundIncome": fund_income,
        "UpdateDate": cfm_date,
    }
