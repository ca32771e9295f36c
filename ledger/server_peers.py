"""Peer transport: consensus messages between replicas over plain TCP connections.

Every replica listens on its own peer address (``peer_address`` in the
topology), apart from its gRPC address. Each replica keeps one long-lived
connection to every peer and writes msgpack frames (``ledger.wire``) into
it; what a peer says back arrives on that peer's own connection to us. One
frame per peer per driver turn carries every message of the turn for that
peer. On the connection a frame is its length (4 bytes, big-endian) and its
bytes; the receiver writes back nothing, except when it refuses the
connection: then one refusal (length, msgpack ``[reason, text]``) and it
closes, so the sender's log says why.

The driver's send writes straight into the connection's socket buffer: no
task, no queue, no thread between a turn's end and the kernel (over gRPC
streams each frame crossed threads twice on each side, which cost a write
0.3-0.5 ms per hop here).

Losing messages is always safe for Paxos (the core retransmits), so the
transport never blocks the driver: when a connection's unsent bytes exceed
OUTBOX_BYTES_MAX, or it is down, frames are dropped and counted. A broken
connection reconnects with capped exponential backoff; one whose data stays
unacknowledged for UNACKED_TIMEOUT_S (a peer host gone, a network cut) is
given up by the kernel (``TCP_USER_TIMEOUT``) and dialled afresh, rather than
waiting out TCP's growing retransmission timer after the cut heals.

Incoming frames are decoded strictly; a frame that fails (``WireError``) is
dropped and counted, a length above ``wire.FRAME_BYTES_MAX`` ends the
connection (its framing is lost), and a frame from another cluster or wire
version is refused.

With mutual TLS (``TlsCredentials.ssl_context``) every connection is a TLS
connection both of whose ends hold a replica certificate of this cluster's
CA: the sender checks that the listener's names the peer it dialled, the
listener that the sender's names a replica of this cluster, and then that
every frame's sender id is that replica. Refused frames are counted by
reason in ``ledger_peer_frames_refused_total{reason}``: ``malformed``,
``cluster_id``, ``wire_version``, ``not_member``, ``not_certificate``
(sender is another replica than the certificate's, or no replica
certificate).

Snapshots travel over gRPC (``Peer.FetchSnapshot`` on the replica's
address): a stream of chunks with its own flow control.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from typing import Callable, Iterable

import grpc
import msgpack
from prometheus_client import Counter

from cluster.certs import Identity, TlsCredentials, identity_of_peercert, open_channel
from consensus.messages import Heartbeat, HeartbeatAck, Message
from ledger import wire
from ledger.api_proto import pb, pb_grpc
from ledger.metrics import ReplicaMetrics, log
from ledger.server_auth import peer_identity, replica_number

OUTBOX_BYTES_MAX = 256 * 1024 * 1024  # unsent bytes per connection; beyond, frames are dropped
RECONNECT_BACKOFF_MIN_S = 0.02
RECONNECT_BACKOFF_MAX_S = 0.5
CONNECT_TIMEOUT_S = 1.0  # a dial (TCP and TLS handshake) taking longer is retried
HANDSHAKE_TIMEOUT_S = 5.0  # the listener's side of a TLS handshake
UNACKED_TIMEOUT_S = 3.0  # TCP_USER_TIMEOUT: data unacknowledged this long ends a connection
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 5, 1, 3  # an idle connection's checks
INBOUND_CONNECTIONS_MAX = 64  # connections to our peer port at once; beyond, refused at once
RTT_PROBES_MAX = 64  # outstanding heartbeat probes remembered per peer
LENGTH_BYTES = 4
REFUSAL_BYTES_MAX = 4096
SNAPSHOT_MESSAGE_BYTES_MAX = 128 * 1024 * 1024

CHANNEL_OPTIONS = [  # the gRPC channel a snapshot is fetched over
    ("grpc.max_send_message_length", SNAPSHOT_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", SNAPSHOT_MESSAGE_BYTES_MAX),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


FRAME_TARGET_BYTES = 8 * 1024 * 1024  # split a turn's messages to one peer above this
REFUSE_REASONS = ("malformed", "cluster_id", "wire_version", "not_member", "not_certificate")
SMALL_FRAME_BYTES = 64 * 1024  # below: length and frame go out in one write


def _payload_bytes(m: Message) -> int:
    """A cheap upper-bound estimate of a message's encoded size."""
    size = 64 + len(getattr(m, "rows", b""))
    for entry in getattr(m, "entries", ()) or getattr(m, "accepted", ()):
        size += len(entry[-1]) + 32
    return size


