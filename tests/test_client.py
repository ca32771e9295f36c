"""The client library against scripted fake replicas (real gRPC on loopback).

Goal: the client follows a follower's redirect to the named leader, tries the
next replica when one is down or has no leader, backs off on
RESOURCE_EXHAUSTED, retries a timed-out write with the very same request (same
event ids: idempotent), refuses to blindly retry a non-idempotent KV
operation whose outcome is unknown, raises request errors at once, and the
Batcher packs concurrent single events into few requests. Writes are tried
both ways the client sends them: as messages of a Ledger.Submit stream (the
default) and as unary calls.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from ledger import errors
from ledger.api_proto import pb, pb_grpc
from ledger.client import AsyncClient, Batcher, SubmitStream
from ledger.model import Transfer

pytestmark = pytest.mark.timeout(60)


class FakeLedger(pb_grpc.LedgerServicer, pb_grpc.KVServicer):
    """Answers from a script: a list of actions, one per call, then 'ok'."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests = []

    async def _act(self, context):
        action = self.script.pop(0) if self.script else "ok"
        if isinstance(action, tuple) and action[0] == "redirect":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not the leader", trailing_metadata=(
                ("x-error-kind", "NotLeader"), ("x-leader-id", "r2"), ("x-leader-address", action[1]),
            ))
        if action == "no-leader":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no leader known",
                                trailing_metadata=(("x-error-kind", "NotLeader"),))
        if action == "busy":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full",
                                trailing_metadata=(("x-error-kind", "Overloaded"),))
        if action == "slow":
            await asyncio.sleep(1.0)
        if action == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "amount: 17 bytes",
                                trailing_metadata=(("x-error-kind", "InvalidArgument"),))

    async def CreateTransfers(self, request, context):
        self.requests.append(request)
        await self._act(context)
        return pb.CreateTransfersResponse(results=[
            pb.EventResult(index=i, code=0, name="ok")
            for i in range(len(request.transfers) or len(request.packed) // 128)
        ])

    async def Submit(self, request_iterator, context):
        """Each write of the stream runs the script as a unary call would, concurrently."""
        lock = asyncio.Lock()
        tasks = []

        async def one(write):
            request = getattr(write, write.WhichOneof("write"))
            self.requests.append(request)
            try:
                await self._act(_WriteContext())
                answer = pb.WriteResponse(id=write.id, results=[
                    pb.EventResult(index=i, code=0, name="ok") for i in range(len(request.packed) // 128)])
            except _Aborted as e:
                answer = pb.WriteResponse(id=write.id, error=pb.WriteError(
                    status=e.code.value[0], message=e.details, metadata=dict(e.metadata)))
            async with lock:
                await context.write(pb.WriteResponses(responses=[answer]))

        while (frame := await context.read()) is not grpc.aio.EOF:
            if self.script and self.script[0] == "end-stream":
                self.script.pop(0)  # the whole stream fails, as a peer's frame limit would end it
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "frame larger than max")
            tasks += [asyncio.ensure_future(one(w)) for w in frame.requests]
        await asyncio.gather(*tasks)

    async def CompareAndSet(self, request, context):
        self.requests.append(request)
        await self._act(context)
        return pb.CompareAndSetResponse(ok=True, version=7)


class _Aborted(Exception):
    def __init__(self, code, details, metadata):
        super().__init__(details)
        self.code, self.details, self.metadata = code, details, metadata


class _WriteContext:
    """What ``FakeLedger._act`` needs of a context, for one write of a stream."""

    async def abort(self, code, details, trailing_metadata=()):
        raise _Aborted(code, details, trailing_metadata)


async def _serve(fake):
    server = grpc.aio.server()
    pb_grpc.add_LedgerServicer_to_server(fake, server)
    pb_grpc.add_KVServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _transfer(i=1):
    return Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
def test_follows_redirect_to_the_named_leader(streams):
    async def run():
        leader = FakeLedger()
        s2, leader_addr = await _serve(leader)
        follower = FakeLedger([("redirect", leader_addr)])
        s1, follower_addr = await _serve(follower)
        try:
            async with AsyncClient([follower_addr], streams=streams) as c:
                results = await c.create_transfers([_transfer()])
                assert [r.name for r in results] == ["ok"]
                assert len(leader.requests) == 1 and len(follower.requests) == 1
                # The next call goes straight to the leader.
                await c.create_transfers([_transfer(2)])
                assert len(leader.requests) == 2 and len(follower.requests) == 1
        finally:
            await s1.stop(None)
            await s2.stop(None)

    asyncio.run(run())


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
def test_tries_the_next_replica_when_one_is_down_or_leaderless(streams):
    async def run():
        good = FakeLedger(["no-leader"])
        s, good_addr = await _serve(good)
        try:
            async with AsyncClient(["127.0.0.1:1", good_addr], timeout_s=10, streams=streams) as c:
                results = await c.create_transfers([_transfer()])
                assert [r.name for r in results] == ["ok"]
                assert len(good.requests) == 2  # no leader known at first, then served
        finally:
            await s.stop(None)

    asyncio.run(run())


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
def test_backs_off_on_resource_exhausted_and_retries_same_ids_after_timeout(streams):
    async def run():
        fake = FakeLedger(["busy", "slow", "ok"])
        s, addr = await _serve(fake)
        try:
            async with AsyncClient([addr], timeout_s=10, attempt_timeout_s=0.3, streams=streams) as c:
                results = await c.create_transfers([_transfer(41), _transfer(42)])
                assert [r.name for r in results] == ["ok", "ok"]
                assert len(fake.requests) == 3
                # Every attempt carries the same two rows, hence the same ids.
                first = _transfer(41).pack() + _transfer(42).pack()
                assert all(r.packed == first for r in fake.requests)
        finally:
            await s.stop(None)

    asyncio.run(run())


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
def test_request_errors_are_raised_at_once(streams):
    async def run():
        fake = FakeLedger(["invalid"])
        s, addr = await _serve(fake)
        try:
            async with AsyncClient([addr], streams=streams) as c:
                with pytest.raises(errors.InvalidArgument, match="17 bytes"):
                    await c.create_transfers([_transfer()])
                assert len(fake.requests) == 1
        finally:
            await s.stop(None)

    asyncio.run(run())


def test_non_idempotent_kv_is_not_retried_blindly():
    async def run():
        fake = FakeLedger(["slow"])
        s, addr = await _serve(fake)
        try:
            async with AsyncClient([addr], attempt_timeout_s=0.2) as c:
                with pytest.raises(errors.OutcomeUnknown):
                    await c.kv_cas(b"k", 1, b"v")
                assert len(fake.requests) == 1
                # Refused before processing (not the leader): safe to retry.
                fake.script = ["no-leader"]
                assert await c.kv_cas(b"k", 1, b"v") == (True, 7)
        finally:
            await s.stop(None)

    asyncio.run(run())


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "unary"])
def test_batcher_packs_concurrent_events(streams):
    async def run():
        fake = FakeLedger()
        s, addr = await _serve(fake)
        try:
            async with AsyncClient([addr], streams=streams) as c:
                batcher = Batcher(c, events_max=100, linger_s=0.01)
                results = await asyncio.gather(*(batcher.create_transfer(_transfer(i)) for i in range(1, 251)))
                assert all(r.name == "ok" for r in results)
                assert len(fake.requests) == 3  # 100 + 100 + 50
                assert sorted(len(r.packed) // 128 for r in fake.requests) == [50, 100, 100]
        finally:
            await s.stop(None)

    asyncio.run(run())


def test_falls_back_to_unary_calls_where_the_stream_is_unimplemented():
    class UnaryOnly(FakeLedger):
        Submit = pb_grpc.LedgerServicer.Submit  # answers UNIMPLEMENTED

    async def run():
        fake = UnaryOnly()
        s, addr = await _serve(fake)
        try:
            async with AsyncClient([addr]) as c:
                assert [r.name for r in await c.create_transfers([_transfer()])] == ["ok"]
                assert c._unary_only == {addr} and len(fake.requests) == 1
        finally:
            await s.stop(None)

    asyncio.run(run())


def test_a_failed_stream_is_retried_on_a_new_one_whatever_ended_it():
    """Writes on a stream that ended are of unknown outcome: UNAVAILABLE to
    their callers (even when the stream ended with INVALID_ARGUMENT, which
    is about a frame, not about any one write), so the same request is sent
    again on a new stream."""

    async def run():
        fake = FakeLedger(["end-stream"])
        s, addr = await _serve(fake)
        try:
            async with AsyncClient([addr], timeout_s=10) as c:
                assert [r.name for r in await c.create_transfers([_transfer(5)])] == ["ok"]
                assert c.retries == 1 and len(fake.requests) == 1
        finally:
            await s.stop(None)

    asyncio.run(run())


def test_an_oversized_write_is_refused_before_it_reaches_the_shared_stream():
    async def run():
        fake = FakeLedger()
        s, addr = await _serve(fake)
        try:
            async with AsyncClient([addr]) as c:
                with pytest.raises(errors.BatchTooLarge, match="8190"):
                    await c.create_transfers([_transfer(i) for i in range(1, 8192)])
                assert fake.requests == []
        finally:
            await s.stop(None)

    asyncio.run(run())


def test_a_write_its_caller_gave_up_on_is_not_sent_and_the_rest_carry_their_time_left():
    class Call:
        def cancel(self):
            """Nothing to end: the test drives the stream's frames by hand."""

    class Channel:
        def stream_stream(self, *args, **kwargs):
            return lambda: Call()

    async def run():
        stream = SubmitStream(Channel())
        for task in stream._tasks:
            task.cancel()  # drive _frame by hand
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        gone, late, live = loop.create_future(), loop.create_future(), loop.create_future()
        gone.cancel()
        request = pb.CreateTransfersRequest(packed=_transfer().pack()).SerializeToString()
        stream.queue = [(1, 4, request, now + 5, gone), (2, 4, request, now - 1, late),
                        (3, 4, request, now + 0.5, live)]
        frame = pb.WriteRequests.FromString(stream._frame())
        assert [w.id for w in frame.requests] == [3] and stream.queue == []
        assert 1 <= frame.requests[0].timeout_ms <= 500
        assert frame.requests[0].create_transfers.SerializeToString() == request

    asyncio.run(run())
