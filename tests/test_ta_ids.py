"""Properties of the deterministic ledger ids (ta.ids).

Ids are the idempotency keys of the clearing service: the same business key
must always give the same id, different keys different ids, and no id may be
0 or 2**128-1.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ta import ids
from ta.errors import InvalidInput
from ta.ids import AccountKind, EventKind, HolderKey, Leg

ta_settings = settings(max_examples=300, deadline=None)

codes = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=9)
serials = st.text(alphabet="0123456789ABCDEFabcdef-", min_size=1, max_size=24)
legs = st.sampled_from(list(Leg))
holders = st.builds(HolderKey, codes, codes, codes)


def golden_expected(parts: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(parts, digest_size=16, person=person).digest(), "big")


@ta_settings
@given(codes, codes, serials, legs, st.integers(0, 3))
def test_transfer_id_is_deterministic_and_valid(ta, dist, serial, leg, attempt) -> None:
    """Goal: the same key always gives the same id, within 1 .. 2**128-2."""
    first = ids.transfer_id(ta, dist, serial, leg, attempt)
    assert first == ids.transfer_id(ta, dist, serial, leg, attempt)
    assert 0 < first < 2**128 - 1


@ta_settings
@given(
    st.tuples(codes, codes, serials, legs, st.integers(0, 2)),
    st.tuples(codes, codes, serials, legs, st.integers(0, 2)),
)
def test_different_keys_give_different_ids(a, b) -> None:
    """Goal: distinct (TA, distributor, serial, leg, attempt) never collide,
    including keys whose concatenations are equal ("1","23" vs "12","3")."""
    if a != b:
        assert ids.transfer_id(*a) != ids.transfer_id(*b)


def test_concatenation_ambiguity_is_impossible() -> None:
    """Goal: parts are length-prefixed, so shifting characters between parts
    changes the id."""
    assert ids.transfer_id("1", "23", "X", Leg.NET) != ids.transfer_id("12", "3", "X", Leg.NET)
    assert ids.transfer_id("1", "2", "3X", Leg.NET) != ids.transfer_id("1", "23", "X", Leg.NET)


def test_golden_value_is_stable() -> None:
    """Goal: the derivation never changes silently: ids are on disk forever."""
    value = ids.transfer_id("01", "ZS001", "20261126000001", Leg.SHARES)
    payload = b"".join(
        b"s" + len(p).to_bytes(4, "big") + p for p in (b"order", b"01", b"ZS001", b"20261126000001")
    ) + b"i" + (1).to_bytes(16, "big") + b"i" + (0).to_bytes(16, "big")
    assert value == golden_expected(payload, b"ta.transfer.v1")


@ta_settings
@given(codes, codes, holders, st.sampled_from(list(EventKind)), legs)
def test_event_ids_separate_holders_and_kinds(ta, fund, holder, kind, leg) -> None:
    """Goal: event ids depend on kind, holder and date; the fund's own leg
    (holder None) differs from every holder's."""
    base = ids.event_transfer_id(ta, kind, fund, "20261126", holder, leg)
    assert base == ids.event_transfer_id(ta, kind, fund, "20261126", holder, leg)
    assert base != ids.event_transfer_id(ta, kind, fund, "20261127", holder, leg)
    assert base != ids.event_transfer_id(ta, kind, fund, "20261126", None, leg)
    assert base != ids.event_transfer_id(ta, kind, fund, "20261126", holder, leg, attempt=1)


@ta_settings
@given(codes, codes, serials, legs)
def test_reversal_and_attempt_ids_are_new(ta, dist, serial, leg) -> None:
    """Goal: a reversal and a re-booking after rollback get fresh ids, so
    neither collides with the transfer they follow."""
    original = ids.transfer_id(ta, dist, serial, leg)
    rebooked = ids.transfer_id(ta, dist, serial, leg, attempt=1)
    reversal = ids.reversal_id(original)
    assert len({original, rebooked, reversal, ids.reversal_id(rebooked)}) == 4
    assert reversal == ids.reversal_id(original)


def test_account_ids_are_distinct_per_kind_and_fund() -> None:
    """Goal: every account of two funds and two holders has its own id."""
    h1 = HolderKey("TA0000000001", "ZS001", "T1")
    h2 = HolderKey("TA0000000001", "ZS002", "T1")
    every = []
    for fund in ("000001", "000002"):
        every += [
            ids.holder_share_account_id("01", fund, h1),
            ids.holder_share_account_id("01", fund, h2),
            ids.holder_share_account_id("01", fund, h1, share_class="B"),
            ids.issuance_account_id("01", fund),
            ids.fund_assets_account_id("01", fund),
            ids.fee_account_id("01", fund),
            ids.residual_account_id("01", fund),
            ids.dividend_payable_account_id("01", fund),
        ]
    every += [ids.distributor_settlement_account_id("01", d) for d in ("ZS001", "ZS002")]
    assert len(set(every)) == len(every)
    assert all(ids.valid_id(v) for v in every)
    with pytest.raises(InvalidInput):
        ids.fund_cash_account_id("01", "000001", AccountKind.ISSUANCE)


def test_reserved_digests_are_skipped(monkeypatch) -> None:
    """Goal: a digest of 0 or 2**128-1 is never returned; the next counter is."""
    real = hashlib.blake2b
    calls = []

    class Fake:
        def __init__(self, digest: bytes) -> None:
            self._digest = digest

        def digest(self) -> bytes:
            return self._digest

    def fake_blake2b(data, digest_size, person):
        calls.append(data)
        if len(calls) == 1:
            return Fake(b"\x00" * 16)
        if len(calls) == 2:
            return Fake(b"\xff" * 16)
        return real(data, digest_size=digest_size, person=person)

    monkeypatch.setattr(ids.hashlib, "blake2b", fake_blake2b)
    value = ids.transfer_id("01", "ZS001", "S1", Leg.NET)
    assert ids.valid_id(value) and len(calls) == 3
    assert calls[1] == calls[0] + (1).to_bytes(2, "big")


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: ids.transfer_id("", "ZS001", "S1", Leg.NET), InvalidInput),
        (lambda: ids.transfer_id("01", "ZS001 ", "S1", Leg.NET), InvalidInput),
        (lambda: ids.transfer_id("01", "ZS001", "S1", 0), InvalidInput),
        (lambda: ids.transfer_id("01", "ZS001", "S1", Leg.NET, attempt=-1), InvalidInput),
        (lambda: ids.transfer_id("01", 7, "S1", Leg.NET), TypeError),
        (lambda: ids.reversal_id(0), InvalidInput),
    ],
)
def test_bad_keys_are_refused(call, error) -> None:
    """Goal: empty, padded or mistyped key parts are caller errors, not ids."""
    with pytest.raises(error):
        call()


def test_record_digest_ignores_field_order_but_not_content() -> None:
    """Goal: a re-sent identical order (any field order) has the same digest;
    any changed value, or a str for an int, has another."""
    a = {"AppSheetSerialNo": "S1", "ApplicationAmount": 1000000, "FundCode": "000001"}
    b = dict(reversed(list(a.items())))
    assert ids.record_digest(a) == ids.record_digest(b)
    assert ids.record_digest(a) != ids.record_digest({**a, "ApplicationAmount": 1000001})
    assert ids.record_digest(a) != ids.record_digest({**a, "ApplicationAmount": "1000000"})