def _frames_of(messages: list[Message]) -> list[list[Message]]:
    """Consecutive chunks of at most MESSAGES_PER_FRAME_MAX messages and about
    FRAME_TARGET_BYTES each (a single larger message gets a frame of its own)."""
    frames: list[list[Message]] = []
    current: list[Message] = []
    size = 0
    for m in messages:
        b = _payload_bytes(m)
        if current and (size + b > FRAME_TARGET_BYTES or len(current) >= wire.MESSAGES_PER_FRAME_MAX):
            frames.append(current)
            current, size = [], 0
        current.append(m)
        size += b
    if current:
        frames.append(current)
    return frames


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _tune(sock: socket.socket | None) -> None:
    """Detect a dead peer in seconds, not TCP's minutes (best effort: not every system has these)."""
    if sock is None:
        return
    for level, option, value in (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), KEEPALIVE_IDLE_S),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL_S),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(UNACKED_TIMEOUT_S * 1000)),
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    ):
        if option is None:
            continue
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass  # best effort: a kernel without the option still carries frames


class WrongPeer(Exception):
    """The listener at a peer's address holds another identity's certificate."""


def encode_refusal(reason: str, text: str) -> bytes:
    body = msgpack.packb([reason, text[:1000]])
    return len(body).to_bytes(LENGTH_BYTES, "big") + body


def decode_refusal(body: bytes) -> tuple[str, str]:
    """A refusal's (reason, text) from its body (after the length); ValueError if it is none."""
    try:
        reason, text = msgpack.unpackb(body)
    except (ValueError, TypeError) as e:  # msgpack's errors are ValueErrors; a wrong shape a TypeError
        raise ValueError(f"not a refusal: {e}") from None
    return str(reason), str(text)


def send_frames(address: str, frames: list[bytes], tls: TlsCredentials | None = None,
                linger_s: float = 1.0) -> tuple[str, str] | None:
    """Blocking: open one peer connection to ``address`` (as ``tls``'s identity, or in
    plaintext), send ``frames`` on it, and wait up to ``linger_s`` for an answer. Returns the
    listener's refusal ``(reason, text)``, ``("closed", "")`` when it closed the connection
    without one, or None when it kept the connection open. For tests and diagnostics."""
    host, port = split_address(address)
    raw = socket.create_connection((host, port), timeout=max(5.0, linger_s))
    sock = tls.ssl_context(server=False).wrap_socket(raw, server_hostname=host) if tls else raw
    with sock:
        try:
            for frame in frames:
                sock.sendall(len(frame).to_bytes(LENGTH_BYTES, "big") + frame)
        except OSError:
            pass  # refused mid-way: the refusal may still be readable
        sock.settimeout(linger_s)
        got = b""
        try:
            while True:
                chunk = sock.recv(REFUSAL_BYTES_MAX + LENGTH_BYTES)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, socket.timeout):
            if not got:
                return None
        except OSError:
            pass  # reset after the refusal: what arrived before it is read below
    if len(got) >= LENGTH_BYTES:
        n = int.from_bytes(got[:LENGTH_BYTES], "big")
        try:
            return decode_refusal(got[LENGTH_BYTES:LENGTH_BYTES + n])
        except ValueError:
            pass  # not a refusal: report the close alone
    return "closed", ""


