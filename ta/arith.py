"""The TA's arithmetic: purchase, redemption, dividend, MMF income.

All quantities are integers of their unit (see ``ta.money``): money and
shares in hundredths, NAV in 1/10000, rates as exact ``Fraction``. Each
result is a frozen dataclass carrying the identities its checks rely on:

- purchase:   ``amount == net + fee``
- redemption: ``paid == gross - fee``; ``fee == fee_to_fund + fee_to_agent``;
  ``fee_to_fund >= fee * fund_fee_share`` (always rounded UP, so the fund's
  minimum share holds in either rounding mode)
- dividend:   ``cash == cash_paid + reinvested_amount``
- MMF income: ``fund_income == sum(per_holder) + residual``, exactly

Residuals: every rounding returns what it dropped, ``exact - rounded``.

- Sub-cent residuals (``*_residual`` of type ``Fraction``, in hundredths)
  are the value a single rounding moved between the investor and the fund;
  e.g. ``value_residual`` of a purchase is the money paid in for which no
  share was issued. They are exact, so they can be summed over a day and the
  whole hundredths booked to the fund's residual account.
- Whole-cent residuals (``residual`` of type ``int``) appear where one total
  is split among holders (MMF income, a dividend over a register): that is
  money to book to the residual account as is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, Hashable, Mapping, TypeVar

from ta.codes import DividendMethod
from ta.errors import InvalidInput
from ta.money import (
    AMOUNT_MAX,
    DEFAULT_ROUNDING,
    DIVIDEND_PER_UNIT_SCALE,
    MMF_INCOME_SCALE,
    MMF_INCOME_UNITS,
    NAV_SCALE,
    Rounding,
    require_fraction,
    require_int,
    round_to_int,
)

# A redemption leaves at least this share of its fee in fund assets ...
FUND_FEE_SHARE_MIN = Fraction(1, 4)
# ... and all of it when the shares were held fewer than this many days.
SHORT_HOLDING_DAYS = 7
NAV_MAX = 10**7 - 1  # widest N7.4
PAR_NAV = NAV_SCALE  # subscriptions are at par, 1.0000


def _ceil(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


# A purchase is a pure function of its arguments: validation and booking of
# the same order ask for it twice, so the last results are remembered.
PURCHASE_CACHE_MAX = 4096


@dataclass(frozen=True)
class Purchase:
    """A purchase (022) or subscription (020) confirmed at ``nav``."""

    amount: int  # money paid, incl. fee (ConfirmedAmount)
    net: int  # money into fund assets
    fee: int  # Charge
    shares: int  # ConfirmedVol
    nav: int
    net_residual: Fraction  # exact net - net (absorbed by the fee)
    shares_residual: Fraction  # exact shares - shares
    value_residual: Fraction  # net - shares * nav: money with no shares issued for it

    def __post_init__(self) -> None:
        assert self.amount == self.net + self.fee
        assert self.net >= 0 and self.fee >= 0 and self.shares >= 0
        assert self.value_residual == self.net - Fraction(self.shares * self.nav, NAV_SCALE)


@functools.lru_cache(maxsize=PURCHASE_CACHE_MAX, typed=True)
def purchase(
    amount: int,
    fee_rate: Fraction,
    discount: Fraction = Fraction(1),
    nav: int = PAR_NAV,
    rounding: Rounding = DEFAULT_ROUNDING,
) -> Purchase:
    """Front-end-fee purchase of ``amount`` hundredths.

    net = amount / (1 + fee_rate * discount) rounded; fee = amount - net;
    shares = net / NAV rounded (both by ``rounding``). ``discount`` is the
    DiscountRateOfCommission multiplier (1 = full fee, 0.4 = 60% off).
    """
    require_int("amount", amount, minimum=1, maximum=AMOUNT_MAX)
    fee_rate = require_fraction("fee_rate", fee_rate, maximum=Fraction(1))
    discount = require_fraction("discount", discount, maximum=Fraction(1))
    require_int("nav", nav, minimum=1, maximum=NAV_MAX)
    exact_net = Fraction(amount) / (1 + fee_rate * discount)
    net = round_to_int(exact_net, rounding)
    exact_shares = Fraction(net * NAV_SCALE, nav)
    shares = round_to_int(exact_shares, rounding)
    return Purchase(
        amount=amount,
        net=net,
        fee=amount - net,
        shares=shares,
        nav=nav,
        net_residual=exact_net - net,
        shares_residual=exact_shares - shares,
        value_residual=net - Fraction(shares * nav, NAV_SCALE),
    )


def subscription(
    amount: int,
    fee_rate: Fraction,
    discount: Fraction = Fraction(1),
    rounding: Rounding = DEFAULT_ROUNDING,
) -> Purchase:
    """A subscription (020) in the offer period: a purchase at par (1.0000)."""
    return purchase(amount, fee_rate, discount, PAR_NAV, rounding)


def fund_fee_share(held_days: int, minimum: Fraction = FUND_FEE_SHARE_MIN) -> Fraction:
    """The share of a redemption fee that stays in the fund: all of it when
    held fewer than 7 days, else ``minimum`` (at least 25%)."""
    require_int("held_days", held_days)
    minimum = require_fraction("minimum", minimum, FUND_FEE_SHARE_MIN, Fraction(1))
    return Fraction(1) if held_days < SHORT_HOLDING_DAYS else minimum


@dataclass(frozen=True)
class Redemption:
    """A redemption (024) of ``shares`` confirmed at ``nav``."""

    shares: int  # ConfirmedVol
    nav: int
    gross: int  # shares * NAV (ConfirmedAmount)
    fee: int  # Charge
    fee_to_fund: int  # stays in fund assets
    fee_to_agent: int  # to the fee account
    paid: int  # to the distributor's settlement account
    gross_residual: Fraction  # exact gross - gross: value kept by the fund
    fee_residual: Fraction  # exact fee - fee

    def __post_init__(self) -> None:
        assert self.paid == self.gross - self.fee
        assert self.fee == self.fee_to_fund + self.fee_to_agent
        assert self.paid >= 0 and self.fee_to_agent >= 0 and self.fee_to_fund >= 0


def redemption(
    shares: int,
    nav: int,
    fee_rate: Fraction,
    min_fund_share: Fraction = FUND_FEE_SHARE_MIN,
    rounding: Rounding = DEFAULT_ROUNDING,
) -> Redemption:
    """Redemption of ``shares`` hundredths at ``nav``.

    gross = shares * NAV rounded; fee = gross * fee_rate rounded; paid =
    gross - fee. ``min_fund_share`` (from ``fund_fee_share``: 1/4, or 1 when
    held < 7 days) of the fee stays in the fund, rounded UP in every mode
    because it is a minimum.
    """
    require_int("shares", shares, minimum=1, maximum=AMOUNT_MAX)
    require_int("nav", nav, minimum=1, maximum=NAV_MAX)
    fee_rate = require_fraction("fee_rate", fee_rate, maximum=Fraction(1))
    min_fund_share = require_fraction(
        "min_fund_share", min_fund_share, FUND_FEE_SHARE_MIN, Fraction(1)
    )
    exact_gross = Fraction(shares * nav, NAV_SCALE)
    gross = round_to_int(exact_gross, rounding)
    exact_fee = gross * fee_rate
    fee = round_to_int(exact_fee, rounding)
    fee_to_fund = _ceil(fee * min_fund_share)
    return Redemption(
        shares=shares,
        nav=nav,
        gross=gross,
        fee=fee,
        fee_to_fund=fee_to_fund,
        fee_to_agent=fee - fee_to_fund,
        paid=gross - fee,
        gross_residual=exact_gross - gross,
        fee_residual=exact_fee - fee,
    )


@dataclass(frozen=True)
class Dividend:
    """One holder's dividend (143) on ``entitled_shares``."""

    entitled_shares: int  # BasisforCalculatingDividend
    method: DividendMethod
    cash: int  # DividendAmount: the whole dividend, in hundredths
    cash_paid: int  # to dividend payable (method CASH), else 0
    reinvested_amount: int  # converted to shares (method REINVEST), else 0
    reinvested_shares: int  # VolOfDividendforReinvestment
    cash_residual: Fraction  # exact cash - cash
    value_residual: Fraction  # reinvested_amount - reinvested_shares * ex_nav

    def __post_init__(self) -> None:
        assert self.cash == self.cash_paid + self.reinvested_amount
        assert self.cash_paid == 0 or self.reinvested_amount == 0


