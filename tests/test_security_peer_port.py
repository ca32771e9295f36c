"""Hostile bytes at a replica's peer port (real processes on 127.0.0.1).

Goal: random frames, every truncation of real frames of every message type,
well-formed msgpack of the wrong shape, oversized length headers, and raw
garbage on the TCP port itself leave every replica serving, with its state
digest unchanged; the refused frames are counted. Run with
mutual TLS (the frames come over a stream authenticated as a real replica, the
strongest position an attacker can hold short of that replica's key) and in
plaintext on loopback (anyone local can reach the peer port). Seeded, so a
failure replays.
"""

from __future__ import annotations

import dataclasses
import random
import socket

import msgpack
import pytest

from cluster.local import LocalCluster
from consensus.ballot import Ballot
from consensus.messages import RejectReason
from ledger import wire
from ledger.model import Account, Transfer
from ledger.server_peers import send_frames
from test_security_tls import SecureCluster, metric

SEED = 20261126
RANDOM_FRAMES = 300


def _sample(cls, src: int, dst: int):
    """One message of ``cls`` with plausible field values (the frame's source)."""
    values = {
        "src": src, "dst": dst, "ballot": Ballot(3, src), "promised": Ballot(3, src), "transfer": False,
        "granted": False, "reason": next(iter(RejectReason)), "transfer_from": Ballot(2, src),
        "accepted": ((7, Ballot(2, src), b"v" * 40),), "entries": ((7, b"w" * 40), (8, b"")),
        "slots": (1, 2, 3), "base_digest": bytes(32), "digest": bytes(32), "rows": b"r" * 40,
    }
    return cls(**{f.name: values.get(f.name, 5) for f in dataclasses.fields(cls)})


def hostile_frames(cluster_id: str, sender: int, dst: int, rng: random.Random) -> list[bytes]:
    frames: list[bytes] = []
    for cls in wire.PEER_MESSAGE_TYPES:  # every strict prefix of a real frame (a prefix is never a whole frame)
        good = wire.encode_frame(cluster_id, sender, [_sample(cls, sender, dst)])
        frames += [good[:n] for n in range(len(good))]
    frames += [rng.randbytes(rng.randrange(0, 300)) for _ in range(RANDOM_FRAMES)]
    shapes = [
        [], [wire.WIRE_VERSION], [wire.WIRE_VERSION, cluster_id, sender, []],
        [wire.WIRE_VERSION, cluster_id, sender, [[6]]], [wire.WIRE_VERSION, cluster_id, sender, [[99, 1, 2]]],
        [wire.WIRE_VERSION, cluster_id, sender, [[6, sender, dst, [1], 0, 0]]],
        [wire.WIRE_VERSION, cluster_id, sender, [[6, sender, dst, [1, 1], 0, 0, 0]]],
        [wire.WIRE_VERSION, cluster_id, sender, [[6, sender, dst, [-1, 1], 0, 0]]],
        [wire.WIRE_VERSION, cluster_id, sender, [[6, sender, dst, [-2**63, 1], 0, 0]]],
        [wire.WIRE_VERSION, cluster_id, sender, [[6, sender + 1, dst, [1, 1], 0, 0]]],
        [wire.WIRE_VERSION, cluster_id, sender, [[3, sender, dst, [1, 1], [[1, "str"]]]]],
        [wire.WIRE_VERSION, cluster_id, sender, "x" * 1000], {"a": 1}, 1.5, None, True,
    ]
    nested: list = []
    for _ in range(200):
        nested = [nested]
    shapes.append([wire.WIRE_VERSION, cluster_id, sender, nested])
    frames += [msgpack.packb(s, use_bin_type=True) for s in shapes]
    # Headers that promise far more than follows: an array of 2**32-1 items, a 4 GiB bin.
    frames += [b"\xdd\xff\xff\xff\xff", b"\x94\x01\xa1x\x01\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff\x00"]
    return frames


def garbage_streams(rng: random.Random) -> list[bytes]:
    """Raw bytes for the TCP ports: noise, a half TLS hello, an HTTP/2 preface then noise, a
    length header promising 4 GiB, one promising a frame of 100 bytes and sending 10."""
    return [
        rng.randbytes(4096),
        bytes.fromhex("16030100c8010000c40303") + rng.randbytes(20),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(2048),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\xff\xff\xff\xff" + rng.randbytes(64),
        (100).to_bytes(4, "big") + rng.randbytes(10),
    ]


@pytest.fixture(params=["tls", "plaintext"], scope="module")
def cluster(request):
    c = SecureCluster(cluster_id="fz") if request.param == "tls" else LocalCluster(3, "fz")
    c.tls = request.param == "tls"
    try:
        c.start()
        c.wait_leader()
        with (c.client("admin") if c.tls else c.client()) as admin:
            admin.transfer_leader("r1")  # settle on the primary zone's replica
        with (c.client("client") if c.tls else c.client()) as cl:
            accounts = [Account(id=i, ledger=1, code=1) for i in (1, 2)]
            assert all(r.ok for r in cl.create_accounts(accounts))
            assert all(r.ok for r in cl.create_transfers(
                [Transfer(id=100 + i, debit_account_id=1, credit_account_id=2, amount=i + 1, ledger=1, code=1)
                 for i in range(50)]))
            cl.kv_put(b"key", b"value")
        yield c
    finally:
        c.stop()


def _send(cluster, rid: str, frames: list[bytes]) -> tuple[str, str] | None:
    """Send ``frames`` on one connection to ``rid``'s peer address (as replica r1 with TLS);
    the refusal, if any."""
    return send_frames(cluster.peer_addresses[rid], frames, cluster.creds("r1") if cluster.tls else None)


def test_hostile_frames_and_bytes_leave_replicas_serving_and_state_unchanged(cluster):
    """Every replica refuses every hostile frame, keeps serving, and keeps its digest."""
    rng = random.Random(SEED)
    digest = cluster.wait_converged()
    for rid, address in cluster.addresses.items():
        port = cluster.metrics_ports[rid]
        before = metric(port, "ledger_peer_frames_refused_total", reason="malformed")
        frames = hostile_frames("fz", 1, int(rid[1:]), rng)
        # Malformed frames are dropped one by one and the connection stays open for the next.
        assert _send(cluster, rid, frames) is None
        refused = metric(port, "ledger_peer_frames_refused_total", reason="malformed") - before
        assert refused >= len(frames) - 20, (rid, refused, len(frames))
        # A frame naming another cluster ends its connection, and the sender is told why.
        other = wire.encode_frame("not-fz", 1, [_sample(wire.PEER_MESSAGE_TYPES[0], 1, int(rid[1:]))])
        refusal = _send(cluster, rid, [other])
        assert refusal is not None and refusal[0] == "cluster_id" and "cluster id" in refusal[1], refusal
        for target in (address, cluster.peer_addresses[rid]):
            host, tcp_port = target.rsplit(":", 1)
            for garbage in garbage_streams(rng):
                with socket.create_connection((host, int(tcp_port)), timeout=5) as s:
                    try:
                        s.sendall(garbage)
                        s.shutdown(socket.SHUT_WR)
                        s.settimeout(2)
                        s.recv(65536)
                    except OSError:
                        pass  # the replica may reset the connection, or wait for more: both are fine
    # Still serving, same state everywhere.
    assert set(cluster.statuses()) == set(cluster.ids)
    assert cluster.wait_converged() == digest
    with (cluster.client("client") if cluster.tls else cluster.client()) as cl:
        assert cl.kv_get(b"key")[0] == b"value"
        cl.kv_put(b"after", b"hostile frames")
    cluster.wait_converged()
