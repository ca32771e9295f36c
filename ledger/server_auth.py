"""Who may call what: mutual TLS, identities from certificates, and the method policy.

A cluster runs in one of two modes, chosen by its topology (``cluster.topology``):

``tls``  (a ``[tls] cert_dir``; every shipped topology)
    The replica serves with its own certificate and accepts only callers whose
    certificate the cluster CA signed (mutual TLS: a process without one fails
    the handshake and can call nothing). The caller's identity is the URI SAN
    ``ledger://<cluster_id>/<role>/<name>`` (``cluster.certs``); a certificate
    of another cluster, or without such a URI, is refused with UNAUTHENTICATED.

``plaintext``  (no ``[tls]`` table)
    Allowed only when every address of the topology is loopback (a dev
    cluster on one machine), or when the replica runs in a named private
    network namespace (the chaos suite's test hosts, made with ``ip netns``);
    anything else refuses to start.
    A warning says so at start-up. Without certificates there are no
    identities: every caller that can reach the port is trusted as a client
    and, when it connects from loopback, as the admin. So on a plaintext dev
    cluster "admin" means "a process on this machine".

The policy (``roles_for``), by gRPC method:

    /ledgerdb.v1.Ledger/*, /ledgerdb.v1.KV/*        client, admin (and replicas)
    /ledgerdb.v1.Cluster/Status, health, reflection  any identity of this cluster
    /ledgerdb.v1.Peer/*                             replicas only (snapshots; consensus
                                                    frames have their own port, see
                                                    ledger.server_peers)
    everything else (TransferLeader, membership
    changes, any admin call added later)             admin only

Refusals answer UNAUTHENTICATED or PERMISSION_DENIED and are counted in
``ledger_auth_refused_total{reason}``.

Limits enforced here as well: a public request (anything but a peer call)
above ``PUBLIC_REQUEST_BYTES_MAX`` is refused before it is parsed, and one
that does not parse is refused with INVALID_ARGUMENT (not INTERNAL); for a
stream, each message is (its handler ends the stream with that status); the
server's HTTP/2 ``max_concurrent_streams`` bounds the requests one connection
can have in progress (``server.py``).

Cost: the TLS handshake is per connection; per call this module does one dict
lookup for the policy (cached per method) and reads the peer's URI from the
auth context that gRPC already holds.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter

from cluster import topology as topo
from cluster.certs import CertError, Identity, TlsCredentials
from ledger import commands as cmd

ADMIN = frozenset({"admin"})
DATA = frozenset({"client", "admin", "replica"})
ANY = frozenset({"client", "admin", "replica"})
REPLICA = frozenset({"replica"})

# The largest legitimate public request: 8,190 accounts or transfers of at
# most ~200 protobuf bytes each, or a KV value of 1 MiB with its key.
PUBLIC_REQUEST_BYTES_MAX = 4 * 1024 * 1024
assert cmd.EVENTS_PER_COMMAND_MAX * 256 < PUBLIC_REQUEST_BYTES_MAX
assert cmd.KV_VALUE_BYTES_MAX + cmd.KV_KEY_BYTES_MAX + 1024 < PUBLIC_REQUEST_BYTES_MAX

_PACKAGE = "/ledgerdb.v1."
_ANY_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def roles_for(method: str) -> frozenset[str]:
    """The roles that may call ``method`` (a full gRPC method name)."""
    if method.startswith(_PACKAGE + "Ledger/") or method.startswith(_PACKAGE + "KV/"):
        return DATA
    if method == _PACKAGE + "Cluster/Status" or method.startswith(_ANY_PREFIXES):
        return ANY
    if method.startswith(_PACKAGE + "Peer/"):
        return REPLICA
    return ADMIN  # default deny: anything not named above is an admin call


def is_peer_method(method: str) -> bool:
    return method.startswith(_PACKAGE + "Peer/")


class SecurityError(Exception):
    """The replica cannot start securely; the message says why and how to fix it."""


def in_private_network_namespace() -> bool:
    """True if this process runs in a named network namespace (``ip netns add``/``exec``).

    Such a namespace is private to whoever made it (the chaos suite's test
    hosts); the host's own namespace is not one of them."""
    try:
        me = os.stat("/proc/self/ns/net")
        for entry in os.scandir("/run/netns"):
            st = os.stat(entry.path)
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                return True
    except OSError:
        return False
    return False


def replica_number(identity: Identity) -> int | None:
    m = topo._ID.match(identity.name)
    return int(m.group(1)) if m else None


@dataclass
class Security:
    """The security mode of one replica process."""

    cluster_id: str
    credentials: TlsCredentials | None  # None: plaintext
    warning: str = ""

    @property
    def tls(self) -> bool:
        return self.credentials is not None


def for_replica(topology: topo.Topology, spec: topo.ReplicaSpec, cert_dir: Path | None = None) -> Security:
    """The replica's credentials from its topology (or ``cert_dir``), checked; or plaintext if allowed."""
    cert_dir = cert_dir or topology.tls_cert_dir
    if cert_dir is None:
        if topology.all_loopback:
            why = "every address is loopback"
        elif in_private_network_namespace():
            why = "this replica runs in a private network namespace"
        else:
            raise SecurityError(
                f"{topology.path} has no [tls] table but not every address is loopback: a cluster on a "
                "network must use mutual TLS; add [tls] cert_dir = \"...\" to the topology and run "
                f"`python -m cluster certs {topology.path}`"
            )
        return Security(
            topology.cluster_id, None,
            f"PLAINTEXT: no [tls] in {topology.path} ({why}); no certificates are checked, every local "
            "process may call every service including admin calls; for a dev cluster only",
        )
    try:
        creds = TlsCredentials.from_cert_dir(cert_dir, spec.id)
    except CertError as e:
        raise SecurityError(str(e)) from None
    identity = creds.identity
    want = Identity(topology.cluster_id, "replica", spec.id)
    if identity != want:
        raise SecurityError(
            f"{cert_dir}/{spec.id}.pem names {identity.uri if identity else 'no ledger:// identity'}, "
            f"not {want.uri}: run `python -m cluster certs {topology.path}` for this topology"
        )
    return Security(topology.cluster_id, creds)


