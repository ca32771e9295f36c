"""Peer transport: consensus messages between replicas over gRPC streams.

Each replica keeps one long-lived client stream (``Peer.Send``) to every
peer and writes msgpack frames (``ledger.wire``) into it; what a peer says
back arrives on that peer's own stream to us. One frame per peer per driver
turn carries every message of the turn for that peer.

Losing messages is always safe for Paxos (the core retransmits), so the
transport never blocks the driver: each peer has a bounded outbox; when it is
full, or the stream is down, frames are dropped and counted. A broken stream
reconnects with capped exponential backoff.

Incoming frames are decoded strictly; a frame that fails (``WireError``) is
dropped and counted, and a frame from another cluster ends that stream with
FAILED_PRECONDITION so its sender's logs say why.

With mutual TLS (``ledger.server_auth``) the streams are TLS connections (the
handshake is per connection, not per frame) and only a replica certificate of
this cluster may open one; every frame's sender id must then be the replica
that certificate names, and its cluster id this cluster's (which the
certificate's is too). Refused frames are counted by reason in
``ledger_peer_frames_refused_total{reason}``: ``malformed``, ``cluster_id``,
``wire_version``, ``not_member``, ``not_certificate`` (sender is another
replica than the certificate's).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable, Iterable

import grpc
from prometheus_client import Counter

from cluster.certs import TlsCredentials, open_channel
from consensus.messages import Heartbeat, HeartbeatAck, Message
from ledger import wire
from ledger.api_proto import pb, pb_grpc
from ledger.metrics import ReplicaMetrics, log
from ledger.server_auth import peer_identity, replica_number

OUTBOX_FRAMES_MAX = 1024
RECONNECT_BACKOFF_MIN_S = 0.02
RECONNECT_BACKOFF_MAX_S = 1.0
RTT_PROBES_MAX = 64  # outstanding heartbeat probes remembered per peer
PEER_MESSAGE_BYTES_MAX = 128 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", PEER_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", PEER_MESSAGE_BYTES_MAX),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a peer restarts (the default backoff grows to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


FRAME_TARGET_BYTES = 8 * 1024 * 1024  # split a turn's messages to one peer above this
REFUSE_REASONS = ("malformed", "cluster_id", "wire_version", "not_member", "not_certificate")


def _payload_bytes(m: Message) -> int:
    """A cheap upper-bound estimate of a message's encoded size."""
    size = 64
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


class PeerLink:
    """The outbound stream to one peer."""

    def __init__(self, transport: "PeerTransport", peer_id: int, peer_name: str, address: str) -> None:
        self.t = transport
        self.peer_id = peer_id
        self.peer_name = peer_name
        self.address = address
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue(OUTBOX_FRAMES_MAX)
        self.connected = False
        self.dropped = 0
        self.heartbeat_sent: dict[int, float] = {}
        self._task: asyncio.Task | None = None
        self._channel: grpc.aio.Channel | None = None
        m = transport.metrics
        for metric in (m.peer_rtt, m.peer_dropped_frames, m.peer_connected):
            m.labels(metric, peer=peer_name)  # export the series from the start

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"peer-{self.peer_name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._channel is not None:
            await self._channel.close(grace=None)

    def offer(self, frame: bytes) -> None:
        if self.connected:
            try:
                self.outbox.put_nowait(frame)
                return
            except asyncio.QueueFull:
                pass
        self.dropped += 1
        m = self.t.metrics
        m.labels(m.peer_dropped_frames, peer=self.peer_name).inc()

    async def _frames(self):
        while True:
            frame = await self.outbox.get()
            yield pb.PeerFrame(frame=frame)

    async def _run(self) -> None:
        backoff = RECONNECT_BACKOFF_MIN_S
        self._channel = open_channel(self.address, self.t.tls, CHANNEL_OPTIONS)
        stub = pb_grpc.PeerStub(self._channel)
        while True:
            connected_at = None
            try:
                await asyncio.wait_for(self._channel.channel_ready(), timeout=backoff + 0.5)
                self._set_connected(True)
                connected_at = time.monotonic()
                await stub.Send(self._frames())
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log(self.t.logger, logging.ERROR, "peer refused our frames",
                        peer=self.peer_name, reason=e.details())
            except Exception:  # timeouts, a closed channel: reconnect below
                pass
            self._set_connected(False)
            # Frames queued for a broken stream are stale; the core resends.
            while not self.outbox.empty():
                self.outbox.get_nowait()
            if connected_at is not None and time.monotonic() - connected_at > 1.0:
                backoff = RECONNECT_BACKOFF_MIN_S
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self.t.metrics.labels(self.t.metrics.peer_connected, peer=self.peer_name).set(1 if up else 0)
            log(self.t.logger, logging.INFO, "peer stream " + ("up" if up else "down"), peer=self.peer_name)


