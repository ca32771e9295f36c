"""Mutual TLS, identities and admin authorization on real replica processes (127.0.0.1).

Goal: with a ``[tls]`` topology, a process without a certificate of the
cluster's CA cannot call any service (public, cluster, peer, health,
reflection); an ordinary client may read and write ledger and KV data but
cannot transfer leadership or call any other admin method, while the admin
identity can; a replica started with another cluster's id (its own CA, or a
certificate of this CA for another cluster) cannot join nor disrupt the
elections of the running cluster, and its attempts are refused and counted.
Processes are started with ``python -m cluster up`` (which makes the
certificates on first use) and killed by PID; waits poll with deadlines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from cluster import certs
from cluster.local import LocalCluster, free_ports, wait_until
from consensus.ballot import Ballot
from consensus.messages import Heartbeat
from ledger import errors, wire
from ledger.api_proto import pb, pb_grpc
from ledger.client import Client
from ledger.model import Account, Transfer
from ledger.server_peers import send_frames

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 30.0


class SecureCluster(LocalCluster):
    """A LocalCluster whose topology has a ``[tls]`` table (certificates made by ``cluster up``)."""

    def __init__(self, replicas: int = 3, cluster_id: str = "sec", **kwargs) -> None:
        super().__init__(replicas, cluster_id, **kwargs)
        self.cluster_id = cluster_id
        self.cert_dir = self.dir / "certs"
        with open(self.topology, "a") as f:
            f.write(f'\n[tls]\ncert_dir = "{self.cert_dir}"\n')

    def creds(self, name: str) -> certs.TlsCredentials:
        return certs.TlsCredentials.from_cert_dir(self.cert_dir, name)

    def client(self, name: str = "client", **kwargs) -> Client:
        return Client(list(self.addresses.values()), tls=self.creds(name), **kwargs)

    def status_of(self, rid: str):
        """One replica's own status (admin identity), or None if it does not answer."""
        creds = self.creds("admin").channel_credentials()
        with grpc.secure_channel(self.addresses[rid], creds) as ch:
            try:
                return pb_grpc.ClusterStub(ch).Status(pb.StatusRequest(all=False), timeout=2).replicas[0]
            except grpc.RpcError:
                return None

    def statuses(self) -> dict[str, object]:
        out = {}
        for rid in self.ids:
            st = self.status_of(rid)
            if st is not None:
                out[rid] = st
        return out


