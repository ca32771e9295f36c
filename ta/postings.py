"""The booking plan: which ledger transfers each TA event makes.

Pure: this module computes ``Posting`` values (id, accounts, amount, ledger,
code, pending kind); the clearing service turns each into a ledger transfer
and submits a confirmation's postings as ONE linked (all-or-nothing) chain.
It imports nothing of the ledger: the fields mirror the ledger's transfer
(debit/credit account ids, amount, ledger, code, pending id, flags).

Ledgers::

    CASH_LEDGER (156, CNY)            distributor settlement, fund assets, fee,
                                      residual, dividend payable accounts
    share_ledger(fund) = 1_000_000    the fund's issuance account and every
                         + fund code  holder's share account (6-digit codes)

Normal sides (balance = normal side - other side)::

    holder shares      credit  never negative (debits must not exceed credits)
    issuance           debit   = the fund's total shares
    fund assets        credit  money of the fund
    fee                credit  fees for the manager / distributors
    residual           credit  rounding residuals (may go either way)
    dividend payable   credit  cash dividends owed to holders
    settlement         debit   money due from a distributor (net of payouts)

Legs (``ta.ids.Leg``) per event; a zero amount leg is left out::

    purchase 020/022     NET      settlement -> fund assets      net
                         FEE      settlement -> fee              fee
                         SHARES   issuance -> holder             shares
    redemption accepted  RESERVE  holder -> issuance, PENDING    shares
    redemption 024 ok    RESERVE_POST  posts the reservation     shares
                         NET      fund assets -> settlement      paid
                         FEE      fund assets -> fee             fee_to_agent
                         (fee_to_fund never leaves fund assets)
    redemption failed    RESERVE_VOID  voids the reservation
    dividend 143         DIVIDEND_CASH   fund assets -> payable  cash (CASH)
                         DIVIDEND_SHARES issuance -> holder      shares (REINVEST)
                         (reinvested money stays in fund assets)
    dividend residual    RESIDUAL fund assets -> residual (or back if negative)
    MMF income           MMF_INCOME issuance -> holder           income (NAV 1)
    MMF residual         RESIDUAL fund assets -> residual        residual
    adjustment 144/145   ADJUSTMENT issuance -> holder / holder -> issuance

"A -> B" means debit A, credit B. A rollback never deletes: ``reverse`` books
the mirror transfer (a posted reservation is reversed like a transfer; a
still-pending one is voided with ``void``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ta.arith import Dividend, Purchase, Redemption
from ta.codes import BusinessCode, DividendMethod
from ta.errors import InvalidInput
from ta.ids import (
    AccountKind,
    EventKind,
    HolderKey,
    Leg,
    distributor_settlement_account_id,
    event_transfer_id,
    fund_cash_account_id,
    holder_share_account_id,
    issuance_account_id,
    reversal_id,
    transfer_id,
    valid_id,
)
from ta.money import require_int

CASH_LEDGER = 156  # ISO 4217 numeric code of CNY, the only currency cleared
SHARE_LEDGER_BASE = 1_000_000
FUND_CODE_DIGITS = 6


def share_ledger(fund_code: str) -> int:
    """The share ledger of a fund: 1_000_000 + its 6-digit code."""
    if len(fund_code) != FUND_CODE_DIGITS or not (fund_code.isascii() and fund_code.isdigit()):
        raise InvalidInput(f"a fund code is 6 digits, got {fund_code!r}")
    return SHARE_LEDGER_BASE + int(fund_code)


class AccountCode(enum.IntEnum):
    """The ledger ``code`` of each kind of account (stable numbers)."""

    HOLDER_SHARES = 1
    ISSUANCE = 2
    DISTRIBUTOR_SETTLEMENT = 3
    FUND_ASSETS = 4
    FEE = 5
    RESIDUAL = 6
    DIVIDEND_PAYABLE = 7


class TransferCode(enum.IntEnum):
    """The ledger ``code`` of a transfer: the confirmed business code where
    there is one, 9xx for the TA's own bookings (stable numbers)."""

    SUBSCRIPTION = 120
    PURCHASE = 122
    REDEMPTION = 124
    DIVIDEND = 143
    ADJUSTMENT_INCREASE = 144
    ADJUSTMENT_DECREASE = 145
    MMF_INCOME = 901
    RESIDUAL = 902


