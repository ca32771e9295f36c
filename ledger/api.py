"""The public gRPC services (Ledger, KV, Cluster): validate, convert, submit, answer.

Each handler validates the request (a malformed request is refused before
anything is proposed, so it changes nothing), converts it to ledger commands
or a query, and goes through the ``Driver``: writes are group-committed, reads
are linearizable unless the request asks for ``LOCAL`` consistency.

Errors are ``ledger.errors`` exceptions; ``_guard`` turns them into gRPC
statuses through ``errors.status_of``, the one mapping. Per-event ledger
results are never RPC errors: they are codes in the response.

128-bit fields are ``bytes``: empty (zero) or exactly 16 bytes, big-endian.
"""

from __future__ import annotations

import asyncio
import functools
import time

import grpc

from cluster import topology as topo
from cluster.certs import TlsCredentials, open_channel
from ledger import commands as cmd
from ledger import errors
from ledger import server_sm as sm
from ledger.api_proto import pb, pb_grpc, varint
from ledger.codes import CreateAccountResult, CreateTransferResult
from ledger.model import ROW_BYTES, TRANSFER_ROW, U16_MAX, Account, Transfer

EVENTS_PER_REQUEST_MAX = cmd.EVENTS_PER_COMMAND_MAX  # 8,190
LOOKUP_IDS_MAX = 8190
QUERY_LIMIT_MAX = 8190
RANGE_LIMIT_MAX = 8189  # one more is fetched to tell whether there is more
RANGE_LIMIT_DEFAULT = 1000
STATUS_PEER_TIMEOUT_S = 1.0


# ---------------------------------------------------------------- conversions


def u128(raw: bytes, name: str) -> int:
    if len(raw) == 16:
        return int.from_bytes(raw, "big")
    if len(raw) == 0:
        return 0
    raise errors.InvalidArgument(
        f"{name}: a 128-bit value is empty (zero) or exactly 16 bytes big-endian, got {len(raw)} bytes"
    )


def u128_bytes(value: int) -> bytes:
    return value.to_bytes(16, "big")


def _range(value: int, maximum: int, name: str) -> int:
    if not 0 <= value <= maximum:
        raise errors.InvalidArgument(f"{name}: {value} is outside 0..{maximum}")
    return value


def account_from_pb(a, i: int) -> Account:
    p = f"accounts[{i}]"
    return Account(
        id=u128(a.id, f"{p}.id"),
        ledger=a.ledger,
        code=_range(a.code, U16_MAX, f"{p}.code"),
        flags=_range(a.flags, U16_MAX, f"{p}.flags"),
        debits_pending=u128(a.debits_pending, f"{p}.debits_pending"),
        debits_posted=u128(a.debits_posted, f"{p}.debits_posted"),
        credits_pending=u128(a.credits_pending, f"{p}.credits_pending"),
        credits_posted=u128(a.credits_posted, f"{p}.credits_posted"),
        user_data_128=u128(a.user_data_128, f"{p}.user_data_128"),
        user_data_64=a.user_data_64,
        user_data_32=a.user_data_32,
        timestamp=a.timestamp,
    )


def account_to_pb(a: Account):
    return pb.Account(
        id=u128_bytes(a.id),
        debits_pending=u128_bytes(a.debits_pending),
        debits_posted=u128_bytes(a.debits_posted),
        credits_pending=u128_bytes(a.credits_pending),
        credits_posted=u128_bytes(a.credits_posted),
        user_data_128=u128_bytes(a.user_data_128),
        user_data_64=a.user_data_64,
        user_data_32=a.user_data_32,
        ledger=a.ledger,
        code=a.code,
        flags=a.flags,
        timestamp=a.timestamp,
    )


