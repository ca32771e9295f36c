"""Certificates of a cluster: one CA, one certificate per replica, an admin and an ordinary client.

    python -m cluster certs one-city [--out DIR] [--force]

writes, into the topology's ``[tls] cert_dir`` (or ``--out DIR``)::

    ca.pem  ca.key               the cluster CA (keep ca.key off the replicas' hosts in production)
    r1.pem  r1.key  ...          one per replica: server and peer-client certificate
    admin.pem  admin.key         the admin identity: membership changes, leader transfer
    client.pem client.key        an ordinary client: ledger and KV reads and writes only

Every certificate carries its identity as a URI subject alternative name::

    ledger://<cluster_id>/replica/<replica id>      e.g. ledger://one-city/replica/r2
    ledger://<cluster_id>/admin/<name>
    ledger://<cluster_id>/client/<name>

and the same in its subject (O = cluster id, OU = role, CN = name). A replica's
certificate also names its host (an IP or DNS SAN) for hostname verification.
The replicas check the URI on every connection (``ledger.server_auth``): the
role decides which services a caller may use, and a peer's frames must come
from the replica its certificate names, of this cluster.

Running the command again keeps the CA and every certificate that exists and
only issues the missing ones (a replica added to the topology gets its own);
``--force`` starts over with a new CA. Keys are EC P-256, written mode 0600.
``python -m cluster up`` runs this by itself when the cert dir does not exist
yet, so a fresh clone needs no manual step.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import ssl
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

URI_SCHEME = "ledger"
ROLES = ("replica", "admin", "client")
VALID_DAYS = 825
CA_VALID_DAYS = 3650


@dataclass(frozen=True)
class Identity:
    """Who a certificate names: a role in a cluster, and a name (a replica id for replicas)."""

    cluster_id: str
    role: str  # "replica" | "admin" | "client"
    name: str

    @property
    def uri(self) -> str:
        return f"{URI_SCHEME}://{self.cluster_id}/{self.role}/{self.name}"

    @classmethod
    def from_uri(cls, uri: str) -> "Identity | None":
        prefix = f"{URI_SCHEME}://"
        if not uri.startswith(prefix):
            return None
        parts = uri[len(prefix):].split("/")
        if len(parts) != 3 or not all(parts) or parts[1] not in ROLES:
            return None
        return cls(parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class CertPaths:
    """The files of one identity in a cert dir."""

    ca: Path
    cert: Path
    key: Path

    def exist(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert chain, private key) PEM bytes."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def paths(cert_dir: Path, name: str) -> CertPaths:
    """``name``: a replica id, "admin" or "client"."""
    return CertPaths(cert_dir / "ca.pem", cert_dir / f"{name}.pem", cert_dir / f"{name}.key")


class CertError(Exception):
    """Certificate files missing or unreadable; the message names the files and the fix."""


@dataclass(frozen=True)
class TlsCredentials:
    """PEM material of one identity: what a replica serves with, or a client connects with."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, cert: Path, key: Path, ca: Path) -> "TlsCredentials":
        try:
            return cls(Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes())
        except OSError as e:
            raise CertError(
                f"cannot read TLS files ({e.filename}: {e.strerror}); "
                "make them with `python -m cluster certs <topology>` or pass --cert/--key/--ca"
            ) from None

    @classmethod
    def from_cert_dir(cls, cert_dir: Path, name: str) -> "TlsCredentials":
        p = paths(Path(cert_dir), name)
        return cls.load(p.cert, p.key, p.ca)

    @property
    def identity(self) -> "Identity | None":
        return identity_of_pem(self.cert)

    def channel_credentials(self):
        import grpc

        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def server_credentials(self):
        import grpc

        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)


    def ssl_context(self, server: bool) -> ssl.SSLContext:
        """Mutual TLS for the replicas' peer connections (``ledger.server_peers``).

        The other end must present a certificate of this CA, either way; which
        ``ledger://`` identity it names is the caller's check (the peer's
        replica id, not a host name: a peer may be dialled through a proxy)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not server:
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.ca.decode("ascii", "replace"))
        # load_cert_chain reads files only: hand it the PEM through a private directory.
        with tempfile.TemporaryDirectory(prefix="ledger-tls-") as d:
            cert, key = Path(d) / "cert.pem", Path(d) / "key.pem"
            cert.write_bytes(self.cert)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.key)
            ctx.load_cert_chain(cert, key)
        return ctx


def identity_of_peercert(peercert: dict | None) -> "Identity | None":
    """The ``ledger://`` identity in a verified peer certificate as ``ssl`` reports it
    (``SSLSocket.getpeercert()``); None: none, or more than one."""
    if not peercert:
        return None
    found = [Identity.from_uri(v) for k, v in peercert.get("subjectAltName", ()) if k == "URI"]
    found = [i for i in found if i is not None]
    return found[0] if len(found) == 1 else None


def open_channel(address: str, tls: "TlsCredentials | None", options=()):
    """A grpc.aio channel to ``address``: mutual TLS with ``tls``, else plaintext."""
    import grpc

    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=list(options))


# ---------------------------------------------------------------- issuing


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)


def _name(cluster_id: str, role: str, common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def make_ca(cluster_id: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name(cluster_id, "ca", f"{cluster_id} cluster CA")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def issue(
    ca_cert: x509.Certificate,
    ca_key,
    identity: Identity,
    hosts: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``identity`` signed by the CA; ``hosts`` become IP/DNS SANs."""
    key = _key()
    now = _now()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    sans += [_host_san(h) for h in hosts]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.role == "replica":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(identity.cluster_id, identity.role, identity.name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                content_commitment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def identity_of_pem(pem: bytes) -> Identity | None:
    """The ``ledger://`` identity a PEM certificate names (None: none, or not one cert)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    found = [Identity.from_uri(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    found = [i for i in found if i is not None]
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------- a cert dir


def _load_ca(cert_dir: Path):
    cert = x509.load_pem_x509_certificate((cert_dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((cert_dir / "ca.key").read_bytes(), password=None)
    return cert, key


def generate(
    cluster_id: str,
    replicas: dict[str, str],  # replica id -> host
    cert_dir: Path,
    *,
    force: bool = False,
    extra_clients: tuple[tuple[str, str], ...] = (),  # (role, name) beyond admin and client
) -> list[str]:
    """Make (or complete) a cert dir; returns the names of the files written."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cert_dir, 0o700)
    written: list[str] = []
    have_ca = (cert_dir / "ca.pem").exists() and (cert_dir / "ca.key").exists()
    if force or not have_ca:
        ca_cert, ca_key = make_ca(cluster_id)
        _write_key(cert_dir / "ca.key", ca_key)
        _write_cert(cert_dir / "ca.pem", ca_cert)
        written += ["ca.pem", "ca.key"]
        force = True  # a new CA: every certificate must be issued again
    else:
        ca_cert, ca_key = _load_ca(cert_dir)
        ca_cluster = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if not ca_cluster or ca_cluster[0].value != cluster_id:
            raise ValueError(
                f"{cert_dir}/ca.pem is the CA of cluster "
                f"{ca_cluster[0].value if ca_cluster else '?'!r}, not {cluster_id!r}: "
                "use another cert dir (--out) or --force to replace it"
            )
    wanted: list[tuple[str, Identity, tuple[str, ...]]] = [
        (rid, Identity(cluster_id, "replica", rid), (host,)) for rid, host in replicas.items()
    ]
    wanted += [("admin", Identity(cluster_id, "admin", "admin"), ()),
               ("client", Identity(cluster_id, "client", "client"), ())]
    wanted += [(name, Identity(cluster_id, role, name), ()) for role, name in extra_clients]
    for file_name, identity, hosts in wanted:
        p = paths(cert_dir, file_name)
        if not force and p.cert.exists() and p.key.exists():
            existing = identity_of_pem(p.cert.read_bytes())
            if existing == identity:
                continue
        cert, key = issue(ca_cert, ca_key, identity, hosts)
        _write_key(p.key, key)
        _write_cert(p.cert, cert)
        written += [p.cert.name, p.key.name]
    return written


def generate_for_topology(topology, out: Path | None = None, *, force: bool = False) -> tuple[Path, list[str]]:
    cert_dir = out if out is not None else topology.tls_cert_dir
    if cert_dir is None:
        raise ValueError(
            f"{topology.path}: no [tls] cert_dir; add one (e.g. cert_dir = \"data/{topology.cluster_id}/certs\") "
            "or pass --out DIR"
        )
    replicas = {r.id: r.host for r in topology.replicas}
    return cert_dir, generate(topology.cluster_id, replicas, cert_dir, force=force)


def main(argv: list[str] | None = None) -> int:
    from cluster import topology as topo

    parser = argparse.ArgumentParser(prog="python -m cluster certs", description=__doc__.splitlines()[0])
    parser.add_argument("topology", help="topology file or shipped name")
    parser.add_argument("--out", help="cert dir (default: the topology's [tls] cert_dir)")
    parser.add_argument("--force", action="store_true", help="new CA and new certificates for everyone")
    args = parser.parse_args(argv)
    try:
        topology = topo.load(args.topology)
        cert_dir, written = generate_for_topology(
            topology, Path(args.out) if args.out else None, force=args.force
        )
    except (topo.TopologyError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if written:
        print(f"cluster {topology.cluster_id}: wrote {', '.join(written)} in {cert_dir}")
    else:
        print(f"cluster {topology.cluster_id}: every certificate already exists in {cert_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
