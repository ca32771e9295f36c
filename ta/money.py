"""Units of the TA and the two rounding modes. Never a float.

====================  =========================  ==========================
quantity              Python value               example
====================  =========================  ==========================
money                 ``int`` hundredths (cents)  10,000.00 -> ``1000000``
shares                ``int`` hundredths          7,980.74  -> ``798074``
NAV                   ``int`` of 1/10000          1.2345    -> ``12345``
dividend per unit     ``int`` of 1/10000 money    0.05      -> ``500``
MMF income per 10k    ``int`` of 1/100000 money   0.56789   -> ``56789``
rate, share, discount ``fractions.Fraction``      1.5%      -> ``Fraction(3, 200)``
====================  =========================  ==========================

The integer scales match the implied decimals of the profile-21 fields
(ApplicationAmount N16.2, NAV N7.4, DividendPerUnit N10.4, FundIncome N8.5),
so a value read from a file is used as is. Rates are exact ``Fraction``s
(``rate("0.015")``, ``rate_e4(150)``); a float anywhere is refused with
``TypeError`` because it cannot represent 0.015 exactly.

Rounding (a per-fund parameter): ``HALF_UP`` rounds halves away from zero,
``DOWN`` truncates toward zero. Every rounding in ``ta.arith`` goes through
``round_to_int`` so the residual (exact minus rounded) is always known.
"""

from __future__ import annotations

import enum
import re
from fractions import Fraction

from ta.errors import InvalidInput

MONEY_DECIMALS = 2
SHARE_DECIMALS = 2
NAV_DECIMALS = 4
DIVIDEND_PER_UNIT_DECIMALS = 4
MMF_INCOME_DECIMALS = 5

CENTS_PER_UNIT = 10**MONEY_DECIMALS  # 100 hundredths of money (or of a share) make one
NAV_SCALE = 10**NAV_DECIMALS  # NAV 1.2345 is 12345
DIVIDEND_PER_UNIT_SCALE = 10**DIVIDEND_PER_UNIT_DECIMALS
MMF_INCOME_SCALE = 10**MMF_INCOME_DECIMALS
MMF_INCOME_UNITS = 10_000  # MMF income is quoted per 10,000 units
RATE_E4_SCALE = 10_000  # rate_e4(150) is 1.5%

# The widest N16.2 value: amounts and shares must fit a profile-21 field.
AMOUNT_MAX = 10**16 - 1


class Rounding(enum.Enum):
    """A fund's rounding mode for money and shares."""

    HALF_UP = "HALF_UP"  # halves away from zero (the default)
    DOWN = "DOWN"  # toward zero (truncate)


DEFAULT_ROUNDING = Rounding.HALF_UP


def round_to_int(value: Fraction, rounding: Rounding) -> int:
    """``value`` rounded to an integer by ``rounding`` (exact, no float)."""
    if not isinstance(value, Fraction):
        raise TypeError(f"round_to_int needs a Fraction, got {type(value).__name__}")
    if not isinstance(rounding, Rounding):
        raise TypeError(f"rounding must be a Rounding, got {rounding!r}")
    sign = -1 if value < 0 else 1
    magnitude = abs(value)
    whole, rest = divmod(magnitude.numerator, magnitude.denominator)
    if rounding is Rounding.HALF_UP and 2 * rest >= magnitude.denominator:
        whole += 1
    return sign * whole


def require_int(name: str, value: object, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` if it is an ``int`` in range; TypeError / InvalidInput otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int of its unit, got {type(value).__name__}")
    if value < minimum:
        raise InvalidInput(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInput(f"{name} must be <= {maximum}, got {value}")
    return value


def require_fraction(
    name: str, value: object, minimum: Fraction = Fraction(0), maximum: Fraction | None = None
) -> Fraction:
    """``value`` as a Fraction if it is a Fraction or int in range; never a float."""
    if isinstance(value, bool) or not isinstance(value, (Fraction, int)):
        raise TypeError(f"{name} must be a Fraction (exact), got {type(value).__name__}")
    value = Fraction(value)
    if value < minimum:
        raise InvalidInput(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInput(f"{name} must be <= {maximum}, got {value}")
    return value


_DECIMAL = re.compile(r"^(-?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d*))?$")


def parse_decimal(text: str, decimals: int) -> int:
    """``"10,000.00"`` -> ``1000000`` for decimals=2. Exact: more decimals than
    ``decimals`` (other than trailing zeros) are refused, never rounded."""
    match = _DECIMAL.match(text.strip())
    if match is None:
        raise InvalidInput(f"not a decimal number: {text!r}")
    sign, whole, frac = match.group(1), match.group(2).replace(",", ""), match.group(3) or ""
    if len(frac) > decimals:
        if frac[decimals:].strip("0"):
            raise InvalidInput(f"{text!r} has more than {decimals} decimals")
        frac = frac[:decimals]
    value = int(whole) * 10**decimals + int(frac.ljust(decimals, "0") or "0")
    return -value if sign else value


def format_decimal(value: int, decimals: int, grouping: bool = False) -> str:
    """``1000000`` -> ``"10000.00"`` (``"10,000.00"`` with grouping)."""
    require_int("value", value, minimum=-(10**40))
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**decimals)
    whole_text = f"{whole:,}" if grouping else str(whole)
    return f"{sign}{whole_text}.{frac:0{decimals}d}" if decimals else f"{sign}{whole_text}"


def cents(text: str) -> int:
    """Money or shares text to hundredths: ``cents("10,000.00") == 1000000``."""
    return parse_decimal(text, MONEY_DECIMALS)


def nav(text: str) -> int:
    """NAV text to 1/10000: ``nav("1.2345") == 12345``."""
    return parse_decimal(text, NAV_DECIMALS)


def format_cents(value: int, grouping: bool = False) -> str:
    """Hundredths to text: ``format_cents(1000000, True) == "10,000.00"``."""
    return format_decimal(value, MONEY_DECIMALS, grouping)


def rate(text: str) -> Fraction:
    """An exact rate from decimal text: ``rate("0.015") == Fraction(3, 200)``;
    a trailing ``%`` divides by 100: ``rate("1.5%")``."""
    text = text.strip()
    percent = text.endswith("%")
    if percent:
        text = text[:-1]
    if not re.fullmatch(r"\d+(\.\d+)?", text):
        raise InvalidInput(f"not a rate: {text!r}")
    value = Fraction(text)
    return value / 100 if percent else value


def rate_e4(value: int) -> Fraction:
    """A rate given in 1/10000 (the N5.4 DiscountRateOfCommission unit)."""
    return Fraction(require_int("rate_e4", value), RATE_E4_SCALE)
