"""Driving a Toxiproxy server (a real one, or ``chaos.toxiproxy_server``) via toxiproxy-python.

toxiproxy-python keeps the server address in a class-level global
(``APIConsumer.host/port``) and makes its HTTP calls without timeouts, so
every call here goes through ``guarded``: it sets the address, runs the call
in a worker thread and gives up after ``timeout_s`` with ``ToxiproxyError``.
A call that hung keeps its daemon thread until the socket gives up; the
caller is free at once.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable
from urllib.parse import urlparse

from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer

CALL_TIMEOUT_S = 5.0
_address_lock = threading.Lock()


class ToxiproxyError(Exception):
    pass


def parse_url(url: str) -> tuple[str, int]:
    """"http://host:port", "host:port" -> (host, port)."""
    if "//" not in url:
        url = "http://" + url
    u = urlparse(url)
    if not u.hostname or not u.port:
        raise ToxiproxyError(f"Toxiproxy URL {url!r} needs a host and a port")
    return u.hostname, u.port


class ToxiproxyAPI:
    """The few calls the nemeses make, each bounded by a timeout."""

    def __init__(self, url: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.host, self.port = parse_url(url)
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="toxiproxy")

    def guarded(self, what: str, fn: Callable[[], Any]) -> Any:
        def call():
            # The client reads the class-level address on every request; the
            # lock keeps two servers' calls (tests) from crossing.
            with _address_lock:
                APIConsumer.host, APIConsumer.port = self.host, self.port
                return fn()

        future = self._pool.submit(call)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            raise ToxiproxyError(
                f"Toxiproxy at {self.host}:{self.port} did not answer {what} within {self.timeout_s:.0f}s"
            ) from None
        except Exception as e:  # requests' ConnectionError, toxiproxy's NotFound/ProxyExists/...
            raise ToxiproxyError(f"Toxiproxy at {self.host}:{self.port}: {what} failed: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ calls

    def version(self) -> str:
        raw = self.guarded("version", lambda: Toxiproxy().version())
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def proxies(self) -> dict:
        return self.guarded("list proxies", lambda: Toxiproxy().proxies())

    def create(self, name: str, listen: str, upstream: str):
        return self.guarded(f"create {name}", lambda: Toxiproxy().create(upstream=upstream, name=name, listen=listen))

    def destroy(self, name: str) -> None:
        def go():
            p = Toxiproxy().get_proxy(name)
            if p is not None:
                p.destroy()
        self.guarded(f"destroy {name}", go)

    def destroy_all(self) -> None:
        self.guarded("destroy all", lambda: Toxiproxy().destroy_all())

    def reset(self) -> None:
        self.guarded("reset", lambda: Toxiproxy().reset())

    def _proxy(self, name: str):
        p = Toxiproxy().get_proxy(name)
        if p is None:
            raise ToxiproxyError(f"no proxy {name}")
        return p

    def set_enabled(self, name: str, enabled: bool) -> None:
        self.guarded(f"{'enable' if enabled else 'disable'} {name}",
                     lambda: self._proxy(name).enable() if enabled else self._proxy(name).disable())

    def add_toxic(self, proxy: str, name: str, kind: str, attributes: dict, stream: str = "downstream",
                  toxicity: float = 1.0) -> None:
        self.guarded(
            f"add toxic {name} to {proxy}",
            lambda: self._proxy(proxy).add_toxic(name=name, type=kind, stream=stream, toxicity=toxicity,
                                                 attributes=attributes),
        )

    def remove_toxic(self, proxy: str, name: str) -> None:
        self.guarded(f"remove toxic {name} from {proxy}", lambda: self._proxy(proxy).destroy_toxic(name))

    def toxics(self, proxy: str) -> dict:
        return self.guarded(f"list toxics of {proxy}", lambda: self._proxy(proxy).toxics())
