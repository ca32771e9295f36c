"""Certificates and the call policy, without processes.

Goal: `python -m cluster certs` makes a CA and one certificate per replica,
admin and client, each naming its identity as a ledger:// URI, its host as a
SAN and only the key usages it needs; a second run issues only what is
missing and keeps the CA; a cert dir of another cluster is refused. The call
policy gives the data services to clients, the peer service to replicas only,
and everything unnamed to the admin; plaintext is allowed on loopback only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cluster import certs
from cluster import topology as topo
from ledger import server_auth

ROOT = Path(__file__).resolve().parent.parent


def _certs_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster", "certs", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_certs_command_makes_and_completes_a_cert_dir(tmp_path):
    out = tmp_path / "c"
    first = _certs_cli("two-cities", "--out", str(out))
    assert first.returncode == 0, first.stderr
    names = {p.name for p in out.iterdir()}
    assert names == {f"{n}.{ext}" for n in ("ca", "r1", "r2", "r3", "admin", "client") for ext in ("pem", "key")}
    assert all((out / n).stat().st_mode & 0o077 == 0 for n in names if n.endswith(".key"))
    for name, role in (("r2", "replica"), ("admin", "admin"), ("client", "client")):
        cert = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes())
        assert certs.identity_of_pem((out / f"{name}.pem").read_bytes()) == certs.Identity("two-cities", role, name)
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == (role == "replica")
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    san = x509.load_pem_x509_certificate((out / "r2.pem").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca_before = (out / "ca.pem").read_bytes()
    (out / "r3.pem").unlink()
    second = _certs_cli("two-cities", "--out", str(out))
    assert second.returncode == 0 and "r3.pem" in second.stdout and "r1.pem" not in second.stdout
    assert (out / "ca.pem").read_bytes() == ca_before
    other = _certs_cli("one-city", "--out", str(out))
    assert other.returncode == 1 and "not 'one-city'" in other.stderr


@pytest.mark.parametrize("method, roles", [
    ("/ledgerdb.v1.Ledger/CreateTransfers", {"client", "admin", "replica"}),
    ("/ledgerdb.v1.KV/Put", {"client", "admin", "replica"}),
    ("/ledgerdb.v1.Cluster/Status", {"client", "admin", "replica"}),
    ("/grpc.health.v1.Health/Check", {"client", "admin", "replica"}),
    ("/ledgerdb.v1.Peer/Send", {"replica"}),
    ("/ledgerdb.v1.Peer/FetchSnapshot", {"replica"}),
    ("/ledgerdb.v1.Cluster/TransferLeader", {"admin"}),
    ("/ledgerdb.v1.Cluster/ChangeMembership", {"admin"}),
    ("/ledgerdb.v1.Cluster/SomethingAddedLater", {"admin"}),
    ("/other.Service/Method", {"admin"}),
])
def test_call_policy(method, roles):
    assert server_auth.roles_for(method) == roles


def test_identity_uris_parse_strictly():
    assert certs.Identity.from_uri("ledger://c/replica/r1") == certs.Identity("c", "replica", "r1")
    for bad in ("ledger://c/root/x", "ledger://c/replica", "https://c/replica/r1", "ledger://c//r1",
                "ledger://c/replica/r1/x"):
        assert certs.Identity.from_uri(bad) is None


def test_shipped_topologies_use_tls_and_loopback_hosts_are_recognized():
    for name in ("one-city", "two-cities", "three-cities"):
        t = topo.load(name)
        assert t.tls_cert_dir == Path(f"data/{name}/certs")
    assert topo.is_loopback_host("127.0.0.1") and topo.is_loopback_host("::1")
    assert topo.is_loopback_host("localhost") and not topo.is_loopback_host("10.0.0.1")
    assert not topo.is_loopback_host("db.example.com")