class PeerLink:
    """The outbound connection to one peer."""

    def __init__(self, transport: "PeerTransport", peer_id: int, peer_name: str, address: str,
                 api_address: str) -> None:
        self.t = transport
        self.peer_id = peer_id
        self.peer_name = peer_name
        self.address = address  # the peer's peer_address
        self.api_address = api_address  # its gRPC address (snapshots)
        self.connected = False
        self.dropped = 0
        self.heartbeat_sent: dict[int, float] = {}
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._writer: asyncio.StreamWriter | None = None
        self._channel: grpc.aio.Channel | None = None
        m = transport.metrics
        for metric in (m.peer_rtt, m.peer_dropped_frames, m.peer_connected):
            m.labels(metric, peer=peer_name)  # export the series from the start

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"peer-{self.peer_name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._channel is not None:
            await self._channel.close(grace=None)

    def channel(self) -> grpc.aio.Channel:
        """The gRPC channel to the peer's address, opened on first use (snapshots)."""
        if self._channel is None:
            self._channel = open_channel(self.api_address, self.t.tls, CHANNEL_OPTIONS)
        return self._channel

    def backlog(self) -> int | None:
        """Bytes written to the connection and not yet sent (None: not connected)."""
        w = self._writer
        if w is None or w.is_closing():
            return None
        return w.transport.get_write_buffer_size()

    def offer(self, frame: bytes) -> None:
        w = self._writer
        if w is not None and not w.is_closing():
            transport = w.transport
            if transport.get_write_buffer_size() + len(frame) <= OUTBOX_BYTES_MAX:
                length = len(frame).to_bytes(LENGTH_BYTES, "big")
                if len(frame) < SMALL_FRAME_BYTES:
                    transport.write(length + frame)
                else:
                    transport.write(length)
                    transport.write(frame)
                return
        self.dropped += 1
        m = self.t.metrics
        m.labels(m.peer_dropped_frames, peer=self.peer_name).inc()

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = split_address(self.address)
        t = self.t
        reader, writer = await asyncio.open_connection(
            host, port, ssl=t.client_ssl, server_hostname=host if t.client_ssl else None,
            ssl_handshake_timeout=CONNECT_TIMEOUT_S if t.client_ssl else None,
        )
        _tune(writer.get_extra_info("socket"))
        if t.client_ssl is not None:
            identity = identity_of_peercert(writer.get_extra_info("peercert"))
            want = Identity(t.cluster_id, "replica", self.peer_name)
            if identity != want:
                writer.close()
                raise WrongPeer(
                    f"{self.address} presented {identity.uri if identity else 'no ledger:// identity'}, "
                    f"not {want.uri}"
                )
        return reader, writer

    async def _run(self) -> None:
        backoff = RECONNECT_BACKOFF_MIN_S
        complained = ""
        while not self._stopping:
            connected_at = None
            writer = None
            try:
                # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                # cancellation that meets a finished dial, and stop() would hang.)
                async with asyncio.timeout(CONNECT_TIMEOUT_S + 0.5):
                    reader, writer = await self._dial()
                self._writer = writer
                self._set_connected(True)
                connected_at = time.monotonic()
                complained = ""
                # Nothing comes back but a refusal, or the end of the connection.
                head = await reader.readexactly(LENGTH_BYTES)
                n = int.from_bytes(head, "big")
                if n <= REFUSAL_BYTES_MAX:
                    reason, text = decode_refusal(await reader.readexactly(n))
                    log(self.t.logger, logging.ERROR, "peer refused our frames",
                        peer=self.peer_name, reason=f"{reason}: {text}")
            except asyncio.CancelledError:
                raise
            except (WrongPeer, ssl.SSLError) as e:
                if str(e) != complained:  # say so once per cause
                    complained = str(e)
                    log(self.t.logger, logging.ERROR, "peer connection refused", peer=self.peer_name, error=str(e))
            except Exception:  # refused, reset, timed out, a closed connection: reconnect below
                pass
            finally:
                self._writer = None
                if writer is not None:
                    writer.close()
            self._set_connected(False)
            if connected_at is not None and time.monotonic() - connected_at > 1.0:
                backoff = RECONNECT_BACKOFF_MIN_S
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self.t.metrics.labels(self.t.metrics.peer_connected, peer=self.peer_name).set(1 if up else 0)
            log(self.t.logger, logging.INFO, "peer connection " + ("up" if up else "down"), peer=self.peer_name)


