"""Python client of the ledger cluster.

    from ledger.client import Client
    with Client(["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]) as c:
        c.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        c.create_transfers([Transfer(id=10, debit_account_id=1, credit_account_id=2,
                                     amount=100, ledger=1, code=1)])

``AsyncClient`` is the asyncio original; ``Client`` runs it on a private
event loop for synchronous code. Both:

* find the leader: a follower answers UNAVAILABLE with the leader's address
  in trailing metadata and the client goes there; with no hint it tries the
  next address, with capped backoff;
* retry a write after a timeout, a lost connection or a failover with the
  *same* request, so the same event ids: the ledger answers ``exists`` for
  an event that already landed, so a retried transfer is booked exactly once
  (``create_*`` results report ``exists`` for events that landed on an
  earlier attempt: treat ``ok`` and ``exists`` alike as success);
* back off on RESOURCE_EXHAUSTED;
* give up after the overall ``timeout_s`` with ``errors.DeadlineExceeded``.

KV writes (Put, Delete, CompareAndSet) are not idempotent (a put applied
twice around another client's write breaks linearizability), so they are
retried only when the replica certainly did not process them (not the
leader, queue full, storage stopped); an ambiguous failure (timeout, lost
connection, lost leadership) raises ``errors.OutcomeUnknown``.

Writes (``create_accounts``, ``create_transfers``) travel as messages of one
long-lived ``Ledger.Submit`` stream per replica, shared by every caller of
the client: many callers writing at once cost the leader one stream message
each instead of one RPC each (an RPC costs the leader ~10x more than the
write inside it), and their writes share frames both ways. Each write is
still its own command with its own results, retried like a unary call
(``streams=False`` sends unary calls instead).

``Batcher`` groups single events from many concurrent callers into requests
of up to 8,190 events: fewer, larger commands, for callers whose events may
share one request.

TLS: a cluster with a ``[tls]`` table in its topology accepts only callers
with a certificate of its CA; pass ``tls=TlsCredentials.from_cert_dir(dir,
"client")`` (or ``"admin"`` for admin calls such as ``transfer_leader``), or
use ``for_topology(path, identity="client")``, which reads the topology's cert
dir. Calls refused for the identity raise ``errors.PermissionDenied`` or
``errors.Unauthenticated`` and are not retried.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import grpc

from cluster.certs import TlsCredentials, open_channel
from ledger import errors
from ledger.api_proto import pb, pb_grpc, varint
from ledger.model import ROW_BYTES, Account, AccountBalance, Transfer

EVENTS_PER_REQUEST_MAX = 8190
TIMEOUT_S_DEFAULT = 10.0
ATTEMPT_TIMEOUT_S_DEFAULT = 2.0
BACKOFF_MIN_S = 0.005
# While looking for a leader (an election takes a few hundred ms) retry often;
# an overloaded leader gets more room.
DISCOVERY_BACKOFF_MAX_S = 0.05
OVERLOAD_BACKOFF_MAX_S = 0.5
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
]

LINEARIZABLE = pb.LINEARIZABLE
LOCAL = pb.LOCAL

_SUBMIT = "/ledgerdb.v1.Ledger/Submit"
# WriteRequest fields of the two writes (proto/ledger_api.proto).
_CREATE_ACCOUNTS_FIELD = 3
_CREATE_TRANSFERS_FIELD = 4
# A Submit frame holds writes up to this many bytes (or one larger write);
# the server's limit per message is 4 MiB.
STREAM_FRAME_BYTES_MAX = 2 * 1024 * 1024


# A stream's own status that is about the caller, not about one write: kept.
_STREAM_STATUSES_KEPT = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                         grpc.StatusCode.UNIMPLEMENTED)


def _stream_failure(error: BaseException) -> grpc.aio.AioRpcError:
    """What the callers of a failed stream get. The writes on it may or may
    not have landed, whatever ended the stream (the replica went away, a
    peer's frame limit, a cancelled call): UNAVAILABLE, which the client
    retries with the same ids, unless the stream was refused for who the
    caller is or the replica has no such method."""
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in _STREAM_STATUSES_KEPT:
        return error
    detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else repr(error)
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                f"the write stream failed ({detail}); the writes on it may or may not have landed")


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


class SubmitStream:
    """One ``Ledger.Submit`` stream to one replica, shared by all callers.

    ``submit`` queues a write with a fresh id and waits for the answer with
    that id; one writer task sends what has queued as few frames as fit
    (a write whose caller stopped waiting is dropped there, not sent), one
    reader task hands each answer to its caller. When the stream fails,
    every caller waiting on it gets the failure as UNAVAILABLE, an outcome
    unknown that the client retries (but for an identity refused, or a
    replica without the method), and the client opens a new stream."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = channel.stream_stream(_SUBMIT, response_deserializer=pb.WriteResponses.FromString)()
        self.waiting: dict[int, asyncio.Future] = {}
        # (id, WriteRequest field, request bytes, monotonic deadline, the caller's future)
        self.queue: list[tuple[int, int, bytes, float, asyncio.Future]] = []
        self.next_id = 1
        self.failure: BaseException | None = None
        self._wake = asyncio.Event()
        self._tasks = (asyncio.ensure_future(self._write()), asyncio.ensure_future(self._read()))

    async def submit(self, field: int, request: bytes, timeout_s: float):
        """The ``WriteResponse`` to one write (``field``: which one)."""
        if self.failure is not None:
            raise self.failure
        rid = self.next_id
        self.next_id += 1
        loop = asyncio.get_running_loop()
        future = self.waiting[rid] = loop.create_future()
        self.queue.append((rid, field, request, time.monotonic() + timeout_s, future))
        self._wake.set()
        timer = loop.call_later(timeout_s, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self.waiting.pop(rid, None)

    def _frame(self) -> bytes:
        """The next frame of queued writes still awaited, each with the time
        its caller has left (so a write that waited here is not given its
        whole timeout again by the replica)."""
        now = time.monotonic()
        parts: list[bytes] = []
        size = 0
        while self.queue:
            rid, field, request, deadline, future = self.queue[0]
            if future.done() or deadline <= now:
                self.queue.pop(0)
                continue
            timeout_ms = max(1, int((deadline - now) * 1000))
            body = b"".join((b"\x08", varint(rid), b"\x10", varint(timeout_ms),
                             bytes((field << 3 | 2,)), varint(len(request)), request))
            part = b"\x0a" + varint(len(body)) + body
            if parts and size + len(part) > STREAM_FRAME_BYTES_MAX:
                break
            self.queue.pop(0)
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.queue:
                    frame = self._frame()
                    if frame:
                        await self.call.write(frame)
        except (Exception, asyncio.CancelledError) as e:  # the stream is done: its callers get why
            self._fail(e)

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.call.read()
                if frame is grpc.aio.EOF:
                    raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                               grpc.aio.Metadata(), "the write stream ended")
                waiting = self.waiting
                for response in frame.responses:
                    future = waiting.pop(response.id, None)
                    if future is not None and not future.done():
                        future.set_result(response)
        except (Exception, asyncio.CancelledError) as e:  # the stream is done: its callers get why
            self._fail(e)

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = _stream_failure(error)
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(self.failure)
        self.waiting.clear()
        self.queue.clear()
        # The other half ends too (the client drops a failed stream for a new one).
        self.call.cancel()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        self.call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class EventResult:
    index: int
    code: int
    name: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def _u128(value: int) -> bytes:
    return value.to_bytes(16, "big")


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, "big") if raw else 0