def transfer_from_pb(t, i: int) -> Transfer:
    p = f"transfers[{i}]"
    return Transfer(
        id=u128(t.id, f"{p}.id"),
        debit_account_id=u128(t.debit_account_id, f"{p}.debit_account_id"),
        credit_account_id=u128(t.credit_account_id, f"{p}.credit_account_id"),
        amount=u128(t.amount, f"{p}.amount"),
        pending_id=u128(t.pending_id, f"{p}.pending_id"),
        user_data_128=u128(t.user_data_128, f"{p}.user_data_128"),
        user_data_64=t.user_data_64,
        user_data_32=t.user_data_32,
        timeout=t.timeout,
        ledger=t.ledger,
        code=_range(t.code, U16_MAX, f"{p}.code"),
        flags=_range(t.flags, U16_MAX, f"{p}.flags"),
        timestamp=t.timestamp,
    )


def transfer_to_pb(t: Transfer):
    return pb.Transfer(
        id=u128_bytes(t.id),
        debit_account_id=u128_bytes(t.debit_account_id),
        credit_account_id=u128_bytes(t.credit_account_id),
        amount=u128_bytes(t.amount),
        pending_id=u128_bytes(t.pending_id),
        user_data_128=u128_bytes(t.user_data_128),
        user_data_64=t.user_data_64,
        user_data_32=t.user_data_32,
        timeout=t.timeout,
        ledger=t.ledger,
        code=t.code,
        flags=t.flags,
        timestamp=t.timestamp,
    )


_ZERO16 = bytes(16)


def _b16(raw: bytes, name: str, i: int, what: str) -> bytes:
    n = len(raw)
    if n == 16:
        return raw
    if n == 0:
        return _ZERO16
    raise errors.InvalidArgument(
        f"{what}[{i}].{name}: a 128-bit value is empty (zero) or exactly 16 bytes big-endian, got {n} bytes"
    )


def transfer_rows(transfers) -> bytes:
    """The 128-byte rows (``ledger.model``) of protobuf transfers, validated.

    The hot path of CreateTransfers: packs straight from the message fields
    (the 16-byte fields already are the row's big-endian bytes), equal to
    ``b"".join(transfer_from_pb(t, i).pack() ...)``.
    """
    pack = TRANSFER_ROW.pack
    rows = []
    append = rows.append
    for i, t in enumerate(transfers):
        tid, debit, credit, amount = t.id, t.debit_account_id, t.credit_account_id, t.amount
        pending, ud128, code, flags = t.pending_id, t.user_data_128, t.code, t.flags
        # Every 128-bit field is 0 or 16 bytes long (16s pads b"" with zeros)
        # exactly when the OR of the lengths has no bit but 16's; the slow
        # path below names the offending field.
        if (len(tid) | len(debit) | len(credit) | len(amount) | len(pending) | len(ud128)) & ~16 or (
            code > U16_MAX or flags > U16_MAX
        ):
            _check_transfer(t, i)
        append(pack(tid, debit, credit, amount, pending, ud128,
                    t.user_data_64, t.user_data_32, t.timeout, t.ledger, code, flags, t.timestamp))
    return b"".join(rows)


def _check_transfer(t, i: int) -> None:
    if t.code > U16_MAX:
        raise errors.InvalidArgument(f"transfers[{i}].code: {t.code} is outside 0..{U16_MAX}")
    if t.flags > U16_MAX:
        raise errors.InvalidArgument(f"transfers[{i}].flags: {t.flags} is outside 0..{U16_MAX}")
    for name in ("id", "debit_account_id", "credit_account_id", "amount", "pending_id", "user_data_128"):
        _b16(getattr(t, name), name, i, "transfers")
    raise AssertionError("_check_transfer found nothing wrong")


def _batch_size(n: int, what: str) -> None:
    if n == 0:
        raise errors.InvalidArgument(f"{what}: the batch is empty; send 1..{EVENTS_PER_REQUEST_MAX} events")
    if n > EVENTS_PER_REQUEST_MAX:
        raise errors.BatchTooLarge(
            f"{what}: {n} events is above the limit of {EVENTS_PER_REQUEST_MAX} per request; "
            "split the batch (ledger.client.Batcher does this)"
        )


def _packed_rows(packed: bytes, messages: int, what: str) -> bytes:
    """The events of a request's ``packed`` field, checked for shape; their
    fields are checked by the state machine, as those of messages are."""
    if messages:
        raise errors.InvalidArgument(f"{what}: a request carries events as messages or as packed rows, not both")
    n, rest = divmod(len(packed), ROW_BYTES)
    if rest:
        raise errors.InvalidArgument(
            f"{what}: packed rows are {ROW_BYTES} bytes each; {len(packed)} bytes is not a whole number of rows"
        )
    _batch_size(n, what)
    return packed


