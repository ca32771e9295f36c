"""A fund's terms for one business day: status, NAV, fees, rounding.

The clearing service reads these from its fund parameters (and the day's
NAV) and hands them to the pure functions of ``ta.arith`` / ``ta.orders``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from ta.arith import FUND_FEE_SHARE_MIN, fund_fee_share
from ta.codes import FundStatus
from ta.errors import InvalidInput
from ta.money import DEFAULT_ROUNDING, Rounding, require_fraction, require_int


@dataclass(frozen=True)
class FundTerms:
    """Everything the arithmetic needs to know about a fund on day T.

    ``redemption_fee_schedule`` is ``((min_held_days, rate), ...)`` sorted by
    days, starting at 0: the rate of the last step whose days <= held days.
    """

    fund_code: str
    status: FundStatus
    nav: int  # NAV_T in 1/10000
    purchase_fee_rate: Fraction
    redemption_fee_schedule: tuple[tuple[int, Fraction], ...]
    rounding: Rounding = DEFAULT_ROUNDING
    fund_fee_share_min: Fraction = FUND_FEE_SHARE_MIN
    min_purchase: int = 1  # hundredths of money
    min_redemption: int = 1  # hundredths of a share
    share_class: str = field(default="A")

    def __post_init__(self) -> None:
        require_int("nav", self.nav, minimum=1)
        require_fraction("purchase_fee_rate", self.purchase_fee_rate, maximum=Fraction(1))
        require_fraction(
            "fund_fee_share_min", self.fund_fee_share_min, FUND_FEE_SHARE_MIN, Fraction(1)
        )
        require_int("min_purchase", self.min_purchase, minimum=1)
        require_int("min_redemption", self.min_redemption, minimum=1)
        schedule = self.redemption_fee_schedule
        if not schedule or schedule[0][0] != 0:
            raise InvalidInput("the redemption fee schedule must start at 0 days")
        days = [d for d, _ in schedule]
        if days != sorted(set(days)):
            raise InvalidInput("redemption fee schedule days must be increasing")
        for held, rate in schedule:
            require_int("schedule days", held)
            require_fraction("schedule rate", rate, maximum=Fraction(1))
        if not isinstance(self.rounding, Rounding) or not isinstance(self.status, FundStatus):
            raise TypeError("rounding and status must be enums")

    def redemption_fee_rate(self, held_days: int) -> Fraction:
        """The fee rate for shares held ``held_days`` days."""
        require_int("held_days", held_days)
        rate = self.redemption_fee_schedule[0][1]
        for min_days, step_rate in self.redemption_fee_schedule:
            if held_days >= min_days:
                rate = step_rate
        return rate

    def fund_fee_share(self, held_days: int) -> Fraction:
        """The share of the fee kept by the fund (all of it under 7 days)."""
        return fund_fee_share(held_days, self.fund_fee_share_min)
