"""The replicas' own wire format: versioned msgpack frames of consensus messages.

A frame is one msgpack array::

    [WIRE_VERSION, cluster_id, sender_id, [message, message, ...]]

and each message is an array ``[type_code, field, field, ...]`` whose fields
follow the dataclass field order of ``consensus.messages`` (``src`` and ``dst``
first). Type codes are stable and never reused. A ballot is ``[round,
replica_id]``; entries are ``[slot, value]``; accepted entries ``[slot,
ballot, value]``. Besides the consensus messages a frame may carry a
``WriteSet`` (type 64: the rows a leader's apply of one slot wrote, for its
followers to install; ``ledger.write_set``).

Every frame names the cluster and the sender, so a replica of another cluster
(or a misconfigured address) is refused at once, and a message whose ``src``
differs from the frame's sender is refused too.

Decoding is strict: anything that is not exactly a frame this version writes
(truncated bytes, wrong types, negative or oversized integers, unknown type
codes, extra fields, frames above ``frame_bytes_max``) raises ``WireError``
and nothing else; a hostile peer cannot crash the replica.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import msgpack

from consensus.ballot import Ballot
from consensus.messages import (
    ALL_MESSAGE_TYPES,
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    Message,
    PreVote,
    PreVoteReply,
    Prepare,
    Promise,
    Reject,
    RejectReason,
    TimeoutNow,
)



@dataclasses.dataclass(frozen=True, slots=True)
class WriteSet(Message):
    """The rows the sender's apply of chosen ``slot`` wrote (``ledger.write_set``):
    not a consensus message, and never needed; see that module."""

    slot: int
    base_digest: bytes  # the state digest before the slot (32 bytes)
    digest: bytes  # after it
    rows: bytes  # the encoded write set


WIRE_VERSION = 1
FRAME_BYTES_MAX = 96 * 1024 * 1024  # above Config.message_bytes_max plus framing
MESSAGES_PER_FRAME_MAX = 4096
ENTRIES_PER_MESSAGE_MAX = 1 << 20
CLUSTER_ID_BYTES_MAX = 64
U64_MAX = (1 << 64) - 1

# Stable type codes: never renumber, never reuse.
TYPE_CODES: dict[type, int] = {
    Prepare: 1,
    Promise: 2,
    Accept: 3,
    Accepted: 4,
    Reject: 5,
    Heartbeat: 6,
    HeartbeatAck: 7,
    CatchupRequest: 8,
    CatchupReply: 9,
    TimeoutNow: 10,
    PreVote: 11,
    PreVoteReply: 12,
    WriteSet: 64,
}
PEER_MESSAGE_TYPES = (*ALL_MESSAGE_TYPES, WriteSet)
TYPES_BY_CODE = {code: cls for cls, code in TYPE_CODES.items()}


class WireError(ValueError):
    """A frame that is not a valid frame of this version and cluster."""


# ---------------------------------------------------------------- field kinds
#
# Each field name maps to one kind: an encoder and a strict decoder.


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise WireError(why)


def _dec_uint(x: Any, name: str) -> int:
    _need(type(x) is int, f"{name}: expected an integer, got {type(x).__name__}")
    _need(0 <= x <= U64_MAX, f"{name}: integer {x} out of range")
    return x


def _dec_bool(x: Any, name: str) -> bool:
    _need(type(x) is bool, f"{name}: expected a boolean, got {type(x).__name__}")
    return x


def _dec_bytes(x: Any, name: str) -> bytes:
    _need(type(x) is bytes, f"{name}: expected bytes, got {type(x).__name__}")
    return x


def _dec_list(x: Any, name: str, max_len: int = ENTRIES_PER_MESSAGE_MAX) -> list:
    _need(type(x) is list, f"{name}: expected an array, got {type(x).__name__}")
    _need(len(x) <= max_len, f"{name}: {len(x)} items is above the limit {max_len}")
    return x


def _enc_ballot(b: Ballot) -> list:
    return [b.round, b.replica_id]


def _dec_ballot(x: Any, name: str) -> Ballot:
    x = _dec_list(x, name, 2)
    _need(len(x) == 2, f"{name}: a ballot has 2 fields, got {len(x)}")
    return Ballot(_dec_uint(x[0], f"{name}.round"), _dec_uint(x[1], f"{name}.replica_id"))


def _enc_entries(entries: Iterable[tuple[int, bytes]]) -> list:
    return [[slot, value] for slot, value in entries]


def _dec_entries(x: Any, name: str) -> tuple:
    out = []
    for i, e in enumerate(_dec_list(x, name)):
        e = _dec_list(e, f"{name}[{i}]", 2)
        _need(len(e) == 2, f"{name}[{i}]: an entry has 2 fields")
        out.append((_dec_uint(e[0], f"{name}[{i}].slot"), _dec_bytes(e[1], f"{name}[{i}].value")))
    return tuple(out)


def _enc_accepted(entries: Iterable[tuple[int, Ballot, bytes]]) -> list:
    return [[slot, _enc_ballot(ballot), value] for slot, ballot, value in entries]


def _dec_accepted(x: Any, name: str) -> tuple:
    out = []
    for i, e in enumerate(_dec_list(x, name)):
        e = _dec_list(e, f"{name}[{i}]", 3)
        _need(len(e) == 3, f"{name}[{i}]: an accepted entry has 3 fields")
        out.append(
            (
                _dec_uint(e[0], f"{name}[{i}].slot"),
                _dec_ballot(e[1], f"{name}[{i}].ballot"),
                _dec_bytes(e[2], f"{name}[{i}].value"),
            )
        )
    return tuple(out)


def _dec_slots(x: Any, name: str) -> tuple:
    return tuple(_dec_uint(s, f"{name}[{i}]") for i, s in enumerate(_dec_list(x, name)))


def _dec_digest(x: Any, name: str) -> bytes:
    _need(type(x) is bytes and len(x) == 32, f"{name}: expected 32 bytes")
    return x


def _dec_reason(x: Any, name: str) -> RejectReason:
    code = _dec_uint(x, name)
    try:
        return RejectReason(code)
    except ValueError:
        raise WireError(f"{name}: unknown reject reason {code}") from None


_identity: Callable[[Any], Any] = lambda v: v  # noqa: E731

Kind = tuple[Callable[[Any], Any], Callable[[Any, str], Any]]
KINDS: dict[str, Kind] = {
    "src": (_identity, _dec_uint),
    "dst": (_identity, _dec_uint),
    "ballot": (_enc_ballot, _dec_ballot),
    "promised": (_enc_ballot, _dec_ballot),
    "from_slot": (_identity, _dec_uint),
    "to_slot": (_identity, _dec_uint),
    "transfer": (_identity, _dec_bool),
    "transfer_from": (_enc_ballot, _dec_ballot),
    "granted": (_identity, _dec_bool),
    "accepted": (_enc_accepted, _dec_accepted),
    "entries": (_enc_entries, _dec_entries),
    "slots": (list, _dec_slots),
    "chosen_below": (_identity, _dec_uint),
    "log_start": (_identity, _dec_uint),
    "seq": (_identity, _dec_uint),
    "leader_id": (_identity, _dec_uint),
    "reason": (int, _dec_reason),
    "slot": (_identity, _dec_uint),
    "base_digest": (_identity, _dec_digest),
    "digest": (_identity, _dec_digest),
    "rows": (_identity, _dec_bytes),
}

# Per type: the ordered (field name, encoder, decoder) list. Built from the
# dataclasses so that a field added to a message without a wire kind fails
# here, at import, and in the tests, never at run time.
_SCHEMAS: dict[type, tuple[tuple[str, Callable, Callable], ...]] = {}
for _cls in TYPE_CODES:
    _fields = []
    for _f in dataclasses.fields(_cls):
        if _f.name not in KINDS:
            raise AssertionError(f"wire: no kind for {_cls.__name__}.{_f.name}")
        _fields.append((_f.name, *KINDS[_f.name]))
    _SCHEMAS[_cls] = tuple(_fields)
if set(TYPE_CODES) != set(PEER_MESSAGE_TYPES):
    raise AssertionError("wire: a consensus message type has no type code")


# ---------------------------------------------------------------- frames


def _encode_message(msg: Message) -> list:
    cls = type(msg)
    out = [TYPE_CODES[cls]]
    for name, enc, _dec in _SCHEMAS[cls]:
        out.append(enc(getattr(msg, name)))
    return out


def encode_frame(cluster_id: str, sender_id: int, messages: Sequence[Message]) -> bytes:
    """One frame carrying ``messages``, all sent by ``sender_id``."""
    assert messages, "a frame carries at least one message"
    assert len(messages) <= MESSAGES_PER_FRAME_MAX
    for m in messages:
        assert m.src == sender_id, f"message from {m.src} in a frame of sender {sender_id}"
    return msgpack.packb(
        [WIRE_VERSION, cluster_id, sender_id, [_encode_message(m) for m in messages]],
        use_bin_type=True,
    )


def _decode_message(x: Any, i: int) -> Message:
    x = _dec_list(x, f"message[{i}]", 16)
    _need(len(x) >= 1, f"message[{i}]: empty")
    code = _dec_uint(x[0], f"message[{i}].type")
    cls = TYPES_BY_CODE.get(code)
    _need(cls is not None, f"message[{i}]: unknown message type {code}")
    schema = _SCHEMAS[cls]
    _need(
        len(x) == 1 + len(schema),
        f"message[{i}] ({cls.__name__}): expected {len(schema)} fields, got {len(x) - 1}",
    )
    kwargs = {name: dec(v, f"{cls.__name__}.{name}") for (name, _e, dec), v in zip(schema, x[1:])}
    return cls(**kwargs)


def decode_frame(
    data: bytes,
    cluster_id: str,
    frame_bytes_max: int = FRAME_BYTES_MAX,
) -> tuple[int, list[Message]]:
    """(sender id, messages) of a frame, or ``WireError``; nothing else is raised."""
    if type(data) is not bytes:
        raise WireError(f"a frame is bytes, got {type(data).__name__}")
    if len(data) > frame_bytes_max:
        raise WireError(f"frame of {len(data)} bytes is above the limit {frame_bytes_max}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=frame_bytes_max,
            max_str_len=CLUSTER_ID_BYTES_MAX * 4,
            max_array_len=ENTRIES_PER_MESSAGE_MAX,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises several types for bad input
        raise WireError(f"not a msgpack frame: {type(e).__name__}: {e}") from None
    try:
        return _decode_frame_object(obj, cluster_id)
    except WireError:
        raise
    except Exception as e:  # a bug in the checks above must not crash the replica either
        raise WireError(f"invalid frame: {type(e).__name__}: {e}") from None


def _decode_frame_object(obj: Any, cluster_id: str) -> tuple[int, list[Message]]:
    obj = _dec_list(obj, "frame", 4)
    _need(len(obj) == 4, f"frame: expected 4 fields, got {len(obj)}")
    version = _dec_uint(obj[0], "frame.version")
    _need(version == WIRE_VERSION, f"frame: wire version {version}, this replica speaks {WIRE_VERSION}")
    _need(type(obj[1]) is str, "frame.cluster_id: expected a string")
    _need(
        obj[1] == cluster_id,
        f"frame: cluster id {obj[1]!r} is not this cluster's {cluster_id!r} "
        "(a replica of another cluster, or a wrong address in the topology)",
    )
    sender = _dec_uint(obj[2], "frame.sender_id")
    raw = _dec_list(obj[3], "frame.messages", MESSAGES_PER_FRAME_MAX)
    _need(len(raw) >= 1, "frame: no messages")
    messages = [_decode_message(m, i) for i, m in enumerate(raw)]
    for m in messages:
        _need(m.src == sender, f"frame: message from {m.src} inside a frame of sender {sender}")
    return sender, messages
