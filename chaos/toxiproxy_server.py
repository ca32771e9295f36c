"""A small asyncio TCP proxy that serves the Toxiproxy 2.x HTTP API subset the suite uses.

No Toxiproxy server can be installed on our machines, so this stands in for
one. The nemesis code talks to it only through ``toxiproxy-python`` and so
works unchanged against a real Toxiproxy server given by URL.

    python -m chaos.toxiproxy_server [--host 127.0.0.1] [--port 8474] [--config proxies.json]
                                     [--netns NAME]

API (JSON over HTTP/1.1, one request per connection):

    GET    /version                          "2.x-compatible (chaos)"
    POST   /reset                            enable every proxy, remove every toxic
    GET    /proxies                          {name: proxy}
    POST   /proxies                          {name, listen, upstream, enabled?} -> 201 | 409
    GET    /proxies/{p}                      proxy | 404
    POST   /proxies/{p}                      {enabled?, listen?, upstream?} -> proxy
    DELETE /proxies/{p}                      204
    GET    /proxies/{p}/toxics               [toxic]
    POST   /proxies/{p}/toxics               {name?, type, stream?, toxicity?, attributes} -> toxic | 409 | 400
    GET    /proxies/{p}/toxics/{t}           toxic
    POST   /proxies/{p}/toxics/{t}           {attributes?, toxicity?} -> toxic
    DELETE /proxies/{p}/toxics/{t}           204

Toxics (``stream`` is "upstream", client to server, or "downstream", the
default; ``toxicity`` is the chance that a toxic applies to a connection):

    latency     attributes latency, jitter (ms): each chunk waits latency +- jitter,
                order kept
    timeout     timeout (ms): data stops flowing; after ``timeout`` the
                connection is closed (0: held open, silent, until removed)
    reset_peer  timeout (ms): the connection is reset (RST) after ``timeout``
    bandwidth   rate (KB/s): chunks are paced to the rate
    limit_data  bytes: the connection is closed once that many bytes passed

A disabled proxy closes its listener and every connection. ``--config`` takes
a JSON list of proxies, each optionally with a list of ``toxics``, created at
start (the chaos network namespaces use this for their zone latencies).

``--netns NAME`` (root): the API socket is bound where the server starts
(the root namespace), then the process enters the network namespace NAME,
so every proxy listens and connects inside it. The chaos runner uses this to
change a namespace host's links (toxics) while the replicas run, through the
Toxiproxy API, with nothing listening inside the namespace but the proxies.

The event loop uses ``select`` rather than ``epoll`` because asyncio rounds
epoll timeouts up to whole milliseconds, and sub-millisecond latencies (one
data center to the next: 0.5 ms each way) need finer timers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

VERSION = "2.x-compatible (chaos)"
CHUNK_BYTES_MAX = 64 * 1024
QUEUE_CHUNKS_MAX = 4096  # per direction of one connection; beyond: the reader waits
HTTP_BODY_BYTES_MAX = 1 << 20
CONNECTIONS_MAX = 4096  # per proxy
TOXIC_TYPES = ("latency", "timeout", "reset_peer", "bandwidth", "limit_data")
STREAMS = ("upstream", "downstream")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict

    def as_json(self) -> dict:
        return {"name": self.name, "type": self.type, "stream": self.stream,
                "toxicity": self.toxicity, "attributes": self.attributes}

    def attr(self, key: str, default: float = 0) -> float:
        value = self.attributes.get(key, default)
        if not isinstance(value, (int, float)) or value < 0:
            raise ApiError(400, f"toxic {self.name}: attribute {key} must be a number >= 0")
        return value


def _parse_toxic(body: dict) -> Toxic:
    kind = body.get("type")
    if kind not in TOXIC_TYPES:
        raise ApiError(400, f"unknown toxic type {kind!r} (known: {', '.join(TOXIC_TYPES)})")
    stream = body.get("stream") or "downstream"
    if stream not in STREAMS:
        raise ApiError(400, f"stream must be upstream or downstream, not {stream!r}")
    toxicity = body.get("toxicity", 1.0)
    if not isinstance(toxicity, (int, float)) or not 0 <= toxicity <= 1:
        raise ApiError(400, "toxicity must be between 0 and 1")
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ApiError(400, "attributes must be an object")
    t = Toxic(body.get("name") or f"{kind}_{stream}", kind, stream, float(toxicity), dict(attributes))
    for key in {"latency": ("latency", "jitter"), "timeout": ("timeout",), "reset_peer": ("timeout",),
                "bandwidth": ("rate",), "limit_data": ("bytes",)}[kind]:
        t.attr(key)
    return t


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ApiError(400, f"address must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


class Connection:
    """One client connection and its upstream connection, two pipes."""

    def __init__(self, proxy: "Proxy", creader, cwriter) -> None:
        self.proxy = proxy
        self.creader, self.cwriter = creader, cwriter
        self.ureader = self.uwriter = None
        self.tasks: list[asyncio.Task] = []
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.applies: dict[str, bool] = {}  # toxic name -> drawn against its toxicity
        self.passed = {"upstream": 0, "downstream": 0}
        self.closed = False

    def applies_to(self, toxic: Toxic) -> bool:
        if toxic.name not in self.applies:
            self.applies[toxic.name] = random.random() < toxic.toxicity
        return self.applies[toxic.name]

    def toxics(self, stream: str) -> list[Toxic]:
        return [t for t in self.proxy.toxics.values() if t.stream == stream and self.applies_to(t)]

    async def run(self) -> None:
        host, port = _split(self.proxy.upstream)
        try:
            self.ureader, self.uwriter = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, asyncio.TimeoutError):
            self.close(reset=False)
            return
        self.toxics_changed()
        for stream, reader, writer in (("upstream", self.creader, self.uwriter),
                                       ("downstream", self.ureader, self.cwriter)):
            self.tasks.append(asyncio.create_task(self._pipe(stream, reader, writer)))
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close(reset=False)

    def toxics_changed(self) -> None:
        """(Re)arm the timers of timeout and reset_peer toxics on this connection."""
        if self.closed:
            return
        wanted = {}
        for t in self.proxy.toxics.values():
            if t.type in ("timeout", "reset_peer") and self.applies_to(t):
                if t.type == "timeout" and t.attr("timeout") == 0:
                    continue
                wanted[t.name] = t
        for name in list(self.timers):
            if name not in wanted:
                self.timers.pop(name).cancel()
        loop = asyncio.get_running_loop()
        for name, t in wanted.items():
            if name not in self.timers:
                self.timers[name] = loop.call_later(
                    t.attr("timeout") / 1000.0, self.close, t.type == "reset_peer")

    async def _pipe(self, stream: str, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS_MAX)
        sender = asyncio.create_task(self._send(stream, queue, writer))
        last_due = 0.0
        try:
            while not self.closed:
                data = await reader.read(CHUNK_BYTES_MAX)
                if not data:
                    break
                toxics = self.toxics(stream)
                if any(t.type == "timeout" for t in toxics):
                    continue  # swallowed while the timeout toxic lasts
                due = time.monotonic()
                for t in toxics:
                    if t.type == "latency":
                        jitter = t.attr("jitter")
                        due += (t.attr("latency") + (random.uniform(-jitter, jitter) if jitter else 0)) / 1000.0
                due = last_due = max(due, last_due)
                await queue.put((due, data))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await queue.put((0.0, b""))
            try:
                await sender
            except Exception:
                pass
            self.close(reset=False)

    async def _send(self, stream: str, queue: asyncio.Queue, writer) -> None:
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    try:
                        writer.write_eof()
                    except (OSError, RuntimeError):
                        pass
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                for t in self.toxics(stream):
                    if t.type == "bandwidth" and t.attr("rate") > 0:
                        await asyncio.sleep(len(data) / (t.attr("rate") * 1000.0))
                    elif t.type == "limit_data":
                        room = int(t.attr("bytes")) - self.passed[stream]
                        if room <= 0:
                            self.close(reset=False)
                            return
                        data = data[:room]
                self.passed[stream] += len(data)
                writer.write(data)
                await writer.drain()
                for t in self.toxics(stream):
                    if t.type == "limit_data" and self.passed[stream] >= int(t.attr("bytes")):
                        self.close(reset=False)
                        return
        except (OSError, ConnectionError):
            self.close(reset=False)

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        for w in (self.cwriter, self.uwriter):
            if w is None:
                continue
            if reset:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
            try:
                w.close()
            except Exception:
                pass
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.proxy.connections.discard(self)


@dataclass
class Proxy:
    name: str
    listen: str
    upstream: str
    enabled: bool = True
    toxics: dict[str, Toxic] = field(default_factory=dict)
    connections: set = field(default_factory=set)
    server: Any = None

    def as_json(self) -> dict:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "toxics": [t.as_json() for t in self.toxics.values()]}

    async def start(self) -> None:
        host, port = _split(self.listen)
        try:
            self.server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        except OSError as e:
            raise ApiError(409 if e.errno == 98 else 500, f"proxy {self.name}: cannot listen on {self.listen}: {e}")
        real_port = self.server.sockets[0].getsockname()[1]
        self.listen = f"{host}:{real_port}"
        self.enabled = True

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for c in list(self.connections):
            c.close(reset=False)
        self.enabled = False

    async def _accept(self, reader, writer) -> None:
        if len(self.connections) >= CONNECTIONS_MAX:
            writer.close()
            return
        c = Connection(self, reader, writer)
        self.connections.add(c)
        await c.run()

    def toxics_changed(self) -> None:
        for c in list(self.connections):
            c.toxics_changed()


class ToxiproxyServer:
    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.http = None

    # ------------------------------------------------------------ model

    async def create(self, body: dict) -> Proxy:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "a proxy needs a name")
        if name in self.proxies:
            raise ApiError(409, f"proxy {name} already exists")
        upstream = body.get("upstream")
        _split(upstream or "")
        p = Proxy(name, body.get("listen") or "127.0.0.1:0", upstream)
        if body.get("enabled", True):
            await p.start()
        else:
            p.enabled = False
        self.proxies[name] = p
        for t in body.get("toxics") or []:
            toxic = _parse_toxic(t)
            p.toxics[toxic.name] = toxic
        return p

    def proxy(self, name: str) -> Proxy:
        if name not in self.proxies:
            raise ApiError(404, f"proxy {name} not found")
        return self.proxies[name]

    async def update(self, name: str, body: dict) -> Proxy:
        p = self.proxy(name)
        moved = False
        for key in ("listen", "upstream"):
            if body.get(key) and body[key] != getattr(p, key):
                _split(body[key])
                setattr(p, key, body[key])
                moved = True
        want = body.get("enabled", p.enabled)
        if moved and p.enabled:
            await p.stop()
        if want and not p.enabled:
            await p.start()
        elif not want and p.enabled:
            await p.stop()
        return p

    async def reset(self) -> None:
        for p in self.proxies.values():
            p.toxics.clear()
            p.toxics_changed()
            if not p.enabled:
                await p.start()

    # ------------------------------------------------------------ HTTP

    async def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = [x for x in path.split("?")[0].split("/") if x]
        if parts == ["version"] and method == "GET":
            return 200, VERSION
        if parts == ["reset"] and method == "POST":
            await self.reset()
            return 204, None
        if parts == ["proxies"]:
            if method == "GET":
                return 200, {n: p.as_json() for n, p in self.proxies.items()}
            if method == "POST":
                return 201, (await self.create(body or {})).as_json()
        if len(parts) == 2 and parts[0] == "proxies":
            if method == "GET":
                return 200, self.proxy(parts[1]).as_json()
            if method == "POST":
                return 200, (await self.update(parts[1], body or {})).as_json()
            if method == "DELETE":
                p = self.proxy(parts[1])
                await p.stop()
                del self.proxies[parts[1]]
                return 204, None
        if len(parts) == 3 and parts[0] == "proxies" and parts[2] == "toxics":
            p = self.proxy(parts[1])
            if method == "GET":
                return 200, [t.as_json() for t in p.toxics.values()]
            if method == "POST":
                toxic = _parse_toxic(body or {})
                if toxic.name in p.toxics:
                    raise ApiError(409, f"toxic {toxic.name} already exists on {p.name}")
                p.toxics[toxic.name] = toxic
                p.toxics_changed()
                return 200, toxic.as_json()
        if len(parts) == 4 and parts[0] == "proxies" and parts[2] == "toxics":
            p = self.proxy(parts[1])
            if parts[3] not in p.toxics:
                raise ApiError(404, f"toxic {parts[3]} not found on {p.name}")
            if method == "GET":
                return 200, p.toxics[parts[3]].as_json()
            if method == "POST":
                old = p.toxics[parts[3]]
                merged = old.as_json()
                merged["attributes"] = {**old.attributes, **((body or {}).get("attributes") or {})}
                if "toxicity" in (body or {}):
                    merged["toxicity"] = body["toxicity"]
                p.toxics[parts[3]] = _parse_toxic(merged)
                p.toxics_changed()
                return 200, p.toxics[parts[3]].as_json()
            if method == "DELETE":
                del p.toxics[parts[3]]
                p.toxics_changed()
                return 204, None
        raise ApiError(404, f"no route for {method} {path}")

    async def _http(self, reader, writer) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            length = int(headers.get("content-length", "0"))
            if length > HTTP_BODY_BYTES_MAX:
                raise ApiError(413, "request body too large")
            raw = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise ApiError(400, "the body is not JSON") from None
            try:
                status, payload = await self.route(method, path, body)
            except ApiError as e:
                status, payload = e.status, {"error": str(e), "status": e.status}
            data = b"" if payload is None else json.dumps(payload).encode()
            reason = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
                      409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error"}.get(status, "")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def serve(self, host: str, port: int) -> int:
        self.http = await asyncio.start_server(self._http, host, port, reuse_address=True)
        return self.http.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.http is not None:
            self.http.close()
        for p in list(self.proxies.values()):
            await p.stop()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop with microsecond timers (see the module docstring)."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread (sockets made from now on) into network namespace ``name``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


async def _main(args) -> None:
    server = ToxiproxyServer()
    port = await server.serve(args.host, args.port)
    if args.netns:
        enter_netns(args.netns)
    if args.config:
        with open(args.config) as f:
            for body in json.load(f):
                await server.create(body)
    print(json.dumps({"api": f"{args.host}:{port}",
                      "proxies": {n: p.listen for n, p in server.proxies.items()}}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in rest:
        t.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.toxiproxy_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8474, help="API port (0: any free port; printed at start)")
    parser.add_argument("--config", help="JSON list of proxies (each with optional toxics) to create at start")
    parser.add_argument("--netns", help="bind the API here, then run the proxies in this network namespace")
    args = parser.parse_args(argv)
    loop = new_event_loop()
    try:
        loop.run_until_complete(_main(args))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
