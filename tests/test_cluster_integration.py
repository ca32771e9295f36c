"""A three-replica cluster of real processes on loopback does what the README promises.

Goal: accounts and transfers commit through Paxos; malformed requests get clear
codes and change nothing; a follower redirects to the leader; after a SIGKILL
of the leader a new leader is elected and the client's retried transfers land
exactly once; the killed replica, restarted, catches up to the same state
digest. Every process started here is killed by PID at the end and the
temporary directory removed.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from cluster_harness import LocalCluster, wait_until
from ledger import errors
from ledger.api_proto import pb, pb_grpc
from ledger.client import LOCAL, Client
from ledger.model import Account, Transfer

pytestmark = pytest.mark.timeout(240)

LEDGER = 7
A, B, C = 1001, 1002, 1003


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def accounts(cluster):
    with cluster.client() as c:
        results = c.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in (A, B, C)])
    assert [r.name for r in results] == ["ok", "ok", "ok"]
    return (A, B, C)


def _stub(address: str, service=pb_grpc.LedgerStub):
    channel = grpc.insecure_channel(address)
    return channel, service(channel)


def test_accounts_and_transfers_commit(cluster, accounts):
    """A transfer moves money once; resubmitting it answers `exists`."""
    with cluster.client() as c:
        t = Transfer(id=50_001, debit_account_id=A, credit_account_id=B, amount=25, ledger=LEDGER, code=1)
        assert [r.name for r in c.create_transfers([t])] == ["ok"]
        assert [r.name for r in c.create_transfers([t])] == ["exists"]
        a, b = c.lookup_accounts([A, B])
        assert (a.debits_posted, b.credits_posted) == (25, 25)
        assert [x.id for x in c.lookup_transfers([50_001])] == [50_001]


def test_malformed_requests_get_clear_codes_and_change_nothing(cluster, accounts):
    """Zero ids, bad 128-bit encodings, unknown accounts, oversized batches."""
    with cluster.client() as c:
        before = {a.id: a for a in c.lookup_accounts([A, B, C])}
        leader = cluster.wait_leader()
        channel, stub = _stub(cluster.addresses[leader])
        with channel:
            u = lambda v: v.to_bytes(16, "big")  # noqa: E731
            # Per-event codes: zero id, unknown account. Not RPC errors.
            response = stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[
                pb.Transfer(id=u(0), debit_account_id=u(A), credit_account_id=u(B), amount=u(1), ledger=LEDGER, code=1),
                pb.Transfer(id=u(60_001), debit_account_id=u(999_999), credit_account_id=u(B), amount=u(1),
                            ledger=LEDGER, code=1),
                pb.Transfer(id=u(60_002), debit_account_id=u(A), credit_account_id=u(A), amount=u(1),
                            ledger=LEDGER, code=1),
            ]), timeout=10)
            assert [r.name for r in response.results] == [
                "id_must_not_be_zero", "debit_account_not_found", "accounts_must_be_different",
            ]
            response = stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[pb.Account(id=u(0), ledger=1, code=1)]),
                                           timeout=10)
            assert [r.name for r in response.results] == ["id_must_not_be_zero"]
            # The same per-event codes for packed rows (a nonzero timestamp too).
            response = stub.CreateTransfers(pb.CreateTransfersRequest(packed=b"".join(t.pack() for t in [
                Transfer(id=0, debit_account_id=A, credit_account_id=B, amount=1, ledger=LEDGER, code=1),
                Transfer(id=60_001, debit_account_id=999_999, credit_account_id=B, amount=1, ledger=LEDGER, code=1),
                Transfer(id=60_002, debit_account_id=A, credit_account_id=B, amount=1, ledger=LEDGER, code=1,
                         timestamp=5),
            ])), timeout=10)
            assert [r.name for r in response.results] == [
                "id_must_not_be_zero", "debit_account_not_found", "timestamp_must_be_zero",
            ]
            response = stub.CreateAccounts(pb.CreateAccountsRequest(
                packed=Account(id=0, ledger=1, code=1).pack()), timeout=10)
            assert [r.name for r in response.results] == ["id_must_not_be_zero"]

            # Whole-request refusals: INVALID_ARGUMENT, before anything is proposed.
            bad_requests = {
                "amount of 17 bytes (above 2**128-1)": pb.CreateTransfersRequest(transfers=[pb.Transfer(
                    id=u(60_003), debit_account_id=u(A), credit_account_id=u(B), amount=b"\x01" + bytes(16),
                    ledger=LEDGER, code=1)]),
                "id of 3 bytes": pb.CreateTransfersRequest(transfers=[pb.Transfer(
                    id=b"\x00\x00\x01", debit_account_id=u(A), credit_account_id=u(B), amount=u(1),
                    ledger=LEDGER, code=1)]),
                "code above 16 bits": pb.CreateTransfersRequest(transfers=[pb.Transfer(
                    id=u(60_004), debit_account_id=u(A), credit_account_id=u(B), amount=u(1),
                    ledger=LEDGER, code=70_000)]),
                "8,191 events": pb.CreateTransfersRequest(transfers=[pb.Transfer(
                    id=u(70_000 + i), debit_account_id=u(A), credit_account_id=u(B), amount=u(1),
                    ledger=LEDGER, code=1) for i in range(8191)]),
                "empty batch": pb.CreateTransfersRequest(),
                "packed rows of 127 bytes": pb.CreateTransfersRequest(packed=bytes(127)),
                "8,191 packed rows": pb.CreateTransfersRequest(packed=b"".join(Transfer(
                    id=90_000 + i, debit_account_id=A, credit_account_id=B, amount=1, ledger=LEDGER,
                    code=1).pack() for i in range(8191))),
                "messages and packed rows at once": pb.CreateTransfersRequest(
                    transfers=[pb.Transfer(id=u(60_005), debit_account_id=u(A), credit_account_id=u(B),
                                           amount=u(1), ledger=LEDGER, code=1)],
                    packed=Transfer(id=60_006, debit_account_id=A, credit_account_id=B, amount=1,
                                    ledger=LEDGER, code=1).pack()),
            }
            for why, request in bad_requests.items():
                with pytest.raises(grpc.RpcError) as info:
                    stub.CreateTransfers(request, timeout=10)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
                assert info.value.details(), why
        # Nothing changed: balances as before, none of those transfers exists.
        assert {a.id: a for a in c.lookup_accounts([A, B, C])} == before
        ids = [60_001, 60_002, 60_003, 60_004, 60_005, 60_006, 70_000, 78_190, 90_000]
        assert c.lookup_transfers(ids) == []
        # The client library raises the matching error type.
        with pytest.raises(errors.BatchTooLarge):
            c.create_transfers([Transfer(id=80_000 + i, debit_account_id=A, credit_account_id=B, amount=1,
                                         ledger=LEDGER, code=1) for i in range(8191)])


def test_follower_redirects_to_the_leader(cluster, accounts):
    """A follower answers UNAVAILABLE naming the leader; the client follows; a stale read is local."""
    leader = cluster.wait_leader()
    follower = next(r for r in cluster.ids if r != leader)
    channel, stub = _stub(cluster.addresses[follower], pb_grpc.KVStub)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(pb.GetRequest(key=b"k"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(info.value.trailing_metadata())
        assert trailers["x-leader-id"] == leader
        assert trailers["x-leader-address"] == cluster.addresses[leader]
    # A client that only knows the follower still ends up at the leader.
    with Client([cluster.addresses[follower]]) as c:
        c.kv_put(b"redirect", b"works")
        assert c.kv_get(b"redirect")[0] == b"works"
        # A possibly-stale local read is served by the follower itself once it has applied.
        wait_until(lambda: c.kv_get(b"redirect", consistency=LOCAL, address=cluster.addresses[follower]),
                   10, "the follower to apply the put")


def test_leader_sigkill_then_retried_transfers_land_exactly_once(cluster, accounts):
    """Transfers keep flowing from a client while the leader is SIGKILLed; every
    acknowledged and every retried transfer is booked exactly once."""
    old_leader = cluster.wait_leader()
    ids = list(range(100_000, 100_400))
    acknowledged: list[int] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def writer():
        with cluster.client(timeout_s=30, attempt_timeout_s=1.0) as c:
            try:
                for i in range(0, len(ids), 4):
                    chunk = ids[i : i + 4]
                    results = c.create_transfers([
                        Transfer(id=t, debit_account_id=C, credit_account_id=A, amount=1, ledger=LEDGER, code=1)
                        for t in chunk
                    ])
                    assert all(r.name in ("ok", "exists") for r in results), results
                    acknowledged.extend(chunk)
            except BaseException as e:  # reported below
                failures.append(e)
            finally:
                done.set()

    before = {a.id: a for a in Client(list(cluster.addresses.values())).lookup_accounts([A, C])}
    thread = threading.Thread(target=writer)
    thread.start()
    wait_until(lambda: len(acknowledged) >= 40 or done.is_set(), 30, "some transfers before the kill")
    cluster.kill(old_leader)
    new_leader = cluster.wait_leader(exclude=(old_leader,))
    assert new_leader != old_leader
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert not failures, failures
    assert acknowledged == ids

    with cluster.client() as c:
        found = c.lookup_transfers(ids)
        assert sorted(t.id for t in found) == ids
        after = {a.id: a for a in c.lookup_accounts([A, C])}
    assert after[C].debits_posted - before[C].debits_posted == len(ids)
    assert after[A].credits_posted - before[A].credits_posted == len(ids)

    # The dead replica comes back and catches up to the same state.
    cluster.restart(old_leader)
    wait_until(lambda: old_leader in cluster.statuses(), 30, f"{old_leader} to answer again")
    digest = cluster.wait_converged()
    assert len(digest) == 64


def test_status_health_reflection_and_metrics(cluster):
    """Status lists every replica; health checking, reflection and Prometheus metrics are served."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    import urllib.request

    cluster.wait_converged()
    leader = cluster.wait_leader()
    with cluster.client() as c:
        status = c.status(all=True)
    assert [r.id for r in status.replicas] == cluster.ids
    assert status.leader_id == leader
    assert len({r.state_digest for r in status.replicas}) == 1

    with grpc.insecure_channel(cluster.addresses[leader]) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=5)
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"ledgerdb.v1.Ledger", "ledgerdb.v1.KV", "ledgerdb.v1.Cluster", "grpc.health.v1.Health"} <= names

    body = urllib.request.urlopen(f"http://127.0.0.1:{cluster.metrics_ports[leader]}/metrics", timeout=5).read()
    text = body.decode()
    assert f'ledger_replica_role{{cluster="itest",replica="{leader}",role="leader"}} 1.0' in text
    for series in ("ledger_commit_latency_seconds_bucket", "ledger_storage_step_seconds_bucket",
                   "ledger_batch_events_bucket", "ledger_peer_rtt_seconds_bucket", "ledger_applied_index"):
        assert series in text, series


