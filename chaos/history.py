"""Operation histories: what every client process invoked, and how it ended.

An ``Op`` is one operation of one client process::

    invoke_t      monotonic seconds when the client sent it
    complete_t    monotonic seconds when the answer (or the give-up) came;
                  None while it is still in flight
    status        "ok"       it happened, ``result`` is what the cluster said
                  "fail"     it certainly did not happen (the request was refused
                             before it could be ordered, e.g. INVALID_ARGUMENT)
                  "unknown"  no certain answer (timeout, lost connection, lost
                             leadership): it may have taken effect at any time
                             after ``invoke_t``, or never

A process runs one operation at a time, so its ops never overlap; a process
whose op ended "unknown" takes a fresh process id (as in Jepsen), because the
unknown op may still be running somewhere in the cluster.

Times are ``time.monotonic()``, which on Linux is one clock for every process
of the machine (and every network namespace), so histories written by
workload processes line up with the fault windows of the nemesis process.

Files are JSON lines, one op per line, in completion order.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"
STATUSES = (OK, FAIL, UNKNOWN)


@dataclass(slots=True)
class Op:
    process: int
    f: str
    args: Any
    invoke_t: float
    complete_t: float | None = None
    status: str | None = None
    result: Any = None
    error: str = ""
    index: int = 0  # order of invocation within the history

    @property
    def done(self) -> bool:
        return self.status is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=_jsonable)

    @classmethod
    def from_json(cls, line: str) -> "Op":
        return cls(**json.loads(line))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


@dataclass
class History:
    """A thread-safe, append-only record of operations."""

    ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _sink: Any = field(default=None, repr=False)

    def stream_to(self, path: Path) -> None:
        """Append every completed op to ``path`` as it completes (crash-safe record)."""
        self._sink = open(path, "a", buffering=1)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def invoke(self, process: int, f: str, args: Any = None, *, at: float | None = None) -> Op:
        op = Op(process, f, args, time.monotonic() if at is None else at)
        with self._lock:
            op.index = len(self.ops)
            self.ops.append(op)
        return op

    def complete(self, op: Op, status: str, result: Any = None, *, error: str = "", at: float | None = None) -> Op:
        assert status in STATUSES, status
        assert op.status is None, f"op {op.index} completed twice"
        op.complete_t = time.monotonic() if at is None else at
        op.status = status
        op.result = result
        op.error = error
        if self._sink is not None:
            with self._lock:
                self._sink.write(op.to_json() + "\n")
        return op

    def ok(self, op: Op, result: Any = None, **kw) -> Op:
        return self.complete(op, OK, result, **kw)

    def fail(self, op: Op, error: str = "", **kw) -> Op:
        return self.complete(op, FAIL, None, error=error, **kw)

    def unknown(self, op: Op, error: str = "", **kw) -> Op:
        return self.complete(op, UNKNOWN, None, error=error, **kw)

    def finish_pending(self) -> None:
        """Mark ops still in flight (a workload cut short) as unknown."""
        for op in list(self.ops):
            if op.status is None:
                self.unknown(op, "still in flight when the history ended")

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def save(self, path: Path) -> None:
        with open(path, "w") as f:
            for op in self.ops:
                f.write(op.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> "History":
        ops = [Op.from_json(line) for line in Path(path).read_text().splitlines() if line.strip()]
        ops.sort(key=lambda o: (o.invoke_t, o.index))
        return cls(ops=ops)

    @classmethod
    def of(cls, ops: Iterable[Op]) -> "History":
        ops = list(ops)
        for i, op in enumerate(ops):
            op.index = i
        return cls(ops=ops)