def metric(port: int, name: str, **labels) -> float:
    """One series' value from a replica's /metrics (0 if absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def cluster():
    c = SecureCluster()
    try:
        c.start()
        c.wait_leader()
        # Settle leadership on r1 (the primary zone's replica), where it stays: the tests below
        # compare leaders before and after.
        with c.client("admin") as admin:
            assert admin.transfer_leader("r1") == "r1"
        with c.client() as cl:
            assert all(r.ok for r in cl.create_accounts([Account(id=1, ledger=1, code=1),
                                                          Account(id=2, ledger=1, code=1)]))
        yield c
    finally:
        c.stop()


def _all_methods():
    """Every method of the public API and the peer service, plus health:
    (full name, client streaming, server streaming)."""
    out = []
    for service in pb.DESCRIPTOR.services_by_name.values():
        for m in service.methods:
            out.append((f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming))
    out.append(("/grpc.health.v1.Health/Check", False, False))
    return out


def _call_raw(channel, method: str, client_streaming: bool, server_streaming: bool = False):
    """Call ``method`` with an empty (default) request; raises grpc.RpcError on refusal."""
    if client_streaming:
        rpc = channel.stream_unary(method, request_serializer=None, response_deserializer=None)
        return rpc(iter([b""]), timeout=3)
    if server_streaming:
        rpc = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
        return list(rpc(b"", timeout=3))
    rpc = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return rpc(b"", timeout=3)


def test_certificates_were_made_on_first_up_with_identities(cluster):
    """`cluster up` made the CA and one certificate per replica, admin and client, each naming its identity."""
    for name, role in (("r1", "replica"), ("r2", "replica"), ("r3", "replica"), ("admin", "admin"),
                       ("client", "client")):
        ident = cluster.creds(name).identity
        assert ident == certs.Identity(cluster.cluster_id, role, name)
    assert (cluster.cert_dir / "ca.key").stat().st_mode & 0o077 == 0


def test_process_without_certificate_cannot_call_any_service(cluster):
    """Plaintext, TLS without a client certificate, and a certificate of another CA all fail on every method."""
    leader = cluster.wait_leader()
    digest_before = cluster.wait_converged()
    address = cluster.addresses[leader]
    other_dir = cluster.dir / "other-ca"
    certs.generate(cluster.cluster_id, {"r1": "127.0.0.1"}, other_dir)  # same names, another CA
    other = certs.TlsCredentials.from_cert_dir(other_dir, "admin")
    ca_only = grpc.ssl_channel_credentials(cluster.creds("client").ca)
    other_creds = grpc.ssl_channel_credentials(cluster.creds("client").ca, other.key, other.cert)
    channels = {
        "plaintext": lambda: grpc.insecure_channel(address),
        "no client certificate": lambda: grpc.secure_channel(address, ca_only),
        "another CA's certificate": lambda: grpc.secure_channel(address, other_creds),
    }
    methods = _all_methods()
    names = {name for name, *_ in methods}
    assert {"/ledgerdb.v1.Cluster/TransferLeader", "/ledgerdb.v1.Peer/FetchSnapshot"} <= names
    for what, make in channels.items():
        with make() as ch:
            for method, client_streaming, server_streaming in methods:
                with pytest.raises(grpc.RpcError) as e:
                    _call_raw(ch, method, client_streaming, server_streaming)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE, (what, method, e.value)
    # The peer address: plaintext, and a certificate of another CA, get no further than the handshake.
    frame = wire.encode_frame(cluster.cluster_id, 1, [Heartbeat(src=1, dst=int(leader[1:]),
                                                                ballot=Ballot(10**9, 1), chosen_below=0, seq=1)])
    for what, creds in (("plaintext", None), ("another CA's certificate", other)):
        try:
            answer = send_frames(cluster.peer_addresses[leader], [frame], creds)
        except OSError:  # ssl.SSLError included: our side of the handshake failed
            answer = ("closed", "")
        assert answer == ("closed", ""), (what, answer)
    # The ledger client library gives up the same way, and nothing changed.
    with Client([address], timeout_s=2, attempt_timeout_s=0.5) as plain:
        with pytest.raises(errors.LedgerError):
            plain.create_transfers([Transfer(id=99, debit_account_id=1, credit_account_id=2, amount=1,
                                             ledger=1, code=1)])
    assert cluster.wait_converged() == digest_before


def test_ordinary_client_reads_and_writes_but_cannot_administer(cluster):
    """The client identity may use Ledger and KV; every other Cluster method (leader transfer,
    membership changes) is PERMISSION_DENIED for it and allowed for the admin identity."""
    leader = cluster.wait_leader()
    with cluster.client("client") as c:
        assert [r.name for r in c.create_transfers([Transfer(id=7, debit_account_id=1, credit_account_id=2,
                                                             amount=3, ledger=1, code=1)])] == ["ok"]
        c.kv_put(b"k", b"v")
        assert c.kv_get(b"k")[0] == b"v"
        assert c.status().cluster_id == cluster.cluster_id
        target = next(r for r in cluster.ids if r != leader)
        with pytest.raises(errors.PermissionDenied, match="admin"):
            c.transfer_leader(target)
    # Every admin method of the Cluster service, present and future (membership changes), with a
    # default request: refused for the client before the handler runs.
    creds = cluster.creds("client").channel_credentials()
    admin_methods = [name for name, *_ in _all_methods()
                     if name.startswith("/ledgerdb.v1.Cluster/") and name != "/ledgerdb.v1.Cluster/Status"]
    assert admin_methods
    with grpc.secure_channel(cluster.addresses[leader], creds) as ch:
        for method in admin_methods:
            with pytest.raises(grpc.RpcError) as e:
                _call_raw(ch, method, False)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (method, e.value)
        # ... and the peer service is for replicas only.
        with pytest.raises(grpc.RpcError) as e:
            _call_raw(ch, "/ledgerdb.v1.Peer/FetchSnapshot", False, True)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # So is the peer address: a client certificate of this cluster is refused there.
    refusal = send_frames(cluster.peer_addresses[leader], [b"\x90"], cluster.creds("client"))
    assert refusal is not None and refusal[0] == "not_certificate", refusal
    assert cluster.wait_leader() == leader  # the refused transfer did nothing
    refused = metric(cluster.metrics_ports[leader], "ledger_auth_refused_total", reason="role")
    assert refused >= len(admin_methods) + 1
    with cluster.client("admin") as a:
        target = next(r for r in cluster.ids if r != leader)
        assert a.transfer_leader(target) == target
        assert a.transfer_leader(leader) == leader  # back where the other tests expect it


def _intruder_topology(path: Path, cluster_id: str, own: tuple[str, int], peers: dict[str, tuple[str, str]],
                       data_dir: Path, cert_dir: Path | None) -> None:
    """A 3-replica topology: the intruder as ``own[0]`` on its own ports, the others at their real
    (address, peer address)."""
    rid, port = own
    mport, own_peer_port = free_ports(2)
    lines = [f'cluster_id = "{cluster_id}"', ""]
    if cert_dir is not None:
        lines += ["[tls]", f'cert_dir = "{cert_dir}"', ""]
    metrics = iter(free_ports(len(peers)))
    mine = (f"127.0.0.1:{port}", f"127.0.0.1:{own_peer_port}")
    for i, (r, (address, peer_address)) in enumerate([(rid, mine)] + list(peers.items())):
        lines += ["[[replica]]", f'id = "{r}"', 'city = "x"', f'data_center = "x{i}"', f'address = "{address}"',
                  f'peer_address = "{peer_address}"',
                  f"metrics_port = {mport if r == rid else next(metrics)}", f'data_dir = "{data_dir}"', ""]
    path.write_text("\n".join(lines))
    return mport


def _start_intruder(topology: Path, rid: str, data: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger.server", "--topology", str(topology), "--id", rid, "--data", str(data)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
            start_new_session=True,
        )


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _ballots(cluster) -> dict[str, str]:
    return {rid: st.ballot for rid, st in cluster.statuses().items()}


@pytest.mark.parametrize("how", ["own CA", "this CA, another cluster id"])
def test_replica_of_another_cluster_cannot_join_or_disrupt_elections(cluster, how):
    """An intruder replica whose topology puts it beside two real replicas (and claims a real
    replica's id) keeps campaigning; none of its frames reaches a real replica's consensus
    (the TLS handshake fails, or the connection is refused and counted before any frame is
    read), and the real cluster keeps its leader and serves writes."""
    leader = cluster.wait_leader()
    cluster.wait_converged()
    victim = next(r for r in cluster.ids if r != leader)  # the id the intruder claims
    others = {r: (a, cluster.peer_addresses[r]) for r, a in cluster.addresses.items() if r != victim}
    work = cluster.dir / f"intruder-{how.split()[0]}"
    work.mkdir()
    cert_dir = work / "certs"
    port = free_ports(1)[0]
    if how == "own CA":
        certs.generate("evil", {victim: "127.0.0.1"}, cert_dir)
    else:
        ca_cert, ca_key = certs._load_ca(cluster.cert_dir)
        cert_dir.mkdir()
        (cert_dir / "ca.pem").write_bytes((cluster.cert_dir / "ca.pem").read_bytes())
        cert, key = certs.issue(ca_cert, ca_key, certs.Identity("evil", "replica", victim), ("127.0.0.1",))
        certs._write_cert(cert_dir / f"{victim}.pem", cert)
        certs._write_key(cert_dir / f"{victim}.key", key)
    topology = work / "evil.toml"
    mport = _intruder_topology(topology, "evil", (victim, port), others, work / "data", cert_dir)
    before = sum(metric(cluster.metrics_ports[r], "ledger_peer_frames_refused_total", reason="not_certificate")
                 for r in others)
    proc = _start_intruder(topology, victim, work / "data", work / "log")
    try:
        if how == "own CA":
            # Its frames go nowhere: the TLS handshake fails, so its links never come up.
            wait_until(lambda: all(
                metric(mport, "ledger_peer_dropped_frames_total", peer=r) >= 50 for r in others
            ), DEADLINE_S, "the intruder to campaign (frames dropped at each real replica)")
        else:
            # Its certificate names another cluster: refused at the handshake's end, before any frame.
            wait_until(lambda: sum(
                metric(cluster.metrics_ports[r], "ledger_peer_frames_refused_total", reason="not_certificate")
                for r in others
            ) >= before + 4, DEADLINE_S, "the real replicas to refuse the intruder's connections")
        assert proc.poll() is None, (work / "log").read_text()[-2000:]
        assert cluster.wait_leader() == leader
        # Nothing it sent was read as a frame: no real replica refused a frame of it either.
        assert all(metric(cluster.metrics_ports[r], "ledger_peer_frames_refused_total", reason="cluster_id") == 0
                   for r in others)
        with cluster.client() as c:
            assert c.create_transfers([Transfer(id=1000 + port, debit_account_id=1, credit_account_id=2,
                                                amount=1, ledger=1, code=1)])[0].ok
    finally:
        _kill(proc)


def test_frames_from_non_members_and_forged_senders_are_refused_and_counted(cluster):
    """A replica certificate of this cluster for a non-member (r9), and a real replica's
    certificate used to send frames in another replica's name, are refused and counted; the
    frames change nothing."""
    leader = cluster.wait_leader()
    digest = cluster.wait_converged()
    ca_cert, ca_key = certs._load_ca(cluster.cert_dir)
    cert, key = certs.issue(ca_cert, ca_key, certs.Identity(cluster.cluster_id, "replica", "r9"), ("127.0.0.1",))
    from cryptography.hazmat.primitives import serialization

    r9 = certs.TlsCredentials(
        cluster.creds("client").ca, cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )
    follower = next(r for r in cluster.ids if r != leader)
    target = cluster.metrics_ports[follower]
    big = Ballot(10**9, 9)

    def send(creds, sender: int) -> str | None:
        heartbeat = Heartbeat(src=sender, dst=int(follower[1:]), ballot=big, chosen_below=0, seq=1)
        frame = wire.encode_frame(cluster.cluster_id, sender, [heartbeat])
        refusal = send_frames(cluster.peer_addresses[follower], [frame] * 3, creds)
        return refusal[0] if refusal else None

    before_member = metric(target, "ledger_peer_frames_refused_total", reason="not_member")
    before_cert = metric(target, "ledger_peer_frames_refused_total", reason="not_certificate")
    assert send(r9, 9) == "not_member"
    impostor = next(r for r in cluster.ids if r not in (leader, follower))
    assert send(cluster.creds(impostor), int(leader[1:])) == "not_certificate"
    assert metric(target, "ledger_peer_frames_refused_total", reason="not_member") >= before_member + 1
    assert metric(target, "ledger_peer_frames_refused_total", reason="not_certificate") >= before_cert + 1
    assert cluster.wait_leader() == leader
    # The forged heartbeat's ballot (round 10**9) reached no replica.
    assert all(int(b.split(".")[0]) < 10**9 for b in _ballots(cluster).values())
    assert cluster.wait_converged() == digest


def test_plaintext_cluster_refuses_another_cluster_id():
    """Without TLS (loopback only), a replica started with another cluster's id is refused by the
    frames' cluster id, counted, and does not disturb the elections."""
    c = LocalCluster(3, "plain")
    proc = None
    try:
        c.start()
        c.wait_leader()
        with c.client() as admin:  # plaintext on loopback: every local process is admin
            leader = admin.transfer_leader("r1")  # settle on the primary zone's replica
        c.wait_converged()
        victim = next(r for r in c.ids if r != leader)
        others = {r: (a, c.peer_addresses[r]) for r, a in c.addresses.items() if r != victim}
        work = c.dir / "intruder"
        work.mkdir()
        topology = work / "evil.toml"
        _intruder_topology(topology, "evil", (victim, free_ports(1)[0]), others, work / "data", None)
        proc = _start_intruder(topology, victim, work / "data", work / "log")
        wait_until(lambda: sum(metric(c.metrics_ports[r], "ledger_peer_frames_refused_total", reason="cluster_id")
                               for r in others) >= 4, DEADLINE_S, "the replicas to refuse the intruder's frames")
        assert "PLAINTEXT" in (work / "log").read_text()
        assert c.wait_leader() == leader
        with c.client() as cl:
            cl.kv_put(b"still", b"serving")
    finally:
        if proc is not None:
            _kill(proc)
        c.stop()


def test_plaintext_is_refused_off_loopback(tmp_path):
    """A topology without [tls] whose addresses are not all loopback does not start, and says why."""
    topology = tmp_path / "t.toml"
    lines = ['cluster_id = "net"', ""]
    for i in (1, 2, 3):
        lines += ["[[replica]]", f'id = "r{i}"', 'city = "c"', f'data_center = "d{i}"',
                  f'address = "{"192.0.2.1" if i == 3 else "127.0.0.1"}:{7990 + i}"', f"metrics_port = {7980 + i}",
                  f'data_dir = "{tmp_path / f"r{i}"}"', ""]
    topology.write_text("\n".join(lines))
    result = subprocess.run([sys.executable, "-m", "ledger.server", "--topology", str(topology), "--id", "r1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    if result.returncode == 0 or "private network namespace" in result.stderr:
        pytest.skip("running inside a private network namespace, where plaintext is allowed")
    assert result.returncode == 5, result.stderr
    assert re.search(r"not every address is loopback.*\[tls\]", result.stderr), result.stderr
    assert not (tmp_path / "r1").exists()  # refused before opening storage