def test_launcher_status_and_ledgerctl_json(cluster, accounts):
    """`python -m cluster status --json` and `ledgerctl --json` report the running cluster."""
    import json
    import subprocess
    import sys

    from cluster.local import ROOT

    cluster.wait_converged()
    result = cluster.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert [r["id"] for r in status["replicas"]] == cluster.ids
    assert sum(r["role"] == "leader" for r in status["replicas"]) == 1
    assert all(r["alive"] and r["pid"] for r in status["replicas"])

    def ctl(*args):
        out = subprocess.run(
            [sys.executable, "-m", "ledger.ledgerctl", "--address", ",".join(cluster.addresses.values()),
             "--json", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        return out.returncode, json.loads(out.stdout)

    code, out = ctl("transfer", "--id", "90001", "--debit", str(A), "--credit", str(B), "--amount", "3",
                    "--ledger", str(LEDGER), "--code", "1")
    assert (code, out["results"][0]["result"]) == (0, "ok")
    code, out = ctl("transfer", "--id", "90002", "--debit", str(A), "--credit", "424242", "--amount", "3",
                    "--ledger", str(LEDGER), "--code", "1")
    assert (code, out["results"][0]["result"]) == (4, "credit_account_not_found")
    code, out = ctl("transfers", "get", "90001")
    assert code == 0 and out["transfers"][0]["amount"] == 3
    code, out = ctl("kv", "get", "no-such-key")
    assert code == 4 and out == {"key": "no-such-key", "found": False}


def test_transfer_leader(cluster, accounts):
    """TransferLeader moves leadership to the named replica, which then serves writes."""
    cluster.wait_converged()
    leader = cluster.wait_leader()
    target = next(r for r in cluster.ids if r != leader)
    with cluster.client() as c:
        assert c.transfer_leader(target) == target
        assert cluster.wait_leader() == target
        c.kv_put(b"after-transfer", b"ok")
        assert c.kv_get(b"after-transfer")[0] == b"ok"
        with pytest.raises(errors.InvalidArgument, match="no replica"):
            c.transfer_leader("r9")