class PeerTransport:
    """Sends the core's messages to peers; delivers peers' messages to ``deliver``."""

    def __init__(
        self,
        cluster_id: str,
        self_id: int,
        peers: dict[int, tuple[str, str]],  # consensus id -> (name, address)
        deliver: Callable[[list[Message]], None],
        metrics: ReplicaMetrics,
        logger: logging.Logger,
        tls: TlsCredentials | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.tls = tls
        self.self_id = self_id
        self.deliver = deliver
        self.metrics = metrics
        self.logger = logger
        self.links = {pid: PeerLink(self, pid, name, addr) for pid, (name, addr) in peers.items()}
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

    def add_peer(self, peer_id: int, name: str, address: str) -> None:
        """Open a stream to a replica that joined after we started."""
        if peer_id == self.self_id or peer_id in self.links:
            return
        link = self.links[peer_id] = PeerLink(self, peer_id, name, address)
        if self._started:
            link.start()

    def snapshot_stub(self, peer_id: int):
        """A Peer stub over the existing channel to ``peer_id`` (None if unknown or not yet open)."""
        link = self.links.get(peer_id)
        if link is None or link._channel is None:
            return None
        return pb_grpc.PeerStub(link._channel)

    def refuse(self, reason: str) -> None:
        self.refused_frames += 1
        self.metrics.labels(self.frames_refused, reason=reason).inc()
        self.metrics.labels(self.metrics.wire_errors).inc()

    def start(self) -> None:
        self._started = True
        for link in self.links.values():
            link.start()

    async def stop(self) -> None:
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
    """The receiving end of peers' streams."""

    def __init__(self, transport: PeerTransport) -> None:
        self.t = transport

    async def Send(self, request_iterator, context):
        t = self.t
        # With TLS the authorizer let only replica certificates of this cluster
        # in; the frames must come from the replica the certificate names.
        certified = None
        if t.tls is not None:
            identity = peer_identity(context)
            certified = replica_number(identity) if identity is not None else None
            if certified is None:
                t.refuse("not_certificate")
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "a peer stream needs a replica certificate")
        async for request in request_iterator:
            try:
                sender, messages = wire.decode_frame(request.frame, t.cluster_id)
            except wire.WireError as e:
                text = str(e)
                reason = "cluster_id" if "cluster id" in text else "wire_version" if "wire version" in text else "malformed"
                t.refuse(reason)
                if reason != "malformed":
                    log(t.logger, logging.ERROR, "refusing a peer stream", reason=text, peer=context.peer())
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, text)
                log(t.logger, logging.WARNING, "dropped a bad peer frame", reason=text, peer=context.peer())
                continue
            if certified is not None and sender != certified:
                t.refuse("not_certificate")
                log(t.logger, logging.ERROR, "refusing a peer stream: frame sender is not the certificate's replica",
                    sender=sender, certificate=f"r{certified}", peer=context.peer())
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"frames of sender {sender} on a stream of replica r{certified}'s certificate",
                )
            if sender not in t.links:
                t.on_unknown_sender(sender)
            if sender not in t.links:
                t.refuse("not_member")
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"sender {sender} is not a member of cluster {t.cluster_id!r}",
                )
            mine = [m for m in messages if m.dst == t.self_id]
            if mine:
                t._observe(sender, mine)
                t.deliver(mine)
        return pb.PeerAck()

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
