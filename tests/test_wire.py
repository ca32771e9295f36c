"""The peer wire format round-trips every consensus message, and a hostile or
damaged frame raises exactly one exception type (WireError), never anything
else, so a bad peer cannot crash a replica."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.ballot import Ballot
from consensus.messages import ALL_MESSAGE_TYPES, RejectReason
from ledger import wire

CLUSTER = "test-cluster"
U64 = st.integers(min_value=0, max_value=wire.U64_MAX)
SMALL = st.integers(min_value=0, max_value=1000)
BALLOTS = st.builds(Ballot, SMALL, SMALL)
VALUES = st.binary(max_size=64)

FIELD_STRATEGIES = {
    "ballot": BALLOTS,
    "promised": BALLOTS,
    "transfer": st.booleans(),
    "transfer_from": BALLOTS,
    "granted": st.booleans(),
    "accepted": st.lists(st.tuples(U64, BALLOTS, VALUES), max_size=5).map(tuple),
    "entries": st.lists(st.tuples(U64, VALUES), max_size=5).map(tuple),
    "slots": st.lists(U64, max_size=5).map(tuple),
    "reason": st.sampled_from(list(RejectReason)),
    "base_digest": st.binary(min_size=32, max_size=32),
    "digest": st.binary(min_size=32, max_size=32),
    "rows": st.binary(max_size=64),
}


def message_strategy(cls, src):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name == "src":
            kwargs["src"] = st.just(src)
        else:
            kwargs[f.name] = FIELD_STRATEGIES.get(f.name, U64)
    return st.builds(cls, **kwargs)


def messages_strategy(src=1):
    return st.lists(
        st.one_of(*[message_strategy(c, src) for c in wire.PEER_MESSAGE_TYPES]), min_size=1, max_size=6
    )


def test_every_message_type_has_a_stable_code():
    """A consensus message without a wire type code could not be sent at all."""
    assert set(wire.TYPE_CODES) == set(wire.PEER_MESSAGE_TYPES)
    assert set(ALL_MESSAGE_TYPES) < set(wire.PEER_MESSAGE_TYPES)
    assert len(set(wire.TYPE_CODES.values())) == len(wire.TYPE_CODES)


@given(messages_strategy())
@settings(max_examples=300)
def test_round_trip(messages):
    """Whatever the core sends arrives as an equal message."""
    frame = wire.encode_frame(CLUSTER, 1, messages)
    sender, decoded = wire.decode_frame(frame, CLUSTER)
    assert sender == 1
    assert decoded == messages


@given(messages_strategy(), st.data())
@settings(max_examples=200)
def test_truncated_frames_raise_wire_error(messages, data):
    """Any strict prefix of a frame is refused cleanly."""
    frame = wire.encode_frame(CLUSTER, 1, messages)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    with pytest.raises(wire.WireError):
        wire.decode_frame(frame[:cut], CLUSTER)


@given(messages_strategy(), st.data())
@settings(max_examples=300)
def test_damaged_frames_never_raise_anything_else(messages, data):
    """Flipped bytes either still decode to messages or raise WireError."""
    frame = bytearray(wire.encode_frame(CLUSTER, 1, messages))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
        frame[i] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        sender, decoded = wire.decode_frame(bytes(frame), CLUSTER)
    except wire.WireError:
        return
    assert all(type(m) in wire.TYPE_CODES for m in decoded)


MSGPACK_OBJECTS = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@given(MSGPACK_OBJECTS)
@settings(max_examples=300)
def test_arbitrary_msgpack_objects_raise_wire_error(obj):
    """Well-formed msgpack that is not a frame is refused with WireError."""
    data = msgpack.packb(obj, use_bin_type=True)
    with pytest.raises(wire.WireError):
        wire.decode_frame(data, CLUSTER)


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_random_bytes_raise_wire_error(data):
    try:
        wire.decode_frame(data, CLUSTER)
    except wire.WireError:
        pass


def _frame(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    "obj, why",
    [
        ([2, CLUSTER, 1, [[1, 1, 2, [1, 1], 0]]], "wire version"),
        ([1, "other", 1, [[1, 1, 2, [1, 1], 0]]], "cluster id"),
        ([1, CLUSTER, 1, []], "no messages"),
        ([1, CLUSTER, 1, [[99, 1, 2]]], "unknown message type"),
        ([1, CLUSTER, 3, [[11, 1, 2, [1, 1], 0]]], "inside a frame of sender"),
        ([1, CLUSTER, 1, [[11, 1, 2, [1, 1], -5]]], "out of range"),
        ([1, CLUSTER, 1, [[11, 1, 2, [1, 1], 0, 7]]], "expected"),
        ([1, CLUSTER, 1, [[11, 1, 2, [1], 0]]], "ballot has 2 fields"),
        ([1, CLUSTER, 1, [[5, 1, 2, [1, 1], [2, 2], 77, 0, 0]]], "unknown reject reason"),
        ([1, CLUSTER, 1, [[11, True, 2, [1, 1], 0]]], "expected an integer"),
    ],
)
def test_specific_refusals_name_the_cause(obj, why):
    """Each kind of bad frame gets a message that says what is wrong."""
    with pytest.raises(wire.WireError, match=why):
        wire.decode_frame(_frame(obj), CLUSTER)


def test_oversized_frame_is_refused_before_parsing():
    with pytest.raises(wire.WireError, match="above the limit"):
        wire.decode_frame(b"\x00" * 101, CLUSTER, frame_bytes_max=100)


def test_non_bytes_input_is_refused():
    with pytest.raises(wire.WireError):
        wire.decode_frame("text", CLUSTER)  # type: ignore[arg-type]


def test_peer_frames_split_by_size_and_count():
    """A turn's messages to one peer are cut into frames a peer will accept."""
    from consensus.messages import Accept, Heartbeat
    from ledger.server_peers import FRAME_TARGET_BYTES, _frames_of

    big = [Accept(1, 2, Ballot(1, 1), ((i, b"x" * (FRAME_TARGET_BYTES // 3)),), 0) for i in range(7)]
    frames = _frames_of(big)
    assert [m for f in frames for m in f] == big
    assert all(len(f) <= 3 for f in frames)
    small = [Heartbeat(1, 2, Ballot(1, 1), 0, i) for i in range(wire.MESSAGES_PER_FRAME_MAX + 5)]
    frames = _frames_of(small)
    assert [len(f) for f in frames] == [wire.MESSAGES_PER_FRAME_MAX, 5]