class _Inbound(asyncio.Protocol):
    """One peer's connection to our peer port: frames in, refusals out."""

    def __init__(self, t: "PeerTransport") -> None:
        self.t = t
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.certified: int | None = None  # the replica its certificate names (TLS)
        self.sender: int | None = None  # set by its first frame a member sent
        self.closed = False
        self.peer = ""

    def connection_made(self, transport) -> None:
        t = self.t
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        if len(t.inbound) >= INBOUND_CONNECTIONS_MAX:
            self.closed = True
            transport.abort()
            return
        t.inbound.add(self)
        _tune(transport.get_extra_info("socket"))
        if t.server_ssl is not None:
            identity = identity_of_peercert(transport.get_extra_info("peercert"))
            number = replica_number(identity) if identity is not None else None
            if identity is None or identity.role != "replica" or identity.cluster_id != t.cluster_id or number is None:
                self.refuse("not_certificate", "a peer connection needs a replica certificate of this cluster")
                return
            self.certified = number
        # A connection that brings no valid frame soon is not a peer's: it
        # would hold one of the INBOUND_CONNECTIONS_MAX places.
        asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._close_if_silent)

    def _close_if_silent(self) -> None:
        if self.sender is None and not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.t.inbound.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buf = self.buf
        buf += data
        at = 0
        while len(buf) - at >= LENGTH_BYTES:
            n = int.from_bytes(buf[at:at + LENGTH_BYTES], "big")
            if n > wire.FRAME_BYTES_MAX:
                self.refuse("malformed", f"a frame of {n} bytes (at most {wire.FRAME_BYTES_MAX})")
                return
            end = at + LENGTH_BYTES + n
            if len(buf) < end:
                break
            frame = bytes(buf[at + LENGTH_BYTES:end])
            at = end
            self._frame(frame)
            if self.closed:
                return
        if at:
            del buf[:at]

    def refuse(self, reason: str, text: str) -> None:
        """Count, log, tell the sender why, and close."""
        t = self.t
        t.refuse(reason)
        log(t.logger, logging.ERROR, "refusing a peer connection", reason=f"{reason}: {text}", peer=self.peer)
        self.closed = True
        self.buf.clear()
        if self.transport is not None:
            self.transport.write(encode_refusal(reason, text))
            self.transport.close()

    def _frame(self, frame: bytes) -> None:
        t = self.t
        try:
            sender, messages = wire.decode_frame(frame, t.cluster_id)
        except wire.WireError as e:
            text = str(e)
            reason = "cluster_id" if "cluster id" in text else "wire_version" if "wire version" in text else "malformed"
            if reason != "malformed":
                self.refuse(reason, text)
                return
            t.refuse(reason)
            log(t.logger, logging.WARNING, "dropped a bad peer frame", reason=text, peer=self.peer)
            return
        if self.certified is not None and sender != self.certified:
            self.refuse("not_certificate",
                        f"frames of sender {sender} on a connection of replica r{self.certified}'s certificate")
            return
        if sender not in t.links:
            t.on_unknown_sender(sender)
        if sender not in t.links:
            self.refuse("not_member", f"sender {sender} is not a member of cluster {t.cluster_id!r}")
            return
        if self.sender != sender:
            self.sender = sender
            # A replica dials one connection to us; an older one of its is dead
            # (its end gave up on it): close ours of it too.
            for other in list(t.inbound):
                if other is not self and other.sender == sender and other.transport is not None:
                    other.closed = True
                    other.transport.abort()
        mine = [m for m in messages if m.dst == t.self_id]
        if mine:
            t._observe(sender, mine)
            t.deliver(mine)


