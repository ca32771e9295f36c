"""The log encoding: one slot value is one msgpack-encoded batch of commands.

A batch is the msgpack array ``[format_version, timestamp_ns, [command, ...]]``
where ``timestamp_ns`` is the leader's clock when it built the batch (ns, at
most ``TIMESTAMP_MAX``) and
each command is an array whose first item is its ``CommandKind``::

    [CREATE_ACCOUNTS, events]              events: n x 128-byte account rows
    [CREATE_TRANSFERS, events]             events: n x 128-byte transfer rows
    [KV_PUT, key, value]                   bin, bin
    [KV_DELETE, key]                       bin
    [KV_CAS, key, expected_version, value] expected_version 0: must not exist
    [NOOP]

Events travel as the fixed 128-byte rows of ``ledger.model`` packed back to
back in one bin: decoding them is one ``struct.iter_unpack`` and an id is its
own table key, which keeps per-event cost low. Every row field is fixed-width,
so any 128 bytes are a well-formed event; the state machine judges the
values (result codes). The empty value ``b""`` is the consensus NOOP, not a
batch; ``decode_batch`` refuses it.

``decode_batch`` raises ``MalformedCommand`` and nothing else on any input
that is not a well-formed batch within the limits below.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, Sequence, Union

import msgpack

from ledger.model import ROW_BYTES, U64_MAX, Account, Transfer

FORMAT_VERSION = 1

EVENTS_PER_COMMAND_MAX = 8190
COMMANDS_PER_BATCH_MAX = 8192
# A KV key is a key of the ``kv`` table, and LMDB's keys are at most 511 bytes
# (``ledger.storage.KEY_BYTES_MAX``): a longer key would apply on MemoryTables
# and fail on disk.
KV_KEY_BYTES_MAX = 511
KV_VALUE_BYTES_MAX = 1024 * 1024
# Leader timestamps are nanoseconds since the epoch (until the year 2262); the
# headroom above keeps every timestamp the state machine derives, and every
# pending expiry, inside u64.
TIMESTAMP_MAX = (1 << 63) - 1
# A slot value is at most consensus.Config.slot_bytes_max (16 MiB by default).
BATCH_BYTES_MAX = 16 * 1024 * 1024

assert EVENTS_PER_COMMAND_MAX * ROW_BYTES < BATCH_BYTES_MAX
assert KV_KEY_BYTES_MAX + KV_VALUE_BYTES_MAX < BATCH_BYTES_MAX


class MalformedCommand(ValueError):
    """A slot value that is not a well-formed batch (the proposer's bug or hostile input)."""


class CommandKind(IntEnum):
    NOOP = 0
    CREATE_ACCOUNTS = 1
    CREATE_TRANSFERS = 2
    KV_PUT = 3
    KV_DELETE = 4
    KV_CAS = 5


@dataclass(frozen=True, slots=True)
class CreateAccounts:
    events: bytes  # n x 128-byte account rows, timestamp 0

    @classmethod
    def of(cls, accounts: Iterable[Account]) -> CreateAccounts:
        return cls(b"".join(a.pack() for a in accounts))

    @property
    def count(self) -> int:
        return len(self.events) // ROW_BYTES

    def accounts(self) -> list[Account]:
        e = self.events
        return [Account.unpack(e[i : i + ROW_BYTES]) for i in range(0, len(e), ROW_BYTES)]


@dataclass(frozen=True, slots=True)
class CreateTransfers:
    events: bytes  # n x 128-byte transfer rows, timestamp 0

    @classmethod
    def of(cls, transfers: Iterable[Transfer]) -> CreateTransfers:
        return cls(b"".join(t.pack() for t in transfers))

    @property
    def count(self) -> int:
        return len(self.events) // ROW_BYTES

    def transfers(self) -> list[Transfer]:
        e = self.events
        return [Transfer.unpack(e[i : i + ROW_BYTES]) for i in range(0, len(e), ROW_BYTES)]


@dataclass(frozen=True, slots=True)
class KvPut:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class KvDelete:
    key: bytes


@dataclass(frozen=True, slots=True)
class KvCas:
    key: bytes
    expected_version: int  # 0: the key must not exist
    value: bytes


@dataclass(frozen=True, slots=True)
class Noop:
    pass


Command = Union[CreateAccounts, CreateTransfers, KvPut, KvDelete, KvCas, Noop]


@dataclass(frozen=True, slots=True)
class Batch:
    timestamp_ns: int
    commands: tuple[Command, ...]
    version: int = FORMAT_VERSION


def _event_count_ok(events: object) -> bool:
    return (
        type(events) is bytes
        and len(events) % ROW_BYTES == 0
        and len(events) <= EVENTS_PER_COMMAND_MAX * ROW_BYTES
    )


def _command_to_wire(command: Command) -> list:
    t = type(command)
    if t is CreateTransfers or t is CreateAccounts:
        if not _event_count_ok(command.events):
            raise MalformedCommand(
                f"{t.__name__}: events must be at most {EVENTS_PER_COMMAND_MAX} "
                f"rows of {ROW_BYTES} bytes"
            )
        kind = CommandKind.CREATE_TRANSFERS if t is CreateTransfers else CommandKind.CREATE_ACCOUNTS
        return [int(kind), command.events]
    if t is KvPut:
        return [int(CommandKind.KV_PUT), bytes(command.key), bytes(command.value)]
    if t is KvDelete:
        return [int(CommandKind.KV_DELETE), bytes(command.key)]
    if t is KvCas:
        v = command.expected_version
        if type(v) is not int or not 0 <= v <= U64_MAX:
            raise MalformedCommand(f"KvCas: expected_version {v!r} is not a u64")
        return [int(CommandKind.KV_CAS), bytes(command.key), v, bytes(command.value)]
    if t is Noop:
        return [int(CommandKind.NOOP)]
    raise MalformedCommand(f"not a command: {command!r}")


def encode_batch(timestamp_ns: int, commands: Sequence[Command]) -> bytes:
    """The slot value for ``commands``; MalformedCommand if it breaks a limit."""
    if type(timestamp_ns) is not int or not 0 <= timestamp_ns <= TIMESTAMP_MAX:
        raise MalformedCommand(f"timestamp {timestamp_ns!r} is not in 0..TIMESTAMP_MAX")
    if not commands:
        raise MalformedCommand("a batch holds at least one command")
    if len(commands) > COMMANDS_PER_BATCH_MAX:
        raise MalformedCommand(f"more than {COMMANDS_PER_BATCH_MAX} commands")
    value = msgpack.packb(
        [FORMAT_VERSION, timestamp_ns, [_command_to_wire(c) for c in commands]],
        use_bin_type=True,
    )
    if len(value) > BATCH_BYTES_MAX:
        raise MalformedCommand(f"batch of {len(value)} bytes exceeds {BATCH_BYTES_MAX}")
    return value


def _command_from_wire(item: object) -> Command:
    if type(item) is not list or not item or type(item[0]) is not int:
        raise MalformedCommand("a command is a non-empty array starting with its kind")
    kind, n = item[0], len(item)
    if kind == CommandKind.CREATE_TRANSFERS or kind == CommandKind.CREATE_ACCOUNTS:
        if n != 2 or not _event_count_ok(item[1]):
            raise MalformedCommand(
                f"create command: events must be at most {EVENTS_PER_COMMAND_MAX} "
                f"rows of {ROW_BYTES} bytes"
            )
        if kind == CommandKind.CREATE_TRANSFERS:
            return CreateTransfers(item[1])
        return CreateAccounts(item[1])
    if kind == CommandKind.KV_PUT:
        if n != 3 or type(item[1]) is not bytes or type(item[2]) is not bytes:
            raise MalformedCommand("KV_PUT is [kind, key bin, value bin]")
        return KvPut(item[1], item[2])
    if kind == CommandKind.KV_DELETE:
        if n != 2 or type(item[1]) is not bytes:
            raise MalformedCommand("KV_DELETE is [kind, key bin]")
        return KvDelete(item[1])
    if kind == CommandKind.KV_CAS:
        if (
            n != 4
            or type(item[1]) is not bytes
            or type(item[2]) is not int
            or not 0 <= item[2] <= U64_MAX
            or type(item[3]) is not bytes
        ):
            raise MalformedCommand("KV_CAS is [kind, key bin, expected_version u64, value bin]")
        return KvCas(item[1], item[2], item[3])
    if kind == CommandKind.NOOP:
        if n != 1:
            raise MalformedCommand("NOOP is [kind]")
        return Noop()
    raise MalformedCommand(f"unknown command kind {kind}")


def decode_batch(value: bytes) -> Batch:
    """The batch in a slot value; MalformedCommand (only) if it is not one."""
    if type(value) is not bytes:
        raise MalformedCommand("a slot value is bytes")
    if not value:
        raise MalformedCommand("the empty value is the consensus NOOP, not a batch")
    if len(value) > BATCH_BYTES_MAX:
        raise MalformedCommand(f"batch of {len(value)} bytes exceeds {BATCH_BYTES_MAX}")
    try:
        top = msgpack.unpackb(
            value,
            raw=True,
            use_list=True,
            strict_map_key=True,
            max_array_len=COMMANDS_PER_BATCH_MAX,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many types on hostile bytes
        raise MalformedCommand(f"not msgpack: {type(e).__name__}: {e}") from None
    if type(top) is not list or len(top) != 3:
        raise MalformedCommand("a batch is [version, timestamp_ns, commands]")
    version, timestamp_ns, items = top
    if type(version) is not int or version != FORMAT_VERSION:
        raise MalformedCommand(f"unknown batch format version {version!r}")
    if type(timestamp_ns) is not int or not 0 <= timestamp_ns <= TIMESTAMP_MAX:
        raise MalformedCommand("timestamp_ns is not in 0..TIMESTAMP_MAX")
    if type(items) is not list or not items:
        raise MalformedCommand("a batch holds a non-empty array of commands")
    return Batch(timestamp_ns, tuple(_command_from_wire(item) for item in items), version)
