"""Fuzzing the decoders that read bytes from outside: peer frames, log entries, TA data files.

Goal: whatever the input, each decoder either accepts it or refuses it with
its one documented error (``WireError``, ``MalformedCommand``,
``FileRejected``), never another exception and never a hang; what it accepts
re-encodes to the same meaning; and a log entry that is refused changes no
state (applied to the in-memory tables, the digest stays). Beyond the random
and damaged bytes of ``test_wire``/``test_ta_files``, these mutate *valid*
inputs at the level of their structure (a field replaced by another type, a
list truncated or extended, a line dropped or repeated), where a lax decoder
would let something through.
"""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import commands as cmd
from ledger import wire
from ledger.model import ROW_BYTES
from ledger.server_sm import make_applier
from ledger.tables import MemoryTables
from ta.errors import FileError, FileRejected
from ta.files import read_data_file
from test_ta_files import GOOD_RAW
from test_wire import CLUSTER, messages_strategy

fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any msgpack value (with bounded size), the replacement material of the mutations.
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=20), st.binary(max_size=40),
)
OBJECTS = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                        st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                       max_leaves=20)


@st.composite
def mutated(draw, obj):
    """``obj`` (nested lists) with one to three structural changes at random paths."""
    obj = _copy(obj)
    for _ in range(draw(st.integers(1, 3))):
        path = []
        node = obj
        while isinstance(node, list) and node and draw(st.booleans()):
            i = draw(st.integers(0, len(node) - 1))
            path.append(i)
            node = node[i]
        parent = obj
        for i in path[:-1]:
            parent = parent[i]
        op = draw(st.sampled_from(["replace", "drop", "append", "wrap"]))
        if not path:
            if op == "replace":
                obj = draw(OBJECTS)
            elif op == "wrap":
                obj = [obj]
            elif isinstance(obj, list) and op == "drop" and obj:
                obj.pop()
            elif isinstance(obj, list):
                obj.append(draw(OBJECTS))
            continue
        i = path[-1]
        if op == "replace":
            parent[i] = draw(OBJECTS)
        elif op == "drop":
            del parent[i]
        elif op == "append":
            parent.insert(i, draw(OBJECTS))
        else:
            parent[i] = [parent[i]]
    return obj


def _copy(obj):
    return [_copy(x) for x in obj] if isinstance(obj, list) else obj


# ---------------------------------------------------------------- peer frames


@fuzz
@given(messages_strategy(), st.data())
def test_structurally_mutated_frames_decode_or_raise_wire_error(messages, data):
    """A valid frame changed at the msgpack level (fields replaced, dropped, added, wrapped)."""
    frame = msgpack.unpackb(wire.encode_frame(CLUSTER, 1, messages), raw=False)
    bad = data.draw(mutated(frame))
    raw = msgpack.packb(bad, use_bin_type=True)
    try:
        sender, decoded = wire.decode_frame(raw, CLUSTER)
    except wire.WireError:
        return
    # Accepted: it is a frame this version writes, and writing it again gives the same messages.
    assert wire.decode_frame(wire.encode_frame(CLUSTER, sender, decoded), CLUSTER) == (sender, decoded)


# ---------------------------------------------------------------- log entries

ROWS = st.binary(min_size=ROW_BYTES, max_size=ROW_BYTES)
COMMANDS = st.one_of(
    st.lists(ROWS, min_size=1, max_size=3).map(lambda rows: cmd.CreateAccounts(b"".join(rows))),
    st.lists(ROWS, min_size=1, max_size=3).map(lambda rows: cmd.CreateTransfers(b"".join(rows))),
    st.builds(cmd.KvPut, st.binary(min_size=1, max_size=20), st.binary(max_size=40)),
    st.builds(cmd.KvDelete, st.binary(min_size=1, max_size=20)),
    st.builds(cmd.KvCas, st.binary(min_size=1, max_size=20), st.integers(0, 2**64 - 1), st.binary(max_size=40)),
    st.just(cmd.Noop()),
)
BATCHES = st.builds(cmd.encode_batch, st.integers(1, cmd.TIMESTAMP_MAX), st.lists(COMMANDS, min_size=1, max_size=4))


def _apply_or_refuse(value: bytes) -> None:
    """Apply ``value`` to fresh tables: refused values leave them as they were."""
    tables = MemoryTables()
    before = tables.digest
    try:
        batch = cmd.decode_batch(value)
    except cmd.MalformedCommand:
        batch = None
    result = make_applier()(tables, 1, value)
    if value == b"":  # the consensus NOOP: not a batch, applies as nothing
        assert result == [] and tables.digest == before
    elif batch is None:
        assert result is None and tables.digest == before
    else:
        assert result is not None and len(result) == len(batch.commands)
        assert cmd.decode_batch(cmd.encode_batch(batch.timestamp_ns, batch.commands)) == batch


@fuzz
@given(BATCHES, st.data())
def test_structurally_mutated_log_entries_apply_or_change_nothing(value, data):
    """A valid slot value changed at the msgpack level is applied as a batch or skipped whole."""
    bad = data.draw(mutated(msgpack.unpackb(value, raw=False)))
    _apply_or_refuse(msgpack.packb(bad, use_bin_type=True))


@fuzz
@given(BATCHES, st.data())
def test_damaged_log_entry_bytes_apply_or_change_nothing(value, data):
    """Truncated or byte-damaged slot values: decoded and applied, or refused with nothing written."""
    raw = bytearray(value)
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    for _ in range(data.draw(st.integers(0, 3))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _apply_or_refuse(bytes(raw))


@fuzz
@given(st.one_of(st.binary(max_size=300), OBJECTS.map(lambda o: msgpack.packb(o, use_bin_type=True))))
def test_arbitrary_log_entries_apply_or_change_nothing(value):
    """Random bytes and random msgpack objects as slot values."""
    _apply_or_refuse(value)


def test_oversized_log_entry_headers_are_refused_at_once():
    """Length headers that promise more than the value holds fail without allocating them."""
    for value in (b"\xdd\xff\xff\xff\xff", b"\x93\x01\x01\xdd\xff\xff\xff\xff",
                  b"\x93\x01\x01\x91\x92\x02\xc6\xff\xff\xff\xff"):
        _apply_or_refuse(value)


# ---------------------------------------------------------------- TA data files

LINES = GOOD_RAW.split(b"\r\n")


@fuzz
@given(st.data())
def test_line_level_mutations_of_a_good_file_read_or_are_rejected(data):
    """Lines of a valid TA data file dropped, repeated, swapped, cut, padded or re-encoded."""
    lines = list(LINES)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["drop", "repeat", "swap", "cut", "pad", "utf8", "random"]))
        if op == "drop":
            del lines[i]
        elif op == "repeat":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "cut":
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
        elif op == "pad":
            lines[i] = lines[i] + data.draw(st.binary(min_size=1, max_size=5))
        elif op == "utf8":
            lines[i] = lines[i].decode("gb18030", errors="replace").encode("utf-8")
        else:
            lines[i] = data.draw(st.binary(max_size=80))
    sep = data.draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    try:
        read_data_file(sep.join(lines))
    except FileRejected as exc:
        assert isinstance(exc.code, FileError)