class PostingKind(enum.Enum):
    TRANSFER = "transfer"
    PENDING = "pending"  # reserves the amount; resolved later
    POST_PENDING = "post_pending"  # pending_id names the reservation
    VOID_PENDING = "void_pending"


@dataclass(frozen=True)
class AccountSpec:
    """An account the clearing service creates (idempotently) in the ledger."""

    id: int
    ledger: int
    code: AccountCode
    never_negative: bool  # debits must not exceed credits


@dataclass(frozen=True)
class Posting:
    """One ledger transfer of the plan."""

    id: int
    leg: Leg
    ledger: int
    code: TransferCode
    debit_account_id: int
    credit_account_id: int
    amount: int
    kind: PostingKind = PostingKind.TRANSFER
    pending_id: int = 0

    def __post_init__(self) -> None:
        assert valid_id(self.id)
        assert valid_id(self.debit_account_id) and valid_id(self.credit_account_id)
        assert self.debit_account_id != self.credit_account_id
        assert self.amount > 0
        resolving = self.kind in (PostingKind.POST_PENDING, PostingKind.VOID_PENDING)
        assert resolving == (self.pending_id != 0)


Chain = tuple[Posting, ...]  # one linked, all-or-nothing group


@dataclass(frozen=True)
class FundBook:
    """The booking plan of one fund (and share class) for one TA."""

    ta_code: str
    fund_code: str
    share_class: str = ""

    # ------------------------------------------------------------ accounts

    @property
    def shares_ledger(self) -> int:
        return share_ledger(self.fund_code)

    @property
    def issuance(self) -> AccountSpec:
        return AccountSpec(
            issuance_account_id(self.ta_code, self.fund_code, self.share_class),
            self.shares_ledger,
            AccountCode.ISSUANCE,
            never_negative=False,
        )

    def holder(self, holder: HolderKey) -> AccountSpec:
        return AccountSpec(
            holder_share_account_id(self.ta_code, self.fund_code, holder, self.share_class),
            self.shares_ledger,
            AccountCode.HOLDER_SHARES,
            never_negative=True,
        )

    def settlement(self, distributor_code: str) -> AccountSpec:
        return AccountSpec(
            distributor_settlement_account_id(self.ta_code, distributor_code),
            CASH_LEDGER,
            AccountCode.DISTRIBUTOR_SETTLEMENT,
            never_negative=False,
        )

    def _cash(self, kind: AccountKind, code: AccountCode) -> AccountSpec:
        return AccountSpec(
            fund_cash_account_id(self.ta_code, self.fund_code, kind),
            CASH_LEDGER,
            code,
            never_negative=False,
        )

    @property
    def fund_assets(self) -> AccountSpec:
        return self._cash(AccountKind.FUND_ASSETS, AccountCode.FUND_ASSETS)

    @property
    def fee(self) -> AccountSpec:
        return self._cash(AccountKind.FEE, AccountCode.FEE)

    @property
    def residual(self) -> AccountSpec:
        return self._cash(AccountKind.RESIDUAL, AccountCode.RESIDUAL)

    @property
    def dividend_payable(self) -> AccountSpec:
        return self._cash(AccountKind.DIVIDEND_PAYABLE, AccountCode.DIVIDEND_PAYABLE)

    def fund_accounts(self) -> tuple[AccountSpec, ...]:
        """The fund's own accounts, to create before its first booking."""
        return (self.issuance, self.fund_assets, self.fee, self.residual, self.dividend_payable)

    # ------------------------------------------------------------ orders

    def _order_posting(
        self,
        holder: HolderKey,
        serial: str,
        leg: Leg,
        code: TransferCode,
        debit: AccountSpec,
        credit: AccountSpec,
        amount: int,
        attempt: int,
        kind: PostingKind = PostingKind.TRANSFER,
        pending_id: int = 0,
    ) -> Posting:
        assert debit.ledger == credit.ledger
        return Posting(
            id=transfer_id(self.ta_code, holder.distributor_code, serial, leg, attempt),
            leg=leg,
            ledger=debit.ledger,
            code=code,
            debit_account_id=debit.id,
            credit_account_id=credit.id,
            amount=amount,
            kind=kind,
            pending_id=pending_id,
        )

    def _order_chain(
        self,
        holder: HolderKey,
        serial: str,
        code: TransferCode,
        legs: list[tuple[Leg, AccountSpec, AccountSpec, int]],
        attempt: int,
    ) -> Chain:
        return tuple(
            self._order_posting(holder, serial, leg, code, debit, credit, amount, attempt)
            for leg, debit, credit, amount in legs
            if amount > 0
        )

    def purchase(
        self,
        holder: HolderKey,
        app_sheet_serial_no: str,
        result: Purchase,
        business_code: BusinessCode = BusinessCode.PURCHASE,
        attempt: int = 0,
    ) -> Chain:
        """A confirmed purchase (022) or subscription (020)."""
        code = {
            BusinessCode.PURCHASE: TransferCode.PURCHASE,
            BusinessCode.SUBSCRIPTION: TransferCode.SUBSCRIPTION,
        }[business_code]
        if result.shares <= 0:
            raise InvalidInput("a purchase that issues no shares is a failure, not a booking")
        settlement = self.settlement(holder.distributor_code)
        legs = [
            (Leg.NET, settlement, self.fund_assets, result.net),
            (Leg.FEE, settlement, self.fee, result.fee),
            (Leg.SHARES, self.issuance, self.holder(holder), result.shares),
        ]
        return self._order_chain(holder, app_sheet_serial_no, code, legs, attempt)

    def redemption_reserve(
        self, holder: HolderKey, app_sheet_serial_no: str, shares: int, attempt: int = 0
    ) -> Chain:
        """The pending hold of a redemption's shares when it is accepted."""
        require_int("shares", shares, minimum=1)
        return (
            self._order_posting(
                holder, app_sheet_serial_no, Leg.RESERVE, TransferCode.REDEMPTION,
                self.holder(holder), self.issuance, shares, attempt, PostingKind.PENDING,
            ),
        )  # fmt: skip

    def redemption_confirm(
        self, holder: HolderKey, app_sheet_serial_no: str, result: Redemption, attempt: int = 0
    ) -> Chain:
        """A confirmed redemption: post the hold, pay out, take the fee."""
        reserve = self.redemption_reserve(holder, app_sheet_serial_no, result.shares, attempt)
        reserve_id = reserve[0].id
        code = TransferCode.REDEMPTION
        post = self._order_posting(
            holder, app_sheet_serial_no, Leg.RESERVE_POST, code, self.holder(holder),
            self.issuance, result.shares, attempt, PostingKind.POST_PENDING, reserve_id,
        )  # fmt: skip
        settlement = self.settlement(holder.distributor_code)
        cash = [
            (Leg.NET, self.fund_assets, settlement, result.paid),
            (Leg.FEE, self.fund_assets, self.fee, result.fee_to_agent),
        ]
        return (post,) + self._order_chain(holder, app_sheet_serial_no, code, cash, attempt)

    def redemption_void(
        self, holder: HolderKey, app_sheet_serial_no: str, shares: int, attempt: int = 0
    ) -> Chain:
        """A redemption that failed after it was accepted: release the hold."""
        reserve_id = self.redemption_reserve(holder, app_sheet_serial_no, shares, attempt)[0].id
        return (
            self._order_posting(
                holder, app_sheet_serial_no, Leg.RESERVE_VOID, TransferCode.REDEMPTION,
                self.holder(holder), self.issuance, shares, attempt,
                PostingKind.VOID_PENDING, reserve_id,
            ),
        )  # fmt: skip

    # ------------------------------------------------------------ TA events

    def _event_posting(
        self,
        kind: EventKind,
        date: str,
        holder: HolderKey | None,
        leg: Leg,
        code: TransferCode,
        debit: AccountSpec,
        credit: AccountSpec,
        amount: int,
        attempt: int,
    ) -> Posting:
        assert debit.ledger == credit.ledger
        return Posting(
            id=event_transfer_id(self.ta_code, kind, self.fund_code, date, holder, leg, attempt),
            leg=leg,
            ledger=debit.ledger,
            code=code,
            debit_account_id=debit.id,
            credit_account_id=credit.id,
            amount=amount,
        )

    def dividend(
        self, holder: HolderKey, registration_date: str, result: Dividend, attempt: int = 0
    ) -> Chain:
        """One holder's dividend: cash to payable, or reinvested shares."""
        if result.method is DividendMethod.CASH:
            leg, debit, credit, amount = (
                Leg.DIVIDEND_CASH, self.fund_assets, self.dividend_payable, result.cash_paid)
        else:
            leg, debit, credit, amount = (
                Leg.DIVIDEND_SHARES, self.issuance, self.holder(holder), result.reinvested_shares)
        if amount == 0:
            return ()
        return (
            self._event_posting(EventKind.DIVIDEND, registration_date, holder, leg,
                                TransferCode.DIVIDEND, debit, credit, amount, attempt),
        )  # fmt: skip

    def _residual(self, kind: EventKind, date: str, residual: int, attempt: int) -> Chain:
        if residual == 0:
            return ()
        debit, credit = (
            (self.fund_assets, self.residual) if residual > 0 else (self.residual, self.fund_assets)
        )
        return (
            self._event_posting(kind, date, None, Leg.RESIDUAL, TransferCode.RESIDUAL,
                                debit, credit, abs(residual), attempt),
        )  # fmt: skip

    def dividend_residual(self, registration_date: str, residual: int, attempt: int = 0) -> Chain:
        """The distribution's whole-cent residual (signed) to the residual account."""
        return self._residual(EventKind.DIVIDEND, registration_date, residual, attempt)

    def mmf_income(self, holder: HolderKey, date: str, income: int, attempt: int = 0) -> Chain:
        """A holder's MMF income carried into units (NAV 1: a cent is a unit)."""
        require_int("income", income)
        if income == 0:
            return ()
        return (
            self._event_posting(EventKind.MMF_INCOME, date, holder, Leg.MMF_INCOME,
                                TransferCode.MMF_INCOME, self.issuance, self.holder(holder),
                                income, attempt),
        )  # fmt: skip

    def mmf_residual(self, date: str, residual: int, attempt: int = 0) -> Chain:
        """The day's MMF income residual to the residual account."""
        require_int("residual", residual)
        return self._residual(EventKind.MMF_INCOME, date, residual, attempt)

    def adjustment(
        self, holder: HolderKey, date: str, shares: int, increase: bool, attempt: int = 0
    ) -> Chain:
        """A forced share increase (144) or decrease (145) by the TA."""
        require_int("shares", shares, minimum=1)
        if increase:
            kind, code = EventKind.SHARE_ADJUSTMENT_INCREASE, TransferCode.ADJUSTMENT_INCREASE
            debit, credit = self.issuance, self.holder(holder)
        else:
            kind, code = EventKind.SHARE_ADJUSTMENT_DECREASE, TransferCode.ADJUSTMENT_DECREASE
            debit, credit = self.holder(holder), self.issuance
        return (
            self._event_posting(kind, date, holder, Leg.ADJUSTMENT, code, debit, credit,
                                shares, attempt),
        )  # fmt: skip


