"""Properties of the TA arithmetic (ta.arith, ta.money).

Each computation is checked against an independent oracle (the ``decimal``
module with its own rounding modes) and against the identities the day's
checks rely on: amount = net + fee, paid = gross - fee, fee to fund >= its
minimum share, MMF residual = fund income - holders' income exactly.
"""

from __future__ import annotations

import decimal
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ta import arith
from ta.codes import DividendMethod
from ta.errors import InvalidInput
from ta.money import (
    Rounding,
    cents,
    format_cents,
    nav,
    parse_decimal,
    rate,
    rate_e4,
    round_to_int,
)

# Per-test settings (never a global profile: other suites share the run).
ta_settings = settings(max_examples=300, deadline=None)

_CTX = decimal.Context(prec=80)
_MODE = {Rounding.HALF_UP: ROUND_HALF_UP, Rounding.DOWN: ROUND_DOWN}

amounts = st.integers(min_value=1, max_value=10**13)
navs = st.integers(min_value=1, max_value=10**7 - 1)
realistic_navs = st.integers(min_value=5000, max_value=50000)
fee_rates = st.integers(min_value=0, max_value=500).map(rate_e4)  # 0% .. 5%
discounts = st.integers(min_value=0, max_value=10000).map(rate_e4)
roundings = st.sampled_from(list(Rounding))
methods = st.sampled_from(list(DividendMethod))


def oracle(numerator: Decimal, denominator: Decimal, rounding: Rounding) -> int:
    """numerator / denominator rounded to an integer, computed by ``decimal``."""
    quotient = _CTX.divide(numerator, denominator)
    return int(quotient.quantize(Decimal(1), rounding=_MODE[rounding], context=_CTX))


def dec(value: Fraction) -> Decimal:
    return _CTX.divide(Decimal(value.numerator), Decimal(value.denominator))


@ta_settings
@given(st.fractions(), roundings)
def test_round_to_int_matches_decimal(value: Fraction, rounding: Rounding) -> None:
    """Goal: round_to_int agrees with decimal's HALF_UP / DOWN, incl. negatives."""
    # Exact for any fraction: compare via numerator / denominator.
    expected = oracle(Decimal(value.numerator), Decimal(value.denominator), rounding)
    assert round_to_int(value, rounding) == expected


@ta_settings
@given(amounts, fee_rates, discounts, navs, roundings)
def test_purchase_identities(amount, fee_rate, discount, nav_e4, rounding) -> None:
    """Goal: amount = net + fee; net and shares are the exact quotients rounded
    by the fund's mode; every residual is exact - rounded."""
    p = arith.purchase(amount, fee_rate, discount, nav_e4, rounding)
    assert p.amount == p.net + p.fee == amount
    assert p.fee >= 0
    divisor = dec(1 + fee_rate * discount)
    assert p.net == oracle(Decimal(amount), divisor, rounding)
    assert p.shares == oracle(Decimal(p.net * 10000), Decimal(nav_e4), rounding)
    assert p.net_residual == Fraction(amount) / (1 + fee_rate * discount) - p.net
    assert p.shares_residual == Fraction(p.net * 10000, nav_e4) - p.shares
    assert p.value_residual == p.net - Fraction(p.shares * nav_e4, 10000)
    if rounding is Rounding.DOWN:
        # Truncation never gives the investor more than the exact value.
        assert 0 <= p.net_residual < 1 and 0 <= p.shares_residual < 1
        assert p.value_residual >= 0
    else:
        assert abs(p.net_residual) <= Fraction(1, 2)
        assert abs(p.shares_residual) <= Fraction(1, 2)


@ta_settings
@given(amounts, fee_rates, discounts, roundings)
def test_purchase_fee_is_rate_of_net(amount, fee_rate, discount, rounding) -> None:
    """Goal: the fee is net * rate * discount to within one cent (front-end fee)."""
    p = arith.purchase(amount, fee_rate, discount, 10000, rounding)
    assert abs(p.fee - p.net * fee_rate * discount) < 1 + fee_rate


