"""Request validation and the one error-to-status mapping.

Goal: 128-bit fields accept exactly empty (zero) or 16 big-endian bytes and
round-trip every value; out-of-range fields are refused as the caller's
fault; every error class maps to one gRPC status and back to the same class
on the client side, carrying the leader hint.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import api, errors
from ledger.api_proto import pb
from ledger.client import account_model, account_pb, transfer_model, transfer_pb
from ledger.model import U128_MAX, Account, Transfer

U128 = st.integers(min_value=0, max_value=U128_MAX)


@given(U128)
def test_u128_round_trip(value):
    assert api.u128(api.u128_bytes(value), "x") == value


@pytest.mark.parametrize("length", [1, 8, 15, 17, 32])
def test_u128_wrong_length_is_invalid_argument(length):
    with pytest.raises(errors.InvalidArgument, match=f"got {length} bytes"):
        api.u128(b"\x01" * length, "amount")


def test_empty_u128_means_zero():
    assert api.u128(b"", "pending_id") == 0


@given(st.builds(
    Transfer, id=U128, debit_account_id=U128, credit_account_id=U128, amount=U128, pending_id=U128,
    user_data_128=U128, user_data_64=st.integers(0, 2**64 - 1), user_data_32=st.integers(0, 2**32 - 1),
    timeout=st.integers(0, 2**32 - 1), ledger=st.integers(0, 2**32 - 1), code=st.integers(0, 2**16 - 1),
    flags=st.integers(0, 2**16 - 1), timestamp=st.integers(0, 2**64 - 1),
))
def test_transfer_survives_client_and_server_conversions(t):
    message = pb.Transfer.FromString(transfer_pb(t).SerializeToString())
    assert api.transfer_from_pb(message, 0) == t
    assert transfer_model(api.transfer_to_pb(t)) == t


@given(st.builds(Account, id=U128, ledger=st.integers(0, 2**32 - 1), code=st.integers(0, 2**16 - 1),
                 flags=st.integers(0, 2**16 - 1), debits_posted=U128, credits_pending=U128))
def test_account_survives_client_and_server_conversions(a):
    assert api.account_from_pb(account_pb(a), 0) == a
    assert account_model(api.account_to_pb(a)) == a


def test_sixteen_bit_fields_are_range_checked():
    with pytest.raises(errors.InvalidArgument, match=r"transfers\[3\].code"):
        api.transfer_from_pb(pb.Transfer(code=70_000), 3)


def test_batch_limits():
    with pytest.raises(errors.InvalidArgument, match="empty"):
        api._batch_size(0, "CreateTransfers")
    with pytest.raises(errors.BatchTooLarge, match="8190"):
        api._batch_size(8191, "CreateTransfers")
    api._batch_size(8190, "CreateTransfers")


ALL_ERRORS = [
    errors.InvalidArgument("bad"), errors.BatchTooLarge("big"), errors.NotLeader("no", "r2", "h:1"),
    errors.Overloaded("full"), errors.OutcomeUnknown("lost"), errors.ReplicaStopped("disk"),
    errors.DeadlineExceeded("late"),
]


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_maps_to_one_status_and_back(error):
    code, metadata = errors.status_of(error)
    assert isinstance(code, grpc.StatusCode)
    back = errors.from_status(code, error.message, metadata)
    assert type(back) is type(error)
    if isinstance(error, errors.NotLeader):
        assert (back.leader_id, back.leader_address) == ("r2", "h:1")


def test_mapping_covers_the_whole_hierarchy():
    def leaves(cls):
        subs = cls.__subclasses__()
        return [cls] if not subs else [leaf for s in subs for leaf in leaves(s)]

    assert set(leaves(errors.LedgerError)) == set(errors.STATUS_CODES)


def test_prefix_end():
    assert api._prefix_end(b"ab") == b"ac"
    assert api._prefix_end(b"a\xff") == b"b"
    assert api._prefix_end(b"\xff\xff") is None


@given(st.lists(st.builds(
    Transfer, id=U128, debit_account_id=U128, credit_account_id=U128, amount=U128, pending_id=U128,
    user_data_128=U128, user_data_64=st.integers(0, 2**64 - 1), user_data_32=st.integers(0, 2**32 - 1),
    timeout=st.integers(0, 2**32 - 1), ledger=st.integers(0, 2**32 - 1), code=st.integers(0, 2**16 - 1),
    flags=st.integers(0, 2**16 - 1), timestamp=st.integers(0, 2**64 - 1),
), max_size=5))
def test_fast_transfer_rows_equal_the_model_rows(transfers):
    """The CreateTransfers hot path packs exactly what the model packs."""
    messages = [transfer_pb(t) for t in transfers]
    assert api.transfer_rows(messages) == b"".join(t.pack() for t in transfers)


def test_fast_transfer_rows_validate():
    with pytest.raises(errors.InvalidArgument, match=r"transfers\[0\].amount.*got 17 bytes"):
        api.transfer_rows([pb.Transfer(amount=b"\x01" * 17)])
    with pytest.raises(errors.InvalidArgument, match=r"transfers\[0\].flags"):
        api.transfer_rows([pb.Transfer(flags=1 << 16)])