# ---------------------------------------------------------------- rollback


def reverse(posting: Posting, attempt: int = 0) -> Posting:
    """The mirror of a booked transfer or posted reservation (rollback).
    A pending reservation not yet resolved is released with ``void``."""
    if posting.kind not in (PostingKind.TRANSFER, PostingKind.POST_PENDING):
        raise InvalidInput(f"a {posting.kind.value} posting is not reversed; void or skip it")
    return Posting(
        id=reversal_id(posting.id, attempt),
        leg=posting.leg,
        ledger=posting.ledger,
        code=posting.code,
        debit_account_id=posting.credit_account_id,
        credit_account_id=posting.debit_account_id,
        amount=posting.amount,
    )


def void(pending: Posting, attempt: int = 0) -> Posting:
    """Release a still-pending reservation during a rollback."""
    if pending.kind is not PostingKind.PENDING:
        raise InvalidInput("only a pending posting can be voided")
    return Posting(
        id=reversal_id(pending.id, attempt),
        leg=pending.leg,
        ledger=pending.ledger,
        code=pending.code,
        debit_account_id=pending.debit_account_id,
        credit_account_id=pending.credit_account_id,
        amount=pending.amount,
        kind=PostingKind.VOID_PENDING,
        pending_id=pending.id,
    )
