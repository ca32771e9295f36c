"""Ledger.Submit: many writes over one stream, each answered as its unary call would be.

Goal: on a three-replica cluster of real processes, a write sent as a
message of the stream gets the same per-event results as the unary call
(ok, exists, exists_with_different_amount), a write that fails as a whole
gets the unary call's status and metadata as a WriteError while the stream
goes on (a request naming no write, malformed packed rows, an id already in
progress, a follower's NotLeader with the leader's address), a frame that
does not parse ends the stream with INVALID_ARGUMENT, and many concurrent
callers of one client share one stream and each get their own results,
booked exactly once.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from cluster_harness import LocalCluster, running_with_accounts
from ledger import errors
from ledger.api_proto import pb
from ledger.client import AsyncClient
from ledger.model import Transfer

pytestmark = pytest.mark.timeout(180)

LEDGER = 9
A, B = 2001, 2002
SUBMIT = "/ledgerdb.v1.Ledger/Submit"


@pytest.fixture(scope="module")
def cluster():
    with running_with_accounts(LocalCluster(3, cluster_id="submit"), LEDGER, (A, B)) as c:
        yield c


def _transfer(i: int, amount: int = 1) -> Transfer:
    return Transfer(id=i, debit_account_id=A, credit_account_id=B, amount=amount, ledger=LEDGER, code=1)


def _write(rid: int, *transfers: Transfer, packed: bytes | None = None) -> pb.WriteRequest:
    rows = packed if packed is not None else b"".join(t.pack() for t in transfers)
    return pb.WriteRequest(id=rid, create_transfers=pb.CreateTransfersRequest(packed=rows))


def _open(address: str):
    channel = grpc.aio.insecure_channel(address)
    call = channel.stream_stream(SUBMIT, request_serializer=pb.WriteRequests.SerializeToString,
                                 response_deserializer=pb.WriteResponses.FromString)()
    return channel, call


async def _answers(call, n: int) -> dict[int, list[pb.WriteResponse]]:
    """The next ``n`` answers, by write id."""
    got: dict[int, list[pb.WriteResponse]] = {}
    count = 0
    while count < n:
        frame = await asyncio.wait_for(call.read(), 30)
        assert frame is not grpc.aio.EOF
        for r in frame.responses:
            got.setdefault(r.id, []).append(r)
            count += 1
    assert count == n
    return got


def _error_of(response: pb.WriteResponse) -> errors.LedgerError:
    assert response.HasField("error") and not response.results
    error = errors.from_write_error(response.error)
    assert error is not None
    return error


def test_each_write_is_answered_as_its_unary_call(cluster):
    async def run():
        leader = await asyncio.to_thread(cluster.wait_leader)
        channel, call = _open(cluster.addresses[leader])
        try:
            await call.write(pb.WriteRequests(requests=[_write(1, _transfer(70_001, 5), _transfer(70_002, 6))]))
            (first,) = (await _answers(call, 1))[1]
            assert [(r.index, r.name) for r in first.results] == [(0, "ok"), (1, "ok")]
            await call.write(pb.WriteRequests(requests=[
                _write(2, _transfer(70_001, 5)),                # the same event again
                _write(3, _transfer(70_002, 7)),                # same id, another amount
                pb.WriteRequest(id=4),                          # names no write
                _write(5, packed=b"\x00" * 130),                # not whole rows
                _write(6, _transfer(70_003)),
                _write(6, _transfer(70_004)),                   # id 6 is still in progress
            ]))
            got = await _answers(call, 6)
            assert sorted(got) == [2, 3, 4, 5, 6] and len(got[6]) == 2
            assert [r.name for r in got[2][0].results] == ["exists"]
            assert [r.name for r in got[3][0].results] == ["exists_with_different_amount"]
            for rid, match in ((4, "names no write"), (5, "not a whole number of rows")):
                error = _error_of(got[rid][0])
                assert isinstance(error, errors.InvalidArgument) and match in error.message
            # The first id-6 write was taken; the duplicate is refused, not booked.
            refused, booked = sorted(got[6], key=lambda r: not r.HasField("error"))
            assert "already in progress" in _error_of(refused).message
            assert [r.name for r in booked.results] == ["ok"]
            await call.done_writing()
            assert await asyncio.wait_for(call.read(), 30) is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
        finally:
            await channel.close()
        async with AsyncClient([cluster.addresses[leader]], streams=False) as unary:
            results = await unary.create_transfers([_transfer(70_002, 7), _transfer(70_003)])
            assert [r.name for r in results] == ["exists_with_different_amount", "exists"]
            found = await unary.lookup_transfers([70_001, 70_002, 70_003, 70_004])
            assert [t.id for t in found] == [70_001, 70_002, 70_003]

    asyncio.run(run())


def test_a_follower_answers_each_write_not_leader_with_the_leaders_address(cluster):
    async def run():
        leader = await asyncio.to_thread(cluster.wait_leader)
        follower = next(r for r in cluster.ids if r != leader)
        channel, call = _open(cluster.addresses[follower])
        try:
            await call.write(pb.WriteRequests(requests=[_write(1, _transfer(71_001)), _write(2, _transfer(71_002))]))
            got = await _answers(call, 2)
            for rid in (1, 2):
                error = _error_of(got[rid][0])
                assert isinstance(error, errors.NotLeader)
                assert error.leader_address == cluster.addresses[leader]
            call.cancel()
        finally:
            await channel.close()

    asyncio.run(run())


def test_a_frame_that_does_not_parse_ends_the_stream_with_invalid_argument(cluster):
    async def run():
        leader = await asyncio.to_thread(cluster.wait_leader)
        channel = grpc.aio.insecure_channel(cluster.addresses[leader])
        try:
            call = channel.stream_stream(SUBMIT)()  # raw bytes both ways
            await call.write(b"\x0a\xff\xff\xff\x0f")  # a length running past the frame
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await asyncio.wait_for(call.read(), 30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message" in e.value.details()
        finally:
            await channel.close()

    asyncio.run(run())


def test_concurrent_callers_share_one_stream_and_book_once(cluster):
    async def run():
        async with AsyncClient(list(cluster.addresses.values())) as client:
            before = {a.id: a for a in await client.lookup_accounts([A, B])}
            ids = range(72_001, 72_301)
            results = await asyncio.gather(*(client.create_transfers([_transfer(i)]) for i in ids))
            assert all([r.name for r in rs] == ["ok"] for rs in results)
            leader = client._leader
            # One stream to the leader carried them all (and perhaps one to the
            # replica first asked, which redirected).
            assert leader is not None and client._streams[leader].failure is None
            assert client._streams[leader].next_id > len(ids)
            # Every caller again, same ids: each is answered exists, nothing books twice.
            again = await asyncio.gather(*(client.create_transfers([_transfer(i)]) for i in ids))
            assert all([r.name for r in rs] == ["exists"] for rs in again)
            after = {a.id: a for a in await client.lookup_accounts([A, B])}
            assert after[A].debits_posted - before[A].debits_posted == len(ids)
            assert after[B].credits_posted - before[B].credits_posted == len(ids)

    asyncio.run(run())


def test_garbage_frames_end_only_their_own_stream(cluster):
    """Seeded random bytes as frames: each stream that gets one ends with
    INVALID_ARGUMENT (or, for bytes that happen to parse, answers per write),
    and the replica keeps serving writes on a new stream."""

    async def run():
        rng = random.Random(8)
        leader = await asyncio.to_thread(cluster.wait_leader)
        channel = grpc.aio.insecure_channel(cluster.addresses[leader])
        try:
            for i in range(20):
                garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
                call = channel.stream_stream(SUBMIT, response_deserializer=pb.WriteResponses.FromString)()
                await call.write(garbage)
                await call.done_writing()
                try:
                    answers = []  # bytes that happen to parse: their writes are answered one by one
                    while (frame := await asyncio.wait_for(call.read(), 30)) is not grpc.aio.EOF:
                        answers.append(frame)
                    assert await call.code() == grpc.StatusCode.OK
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (i, garbage.hex(), e)
            fresh, writer = _open(cluster.addresses[leader])
            try:
                await writer.write(pb.WriteRequests(requests=[_write(1, _transfer(73_001))]))
                (answer,) = (await _answers(writer, 1))[1]
                assert [r.name for r in answer.results] == ["ok"]
                writer.cancel()
            finally:
                await fresh.close()
        finally:
            await channel.close()

    asyncio.run(run())


def test_a_frame_with_more_writes_than_a_stream_may_have_unanswered_is_answered_whole(cluster):
    """The replica takes the writes of one frame only as room frees up (at
    most api.STREAM_WRITES_UNANSWERED_MAX unanswered or unsent at a time),
    and answers every one of them."""
    from ledger.api import STREAM_WRITES_UNANSWERED_MAX

    async def run():
        n = STREAM_WRITES_UNANSWERED_MAX + 904
        leader = await asyncio.to_thread(cluster.wait_leader)
        channel, call = _open(cluster.addresses[leader])
        try:
            await call.write(pb.WriteRequests(requests=[_write(i, _transfer(80_000 + i)) for i in range(1, n + 1)]))
            got = await _answers(call, n)
            assert sorted(got) == list(range(1, n + 1))
            assert all([r.name for r in rs[0].results] == ["ok"] for rs in got.values())
            call.cancel()
        finally:
            await channel.close()

    asyncio.run(run())