# ---------------------------------------------------------------- identities


def peer_identity(context) -> Identity | None:
    """The identity the caller's certificate names (None: no certificate, or not ours)."""
    try:
        uris = context.auth_context().get("peer_uri")
    except Exception:
        return None
    if not uris or len(uris) != 1:
        return None
    try:
        return Identity.from_uri(uris[0].decode("utf-8"))
    except UnicodeDecodeError:
        return None


def peer_is_loopback(context) -> bool:
    peer = context.peer() or ""
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:"))


# ---------------------------------------------------------------- the interceptor


async def _result(value):
    """A behavior's return value, awaited if it is awaitable (async and sync handlers alike)."""
    if inspect.isawaitable(value):
        return await value
    return value


class RefusedRequest:
    """A request refused before its handler runs: too large, or not a valid message.

    A unary call's is answered INVALID_ARGUMENT here; a stream's handler
    (``ledger.api``) reads it in place of the frame and ends the stream."""

    __slots__ = ("nbytes", "error")

    def __init__(self, nbytes: int, error: str) -> None:
        self.nbytes = nbytes
        self.error = error

    @property
    def reason(self) -> str:
        return "malformed_request" if self.error else "request_too_large"

    @property
    def message(self) -> str:
        if self.error:
            return f"the request is not a valid protobuf message ({self.error})"
        return f"a request of {self.nbytes} bytes is above the limit of {PUBLIC_REQUEST_BYTES_MAX} bytes; split it"


class Authorizer(grpc.aio.ServerInterceptor):
    """Checks every call against ``roles_for`` (see the module docstring)."""

    def __init__(self, security: Security, metrics) -> None:
        self.security = security
        self.metrics = metrics
        self.refused = Counter(
            "ledger_auth_refused_total", "calls refused by authentication or authorization, by reason",
            list(metrics._labels) + ["reason"], registry=metrics.registry,
        )
        for reason in ("no_identity", "other_cluster", "role", "not_loopback", "request_too_large",
                       "malformed_request"):
            metrics.labels(self.refused, reason=reason)
        self._handlers: dict[str, Any] = {}

    def _deny(self, context, roles: frozenset[str]) -> tuple[grpc.StatusCode, str, str] | None:
        """None if the caller may go on; else (status, message, reason)."""
        if not self.security.tls:
            if roles is ADMIN and not peer_is_loopback(context):
                return (grpc.StatusCode.PERMISSION_DENIED,
                        "admin calls on a plaintext cluster are allowed from loopback only", "not_loopback")
            return None
        identity = peer_identity(context)
        if identity is None:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "the client certificate names no ledger:// identity of this cluster", "no_identity")
        if identity.cluster_id != self.security.cluster_id:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"the certificate is of cluster {identity.cluster_id!r}, this is {self.security.cluster_id!r}",
                    "other_cluster")
        if identity.role not in roles:
            need = "admin" if roles is ADMIN else " or ".join(sorted(roles))
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"{identity.uri} may not call this method (it needs the {need} identity)", "role")
        return None

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap(handler, roles_for(method), not is_peer_method(method))
        self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, handler, roles: frozenset[str], bounded: bool):
        deny = self._deny
        refused = self.refused
        labels = self.metrics.labels

        async def check(request, context) -> None:
            verdict = deny(context, roles)
            if verdict is None and type(request) is RefusedRequest:
                verdict = (grpc.StatusCode.INVALID_ARGUMENT, request.message, request.reason)
            if verdict is not None:
                code, message, reason = verdict
                labels(refused, reason=reason).inc()
                await context.abort(code, message)

        deserializer = handler.request_deserializer
        if bounded and deserializer is not None:
            # Each message of a stream too: its handler reads the refusal.
            inner_deserializer = deserializer

            def deserializer(raw: bytes, _inner=inner_deserializer, _max=PUBLIC_REQUEST_BYTES_MAX):
                if len(raw) > _max:
                    return RefusedRequest(len(raw), "")
                try:
                    return _inner(raw)
                except Exception as e:  # protobuf's DecodeError: answer INVALID_ARGUMENT, not INTERNAL
                    return RefusedRequest(len(raw), f"{type(e).__name__}: {e}")

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                await check(request, context)
                return await _result(inner(request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner = handler.stream_unary

            async def stream_unary(request_iterator, context):
                await check(None, context)
                return await _result(inner(request_iterator, context))

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner = handler.unary_stream
            if inspect.isasyncgenfunction(inner):
                async def unary_stream(request, context):
                    await check(request, context)
                    async for item in inner(request, context):
                        yield item
            else:
                async def unary_stream(request, context):
                    await check(request, context)
                    return await _result(inner(request, context))

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        inner = handler.stream_stream
        if inspect.isasyncgenfunction(inner):
            async def stream_stream(request_iterator, context):
                await check(None, context)
                async for item in inner(request_iterator, context):
                    yield item
        else:
            async def stream_stream(request_iterator, context):
                await check(None, context)
                return await _result(inner(request_iterator, context))

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )
