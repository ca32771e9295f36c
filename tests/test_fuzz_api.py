"""Fuzzing the public API of a real replica process (one replica, 127.0.0.1).

Goal: requests with out-of-range and malformed fields (128-bit fields of the
wrong length, 16-bit fields above 65535, unknown flags and read
consistencies, empty and oversized batches, keys and values, reversed
ranges, limits beyond the maximum), and raw bytes that are not protobuf at
all, are answered OK or INVALID_ARGUMENT: never INTERNAL, UNKNOWN or a
crash. A request refused with INVALID_ARGUMENT changes nothing: the state
digest is the same before and after it. The replica is still alive and
serving at the end.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.__main__ import pid_runs_replica
from cluster.local import LocalCluster
from ledger import commands as cmd
from ledger import errors
from ledger.api_proto import pb

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
fuzz = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
B128 = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20),
                 st.sampled_from([b"", bytes(16), b"\xff" * 16, bytes(15) + b"\x01"]))
SMALL_ID = st.integers(0, 5).map(lambda i: i.to_bytes(16, "big"))
IDS = st.one_of(SMALL_ID, B128)
READ = st.builds(pb.ReadOptions, consistency=st.integers(0, 5))
KEYS = st.one_of(st.binary(max_size=8), st.binary(min_size=cmd.KV_KEY_BYTES_MAX, max_size=cmd.KV_KEY_BYTES_MAX + 2))

ACCOUNTS = st.builds(
    pb.Account, id=IDS, debits_pending=B128, debits_posted=B128, credits_pending=B128, credits_posted=B128,
    user_data_128=B128, user_data_64=U64, user_data_32=U32, ledger=st.one_of(st.just(1), U32),
    code=st.one_of(st.just(1), U32), flags=st.one_of(st.integers(0, 15), U32), timestamp=st.one_of(st.just(0), U64),
)
TRANSFERS = st.builds(
    pb.Transfer, id=IDS, debit_account_id=IDS, credit_account_id=IDS, amount=B128, pending_id=IDS,
    user_data_128=B128, user_data_64=U64, user_data_32=U32, timeout=U32, ledger=st.one_of(st.just(1), U32),
    code=st.one_of(st.just(1), U32), flags=st.one_of(st.integers(0, 63), U32), timestamp=st.one_of(st.just(0), U64),
)
FILTERS = st.builds(
    pb.AccountFilter, account_id=IDS, timestamp_min=U64, timestamp_max=U64, limit=U32,
    debits=st.booleans(), credits=st.booleans(), reversed=st.booleans(), read=READ,
)

REQUESTS = st.one_of(
    st.tuples(st.just("/ledgerdb.v1.Ledger/CreateAccounts"),
              st.builds(pb.CreateAccountsRequest, accounts=st.lists(ACCOUNTS, max_size=4))),
    st.tuples(st.just("/ledgerdb.v1.Ledger/CreateTransfers"),
              st.builds(pb.CreateTransfersRequest, transfers=st.lists(TRANSFERS, max_size=4))),
    # Packed rows: any bytes, and whole rows of any content, alone or beside messages.
    st.tuples(st.just("/ledgerdb.v1.Ledger/CreateAccounts"),
              st.builds(pb.CreateAccountsRequest, accounts=st.lists(ACCOUNTS, max_size=1),
                        packed=st.one_of(st.binary(max_size=300), st.binary(min_size=128, max_size=128)))),
    st.tuples(st.just("/ledgerdb.v1.Ledger/CreateTransfers"),
              st.builds(pb.CreateTransfersRequest, transfers=st.lists(TRANSFERS, max_size=1),
                        packed=st.one_of(st.binary(max_size=300), st.binary(min_size=256, max_size=256)))),
    st.tuples(st.just("/ledgerdb.v1.Ledger/LookupAccounts"),
              st.builds(pb.LookupAccountsRequest, ids=st.lists(IDS, max_size=4), read=READ)),
    st.tuples(st.just("/ledgerdb.v1.Ledger/LookupTransfers"),
              st.builds(pb.LookupTransfersRequest, ids=st.lists(IDS, max_size=4), read=READ)),
    st.tuples(st.just("/ledgerdb.v1.Ledger/GetAccountTransfers"), FILTERS),
    st.tuples(st.just("/ledgerdb.v1.Ledger/GetAccountBalances"), FILTERS),
    st.tuples(st.just("/ledgerdb.v1.KV/Put"), st.builds(pb.PutRequest, key=KEYS, value=st.binary(max_size=30))),
    st.tuples(st.just("/ledgerdb.v1.KV/Get"), st.builds(pb.GetRequest, key=KEYS, read=READ)),
    st.tuples(st.just("/ledgerdb.v1.KV/Delete"), st.builds(pb.DeleteRequest, key=KEYS)),
    st.tuples(st.just("/ledgerdb.v1.KV/CompareAndSet"),
              st.builds(pb.CompareAndSetRequest, key=KEYS, expected_version=U64, value=st.binary(max_size=30))),
    st.tuples(st.just("/ledgerdb.v1.KV/Range"),
              st.builds(pb.RangeRequest, start=st.binary(max_size=8), end=st.binary(max_size=8),
                        prefix=st.one_of(st.just(b""), st.binary(max_size=4)), limit=U32, read=READ)),
    st.tuples(st.just("/ledgerdb.v1.Cluster/Status"), st.builds(pb.StatusRequest, all=st.booleans())),
)
UNARY_METHODS = sorted({
    f"/{s.full_name}/{m.name}" for s in pb.DESCRIPTOR.services_by_name.values()
    for m in s.methods if not m.client_streaming and not m.server_streaming
    and s.name in ("Ledger", "KV")
})


@pytest.fixture(scope="module")
def replica():
    c = LocalCluster(1, "fuzz")
    try:
        c.start()
        c.wait_leader()
        channel = grpc.insecure_channel(c.addresses["r1"])
        yield c, channel
        channel.close()
    finally:
        c.stop()


def _digest(channel) -> str:
    # A linearizable read first: it waits until every answered write's apply
    # is committed, which the reported digest reflects.
    get = channel.unary_unary("/ledgerdb.v1.KV/Get", request_serializer=pb.GetRequest.SerializeToString,
                              response_deserializer=pb.GetResponse.FromString)
    get(pb.GetRequest(key=b"fuzz-digest"), timeout=10)
    rpc = channel.unary_unary("/ledgerdb.v1.Cluster/Status", request_serializer=pb.StatusRequest.SerializeToString,
                              response_deserializer=pb.StatusResponse.FromString)
    return rpc(pb.StatusRequest(all=False), timeout=10).replicas[0].state_digest


def _call(channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    rpc = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        rpc(payload, timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def _check(channel, method: str, payload: bytes) -> None:
    before = _digest(channel)
    code, details = _call(channel, method, payload)
    assert code in ALLOWED, (method, code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details, "a refusal names its cause"
        assert _digest(channel) == before, (method, details)


@fuzz
@given(REQUESTS)
def test_malformed_fields_are_answered_ok_or_invalid_argument(replica, request):
    _cluster, channel = replica
    method, message = request
    _check(channel, method, message.SerializeToString())


@fuzz
@given(st.sampled_from(UNARY_METHODS), st.binary(max_size=200))
def test_raw_bytes_requests_are_answered_ok_or_invalid_argument(replica, method, payload):
    """Bytes that may not be protobuf at all: refused with INVALID_ARGUMENT, not INTERNAL."""
    _cluster, channel = replica
    _check(channel, method, payload)


def test_batches_and_values_beyond_the_limits_are_refused_and_change_nothing(replica):
    """Oversized batches, keys, values and whole requests."""
    cluster, channel = replica
    too_many = pb.CreateTransfersRequest(transfers=[pb.Transfer(id=i.to_bytes(16, "big"), ledger=1, code=1)
                                                    for i in range(1, cmd.EVENTS_PER_COMMAND_MAX + 2)])
    big_value = pb.PutRequest(key=b"k", value=b"x" * (cmd.KV_VALUE_BYTES_MAX + 1))
    huge = pb.PutRequest(key=b"k", value=b"x" * (5 * 1024 * 1024))  # above the per-request byte limit
    for method, message in (("/ledgerdb.v1.Ledger/CreateTransfers", too_many),
                            ("/ledgerdb.v1.Ledger/CreateAccounts", pb.CreateAccountsRequest()),
                            ("/ledgerdb.v1.KV/Put", big_value), ("/ledgerdb.v1.KV/Put", huge),
                            ("/ledgerdb.v1.KV/Put", pb.PutRequest(key=b"", value=b"v"))):
        before = _digest(channel)
        code, details = _call(channel, method, message.SerializeToString())
        if message is huge:
            # Beyond the server's gRPC receive limit: gRPC itself refuses it while receiving, and
            # the client library reads that as bad input, not as overload (never retried).
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details, (code, details)
            assert isinstance(errors.from_status(code, details, ()), errors.InvalidArgument)
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert _digest(channel) == before
    pid = cluster.pid("r1")
    assert pid_runs_replica(pid, "r1")
