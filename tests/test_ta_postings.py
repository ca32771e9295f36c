"""The booking plan (ta.postings) applied to the in-memory ledger twin.

Goals: each confirmation's chain moves exactly the amounts of its
arithmetic (amount = fee + net leaves the settlement account; paid + the
agent's fee leave fund assets; shares move between issuance and holder);
re-applying a chain books nothing; a redemption beyond the holding fails
whole; a rollback by reversing transfers returns every balance to zero; and
every ledger's debits equal its credits throughout.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ta import arith
from ta.codes import BusinessCode, DividendMethod
from ta.errors import InvalidInput
from ta.ids import HolderKey
from ta.memory_ledger import ChainResult, MemoryLedger
from ta.money import Rounding, rate_e4
from ta.postings import CASH_LEDGER, FundBook, PostingKind, reverse, share_ledger, void

ta_settings = settings(max_examples=150, deadline=None)
BOOK = FundBook("01", "000001")
H1 = HolderKey("010000000001", "ZS001", "TX1")
H2 = HolderKey("010000000002", "ZS002", "TX2")


def fresh_ledger() -> MemoryLedger:
    ledger = MemoryLedger()
    ledger.create_accounts(BOOK.fund_accounts())
    for h in (H1, H2):
        ledger.create_accounts([BOOK.holder(h), BOOK.settlement(h.distributor_code)])
    return ledger


def assert_balanced(ledger: MemoryLedger) -> None:
    for ledger_id, (debits, credits) in ledger.totals_by_ledger().items():
        assert debits == credits, f"ledger {ledger_id} unbalanced"
    issued = -ledger.balance(BOOK.issuance)
    assert issued == ledger.balance(BOOK.holder(H1)) + ledger.balance(BOOK.holder(H2))


amounts = st.integers(1, 10**11)
share_amounts = st.integers(100, 10**11)  # at least 1.00: buys shares at any NAV below 3
navs = st.integers(5000, 30000)
fee_rates = st.integers(0, 300).map(rate_e4)
roundings = st.sampled_from(list(Rounding))


@ta_settings
@given(share_amounts, fee_rates, navs, roundings)
def test_purchase_chain_moves_its_amounts(amount, fee_rate, nav, rounding) -> None:
    """Goal: settlement pays amount = net + fee; fund assets get net, the fee
    account fee; the holder gets the shares from issuance; a re-run is a no-op."""
    p = arith.purchase(amount, fee_rate, Fraction(1), nav, rounding)
    ledger = fresh_ledger()
    chain = BOOK.purchase(H1, "S1", p)
    assert ledger.apply(chain) is ChainResult.OK
    assert -ledger.balance(BOOK.settlement("ZS001")) == amount == p.net + p.fee
    assert ledger.balance(BOOK.fund_assets) == p.net
    assert ledger.balance(BOOK.fee) == p.fee
    assert ledger.balance(BOOK.holder(H1)) == p.shares
    assert {x.ledger for x in chain} <= {CASH_LEDGER, share_ledger("000001")}
    before = {k: vars(v).copy() for k, v in ledger.balances.items()}
    assert ledger.apply(BOOK.purchase(H1, "S1", p)) is ChainResult.EXISTS
    assert {k: vars(v) for k, v in ledger.balances.items()} == before
    assert_balanced(ledger)


@ta_settings
@given(share_amounts, navs, fee_rates, st.integers(0, 1000), st.integers(1, 100), roundings)
def test_redemption_chain(amount, nav, fee_rate, held_days, percent, rounding) -> None:
    """Goal: reserve, then post: the holder loses the shares, fund assets pay
    paid + the agent's fee, fee_to_fund never leaves; the hold is closed."""
    ledger = fresh_ledger()
    p = arith.purchase(amount, Fraction(0), Fraction(1), nav, rounding)
    ledger.apply(BOOK.purchase(H1, "P1", p))
    shares = max(1, p.shares * percent // 100)
    r = arith.redemption(shares, nav, fee_rate, arith.fund_fee_share(held_days), rounding)
    assert ledger.apply(BOOK.redemption_reserve(H1, "R1", shares)) is ChainResult.OK
    assert ledger.open_pending
    assert ledger.apply(BOOK.redemption_confirm(H1, "R1", r)) is ChainResult.OK
    assert not ledger.open_pending
    assert ledger.balance(BOOK.holder(H1)) == p.shares - shares
    assert ledger.balance(BOOK.fund_assets) == p.net - r.paid - r.fee_to_agent
    assert ledger.balance(BOOK.fee) == r.fee_to_agent
    assert -ledger.balance(BOOK.settlement("ZS001")) == amount - r.paid
    assert ledger.apply(BOOK.redemption_void(H1, "R1", shares)) is ChainResult.FAILED
    assert_balanced(ledger)


def test_redemption_beyond_holding_fails_whole() -> None:
    """Goal: a reservation larger than the holding books nothing at all."""
    ledger = fresh_ledger()
    ledger.apply(BOOK.adjustment(H1, "20261126", 300000, increase=True))
    before = {k: vars(v).copy() for k, v in ledger.balances.items()}
    assert ledger.apply(BOOK.redemption_reserve(H1, "R9", 350000)) is ChainResult.FAILED
    assert {k: vars(v) for k, v in ledger.balances.items()} == before
    assert ledger.apply(BOOK.redemption_reserve(H1, "R9", 300000)) is ChainResult.OK
    assert ledger.apply(BOOK.redemption_reserve(H1, "R10", 1)) is ChainResult.FAILED  # held


def test_failed_redemption_voids_its_hold() -> None:
    """Goal: a void releases the reservation; it cannot be posted after."""
    ledger = fresh_ledger()
    ledger.apply(BOOK.adjustment(H1, "20261126", 1000, increase=True))
    ledger.apply(BOOK.redemption_reserve(H1, "R1", 1000))
    assert ledger.apply(BOOK.redemption_void(H1, "R1", 1000)) is ChainResult.OK
    assert ledger.balance(BOOK.holder(H1)) == 1000 and not ledger.open_pending
    r = arith.redemption(1000, 10000, Fraction(0))
    assert ledger.apply(BOOK.redemption_confirm(H1, "R1", r)) is ChainResult.FAILED


@ta_settings
@given(
    st.lists(st.tuples(st.sampled_from([H1, H2]), amounts, navs, fee_rates), min_size=1, max_size=6),
    st.integers(0, 10**5),
    st.integers(0, 10**8 - 1),
)
def test_rollback_by_reversal_returns_to_zero(purchases, dpu, income) -> None:
    """Goal: book purchases, redemptions, dividends and MMF income; reversing
    every transfer in reverse order (never deleting) leaves every account at
    zero and every ledger balanced, and the reversals have fresh ids."""
    ledger = fresh_ledger()
    for n, (holder, amount, nav, fee_rate) in enumerate(purchases):
        p = arith.purchase(amount, fee_rate, Fraction(1), nav)
        if p.shares:
            assert ledger.apply(BOOK.purchase(holder, f"P{n}", p)) is ChainResult.OK
    register = {h: (ledger.balance(BOOK.holder(h)), m)
                for h, m in ((H1, DividendMethod.REINVEST), (H2, DividendMethod.CASH))}  # fmt: skip
    dist = arith.dividend_distribution(register, dpu, 10000)
    for h, d in dist.per_holder.items():
        assert ledger.apply(BOOK.dividend(h, "20261126", d)) is not ChainResult.FAILED
    ledger.apply(BOOK.dividend_residual("20261126", dist.residual))
    mmf = arith.mmf_income({h: ledger.balance(BOOK.holder(h)) for h in (H1, H2)}, income)
    for h, units in mmf.per_holder.items():
        ledger.apply(BOOK.mmf_income(h, "20261126", units))
    ledger.apply(BOOK.mmf_residual("20261126", mmf.residual))
    held = ledger.balance(BOOK.holder(H1))
    if held:
        ledger.apply(BOOK.redemption_reserve(H1, "R1", held))
        r = arith.redemption(held, 10000, rate_e4(50))
        assert ledger.apply(BOOK.redemption_confirm(H1, "R1", r)) is ChainResult.OK
    assert_balanced(ledger)

    booked = [ledger.postings[i] for i in reversed(ledger.order)]
    reversals = tuple(reverse(p) for p in booked if p.kind is not PostingKind.PENDING)
    assert not ({p.id for p in reversals} & set(ledger.postings))
    assert ledger.apply(reversals) is ChainResult.OK
    for account_id in ledger.accounts:
        assert ledger.balance(account_id) == 0
    assert_balanced(ledger)


def test_pending_hold_is_voided_not_reversed() -> None:
    """Goal: rollback releases an unresolved hold with a void; reversing a
    pending posting is refused."""
    ledger = fresh_ledger()
    ledger.apply(BOOK.adjustment(H1, "20261126", 500, increase=True))
    (hold,) = BOOK.redemption_reserve(H1, "R1", 500)
    ledger.apply((hold,))
    with pytest.raises(InvalidInput):
        reverse(hold)
    assert ledger.apply((void(hold),)) is ChainResult.OK
    assert not ledger.open_pending and ledger.balance(BOOK.holder(H1)) == 500


def test_plan_shapes() -> None:
    """Goal: zero-amount legs are left out; subscription books code 120;
    each leg of an order has its own id; a share purchase of 0 is refused."""
    p = arith.purchase(100000, Fraction(0), Fraction(1), 10000)
    chain = BOOK.purchase(H1, "S1", p, BusinessCode.SUBSCRIPTION)
    assert [x.leg.name for x in chain] == ["NET", "SHARES"]  # no fee leg
    assert {x.code for x in chain} == {120}
    assert len({x.id for x in chain}) == len(chain)
    with pytest.raises(InvalidInput):
        BOOK.purchase(H1, "S2", arith.purchase(1, Fraction(0), Fraction(1), 9_999_999))
    with pytest.raises(InvalidInput):
        share_ledger("ABC")
    d = arith.dividend(0, 500, 10000, DividendMethod.CASH)
    assert BOOK.dividend(H1, "20261126", d) == ()
    assert BOOK.mmf_residual("20261126", 0) == ()