@ta_settings
@given(st.integers(min_value=1, max_value=10**13), navs, fee_rates, roundings)
def test_redemption_identities(shares, nav_e4, fee_rate, rounding) -> None:
    """Goal: paid = gross - fee; gross and fee are rounded by the fund's mode;
    the fee splits exactly into fund and agent parts."""
    r = arith.redemption(shares, nav_e4, fee_rate, rounding=rounding)
    assert r.paid == r.gross - r.fee
    assert r.fee == r.fee_to_fund + r.fee_to_agent
    assert r.gross == oracle(Decimal(shares * nav_e4), Decimal(10000), rounding)
    assert r.fee == oracle(dec(r.gross * fee_rate), Decimal(1), rounding)
    assert r.gross_residual == Fraction(shares * nav_e4, 10000) - r.gross
    assert r.fee_residual == r.gross * fee_rate - r.fee
    if rounding is Rounding.DOWN:
        assert r.gross_residual >= 0


@ta_settings
@given(
    st.integers(min_value=1, max_value=10**13),
    realistic_navs,
    fee_rates,
    st.integers(min_value=0, max_value=3650),
    roundings,
)
def test_fee_to_fund_at_least_its_share(shares, nav_e4, fee_rate, held_days, rounding) -> None:
    """Goal: at least 25% of the fee stays in the fund (100% if held < 7 days),
    and never more than one cent above that minimum."""
    share = arith.fund_fee_share(held_days)
    r = arith.redemption(shares, nav_e4, fee_rate, share, rounding)
    assert r.fee_to_fund >= r.fee * share
    assert r.fee_to_fund - r.fee * share < 1
    if held_days < 7:
        assert r.fee_to_fund == r.fee and r.fee_to_agent == 0
    else:
        assert share == Fraction(1, 4)


def test_fund_fee_share_cannot_go_below_a_quarter() -> None:
    """Goal: a fund share of the fee under 25% is refused as caller error."""
    with pytest.raises(InvalidInput):
        arith.redemption(100, 10000, rate("0.005"), Fraction(1, 5))
    with pytest.raises(InvalidInput):
        arith.fund_fee_share(30, Fraction(1, 10))
    assert arith.fund_fee_share(30, Fraction(1, 2)) == Fraction(1, 2)


@ta_settings
@given(st.integers(min_value=0, max_value=10**13), st.integers(0, 10**6), navs, methods, roundings)
def test_dividend_identities(shares, dpu, ex_nav, method, rounding) -> None:
    """Goal: cash = shares * dividend per unit rounded; cash is either paid or
    reinvested whole; reinvested shares = cash / ex-NAV rounded, no fee."""
    d = arith.dividend(shares, dpu, ex_nav, method, rounding)
    assert d.cash == oracle(Decimal(shares * dpu), Decimal(10000), rounding)
    assert d.cash == d.cash_paid + d.reinvested_amount
    assert d.cash_residual == Fraction(shares * dpu, 10000) - d.cash
    if method is DividendMethod.CASH:
        assert d.reinvested_shares == 0 and d.cash_paid == d.cash
    else:
        assert d.cash_paid == 0
        assert d.reinvested_shares == oracle(Decimal(d.cash * 10000), Decimal(ex_nav), rounding)
        assert d.value_residual == d.cash - Fraction(d.reinvested_shares * ex_nav, 10000)


@ta_settings
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=4),
        st.tuples(st.integers(0, 10**11), methods),
        max_size=30,
    ),
    st.integers(0, 10**5),
    realistic_navs,
    roundings,
)
def test_dividend_distribution_reconciles(register, dpu, ex_nav, rounding) -> None:
    """Goal: over a register, the declared total = holders' cash + residual,
    exactly; with DOWN the residual is never negative."""
    dist = arith.dividend_distribution(register, dpu, ex_nav, rounding)
    assert list(dist.per_holder) == sorted(register)
    assert dist.declared == sum(d.cash for d in dist.per_holder.values()) + dist.residual
    assert dist.total_shares == sum(s for s, _ in register.values())
    if rounding is Rounding.DOWN:
        assert 0 <= dist.residual <= len(register)
    else:
        assert abs(dist.residual) <= len(register) // 2 + 1