def account_pb(a: Account):
    return pb.Account(
        id=_u128(a.id), user_data_128=_u128(a.user_data_128), user_data_64=a.user_data_64,
        user_data_32=a.user_data_32, ledger=a.ledger, code=a.code, flags=int(a.flags),
        debits_pending=_u128(a.debits_pending), debits_posted=_u128(a.debits_posted),
        credits_pending=_u128(a.credits_pending), credits_posted=_u128(a.credits_posted),
        timestamp=a.timestamp,
    )


def account_model(a) -> Account:
    return Account(
        id=_int(a.id), ledger=a.ledger, code=a.code, flags=a.flags,
        debits_pending=_int(a.debits_pending), debits_posted=_int(a.debits_posted),
        credits_pending=_int(a.credits_pending), credits_posted=_int(a.credits_posted),
        user_data_128=_int(a.user_data_128), user_data_64=a.user_data_64,
        user_data_32=a.user_data_32, timestamp=a.timestamp,
    )


def transfer_pb(t: Transfer):
    return pb.Transfer(
        id=_u128(t.id), debit_account_id=_u128(t.debit_account_id),
        credit_account_id=_u128(t.credit_account_id), amount=_u128(t.amount),
        pending_id=_u128(t.pending_id), user_data_128=_u128(t.user_data_128),
        user_data_64=t.user_data_64, user_data_32=t.user_data_32, timeout=t.timeout,
        ledger=t.ledger, code=t.code, flags=int(t.flags), timestamp=t.timestamp,
    )


