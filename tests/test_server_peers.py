"""The peer transport on its own (ledger.server_peers): real sockets on 127.0.0.1.

Goal: frames reach the peer in both directions, in plaintext and with mutual
TLS; a dialled listener whose certificate names another replica gets no
frames; a length header beyond the frame limit ends the connection with a
refusal the sender can read; a link to a listener that comes back later
connects by itself; and stopping a transport never waits on its links (a
cancellation that meets a finished dial included).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cluster import certs
from cluster.local import free_ports
from consensus.ballot import Ballot
from consensus.messages import Heartbeat
from ledger import wire
from ledger.metrics import ReplicaMetrics
from ledger.server_peers import PeerTransport, decode_refusal, send_frames

pytestmark = pytest.mark.timeout(60)
CLUSTER = "peers"


def _pair(tls: dict[str, certs.TlsCredentials] | None = None):
    """Transports r1 and r2, each listening on its own port; (transports, inboxes, addresses)."""
    ports = free_ports(4)
    addresses = {"r1": f"127.0.0.1:{ports[0]}", "r2": f"127.0.0.1:{ports[1]}"}
    api = {"r1": f"127.0.0.1:{ports[2]}", "r2": f"127.0.0.1:{ports[3]}"}
    inboxes: dict[str, list] = {"r1": [], "r2": []}
    transports = {}
    for me, other in (("r1", "r2"), ("r2", "r1")):
        transports[me] = PeerTransport(
            CLUSTER, int(me[1:]), {int(other[1:]): (other, addresses[other], api[other])},
            inboxes[me].extend, ReplicaMetrics(CLUSTER, me), logging.getLogger(f"test.{me}"),
            tls=tls[me] if tls else None,
        )
    return transports, inboxes, addresses


def _heartbeat(src: int, dst: int, seq: int) -> Heartbeat:
    return Heartbeat(src=src, dst=dst, ballot=Ballot(1, src), chosen_below=0, seq=seq)


async def _until(predicate, what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _exchange(transports, inboxes, addresses) -> None:
    for name, t in transports.items():
        await t.listen(addresses[name])
        t.start()
    try:
        await _until(lambda: all(link.connected for t in transports.values() for link in t.links.values()),
                     "both links up")
        for seq in range(1, 6):
            transports["r1"].send([_heartbeat(1, 2, seq)])
            transports["r2"].send([_heartbeat(2, 1, seq)])
        await _until(lambda: len(inboxes["r1"]) == 5 and len(inboxes["r2"]) == 5, "five heartbeats each way")
        assert [m.seq for m in inboxes["r2"]] == [1, 2, 3, 4, 5]
        assert all(m.src == 1 and m.dst == 2 for m in inboxes["r2"])
    finally:
        await asyncio.wait_for(asyncio.gather(*(t.stop() for t in transports.values())), 5)


def test_frames_flow_both_ways_in_plaintext():
    asyncio.run(_exchange(*_pair()))


def _creds(tmp_path: Path) -> dict[str, certs.TlsCredentials]:
    certs.generate(CLUSTER, {"r1": "127.0.0.1", "r2": "127.0.0.1", "r3": "127.0.0.1"}, tmp_path)
    return {r: certs.TlsCredentials.from_cert_dir(tmp_path, r) for r in ("r1", "r2", "r3")}


def test_frames_flow_both_ways_with_mutual_tls(tmp_path):
    creds = _creds(tmp_path)
    asyncio.run(_exchange(*_pair({"r1": creds["r1"], "r2": creds["r2"]})))


def test_a_listener_with_another_replicas_certificate_gets_no_frames(tmp_path):
    """r1 dials "r2", but the listener there holds r3's certificate: r1 never sends it a frame."""
    creds = _creds(tmp_path)
    transports, inboxes, addresses = _pair({"r1": creds["r1"], "r2": creds["r3"]})

    async def run():
        await transports["r2"].listen(addresses["r2"])
        transports["r1"].start()
        try:
            for seq in range(1, 40):
                transports["r1"].send([_heartbeat(1, 2, seq)])
                await asyncio.sleep(0.02)
            link = transports["r1"].links[2]
            assert not link.connected and link.dropped == 39
            assert inboxes["r2"] == []
        finally:
            await asyncio.wait_for(asyncio.gather(*(t.stop() for t in transports.values())), 5)

    asyncio.run(run())


def test_an_oversized_length_header_ends_the_connection_with_a_refusal():
    transports, inboxes, addresses = _pair()

    async def run():
        t = transports["r2"]
        await t.listen(addresses["r2"])
        try:
            good = wire.encode_frame(CLUSTER, 1, [_heartbeat(1, 2, 1)])
            answer = await asyncio.to_thread(send_frames, addresses["r2"], [good, b"x" * 10])
            assert answer is None  # a good frame, then a malformed one: dropped, connection kept
            assert [m.seq for m in inboxes["r2"]] == [1]

            def oversized() -> tuple[str, str] | None:
                import socket

                with socket.create_connection(("127.0.0.1", int(addresses["r2"].rsplit(":", 1)[1]))) as s:
                    s.sendall((wire.FRAME_BYTES_MAX + 1).to_bytes(4, "big") + b"\0" * 16)
                    s.settimeout(5)
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                return decode_refusal(data[4:])

            reason, text = await asyncio.to_thread(oversized)
            assert reason == "malformed" and str(wire.FRAME_BYTES_MAX) in text
            assert t.refused_frames == 2
        finally:
            await t.stop()

    asyncio.run(run())


def test_a_link_connects_once_its_listener_comes_up_and_stop_never_hangs():
    transports, inboxes, addresses = _pair()

    async def run():
        r1, r2 = transports["r1"], transports["r2"]
        r1.start()  # nobody listens at r2's address yet
        await asyncio.sleep(0.3)
        assert not r1.links[2].connected
        await r2.listen(addresses["r2"])
        await _until(lambda: r1.links[2].connected, "the link to come up")
        r1.send([_heartbeat(1, 2, 7)])
        await _until(lambda: [m.seq for m in inboxes["r2"]] == [7], "the heartbeat")
        await asyncio.wait_for(asyncio.gather(r1.stop(), r2.stop()), 5)
        # Start and stop at once, many times: whatever the links were doing, stop returns.
        for _ in range(20):
            again, _, addrs = _pair()
            for name, t in again.items():
                await t.listen(addrs[name])
                t.start()
            await asyncio.sleep(0.001)
            await asyncio.wait_for(asyncio.gather(*(t.stop() for t in again.values())), 5)

    asyncio.run(run())