@ta_settings
@given(
    st.dictionaries(st.integers(0, 10**6), st.integers(0, 10**13), max_size=50),
    st.integers(0, 10**8 - 1),
)
def test_mmf_income_truncates_and_residual_sums_exactly(units, income) -> None:
    """Goal: each holder's income is truncated to 0.01; the residual is the
    rest of the fund's income, >= 0, less than one cent per holder, and
    holders + residual == fund income to the cent."""
    m = arith.mmf_income(units, income)
    for key, value in units.items():
        exact = Fraction(value * income, 10**9)
        assert 0 <= exact - m.per_holder[key] < 1
    assert sum(m.per_holder.values()) + m.residual == m.fund_income
    assert m.fund_income == sum(units.values()) * income // 10**9
    assert 0 <= m.residual <= max(len(units) - 1, 0)


def test_mmf_income_with_declared_fund_income() -> None:
    """Goal: a fund income given by fund accounting takes the whole remainder;
    one that cannot cover the holders is refused."""
    m = arith.mmf_income({"a": cents("1,000,000.00"), "b": cents("333.33")}, 56789, 5700)
    assert m.per_holder == {"a": 5678, "b": 1}  # 56.789 -> 56.78; 0.0189 -> 0.01
    assert m.residual == 5700 - 5679
    with pytest.raises(InvalidInput):
        arith.mmf_income({"a": cents("1,000,000.00")}, 56789, 5677)


@pytest.mark.parametrize(
    "call",
    [
        lambda: arith.purchase(1000, 0.015, nav=10000),
        lambda: arith.purchase(10.0, rate("0.015"), nav=10000),
        lambda: arith.purchase(1000, rate("0.015"), nav=1.2345),
        lambda: arith.redemption(1000, 10000, 0.005),
        lambda: arith.dividend(1000, 0.05, 10000, DividendMethod.CASH),
        lambda: arith.mmf_holder_income(100.0, 5),
    ],
)
def test_floats_are_refused(call) -> None:
    """Goal: no float can enter the arithmetic (it cannot hold 0.015 exactly)."""
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: arith.purchase(0, rate("0.015"), nav=10000),
        lambda: arith.purchase(-5, rate("0.015"), nav=10000),
        lambda: arith.purchase(100, rate("0.015"), nav=0),
        lambda: arith.purchase(10**16, rate("0.015"), nav=10000),
        lambda: arith.redemption(0, 10000, rate("0.005")),
        lambda: arith.purchase(100, Fraction(-1, 100), nav=10000),
    ],
)
def test_out_of_range_inputs_are_refused(call) -> None:
    """Goal: zero, negative or too-wide quantities are the caller's error."""
    with pytest.raises(InvalidInput):
        call()


def test_money_parsing_and_formatting() -> None:
    """Goal: text <-> integer units is exact and refuses hidden rounding."""
    assert cents("10,000.00") == 1000000
    assert cents("0.5") == 50
    assert nav("1.2345") == 12345
    assert parse_decimal("0.05", 4) == 500
    assert format_cents(1838576, grouping=True) == "18,385.76"
    assert format_cents(-5) == "-0.05"
    assert rate("1.5%") == rate("0.015") == Fraction(3, 200) == rate_e4(150)
    with pytest.raises(InvalidInput):
        cents("1.005")
    with pytest.raises(InvalidInput):
        cents("1,00.00")
    assert cents("1.000") == 100


def test_rounding_modes_differ_only_where_expected() -> None:
    """Goal: HALF_UP rounds 12.345 to 12.35, DOWN to 12.34 (the worked-day fee)."""
    fee_half_up = arith.redemption(200000, 12345, rate("0.005"), rounding=Rounding.HALF_UP)
    fee_down = arith.redemption(200000, 12345, rate("0.005"), rounding=Rounding.DOWN)
    assert (fee_half_up.fee, fee_down.fee) == (1235, 1234)
    assert fee_half_up.fee_to_fund == 309 and fee_down.fee_to_fund == 309  # ceil(3.0875), ceil(3.085)
