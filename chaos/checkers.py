"""Checkers: verdicts over operation histories (see ``chaos.history``).

Each checker returns a ``Verdict``: ``valid`` is True, False, or None when
the checker could not decide within its bounds (reported, never silently
passed as valid).

bank
    ops ``read`` (result: {account id: balance}) and ``transfer`` (args:
    debit, credit, amount). Every ok read must cover every account, sum to the
    constant total, and show no negative balance on an account whose flags
    forbid it (``nonnegative`` ids). Transfers are not checked by themselves:
    conservation is what the reads see.

register
    ops ``read`` (result: the value, None when absent), ``write`` (args:
    value) and ``cas`` (args: [expected, new]; result: True/False) on one key
    each (``key`` in args for every op: args = {"key": k, ...}). Checked for
    linearizability per key (registers compose: a history is linearizable iff
    every key's sub-history is) with the Wing-Gong search plus Lowe's
    memoization of (set of linearized ops, state), as in Porcupine. An op
    that ended "unknown" may take effect at any time after its invocation or
    never: it gets a return time of +infinity, its output is unknown (a cas
    then succeeds exactly when the expected value is current), and an unknown
    read is dropped. Ops that ended "fail" are dropped. The search is bounded
    per key (``steps_max``); a key that exhausts it is "undecided".

set
    ops ``add`` (args: element) and one final ``read`` (result: list of
    elements, duplicates kept as they were listed). Every ok add must be in
    the final read; no element may appear twice; nothing that was never
    added may appear. Unknown adds may be present or absent.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable

from chaos.history import FAIL, OK, UNKNOWN, History, Op

ERRORS_SHOWN_MAX = 20
REGISTER_STEPS_MAX = 2_000_000  # search steps per key before giving up ("undecided")
REGISTER_OPS_PER_KEY_MAX = 5_000  # a key with more ops is "undecided" without searching


@dataclass
class Verdict:
    checker: str
    valid: bool | None
    errors: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.valid = False
        if len(self.errors) < ERRORS_SHOWN_MAX:
            self.errors.append(message)
        self.stats["errors_total"] = self.stats.get("errors_total", 0) + 1

    def as_dict(self) -> dict:
        return {"checker": self.checker, "valid": self.valid, "errors": self.errors, "stats": self.stats}


def _count(history: Iterable[Op]) -> dict[str, int]:
    c = Counter(op.status or "pending" for op in history)
    return {s: c.get(s, 0) for s in (OK, FAIL, UNKNOWN)}


# ---------------------------------------------------------------- bank


def check_bank(history: History | Iterable[Op], accounts: Iterable[int], total: int,
               nonnegative: Iterable[int] = ()) -> Verdict:
    accounts = sorted(accounts)
    nonneg = set(nonnegative)
    v = Verdict("bank", True)
    reads = 0
    ops = list(history)
    for op in ops:
        if op.f != "read" or op.status != OK:
            continue
        reads += 1
        balances = {int(k): int(b) for k, b in op.result.items()}
        missing = [a for a in accounts if a not in balances]
        if missing:
            v.error(f"read #{op.index} (process {op.process}) lacks accounts {missing}")
            continue
        s = sum(balances[a] for a in accounts)
        if s != total:
            v.error(f"read #{op.index} (process {op.process}, t={op.invoke_t:.3f}) sums to {s}, "
                    f"not {total}: {balances}")
        for a in accounts:
            if a in nonneg and balances[a] < 0:
                v.error(f"read #{op.index}: account {a} is negative ({balances[a]}) "
                        "although its flags forbid it")
    v.stats.update(reads_ok=reads, ops=_count(ops))
    if reads == 0:
        v.valid = None
        v.errors.append("no read succeeded: nothing was checked")
    return v


# ---------------------------------------------------------------- register


class _Entry:
    __slots__ = ("is_call", "op_id", "time", "match", "prev", "next", "value", "output")

    def __init__(self, is_call, op_id, time, value=None, output=None):
        self.is_call = is_call
        self.op_id = op_id
        self.time = time
        self.value = value
        self.output = output
        self.match = None
        self.prev = None
        self.next = None


UNKNOWN_OUTPUT = object()


def _register_step(state: Hashable, f: str, value: Any, output: Any) -> tuple[bool, Hashable]:
    """The cas-register model: (is this output possible from ``state``, next state)."""
    if f == "read":
        return output == state, state
    if f == "write":
        return True, value
    if f == "cas":
        expected, new = value
        if output is UNKNOWN_OUTPUT:
            return True, (new if state == expected else state)
        if output:
            return state == expected, new
        return state != expected, state
    raise ValueError(f"unknown register op {f!r}")


def linearizable(ops: list[Op], init: Hashable = None, steps_max: int = REGISTER_STEPS_MAX,
                 step: Callable = _register_step) -> tuple[bool | None, str]:
    """Wing-Gong search with memoization over one key's ops; (verdict, explanation)."""
    events: list[tuple[float, int, int, _Entry]] = []
    kept: list[Op] = []
    for op in ops:
        if op.status == FAIL or op.status is None:
            continue
        if op.status == UNKNOWN and op.f == "read":
            continue  # an unknown read constrains nothing
        kept.append(op)
    for i, op in enumerate(kept):
        value = op.args.get("value") if isinstance(op.args, dict) else op.args
        output = op.result if op.status == OK else UNKNOWN_OUTPUT
        ret_t = op.complete_t if op.status == OK else math.inf
        call = _Entry(True, i, op.invoke_t, value, output)
        ret = _Entry(False, i, ret_t)
        call.match = ret
        # calls sort before returns at equal times: touching ops count as concurrent
        events.append((op.invoke_t, 0, i, call))
        events.append((ret_t, 1, i, ret))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Entry(False, -1, -math.inf)
    prev = head
    for _, _, _, e in events:
        prev.next = e
        e.prev = prev
        prev = e
    fs = [op.f for op in kept]

    def lift(e: _Entry) -> None:
        e.prev.next = e.next
        e.next.prev = e.prev
        m = e.match
        m.prev.next = m.next
        if m.next is not None:
            m.next.prev = m.prev

    def unlift(e: _Entry) -> None:
        m = e.match
        m.prev.next = m
        if m.next is not None:
            m.next.prev = m
        e.prev.next = e
        e.next.prev = e

    state = init
    linearized = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Entry, Hashable]] = []
    entry = head.next
    steps = 0
    deepest = 0
    while head.next is not None:
        steps += 1
        if steps > steps_max:
            return None, f"search gave up after {steps_max} steps ({len(kept)} ops)"
        if entry.is_call:
            possible, new_state = step(state, fs[entry.op_id], entry.value, entry.output)
            if possible:
                new_lin = linearized | (1 << entry.op_id)
                key = (new_lin, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_lin
                    lift(entry)
                    entry = head.next
                    deepest = max(deepest, len(stack))
                    continue
            entry = entry.next
        else:
            if not stack:
                op = kept[entry.op_id]
                return False, (f"no linearization: stuck at {op.f} {op.args} -> {op.result} "
                               f"(process {op.process}, t={op.invoke_t:.3f}..{op.complete_t}); "
                               f"at most {deepest} of {len(kept)} ops could be ordered")
            entry, state = stack.pop()
            linearized &= ~(1 << entry.op_id)
            unlift(entry)
            entry = entry.next
    return True, f"{len(kept)} ops linearized in {steps} steps"


def check_register(history: History | Iterable[Op], steps_max: int = REGISTER_STEPS_MAX) -> Verdict:
    by_key: dict[Any, list[Op]] = defaultdict(list)
    ops = list(history)
    for op in ops:
        if op.f in ("read", "write", "cas"):
            by_key[op.args["key"]].append(op)
    v = Verdict("register", True)
    undecided = []
    for key, key_ops in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        if len(key_ops) > REGISTER_OPS_PER_KEY_MAX:
            undecided.append(key)
            continue
        ok, why = linearizable(key_ops, steps_max=steps_max)
        if ok is False:
            v.error(f"key {key!r}: {why}")
        elif ok is None:
            undecided.append(key)
    if undecided and v.valid:
        v.valid = None
    if undecided:
        v.errors.append(f"undecided keys (search bound reached): {undecided[:10]}")
    v.stats.update(keys=len(by_key), undecided_keys=len(undecided), ops=_count(ops))
    return v


# ---------------------------------------------------------------- set


def check_set(history: History | Iterable[Op]) -> Verdict:
    ops = list(history)
    v = Verdict("set", True)
    attempted: dict[Any, str] = {}
    for op in ops:
        if op.f == "add":
            prior = attempted.get(op.args)
            # an element is added by one op; if added twice, the better outcome counts
            if prior != OK:
                attempted[op.args] = op.status or UNKNOWN
    finals = [op for op in ops if op.f == "read" and op.status == OK]
    if not finals:
        v.valid = None
        v.errors.append("no final read succeeded: nothing was checked")
        v.stats.update(ops=_count(ops))
        return v
    final = finals[-1].result
    seen = Counter(final)
    lost = sorted((e for e, s in attempted.items() if s == OK and e not in seen), key=str)
    dup = sorted((e for e, n in seen.items() if n > 1), key=str)
    never = sorted((e for e in seen if e not in attempted), key=str)
    failed_present = sorted((e for e in seen if attempted.get(e) == FAIL), key=str)
    if lost:
        v.error(f"{len(lost)} acknowledged adds are missing from the final read: {lost[:10]}")
    if dup:
        v.error(f"{len(dup)} elements appear more than once: {dup[:10]}")
    if never:
        v.error(f"{len(never)} elements were never added: {never[:10]}")
    if failed_present:
        v.error(f"{len(failed_present)} adds that failed for certain are present: {failed_present[:10]}")
    unknown = [e for e, s in attempted.items() if s == UNKNOWN]
    v.stats.update(
        acknowledged=sum(1 for s in attempted.values() if s == OK), final=len(final), lost=len(lost),
        unknown_adds=len(unknown), unknown_present=sum(1 for e in unknown if e in seen), ops=_count(ops),
    )
    return v