def _ids(raw_ids, what: str) -> list[int]:
    if len(raw_ids) > LOOKUP_IDS_MAX:
        raise errors.BatchTooLarge(f"{what}: at most {LOOKUP_IDS_MAX} ids per request, got {len(raw_ids)}")
    return [u128(r, f"ids[{i}]") for i, r in enumerate(raw_ids)]


def accounts_command(request) -> cmd.CreateAccounts:
    """The command of a CreateAccountsRequest, validated."""
    if request.packed:
        return cmd.CreateAccounts(_packed_rows(request.packed, len(request.accounts), "CreateAccounts"))
    _batch_size(len(request.accounts), "CreateAccounts")
    return cmd.CreateAccounts.of([account_from_pb(a, i) for i, a in enumerate(request.accounts)])


def transfers_command(request) -> cmd.CreateTransfers:
    """The command of a CreateTransfersRequest, validated."""
    if request.packed:
        return cmd.CreateTransfers(_packed_rows(request.packed, len(request.transfers), "CreateTransfers"))
    _batch_size(len(request.transfers), "CreateTransfers")
    return cmd.CreateTransfers(transfer_rows(request.transfers))


# Field 1 (index) of EventResult, by index: ``results`` of a full batch are
# encoded from these and the per-code tails below, not built as one Python
# protobuf object per event (that took ~4 us an event on the event loop).
_INDEX_FIELD = [b"\x08" + varint(i) for i in range(EVENTS_PER_REQUEST_MAX)]
_RESULT_TAILS: dict[tuple[type, int], bytes] = {}


def _result_tail(enum, code: int) -> bytes:
    """Fields 2 (code) and 3 (name) of an EventResult, encoded."""
    tail = _RESULT_TAILS.get((enum, code))
    if tail is None:
        try:
            name = enum(code).name.lower()
        except ValueError:
            name = f"code_{code}"
        raw = name.encode()
        tail = b"\x10" + varint(code) + b"\x1a" + varint(len(raw)) + raw
        _RESULT_TAILS[(enum, code)] = tail
    return tail


_OK_RESULTS: dict[type, list[bytes]] = {}


def _result_wire(enum, index: int, code: int) -> bytes:
    body = _INDEX_FIELD[index] + _result_tail(enum, code)
    return b"\x0a" + bytes((len(body),)) + body  # an EventResult is < 128 bytes


def _results_wire(n: int, failures, enum) -> bytes:
    """The response's ``repeated EventResult results = 1`` in wire format, from
    the state machine's sparse ``(index, code)`` failures: one result per
    event, in order, as ``pb.EventResult(index=i, code=c, name=enum(c).name.lower())``
    would encode."""
    ok = _OK_RESULTS.get(enum)
    if ok is None:
        ok = _OK_RESULTS[enum] = [_result_wire(enum, i, 0) for i in range(EVENTS_PER_REQUEST_MAX)]
    if not failures:
        return b"".join(ok[:n])
    parts = ok[:n]
    for index, code in failures:
        parts[index] = _result_wire(enum, index, int(code))
    return b"".join(parts)


# ---------------------------------------------------------------- plumbing


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    return time.monotonic() + remaining