def transfer_model(t) -> Transfer:
    return Transfer(
        id=_int(t.id), debit_account_id=_int(t.debit_account_id),
        credit_account_id=_int(t.credit_account_id), amount=_int(t.amount),
        ledger=t.ledger, code=t.code, flags=t.flags, pending_id=_int(t.pending_id),
        timeout=t.timeout, user_data_128=_int(t.user_data_128), user_data_64=t.user_data_64,
        user_data_32=t.user_data_32, timestamp=t.timestamp,
    )


def topology_args(topology_path: str, identity: str, kwargs: dict) -> tuple[list[str]]:
    """The addresses of a topology; puts its ``identity`` credentials into ``kwargs`` if it uses TLS."""
    from cluster import topology

    t = topology.load(topology_path)
    if t.tls_cert_dir is not None and kwargs.get("tls") is None:
        kwargs["tls"] = TlsCredentials.from_cert_dir(t.tls_cert_dir, identity)
    return ([r.address for r in t.replicas],)


_STUBS = {
    "Ledger": pb_grpc.LedgerStub,
    "KV": pb_grpc.KVStub,
    "Cluster": pb_grpc.ClusterStub,
}


class AsyncClient:
    """Leader-following, retrying asyncio client (see the module docstring)."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S_DEFAULT,
        tls: TlsCredentials | None = None,
        streams: bool = True,
    ) -> None:
        if not addresses:
            raise ValueError("give at least one replica address (host:port)")
        self.addresses = list(addresses)
        self.tls = tls
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, SubmitStream] = {}
        self.streams = streams  # writes over Ledger.Submit streams (False: unary calls)
        self._unary_only: set[str] = set()  # replicas that answered UNIMPLEMENTED to Submit
        self._leader: str | None = None
        self._next = 0
        self.retries = 0  # attempts beyond the first, for tests and benchmarks

    @classmethod
    def for_topology(cls, topology_path: str, identity: str = "client", **kwargs) -> "AsyncClient":
        return cls(*topology_args(topology_path, identity, kwargs), **kwargs)

    async def close(self) -> None:
        for stream in self._streams.values():
            await stream.close()
        self._streams.clear()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = open_channel(address, self.tls, CHANNEL_OPTIONS)
        return ch

    def _stub(self, address: str, service: str):
        return _STUBS[service](self._channel(address))

    def _stream(self, address: str) -> SubmitStream:
        stream = self._streams.get(address)
        if stream is None or stream.failure is not None:
            stream = self._streams[address] = SubmitStream(self._channel(address))
        return stream

    async def _submit(self, target: str, field: int, request, timeout_s: float):
        """One write over ``target``'s stream, as a unary call would answer it."""
        events = len(request.packed) // ROW_BYTES
        if events > EVENTS_PER_REQUEST_MAX:
            # Refused here: on the stream it would end every caller's writes.
            raise errors.BatchTooLarge(
                f"{events} events is above the limit of {EVENTS_PER_REQUEST_MAX} per request; "
                "split the batch (ledger.client.Batcher does this)")
        try:
            response = await self._stream(target).submit(field, request.SerializeToString(), timeout_s)
        except asyncio.TimeoutError:
            raise errors.DeadlineExceeded(f"no answer within {timeout_s:.2f}s on the write stream") from None
        if response.HasField("error"):
            err = errors.from_write_error(response.error)
            raise err or errors.OutcomeUnknown(response.error.message)
        return response

    def _pick(self) -> str:
        if self._leader:
            return self._leader
        address = self.addresses[self._next % len(self.addresses)]
        return address

    def _rotate(self, failed: str) -> None:
        if self._leader == failed:
            self._leader = None
        if failed in self.addresses:
            self._next = self.addresses.index(failed) + 1
        else:
            self._next += 1

    async def call(
        self,
        service: str,
        method: str,
        request: Any,
        *,
        idempotent: bool = True,
        address: str | None = None,
        timeout_s: float | None = None,
        stream_field: int = 0,
    ):
        """One RPC with leader discovery and retries; ``address`` pins one replica.

        ``stream_field``: a write sent over the replica's ``Ledger.Submit``
        stream as that field of a ``WriteRequest`` (unless streams are off)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        backoff = BACKOFF_MIN_S
        backoff_max = DISCOVERY_BACKOFF_MAX_S
        last: BaseException | None = None
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.DeadlineExceeded(
                    f"{service}.{method}: no answer within {timeout_s or self.timeout_s:.1f}s "
                    f"(last error: {last}); is a majority of the replicas running?"
                )
            target = address or self._pick()
            if attempt:
                self.retries += 1
            attempt += 1
            via_stream = stream_field and self.streams and target not in self._unary_only
            try:
                if via_stream:
                    response = await self._submit(target, stream_field, request,
                                                  min(self.attempt_timeout_s, remaining))
                else:
                    rpc = getattr(self._stub(target, service), method)
                    response = await rpc(request, timeout=min(self.attempt_timeout_s, remaining))
                if address is None and service != "Cluster":
                    self._leader = target
                return response
            except (grpc.aio.AioRpcError, errors.LedgerError) as e:
                if isinstance(e, errors.LedgerError):  # a write of a stream, answered on its own
                    err, code, details = e, errors.STATUS_CODES[type(e)], e.message
                else:
                    code, details = e.code(), e.details() or ""
                    err = errors.from_status(code, details, e.trailing_metadata())
                    if via_stream and code == grpc.StatusCode.UNIMPLEMENTED:
                        self._unary_only.add(target)  # a replica without Ledger.Submit: unary calls
                        continue
                last = err or e
                if isinstance(err, errors.NotLeader):
                    if address is not None:
                        raise err from None
                    if err.leader_address and err.leader_address != target:
                        self._leader = err.leader_address
                        continue  # go straight to the named leader
                    self._rotate(target)
                elif isinstance(err, errors.RequestError):
                    raise err from None
                elif isinstance(err, errors.Overloaded):
                    backoff_max = OVERLOAD_BACKOFF_MAX_S  # refused before queueing: back off, same replica
                elif isinstance(err, errors.ReplicaStopped):
                    # Refused before proposing: safe to try another replica.
                    if address is not None:
                        raise err from None
                    self._rotate(target)
                elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or isinstance(
                    err, (errors.OutcomeUnknown, errors.DeadlineExceeded)
                ):
                    # The replica went away, timed out, or lost leadership: the
                    # request may or may not have been applied.
                    if not idempotent:
                        raise errors.OutcomeUnknown(
                            f"{service}.{method}: the outcome is unknown ({details}); "
                            "read the key to see whether it was applied"
                        ) from None
                    if address is not None:
                        raise (err or e) from None
                    self._rotate(target)
                else:
                    raise (err or e) from None
            await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())) * (0.5 + random.random()))
            backoff = min(backoff * 2, backoff_max)

    # ---------------------------------------------------------------- ledger

    async def create_accounts(self, accounts: Iterable[Account]) -> list[EventResult]:
        request = pb.CreateAccountsRequest(packed=b"".join(a.pack() for a in accounts))
        response = await self.call("Ledger", "CreateAccounts", request, stream_field=_CREATE_ACCOUNTS_FIELD)
        return [EventResult(r.index, r.code, r.name) for r in response.results]

    async def create_transfers(self, transfers: Iterable[Transfer]) -> list[EventResult]:
        request = pb.CreateTransfersRequest(packed=b"".join(t.pack() for t in transfers))
        response = await self.call("Ledger", "CreateTransfers", request, stream_field=_CREATE_TRANSFERS_FIELD)
        return [EventResult(r.index, r.code, r.name) for r in response.results]

    async def lookup_accounts(self, ids: Iterable[int], *, consistency=LINEARIZABLE, address=None) -> list[Account]:
        request = pb.LookupAccountsRequest(ids=[_u128(i) for i in ids], read=pb.ReadOptions(consistency=consistency))
        response = await self.call("Ledger", "LookupAccounts", request, address=address)
        return [account_model(a) for a in response.accounts]

    async def lookup_transfers(self, ids: Iterable[int], *, consistency=LINEARIZABLE, address=None) -> list[Transfer]:
        request = pb.LookupTransfersRequest(ids=[_u128(i) for i in ids], read=pb.ReadOptions(consistency=consistency))
        response = await self.call("Ledger", "LookupTransfers", request, address=address)
        return [transfer_model(t) for t in response.transfers]

    def _filter(self, account_id, timestamp_min, timestamp_max, limit, debits, credits, reversed_, consistency):
        return pb.AccountFilter(
            account_id=_u128(account_id), timestamp_min=timestamp_min, timestamp_max=timestamp_max,
            limit=limit, debits=debits, credits=credits, reversed=reversed_,
            read=pb.ReadOptions(consistency=consistency),
        )

    async def get_account_transfers(
        self, account_id: int, *, timestamp_min=0, timestamp_max=0, limit=8190,
        debits=True, credits=True, reversed=False, consistency=LINEARIZABLE,
    ) -> list[Transfer]:
        f = self._filter(account_id, timestamp_min, timestamp_max, limit, debits, credits, reversed, consistency)
        response = await self.call("Ledger", "GetAccountTransfers", f)
        return [transfer_model(t) for t in response.transfers]

    async def get_account_balances(
        self, account_id: int, *, timestamp_min=0, timestamp_max=0, limit=8190,
        debits=True, credits=True, reversed=False, consistency=LINEARIZABLE,
    ) -> list[AccountBalance]:
        f = self._filter(account_id, timestamp_min, timestamp_max, limit, debits, credits, reversed, consistency)
        response = await self.call("Ledger", "GetAccountBalances", f)
        return [
            AccountBalance(b.timestamp, _int(b.debits_pending), _int(b.debits_posted),
                           _int(b.credits_pending), _int(b.credits_posted))
            for b in response.balances
        ]

    # ---------------------------------------------------------------- kv

    async def kv_put(self, key: bytes, value: bytes) -> int:
        response = await self.call("KV", "Put", pb.PutRequest(key=key, value=value), idempotent=False)
        return response.version

    async def kv_get(self, key: bytes, *, consistency=LINEARIZABLE, address=None) -> tuple[bytes, int] | None:
        response = await self.call(
            "KV", "Get", pb.GetRequest(key=key, read=pb.ReadOptions(consistency=consistency)), address=address
        )
        return (response.value, response.version) if response.found else None

    async def kv_delete(self, key: bytes) -> bool:
        response = await self.call("KV", "Delete", pb.DeleteRequest(key=key), idempotent=False)
        return response.deleted

    async def kv_cas(self, key: bytes, expected_version: int, value: bytes) -> tuple[bool, int]:
        response = await self.call(
            "KV", "CompareAndSet",
            pb.CompareAndSetRequest(key=key, expected_version=expected_version, value=value),
            idempotent=False,
        )
        return response.ok, response.version

    async def kv_range(
        self, *, prefix: bytes = b"", start: bytes = b"", end: bytes = b"", limit: int = 1000,
        consistency=LINEARIZABLE,
    ) -> tuple[list[tuple[bytes, bytes, int]], bool]:
        response = await self.call(
            "KV", "Range",
            pb.RangeRequest(prefix=prefix, start=start, end=end, limit=limit,
                            read=pb.ReadOptions(consistency=consistency)),
        )
        return [(i.key, i.value, i.version) for i in response.items], response.more

    # ---------------------------------------------------------------- cluster

    async def status(self, *, all: bool = True, address: str | None = None):
        """The cluster's status as seen by one reachable replica (any will do)."""
        last: BaseException | None = None
        for target in ([address] if address else [self._leader or self.addresses[0]] + self.addresses):
            if target is None:
                continue
            try:
                return await self._stub(target, "Cluster").Status(
                    pb.StatusRequest(all=all), timeout=min(self.attempt_timeout_s, 3.0)
                )
            except grpc.aio.AioRpcError as e:
                last = e
        raise errors.NotLeader(
            f"no replica answered a status request ({last.details() if isinstance(last, grpc.aio.AioRpcError) else last}); "
            "are the replicas running? (python -m cluster status)"
        )

    async def transfer_leader(self, target_id: str) -> str:
        response = await self.call(
            "Cluster", "TransferLeader", pb.TransferLeaderRequest(target_id=target_id), idempotent=True
        )
        self._leader = None
        return response.leader_id

    async def list_members(self):
        """The membership as the leader sees it (``ListMembersResponse``)."""
        return await self.call("Cluster", "ListMembers", pb.ListMembersRequest(), idempotent=True)

    async def change_membership(self, kind: str, replica_id: str):
        """``add_learner`` / ``promote`` / ``remove`` one replica; returns once it took
        effect (``ChangeMembershipResponse``). Not retried after an unknown
        outcome: list the members to see whether it happened."""
        return await self.call(
            "Cluster", "ChangeMembership", pb.ChangeMembershipRequest(kind=kind, replica_id=replica_id),
            idempotent=False,
        )

    async def replace_member(self, old_id: str, new_id: str, *, catch_up_timeout_s: float = 600.0,
                             poll_s: float = 0.2) -> None:
        """Replace voter ``old_id`` by ``new_id``: add it as a learner, wait until
        it caught up, promote it, remove ``old_id`` (moving leadership away first
        if ``old_id`` leads). Each step is skipped when already done, so a
        replacement cut short can be run again."""
        members = {m.id: m for m in (await self.list_members()).members}
        if new_id not in members:
            await self.change_membership("add_learner", new_id)
        deadline = time.monotonic() + catch_up_timeout_s
        while True:
            m = {x.id: x for x in (await self.list_members()).members}.get(new_id)
            if m is not None and (m.kind == "voter" or m.caught_up):
                break
            if time.monotonic() > deadline:
                raise errors.DeadlineExceeded(f"{new_id} did not catch up within {catch_up_timeout_s:.0f} s")
            await asyncio.sleep(poll_s)
        if m.kind != "voter":
            await self.change_membership("promote", new_id)
        listing = await self.list_members()
        if old_id not in {x.id for x in listing.members}:
            return
        if listing.leader_id == old_id:
            await self.transfer_leader(new_id)
        await self.change_membership("remove", old_id)