class PeerTransport:
    """Sends the core's messages to peers; delivers peers' messages to ``deliver``."""

    def __init__(
        self,
        cluster_id: str,
        self_id: int,
        peers: dict[int, tuple[str, str, str]],  # consensus id -> (name, peer address, gRPC address)
        deliver: Callable[[list[Message]], None],
        metrics: ReplicaMetrics,
        logger: logging.Logger,
        tls: TlsCredentials | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.tls = tls
        self.client_ssl: ssl.SSLContext | None = tls.ssl_context(server=False) if tls else None
        self.server_ssl: ssl.SSLContext | None = tls.ssl_context(server=True) if tls else None
        self.self_id = self_id
        self.deliver = deliver
        self.metrics = metrics
        self.logger = logger
        self.links = {pid: PeerLink(self, pid, name, addr, api) for pid, (name, addr, api) in peers.items()}
        self.inbound: set[_Inbound] = set()
        self.refused_frames = 0
        self.frames_refused = Counter(
            "ledger_peer_frames_refused_total", "peer frames refused, by reason",
            list(metrics._labels) + ["reason"], registry=metrics.registry,
        )
        for reason in REFUSE_REASONS:
            metrics.labels(self.frames_refused, reason=reason)

        # Told about a frame from a sender we do not know (a replica added to
        # the cluster since we started): may call ``add_peer``.
        self.on_unknown_sender: Callable[[int], None] = lambda sender: None
        # Streams our snapshot to a peer: ``provider(requester, from_slot)`` is
        # an async iterator of chunks (``Driver.serve_snapshot``).
        self.snapshot_provider = None
        self._started = False
        self._server: asyncio.AbstractServer | None = None

    async def listen(self, address: str) -> None:
        """Open our peer port. Raises OSError when the address is taken or not local."""
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Inbound(self), host, port, ssl=self.server_ssl, reuse_address=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self.server_ssl else None,
        )

    def add_peer(self, peer_id: int, name: str, address: str, api_address: str) -> None:
        """Open a connection to a replica that joined after we started."""
        if peer_id == self.self_id or peer_id in self.links:
            return
        link = self.links[peer_id] = PeerLink(self, peer_id, name, address, api_address)
        if self._started:
            link.start()

    def snapshot_stub(self, peer_id: int):
        """A Peer stub over a gRPC channel to ``peer_id`` (None if unknown)."""
        link = self.links.get(peer_id)
        if link is None:
            return None
        return pb_grpc.PeerStub(link.channel())

    def refuse(self, reason: str) -> None:
        self.refused_frames += 1
        self.metrics.labels(self.frames_refused, reason=reason).inc()
        self.metrics.labels(self.metrics.wire_errors).inc()

    def start(self) -> None:
        self._started = True
        for link in self.links.values():
            link.start()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.inbound):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.gather(*(link.stop() for link in self.links.values()))

    def send(self, messages: Iterable[Message]) -> None:
        by_peer: dict[int, list[Message]] = {}
        for m in messages:
            by_peer.setdefault(m.dst, []).append(m)
        now = time.monotonic()
        for dst, msgs in by_peer.items():
            link = self.links.get(dst)
            if link is None:
                continue  # a message to a non-member: the core's bug or a stale id; drop
            for m in msgs:
                if type(m) is Heartbeat:
                    probes = link.heartbeat_sent
                    probes[m.seq] = now
                    if len(probes) > RTT_PROBES_MAX:
                        del probes[next(iter(probes))]
            for chunk in _frames_of(msgs):
                link.offer(wire.encode_frame(self.cluster_id, self.self_id, chunk))

    def send_write_set(self, make: Callable[[int], Message], backlog_max: int) -> int:
        """Send ``make(peer)`` to each connected peer with at most ``backlog_max``
        unsent bytes (a write set only saves work: never queue it behind a
        slow link's consensus messages). How many peers it went to."""
        sent = 0
        for dst, link in self.links.items():
            backlog = link.backlog()
            if backlog is None or backlog > backlog_max:
                continue
            link.offer(wire.encode_frame(self.cluster_id, self.self_id, [make(dst)]))
            sent += 1
        return sent

    def _observe(self, sender: int, messages: list[Message]) -> None:
        link = self.links.get(sender)
        if link is None:
            return
        for m in messages:
            if type(m) is HeartbeatAck:
                sent = link.heartbeat_sent.pop(m.seq, None)
                if sent is not None:
                    self.metrics.labels(self.metrics.peer_rtt, peer=link.peer_name).observe(
                        time.monotonic() - sent
                    )


class PeerServicer(pb_grpc.PeerServicer):
    """The gRPC side of the peer service: snapshot transfers."""

    def __init__(self, transport: PeerTransport) -> None:
        self.t = transport

    async def FetchSnapshot(self, request, context):
        """Stream this replica's applied state to a peer that fell behind the log."""
        t = self.t
        if request.cluster_id != t.cluster_id:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"snapshot asked for cluster {request.cluster_id!r}, this is {t.cluster_id!r}")
        if t.tls is not None:
            identity = peer_identity(context)
            if identity is None or replica_number(identity) != request.replica_id:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "a snapshot goes only to the replica asking")
        if t.snapshot_provider is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica is starting")
        try:
            async for chunk in t.snapshot_provider(request.replica_id, request.from_slot):
                yield pb.SnapshotChunk(data=chunk)
        except Exception as e:  # ours is Overloaded; anything else: the receiver retries
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"snapshot not sent: {e}")