def _guard(method):
    """Map ``ledger.errors`` exceptions to gRPC statuses (via errors.status_of)."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except errors.LedgerError as e:
            code, metadata = errors.status_of(e)
            self.driver.metrics.labels(self.driver.metrics.errors, code=code.name).inc()
            context.set_trailing_metadata(metadata)
            await context.abort(code, e.message)

    return wrapper


class _Base:
    def __init__(self, driver, tls: TlsCredentials | None = None) -> None:
        self.driver = driver
        self.tls = tls  # this replica's own credentials, for asking its peers

    async def _read(self, read_options, context, query):
        """Run ``query(tables)`` linearizably (default) or on local state."""
        if read_options.consistency != pb.LOCAL:
            await self.driver.read_barrier(_deadline(context))
        with self.driver.storage.reader() as tables:
            return query(tables)

    def _count_results(self, failures, enum) -> None:
        m = self.driver.metrics
        for _, code in failures:
            try:
                name = enum(int(code)).name.lower()
            except ValueError:
                name = str(int(code))
            m.labels(m.event_results, result=name).inc()


# ---------------------------------------------------------------- Ledger


class LedgerService(_Base, pb_grpc.LedgerServicer):
    @_guard
    async def CreateAccounts(self, request, context):
        return await self._create(accounts_command(request), context, CreateAccountResult,
                                  pb.CreateAccountsResponse)

    @_guard
    async def CreateTransfers(self, request, context):
        return await self._create(transfers_command(request), context, CreateTransferResult,
                                  pb.CreateTransfersResponse)

    async def _create(self, command, context, enum, response_type):
        """Order a CreateAccounts or CreateTransfers command; its results as the response."""
        n = len(command.events) // ROW_BYTES
        codes = await self.driver.submit(command, n, len(command.events), _deadline(context))
        failures = codes or ()  # the state machine's sparse (index, code) list
        self._count_results(failures, enum)
        return response_type.FromString(_results_wire(n, failures, enum))

    async def Submit(self, request_iterator, context):
        await _WriteStream(self, context).run()

    @_guard
    async def LookupAccounts(self, request, context):
        ids = _ids(request.ids, "LookupAccounts")
        found = await self._read(request.read, context, lambda t: sm.lookup_accounts(t, ids))
        return pb.LookupAccountsResponse(accounts=[account_to_pb(a) for a in found])

    @_guard
    async def LookupTransfers(self, request, context):
        ids = _ids(request.ids, "LookupTransfers")
        found = await self._read(request.read, context, lambda t: sm.lookup_transfers(t, ids))
        return pb.LookupTransfersResponse(transfers=[transfer_to_pb(x) for x in found])

    def _filter(self, request) -> sm.AccountFilter:
        account_id = u128(request.account_id, "account_id")
        if account_id == 0:
            raise errors.InvalidArgument("account_id: must not be zero")
        limit = request.limit or QUERY_LIMIT_MAX
        if limit > QUERY_LIMIT_MAX:
            raise errors.InvalidArgument(f"limit: at most {QUERY_LIMIT_MAX}, got {limit}")
        if request.timestamp_max and request.timestamp_min > request.timestamp_max:
            raise errors.InvalidArgument("timestamp_min is above timestamp_max")
        debits, credits = request.debits, request.credits
        if not debits and not credits:
            debits = credits = True  # neither asked: both
        return sm.AccountFilter(
            account_id, request.timestamp_min, request.timestamp_max, limit, debits, credits, request.reversed
        )

    @_guard
    async def GetAccountTransfers(self, request, context):
        f = self._filter(request)
        found = await self._read(request.read, context, lambda t: sm.account_transfers(t, f))
        return pb.GetAccountTransfersResponse(transfers=[transfer_to_pb(x) for x in found])

    @_guard
    async def GetAccountBalances(self, request, context):
        f = self._filter(request)
        found = await self._read(request.read, context, lambda t: sm.account_balances(t, f))
        return pb.GetAccountBalancesResponse(
            balances=[
                pb.AccountBalance(
                    debits_pending=u128_bytes(b.debits_pending),
                    debits_posted=u128_bytes(b.debits_posted),
                    credits_pending=u128_bytes(b.credits_pending),
                    credits_posted=u128_bytes(b.credits_posted),
                    timestamp=b.timestamp,
                )
                for b in found
            ]
        )


# ---------------------------------------------------------------- Ledger.Submit

# Writes of one stream not yet answered, or answered but not yet sent; at
# this many the stream reads no further writes until answers go out (HTTP/2
# flow control then holds the client back). A frame of answers carries at
# most about STREAM_ANSWER_FRAME_BYTES_MAX.
STREAM_WRITES_UNANSWERED_MAX = 4096
STREAM_ANSWER_FRAME_BYTES_MAX = 4 * 1024 * 1024


class _WriteStream:
    """One ``Ledger.Submit`` stream: many writes, each answered on its own.

    Each write of a frame goes through the same validation and the same
    ``Driver.enqueue`` as the unary call of the same name, with no task of
    its own: its future's callback encodes the answer into ``out``, and one
    writer task sends what has gathered as frames, so writes finished by one
    slot go back together. A write that fails as a whole is answered with a
    ``WriteError`` carrying what a unary call would have failed with
    (``errors.status_of``); the stream goes on. When the stream ends (the
    client went away, a frame did not parse, or the answers could not be
    sent), its unanswered writes are abandoned: the driver no longer
    proposes them, and those already proposed land or not as any write
    whose caller went away."""

    def __init__(self, service: LedgerService, context) -> None:
        self.service = service
        self.driver = service.driver
        self.context = context
        self.out: list[bytes] = []  # encoded WriteResponse messages not yet sent
        self.unanswered: dict[int, object] = {}  # id -> the driver's PendingWrite
        self.unsent = 0  # answers in ``out`` or being sent
        self._ready = asyncio.Event()  # ``out`` has something, or the stream closes
        self._room = asyncio.Event()  # an answer was given or sent since the reader last looked
        self._closing = False

    def _full(self) -> bool:
        return len(self.unanswered) + self.unsent >= STREAM_WRITES_UNANSWERED_MAX

    async def run(self) -> None:
        writer = asyncio.create_task(self._send_answers())
        me = asyncio.current_task()
        # Answers that cannot go out end the stream (its writes are then abandoned).
        writer.add_done_callback(lambda t: me.cancel() if not t.cancelled() and t.exception() else None)
        try:
            while True:
                frame = await self.context.read()
                if frame is grpc.aio.EOF:
                    break
                if type(frame) is not pb.WriteRequests:  # server_auth.RefusedRequest
                    self._count_error(grpc.StatusCode.INVALID_ARGUMENT)
                    await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, frame.message)
                for request in frame.requests:
                    while self._full():
                        self._room.clear()
                        await self._room.wait()
                    self._start(request)
            # The client sent its last frame: answer what it still waits for.
            while self.unanswered:
                self._room.clear()
                await self._room.wait()
            self._closing = True
            self._ready.set()
            await writer
        finally:
            writer.cancel()
            for write in self.unanswered.values():
                write.abandoned = True
                write.future.cancel()
            self.unanswered.clear()

    def _start(self, request) -> None:
        rid = request.id
        try:
            if rid in self.unanswered:
                raise errors.InvalidArgument(f"write id {rid} is already in progress on this stream")
            which = request.WhichOneof("write")
            if which == "create_transfers":
                command, enum = transfers_command(request.create_transfers), CreateTransferResult
            elif which == "create_accounts":
                command, enum = accounts_command(request.create_accounts), CreateAccountResult
            else:
                raise errors.InvalidArgument("a write request names no write (create_accounts or create_transfers)")
            n = len(command.events) // ROW_BYTES
            deadline = time.monotonic() + request.timeout_ms / 1000 if request.timeout_ms else None
            write = self.driver.enqueue(command, n, len(command.events), deadline)
        except errors.LedgerError as e:
            self._answer_error(rid, e)
            return
        self.unanswered[rid] = write
        write.future.add_done_callback(functools.partial(self._done, rid, n, enum, write.arrived))

    def _done(self, rid: int, n: int, enum, arrived: float, future: asyncio.Future) -> None:
        write = self.unanswered.pop(rid, None)
        if write is None:
            return  # the stream ended; nobody waits for this answer
        self._room.set()  # the reader looks again: below the maximum, or none left at the end
        m = self.driver.metrics
        m.labels(m.request_latency).observe(time.monotonic() - arrived)
        if future.cancelled():
            write.abandoned = True
            self._answer_error(rid, errors.DeadlineExceeded(errors.DEADLINE_PASSED))
            return
        error = future.exception()
        if error is not None:
            if not isinstance(error, errors.LedgerError):
                # A bug: answer as a unary call would (UNKNOWN), then let the
                # loop's handler report it.
                self._count_error(grpc.StatusCode.UNKNOWN)
                self._push(pb.WriteResponse(id=rid, error=pb.WriteError(
                    status=grpc.StatusCode.UNKNOWN.value[0],
                    message=f"the replica failed: {type(error).__name__}")).SerializeToString())
                raise error
            self._answer_error(rid, error)
            return
        failures = future.result() or ()
        self.service._count_results(failures, enum)
        self._push(_results_wire(n, failures, enum) + b"\x10" + varint(rid))

    def _answer_error(self, rid: int, error: errors.LedgerError) -> None:
        code, metadata = errors.status_of(error)
        self._count_error(code)
        self._push(pb.WriteResponse(id=rid, error=pb.WriteError(
            status=code.value[0], message=error.message, metadata=dict(metadata))).SerializeToString())

    def _count_error(self, code: grpc.StatusCode) -> None:
        m = self.driver.metrics
        m.labels(m.errors, code=code.name).inc()

    def _push(self, response: bytes) -> None:
        self.out.append(b"\x0a" + varint(len(response)) + response)
        self.unsent += 1
        self._ready.set()

    async def _send_answers(self) -> None:
        while True:
            if not self.out:
                if self._closing:
                    return
                await self._ready.wait()
                self._ready.clear()
                continue
            n, size = 0, 0
            for n, part in enumerate(self.out):
                if n and size + len(part) > STREAM_ANSWER_FRAME_BYTES_MAX:
                    break
                size += len(part)
            else:
                n = len(self.out)
            frame, self.out = b"".join(self.out[:n]), self.out[n:]
            # Wire bytes built above, parsed once for gRPC's serializer.
            await self.context.write(pb.WriteResponses.FromString(frame))
            self.unsent -= n
            self._room.set()


# ---------------------------------------------------------------- KV


def _key(key: bytes) -> bytes:
    if not key:
        raise errors.InvalidArgument("key: must not be empty")
    if len(key) > cmd.KV_KEY_BYTES_MAX:
        raise errors.InvalidArgument(f"key: {len(key)} bytes is above the limit of {cmd.KV_KEY_BYTES_MAX}")
    return key


def _value(value: bytes) -> bytes:
    if len(value) > cmd.KV_VALUE_BYTES_MAX:
        raise errors.InvalidArgument(
            f"value: {len(value)} bytes is above the limit of {cmd.KV_VALUE_BYTES_MAX}"
        )
    return value


class KVService(_Base, pb_grpc.KVServicer):
    @_guard
    async def Put(self, request, context):
        command = cmd.KvPut(_key(request.key), _value(request.value))
        result = await self.driver.submit(command, 1, len(request.key) + len(request.value), _deadline(context))
        code, version = sm.kv_result(result)
        return pb.PutResponse(version=version)

    @_guard
    async def Get(self, request, context):
        key = _key(request.key)
        found = await self._read(request.read, context, lambda t: sm.kv_get(t, key))
        if found is None:
            return pb.GetResponse(found=False)
        value, version = found
        return pb.GetResponse(found=True, value=value, version=version)

    @_guard
    async def Delete(self, request, context):
        command = cmd.KvDelete(_key(request.key))
        result = await self.driver.submit(command, 1, len(request.key), _deadline(context))
        code, _version = sm.kv_result(result)
        return pb.DeleteResponse(deleted=code == 0)

    @_guard
    async def CompareAndSet(self, request, context):
        command = cmd.KvCas(_key(request.key), request.expected_version, _value(request.value))
        result = await self.driver.submit(command, 1, len(request.key) + len(request.value), _deadline(context))
        code, version = sm.kv_result(result)
        return pb.CompareAndSetResponse(ok=code == 0, version=version)

    @_guard
    async def Range(self, request, context):
        limit = request.limit or RANGE_LIMIT_DEFAULT
        if limit > RANGE_LIMIT_MAX:
            raise errors.InvalidArgument(f"limit: at most {RANGE_LIMIT_MAX}, got {limit}")
        if request.prefix:
            start = request.prefix
            end = _prefix_end(request.prefix)
        else:
            start = request.start
            end = request.end or None
        rows = await self._read(request.read, context, lambda t: sm.kv_range(t, start, end, limit + 1))
        more = len(rows) > limit
        return pb.RangeResponse(
            items=[pb.KeyValue(key=k, value=v, version=ver) for k, v, ver in rows[:limit]], more=more
        )


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key with this prefix (None: no bound)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


# ---------------------------------------------------------------- Cluster


class ClusterService(_Base, pb_grpc.ClusterServicer):
    @property
    def topology(self) -> topo.Topology:
        # The driver's copy: it learns replicas added to the cluster since start.
        return self.driver.topology

    @_guard
    async def Status(self, request, context):
        d = self.driver
        mine = d.status()
        replicas = {mine["id"]: pb.ReplicaStatus(**mine)}
        if request.all:
            replicas.update(await self._peer_statuses())
        leader = d.leader_spec
        ordered = [replicas.get(r.id) or _unreachable(r) for r in self.topology.replicas] if request.all else [
            replicas[mine["id"]]
        ]
        return pb.StatusResponse(
            cluster_id=self.topology.cluster_id,
            primary_zone=self.topology.primary_zone,
            leader_id=leader.id if leader else "",
            replicas=ordered,
        )

    async def _peer_statuses(self) -> dict:
        async def ask(spec: topo.ReplicaSpec):
            try:
                async with open_channel(spec.address, self.tls) as ch:
                    resp = await pb_grpc.ClusterStub(ch).Status(
                        pb.StatusRequest(all=False), timeout=STATUS_PEER_TIMEOUT_S
                    )
                    return spec.id, resp.replicas[0]
            except Exception:
                return spec.id, None

        others = [r for r in self.topology.replicas if r.id != self.driver.spec.id]
        answers = await asyncio.gather(*(ask(r) for r in others))
        return {rid: st for rid, st in answers if st is not None}

    @_guard
    async def TransferLeader(self, request, context):
        try:
            target = self.topology.replica(request.target_id)
        except topo.TopologyError as e:
            raise errors.InvalidArgument(str(e)) from None
        leader = await self.driver.transfer_leadership(target, _deadline(context))
        return pb.TransferLeaderResponse(leader_id=leader)

    @_guard
    async def ListMembers(self, request, context):
        return _members_pb(self.driver.members())

    @_guard
    async def ChangeMembership(self, request, context):
        if request.kind not in MEMBERSHIP_CHANGES:
            raise errors.InvalidArgument(
                f"kind {request.kind!r}: one of {', '.join(MEMBERSHIP_CHANGES)}"
            )
        d = self.driver
        try:
            target = d.topology.replica(request.replica_id)
        except topo.TopologyError:
            d.refresh_topology(force=True)  # the operator may have just listed it
            try:
                target = d.topology.replica(request.replica_id)
            except topo.TopologyError as e:
                raise errors.InvalidArgument(
                    f"{e}; list the replica in the topology file (with join = true) before adding it: "
                    "that is where the cluster finds its address"
                ) from None
        slot, members = await d.change_membership(request.kind, target, _deadline(context))
        return pb.ChangeMembershipResponse(slot=slot, members=_members_pb(members))


MEMBERSHIP_CHANGES = ("add_learner", "promote", "remove")


def _members_pb(m: dict):
    return pb.ListMembersResponse(
        leader_id=m["leader_id"], chosen_index=m["chosen_index"], changing=m["changing"],
        members=[pb.Member(**x) for x in m["members"]],
    )


def _unreachable(spec: topo.ReplicaSpec):
    return pb.ReplicaStatus(
        id=spec.id, address=spec.address, city=spec.city, data_center=spec.data_center,
        role="unreachable", reachable=False,
    )


def add_services(server, driver, tls: TlsCredentials | None = None) -> None:
    """Register the public services; who may call which is ``ledger.server_auth``'s policy."""
    pb_grpc.add_LedgerServicer_to_server(LedgerService(driver), server)
    pb_grpc.add_KVServicer_to_server(KVService(driver), server)
    pb_grpc.add_ClusterServicer_to_server(ClusterService(driver, tls), server)