def dividend(
    entitled_shares: int,
    per_unit_dividend: int,
    ex_nav: int,
    method: DividendMethod,
    rounding: Rounding = DEFAULT_ROUNDING,
) -> Dividend:
    """cash = entitled_shares * per_unit_dividend (1/10000 money per share,
    the DividendPerUnit N10.4 unit; "0.50 per 10 shares" is 500), rounded;
    reinvested shares = cash / ex_nav, rounded, no fee."""
    require_int("entitled_shares", entitled_shares, maximum=AMOUNT_MAX)
    require_int("per_unit_dividend", per_unit_dividend, maximum=10**10 - 1)
    require_int("ex_nav", ex_nav, minimum=1, maximum=NAV_MAX)
    if not isinstance(method, DividendMethod):
        raise TypeError(f"method must be a DividendMethod, got {method!r}")
    exact_cash = Fraction(entitled_shares * per_unit_dividend, DIVIDEND_PER_UNIT_SCALE)
    cash = round_to_int(exact_cash, rounding)
    if method is DividendMethod.CASH:
        return Dividend(
            entitled_shares, method, cash, cash, 0, 0, exact_cash - cash, Fraction(0)
        )
    exact_shares = Fraction(cash * NAV_SCALE, ex_nav)
    reinvested_shares = round_to_int(exact_shares, rounding)
    return Dividend(
        entitled_shares,
        method,
        cash,
        0,
        cash,
        reinvested_shares,
        exact_cash - cash,
        cash - Fraction(reinvested_shares * ex_nav, NAV_SCALE),
    )


K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class DividendDistribution(Generic[K]):
    """A dividend over a whole register, holders in sorted key order."""

    per_holder: dict[K, Dividend]
    total_shares: int
    declared: int  # total_shares * per_unit_dividend, rounded: the fund's outlay
    residual: int  # declared - sum of holders' cash (signed): to the residual account

    def __post_init__(self) -> None:
        assert self.declared == sum(d.cash for d in self.per_holder.values()) + self.residual


def dividend_distribution(
    register: Mapping[K, tuple[int, DividendMethod]],
    per_unit_dividend: int,
    ex_nav: int,
    rounding: Rounding = DEFAULT_ROUNDING,
) -> DividendDistribution[K]:
    """Dividends for every holder of ``register`` (key -> (entitled shares,
    method)); the register is the one at the START of the registration date.
    ``residual`` is negative when HALF_UP rounded holders up more than down."""
    per_holder = {
        key: dividend(register[key][0], per_unit_dividend, ex_nav, register[key][1], rounding)
        for key in sorted(register)
    }
    total_shares = sum(d.entitled_shares for d in per_holder.values())
    declared = round_to_int(
        Fraction(total_shares * per_unit_dividend, DIVIDEND_PER_UNIT_SCALE), rounding
    )
    paid = sum(d.cash for d in per_holder.values())
    return DividendDistribution(per_holder, total_shares, declared, declared - paid)


# income (hundredths of money) = units (hundredths) * income_per_10k / this
_MMF_DIVISOR = MMF_INCOME_SCALE * MMF_INCOME_UNITS


@dataclass(frozen=True)
class MmfIncome(Generic[K]):
    """A money-market fund's daily income split among holders."""

    per_holder: dict[K, int]  # hundredths of money, truncated; carried into units
    total_units: int
    fund_income: int  # the fund's income for the day, hundredths
    residual: int  # fund_income - sum(per_holder) >= 0: to the residual account

    def __post_init__(self) -> None:
        assert self.fund_income == sum(self.per_holder.values()) + self.residual
        assert self.residual >= 0


def mmf_holder_income(units: int, income_per_10k: int) -> int:
    """One holder's income: units * income_per_10k / 10000, truncated to 0.01.
    ``income_per_10k`` is in 1/100000 money (the FundIncome N8.5 unit)."""
    require_int("units", units, maximum=AMOUNT_MAX)
    require_int("income_per_10k", income_per_10k, maximum=10**8 - 1)
    return (units * income_per_10k) // _MMF_DIVISOR


def mmf_income(
    units: Mapping[K, int], income_per_10k: int, fund_income: int | None = None
) -> MmfIncome[K]:
    """Each holder's truncated income and the residual for the fund's
    residual account. ``fund_income`` defaults to the truncated income of
    all units together; when given it must cover the holders' sum."""
    per_holder = {key: mmf_holder_income(units[key], income_per_10k) for key in sorted(units)}
    total_units = sum(units.values())
    if fund_income is None:
        fund_income = (total_units * income_per_10k) // _MMF_DIVISOR
    require_int("fund_income", fund_income, maximum=AMOUNT_MAX)
    distributed = sum(per_holder.values())
    if fund_income < distributed:
        raise InvalidInput(
            f"fund income {fund_income} is less than the holders' income {distributed}"
        )
    return MmfIncome(per_holder, total_units, fund_income, fund_income - distributed)