class Batcher:
    """Groups single transfers (or accounts) of concurrent callers into large requests.

        batcher = Batcher(client)
        result = await batcher.create_transfer(transfer)   # from many tasks at once

    A request is sent when ``events_max`` events are waiting or ``linger_s``
    after the first one arrived, whichever comes first.
    """

    def __init__(self, client: AsyncClient, *, events_max: int = EVENTS_PER_REQUEST_MAX, linger_s: float = 0.001):
        assert 1 <= events_max <= EVENTS_PER_REQUEST_MAX
        self.client = client
        self.events_max = events_max
        self.linger_s = linger_s
        self._pending: dict[str, list[tuple[Any, asyncio.Future]]] = {"transfers": [], "accounts": []}
        self._timers: dict[str, asyncio.TimerHandle | None] = {"transfers": None, "accounts": None}

    async def create_transfer(self, transfer: Transfer) -> EventResult:
        return await self._add("transfers", transfer)

    async def create_account(self, account: Account) -> EventResult:
        return await self._add("accounts", account)

    async def _add(self, kind: str, event) -> EventResult:
        future = asyncio.get_running_loop().create_future()
        pending = self._pending[kind]
        pending.append((event, future))
        if len(pending) >= self.events_max:
            self._flush(kind)
        elif self._timers[kind] is None:
            self._timers[kind] = asyncio.get_running_loop().call_later(self.linger_s, self._flush, kind)
        return await future

    def _flush(self, kind: str) -> None:
        timer = self._timers[kind]
        if timer is not None:
            timer.cancel()
            self._timers[kind] = None
        batch, self._pending[kind] = self._pending[kind], []
        if batch:
            asyncio.get_running_loop().create_task(self._send(kind, batch))

    async def _send(self, kind: str, batch) -> None:
        events = [e for e, _ in batch]
        try:
            if kind == "transfers":
                results = await self.client.create_transfers(events)
            else:
                results = await self.client.create_accounts(events)
        except BaseException as e:
            for _, f in batch:
                if not f.done():
                    f.set_exception(e)
            return
        for (_, f), r in zip(batch, results):
            if not f.done():
                f.set_result(r)


class Client:
    """Synchronous facade over ``AsyncClient`` (same methods, same retries)."""

    def __init__(self, addresses: Sequence[str], **kwargs) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._async = AsyncClient(addresses, **kwargs)

    @classmethod
    def for_topology(cls, topology_path: str, identity: str = "client", **kwargs) -> "Client":
        return cls(*topology_args(topology_path, identity, kwargs), **kwargs)

    @property
    def retries(self) -> int:
        return self._async.retries

    def __getattr__(self, name: str):
        method = getattr(self._async, name)
        if not asyncio.iscoroutinefunction(method):
            return method

        def run(*args, **kwargs):
            with self._lock:
                return self._loop.run_until_complete(method(*args, **kwargs))

        return run

    def close(self) -> None:
        with self._lock:
            self._loop.run_until_complete(self._async.close())
            self._loop.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
