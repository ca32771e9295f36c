"""Goal: chaos.toxiproxy_server serves the Toxiproxy HTTP API subset that
toxiproxy-python uses (create/list/delete proxies, enable/disable, toxics:
latency, timeout, reset_peer, bandwidth, limit_data), proxying real TCP on
127.0.0.1, and chaos.toxi bounds every client call with a timeout."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from chaos.toxi import ToxiproxyAPI, ToxiproxyError

DEADLINE_S = 10.0


@pytest.fixture
def server():
    proc = subprocess.Popen([sys.executable, "-m", "chaos.toxiproxy_server", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], DEADLINE_S)
        assert ready, "the proxy server did not start"
        info = json.loads(proc.stdout.readline())
        api = ToxiproxyAPI(info["api"])
        yield api
        api.close()
    finally:
        proc.terminate()
        proc.wait(DEADLINE_S)


@pytest.fixture
def echo():
    """An echo server on 127.0.0.1; yields its address."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def handle(c):
        with c:
            c.settimeout(0.2)
            while not stop.is_set():
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not d:
                    return
                c.sendall(d)

    def accept():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(DEADLINE_S)
    srv.close()


def connect(listen: str) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
    return s


def roundtrip(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def closed_by_peer(s: socket.socket) -> str:
    """Wait (bounded) until the peer closes: 'eof' or 'reset'."""
    s.settimeout(DEADLINE_S)
    try:
        while True:
            if not s.recv(65536):
                return "eof"
    except ConnectionResetError:
        return "reset"


def test_create_list_delete_and_proxying(server, echo):
    assert "2." in server.version()
    p = server.create("echo", "127.0.0.1:0", echo)
    assert p.listen != "127.0.0.1:0"
    assert set(server.proxies()) == {"echo"}
    with connect(p.listen) as s:
        payload = bytes(range(256)) * 1000
        assert roundtrip(s, payload) == payload
    with pytest.raises(ToxiproxyError, match="ProxyExists"):
        server.create("echo", "127.0.0.1:0", echo)
    server.destroy("echo")
    assert server.proxies() == {}


def test_disable_closes_connections_and_refuses_new_ones(server, echo):
    p = server.create("echo", "127.0.0.1:0", echo)
    s = connect(p.listen)
    assert roundtrip(s, b"hi") == b"hi"
    server.set_enabled("echo", False)
    assert closed_by_peer(s) in ("eof", "reset")
    s.close()
    with pytest.raises(OSError):
        connect(p.listen).close()
    server.set_enabled("echo", True)
    with connect(p.listen) as s:
        assert roundtrip(s, b"again") == b"again"


def test_latency_delays_and_keeps_order(server, echo):
    p = server.create("echo", "127.0.0.1:0", echo)
    server.add_toxic("echo", "slow", "latency", {"latency": 30, "jitter": 5}, stream="upstream")
    assert set(server.toxics("echo")) == {"slow"}
    with connect(p.listen) as s:
        t0 = time.monotonic()
        data = b"".join(b"%06d" % i for i in range(2000))
        assert roundtrip(s, data) == data
        # a semantic lower bound, not a speed claim: nothing may arrive before the latency
        assert time.monotonic() - t0 >= 0.025
    server.remove_toxic("echo", "slow")
    assert server.toxics("echo") == {}


def test_timeout_toxic_silences_then_closes(server, echo):
    p = server.create("echo", "127.0.0.1:0", echo)
    with connect(p.listen) as s:
        assert roundtrip(s, b"a") == b"a"
        server.add_toxic("echo", "t", "timeout", {"timeout": 300})
        s.sendall(b"swallowed")
        assert closed_by_peer(s) in ("eof", "reset")


def test_reset_peer_resets(server, echo):
    p = server.create("echo", "127.0.0.1:0", echo)
    server.add_toxic("echo", "r", "reset_peer", {"timeout": 50})
    with connect(p.listen) as s:
        assert closed_by_peer(s) == "reset"


def test_limit_data_closes_after_the_limit(server, echo):
    p = server.create("echo", "127.0.0.1:0", echo)
    server.add_toxic("echo", "l", "limit_data", {"bytes": 10}, stream="downstream")
    with connect(p.listen) as s:
        s.sendall(b"0123456789abcdef")
        got = b""
        s.settimeout(DEADLINE_S)
        try:
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        assert got == b"0123456789"


def test_bandwidth_passes_data_intact(server, echo):
    p = server.create("echo", "127.0.0.1:0", echo)
    server.add_toxic("echo", "bw", "bandwidth", {"rate": 1000})
    with connect(p.listen) as s:
        data = b"z" * 100_000
        assert roundtrip(s, data) == data


def test_bad_toxic_and_missing_proxy_are_errors(server, echo):
    server.create("echo", "127.0.0.1:0", echo)
    with pytest.raises(ToxiproxyError, match="InvalidToxic"):
        server.add_toxic("echo", "x", "no_such_toxic", {})
    with pytest.raises(ToxiproxyError, match="no proxy"):
        server.set_enabled("missing", False)


def test_reset_removes_toxics_and_enables(server, echo):
    p = server.create("echo", "127.0.0.1:0", echo)
    server.add_toxic("echo", "slow", "latency", {"latency": 1000})
    server.set_enabled("echo", False)
    server.reset()
    assert server.toxics("echo") == {}
    with connect(p.listen) as s:
        assert roundtrip(s, b"ok") == b"ok"


def test_a_silent_server_gives_a_timeout_not_a_hang():
    """toxiproxy-python has no timeouts; chaos.toxi bounds each call."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the handshake (backlog), never answers
    try:
        api = ToxiproxyAPI(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)
        with pytest.raises(ToxiproxyError, match="did not answer"):
            api.proxies()
        api.close()
    finally:
        silent.close()
