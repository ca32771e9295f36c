"""The clearing service: the day's batch of TA.md as steps in a flow table.

Steps, in order (each a set of idempotent units keyed (fund, T, run, step,
shard) in the flow table; ``*`` is "all funds")::

    INIT      T-1 closed; fund and settlement accounts exist; backup point BP0
              (every non-zero TA balance, each fund's issuance) stored
    IMPORT    one unit per input file (name@sha): read whole or reject with
              the reason; a re-sent identical file is a no-op; a re-used order
              key with other content rejects the file (ta.orders.take_new)
    VALIDATE  static checks of every order (counts per return code)
    ACCOUNTS  open accounts of the 01 files and online 001 orders; 02 rows
    DIVIDEND  per fund on its registration date, on the register at BP0
    MMF       per money-market fund: daily income carried into units
    ADJUST    share adjustments 144/145 of the day
    CONFIRM   orders by shard of holder hash, in parallel workers; per holder
              its orders in the fixed processing order; each order one
              linked chain with ids from its key
    CHECK     every check of TA.md; any failure blocks EXPORT and CLOSE
    EXPORT    02, 04, 05, 06, 07 per distributor, the index last
    CLOSE     the day is closed; 029 changes take effect for later days

Every booking step first stores its PLAN (the chains and rows it will book)
and only then books; a unit killed anywhere is run again: a stored plan is
re-booked (the ledger answers ``exists`` for what landed), an unfinished plan
is recomputed from balances nothing has touched yet. So a killed clearing
process, started again, ends with the same transfers and files.

Plans are kept per holder ("entries"). A holder's CONFIRM entry carries the
digest of its orders: when inputs change (a late file: secondary clearing, a
file or a holder rolled back) only holders whose digest changed move: their
booked chains are reversed (mirror transfers, never deletes) and re-planned
with the next ``attempt`` (new ids); everyone else books nothing.

Rollback to a backup point reverses every live entry of the steps after it
and starts the next ``run`` (its attempts are new ids); the step units up to
the backup point are carried into the new run. After a rollback to BP0 the
balances are compared with the BP0 snapshot and must be equal exactly.

KV layout (all under ``ta/``)::

    days/<T>                         day state (run, gen, shards, status)
    flow/<T>/<run>/<STEP>/<fund>/<shard>   flow table unit (status, attempts)
    in/<T>/file/<input>              imported file: sha, status, reason
    in/<T>/orders/<bucket>/<input>/  the new 03 records (chunks)
    in/<T>/digests/<input>/          order key -> record digest (chunks)
    in/<T>/accts/<input>/            the new 01 records (chunks)
    online/<T>/<dist>/<serial>       orders taken by the transaction service
    plan/<T>/<run>/<STEP>/<fund>/<shard>/   plan entries (chunks)
    hplan/<T>/<run>/<shard>/<holder> a holder's re-planned CONFIRM entry
    res/<T>/<run>/ACCOUNTS/          02 rows and holders opened (chunks)
    holders/<T>/                     holders opened on T (chunks)
    methods/<T>/                     dividend methods confirmed on T (chunks)
    bp/<T>/BP0/                      balances at BP0 (chunks)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ta import arith, confirm, orders
from ta import reference as refdata
from ta.codes import BusinessCode, DividendMethod, FileType, ReturnCode
from ta.errors import FileError, FileRejected
from ta.files import (
    FIELD_DICTIONARY,
    STANDARD_FIELDS,
    DataFile,
    IndexFile,
    parse_data_file_name,
    read_data_file,
    read_index_file,
    write_data_file,
    write_index_file,
)
from ta.ids import HolderKey, Leg, reversal_id, transfer_id
from ta.money import AMOUNT_MAX
from ta.postings import (
    AccountSpec,
    FundBook,
    Posting,
    PostingKind,
    TransferCode,
    reverse,
)
from ta.store import (
    OK,
    Store,
    book_chains,
    chunk_items,
    ensure_accounts,
    get_chunks,
    pack,
    put_chunks,
    transfer_result_name,
    unpack,
)

STEPS = ("INIT", "IMPORT", "VALIDATE", "ACCOUNTS", "DIVIDEND", "MMF", "ADJUST", "CONFIRM",
         "CHECK", "EXPORT", "CLOSE")  # fmt: skip
BOOKING_STEPS = ("DIVIDEND", "MMF", "ADJUST", "CONFIRM")
# Steps whose units depend on the day's inputs: run again when ``gen`` moves.
INPUT_STEPS = frozenset({"VALIDATE", "ACCOUNTS", "CONFIRM", "CHECK", "EXPORT", "CLOSE"})
BUCKETS = 256  # orders are stored by holder bucket; shard = bucket % shards
SHARDS_MAX = BUCKETS
ATTEMPTS_PER_RUN = 256  # attempt = run * 256 + re-plans of a holder in the run
ORDER_FIELDS = STANDARD_FIELDS[FileType.ORDER_APPLICATIONS]
ACCOUNT_FIELDS = STANDARD_FIELDS[FileType.ACCOUNT_APPLICATIONS]
CFM_FIELDS = STANDARD_FIELDS[FileType.ORDER_CONFIRMATIONS]
ONLINE = "online"
OUTGOING_TYPES = (FileType.ACCOUNT_CONFIRMATIONS, FileType.ORDER_CONFIRMATIONS,
                  FileType.SHARE_BALANCES, FileType.DIVIDENDS, FileType.FUND_STATUS)

Progress = Callable[[str, int, int], None]


class ClearingError(Exception):
    """The day cannot go on as asked; ``reason`` says why and what to do."""


class ChecksFailed(ClearingError):
    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        super().__init__(f"{len(failures)} checks failed: " + "; ".join(failures[:5]))


class Paused(ClearingError):
    pass


def _k(*parts: object) -> bytes:
    return "/".join(["ta", *map(str, parts)]).encode()


def _json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def holder_bucket(h: HolderKey) -> int:
    raw = f"{h.ta_account_id}\x00{h.distributor_code}\x00{h.transaction_account_id}".encode()
    return hashlib.blake2b(raw, digest_size=2).digest()[0]


def holder_text(h: HolderKey) -> str:
    return f"{h.ta_account_id}|{h.distributor_code}|{h.transaction_account_id}"


def holder_of(record) -> HolderKey:
    return HolderKey(str(record.get("TAAccountID", "")), str(record.get("DistributorCode", "")),
                     str(record.get("TransactionAccountID", "")))  # fmt: skip


def _days_between(earlier: str, later: str) -> int:
    a = datetime.date(int(earlier[:4]), int(earlier[4:6]), int(earlier[6:]))
    b = datetime.date(int(later[:4]), int(later[4:6]), int(later[6:]))
    return max(0, (b - a).days)


# ---------------------------------------------------------------- postings <-> plain data


def _p_out(p: Posting) -> list:
    return [p.id.to_bytes(16, "big"), int(p.leg), p.ledger, int(p.code),
            p.debit_account_id.to_bytes(16, "big"), p.credit_account_id.to_bytes(16, "big"),
            p.amount, p.kind.value, p.pending_id.to_bytes(16, "big")]  # fmt: skip


def _p_in(v: list) -> Posting:
    return Posting(id=int.from_bytes(v[0], "big"), leg=Leg(v[1]), ledger=v[2],
                   code=TransferCode(v[3]), debit_account_id=int.from_bytes(v[4], "big"),
                   credit_account_id=int.from_bytes(v[5], "big"), amount=v[6],
                   kind=PostingKind(v[7]), pending_id=int.from_bytes(v[8], "big"))  # fmt: skip


def _rec_out(record, fields) -> list:
    return [record.get(name, 0 if FIELD_DICTIONARY[name].kind == "N" else "") for name in fields]


def _rec_in(values: list, fields) -> dict:
    return dict(zip(fields, values))


def _empty_entry(holder: HolderKey | None, attempt: int, gen: int, digest: str = "") -> dict:
    return {"h": None if holder is None else [holder.ta_account_id, holder.distributor_code,
                                              holder.transaction_account_id],
            "digest": digest, "attempt": attempt, "gen": gen, "chains": [], "rows04": [],
            "rows06": [], "delta": {}, "methods": [], "chk": [], "residual": {},
            "keys": [], "resv": []}  # fmt: skip


def _entry_holder(entry: dict) -> HolderKey | None:
    return None if entry["h"] is None else HolderKey(*entry["h"])


def _add_delta(entry: dict, fund: str, kind: int, amount: int) -> None:
    # kinds: 0 purchased, 1 redeemed, 2 reinvested, 3 mmf, 4 adj_in, 5 adj_out
    delta = entry["delta"].setdefault(fund, [0, 0, 0, 0, 0, 0])
    delta[kind] += amount


@dataclass
class DayState:
    date: str
    run: int = 0
    gen: int = 0
    shards: int = 1
    status: str = "open"  # open | checked | exported | closed
    paused: bool = False
    version: int = 0

    def to_bytes(self) -> bytes:
        return _json({"run": self.run, "gen": self.gen, "shards": self.shards,
                      "status": self.status, "paused": self.paused})  # fmt: skip


# ---------------------------------------------------------------- the service


class Clearing:
    """The clearing of one TA's days over a ``Store``; see the module docstring."""

    def __init__(self, store: Store, *, workers: int = 4, progress: Progress | None = None,
                 crash_after: str | None = None) -> None:  # fmt: skip
        self.store = store
        self.workers = max(1, workers)
        self.progress = progress or (lambda step, done, total: None)
        # Tests: raise SystemExit after the named unit event ("STEP:planned" ...)
        self.crash_after = crash_after or os.environ.get("TA_CRASH_AFTER")
        self._terms_cache: dict = {}

    # ------------------------------------------------------------ day state

    def day(self, date: str) -> DayState | None:
        found = self.store.kv_get(_k("days", date))
        if found is None:
            return None
        v = json.loads(found[0])
        return DayState(date, v["run"], v["gen"], v["shards"], v["status"], v["paused"], found[1])

    def open_day(self, date: str, shards: int = 1) -> DayState:
        if not 1 <= shards <= SHARDS_MAX:
            raise ClearingError(f"shards must be 1..{SHARDS_MAX}, got {shards}")
        while True:
            state = self.day(date)
            if state is not None:
                return state
            ok, version = self.store.kv_cas(_k("days", date), 0, DayState(date, shards=shards).to_bytes())
            if ok:
                return DayState(date, shards=shards, version=version)

    def _update_day(self, date: str, change: Callable[[DayState], None]) -> DayState:
        while True:
            state = self.day(date)
            if state is None:
                raise ClearingError(f"day {date} is not open; import files or run `ta clear {date}`")
            change(state)
            ok, version = self.store.kv_cas(_k("days", date), state.version, state.to_bytes())
            if ok:
                state.version = version
                return state

    def days(self) -> list[str]:
        return sorted(key.decode().split("/")[2] for key, _, _ in self.store.kv_scan(b"ta/days/"))

    def pause(self, date: str, paused: bool = True) -> DayState:
        return self._update_day(date, lambda s: setattr(s, "paused", paused))

    def _bump_gen(self, date: str, reopen: bool = True) -> DayState:
        def change(s: DayState) -> None:
            s.gen += 1
            if reopen:
                s.status = "open"
        return self._update_day(date, change)

    # ------------------------------------------------------------ flow table

    def _flow_key(self, date: str, run: int | str, step: str, fund: str, shard: int | str) -> bytes:
        return _k("flow", date, run, step, fund, shard)

    def flow(self, date: str) -> list[dict]:
        out = []
        for key, value, _ in self.store.kv_scan(_k("flow", date) + b"/"):
            _, _, _, run, step, fund, shard = key.decode().split("/", 6)
            out.append({"run": run, "step": step, "fund": fund, "shard": shard, **json.loads(value)})
        return out

    def _unit_get(self, key: bytes) -> tuple[dict | None, int]:
        found = self.store.kv_get(key)
        return (None, 0) if found is None else (json.loads(found[0]), found[1])

    def _unit_set(self, key: bytes, record: dict, version: int) -> int:
        ok, new_version = self.store.kv_cas(key, version, _json(record))
        if not ok:
            raise ClearingError(f"flow unit {key.decode()} changed under us (another clearing process?)")
        return new_version

    def _crash_point(self, event: str) -> None:
        if self.crash_after and self.crash_after == event:
            os.kill(os.getpid(), signal.SIGKILL)  # a kill at a chosen point, for the crash tests

    def _run_unit(self, state: DayState, step: str, fund: str, shard: int | str,
                  work: Callable[[dict, Callable[[dict], None]], dict],
                  run: int | str | None = None) -> dict:  # fmt: skip
        """Run ``work`` for one unit unless it is done for the day's gen.
        ``work(record, save)`` returns the detail to record; ``save`` lets it
        record intermediate status (e.g. "planned")."""
        key = self._flow_key(state.date, state.run if run is None else run, step, fund, shard)
        record, version = self._unit_get(key)
        if record and record["status"] == "done" and (
                step not in INPUT_STEPS or record.get("gen") == state.gen):  # fmt: skip
            return record
        if self.day(state.date).paused:
            raise Paused(f"day {state.date} is paused; `ta resume {state.date}` to go on")
        record = dict(record or {}, attempts=(record or {}).get("attempts", 0) + 1)
        record.update(status=record.get("status") if record.get("status") == "planned" else "running",
                      gen=state.gen)  # fmt: skip
        record.setdefault("plan_run", state.run)
        version = self._unit_set(key, record, version)
        holder = {"version": version}

        def save(change: dict) -> None:
            record.update(change)
            holder["version"] = self._unit_set(key, record, holder["version"])
            self._crash_point(f"{step}:{record['status']}")

        try:
            detail = work(record, save)
        except Exception as e:
            record.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
            try:  # best effort: the store itself may be what failed
                self._unit_set(key, record, holder["version"])
            except Exception:
                pass
            raise
        record.update(status="done", detail=detail, booked_gen=state.gen)
        record.pop("error", None)
        self._unit_set(key, record, holder["version"])
        self._crash_point(f"{step}:done")
        return record

    # ------------------------------------------------------------ reference & registry

    def reference(self, date: str) -> refdata.Reference:
        return refdata.for_day(self.store, date)

    def registry(self, date: str, ref: refdata.Reference, before: bool = False) -> dict[HolderKey, tuple[str, str]]:
        """Holders known on ``date`` (``before``: opened before it) -> (opened, method)."""
        known = {h.key: (h.opened, h.method.value) for h in ref.holders}
        for key, value, _ in self.store.kv_scan(b"ta/holders/"):
            day = key.decode().split("/")[2]
            if day < date or (day == date and not before):
                for ta_account, dist, txn, opened, method in unpack(value):
                    known.setdefault(HolderKey(ta_account, dist, txn), (opened, method))
        return known

    def methods(self, date: str, ref: refdata.Reference, fund: str) -> dict[HolderKey, DividendMethod]:
        """Dividend methods in force at the start of ``date``."""
        out = {h: DividendMethod(m) for h, (_, m) in self.registry(date, ref, before=True).items()}
        for key, value, _ in self.store.kv_scan(b"ta/methods/"):
            if key.decode().split("/")[2] < date:
                for ta_account, dist, txn, f, method in unpack(value):
                    if f == fund:
                        out[HolderKey(ta_account, dist, txn)] = DividendMethod(method)
        return out

    def book(self, ta_code: str, fund: str) -> FundBook:
        return FundBook(ta_code, fund)

    def _terms(self, fund: refdata.FundRef, date: str):
        key = (id(fund), date)  # the value keeps ``fund`` alive, so its id stays its own
        if key not in self._terms_cache:
            self._terms_cache[key] = (fund, fund.terms(date))
        return self._terms_cache[key][1]

    def _all_accounts(self, date: str, ref: refdata.Reference) -> list[AccountSpec]:
        specs: list[AccountSpec] = []
        holders = sorted(self.registry(date, ref))
        for code in sorted(ref.funds):
            fb = self.book(ref.ta_code, code)
            specs += fb.fund_accounts()
            specs += [fb.holder(h) for h in holders]
        dists = sorted(set(ref.distributors) | {h.distributor_code for h in holders})
        specs += [self.book(ref.ta_code, "000000").settlement(d) for d in dists]
        return specs

    def balances(self, specs: Sequence[AccountSpec]) -> dict[int, tuple[int, int, int, int]]:
        """id -> (debits_pending, debits_posted, credits_pending, credits_posted) of those that exist."""
        found = self.store.lookup_accounts([s.id for s in specs])
        return {a.id: (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
                for a in found}  # fmt: skip

    # ------------------------------------------------------------ INIT

    def _init(self, state: DayState, ref: refdata.Reference) -> None:
        def work(record, save):
            earlier = [d for d in self.days() if d < state.date]
            if earlier:
                prev = self.day(earlier[-1])
                if prev.status != "closed":
                    raise ClearingError(f"day {prev.date} is not closed (status {prev.status}); "
                                        f"clear it first: `ta clear {prev.date}`")  # fmt: skip
            specs = self._all_accounts(state.date, ref)
            ensure_accounts(self.store, specs)
            balances = self.balances(specs)
            snapshot = [[i.to_bytes(16, "big"), *b] for i, b in sorted(balances.items()) if any(b)]
            put_chunks(self.store, _k("bp", state.date, "BP0") + b"/", snapshot)
            issuance = {}
            for code in sorted(ref.funds):
                b = balances.get(self.book(ref.ta_code, code).issuance.id, (0, 0, 0, 0))
                issuance[code] = b[1] - b[3]
            return {"bp": "BP0", "accounts": len(snapshot), "issuance": issuance}

        self._run_unit(state, "INIT", "*", 0, work, run="-")

    def bp0(self, date: str) -> tuple[dict[int, tuple], dict[str, int]]:
        rows = get_chunks(self.store, _k("bp", date, "BP0") + b"/")
        record, _ = self._unit_get(self._flow_key(date, "-", "INIT", "*", 0))
        issuance = (record or {}).get("detail", {}).get("issuance", {})
        return {int.from_bytes(r[0], "big"): tuple(r[1:]) for r in rows}, issuance

    # ------------------------------------------------------------ IMPORT

    def import_dir(self, date: str, directory: str | Path, ta_code: str | None = None,
                   shards: int = 1) -> list[dict]:  # fmt: skip
        """Import the distributors' index files for ``date`` found in ``directory``
        (01 before 03); returns one outcome per data file."""
        directory = Path(directory)
        ta_code = ta_code or self.reference(date).ta_code
        state = self.open_day(date, shards)
        outcomes: list[dict] = []
        for index_path in sorted(directory.glob(f"OFI_*_{ta_code}_{date}.TXT")):
            try:
                index = read_index_file(index_path.read_bytes(), index_path.name)
                names = sorted(index.file_names, key=lambda n: (parse_data_file_name(n).file_type.value, n))
                missing = [n for n in names if not (directory / n).exists()]
                if missing:
                    raise FileRejected(FileError.NAME_MISMATCH, f"index names missing files {missing}")
            except FileRejected as e:
                outcomes.append({"file": index_path.name, "status": "rejected", "code": e.code.value,
                                 "reason": e.reason, "line": e.line})  # fmt: skip
                continue
            for name in names:
                outcomes.append(self.import_file(state.date, name, (directory / name).read_bytes()))
        return outcomes

    def _known(self, date: str, prefix: str, exclude: str) -> dict[tuple[str, str], bytes]:
        known: dict[tuple[str, str], bytes] = {}
        for key, value, _ in self.store.kv_scan(_k("in", date, "file") + b"/"):
            info = json.loads(value)
            input_id = key.decode().split("/", 4)[4]
            if info["status"] != "imported" or input_id == exclude or info["kind"] != prefix:
                continue
            for dist, serial, digest in get_chunks(self.store, _k("in", date, "digests", input_id) + b"/"):
                known[(dist, serial)] = digest
        if prefix == "03":
            for _, value, _ in self.store.kv_scan(_k("online", date) + b"/"):
                o = unpack(value)
                if o["code"] != BusinessCode.ACCOUNT_OPENING.value:
                    known[(o["dist"], o["serial"])] = o["digest"]
        return known

    def import_file(self, date: str, name: str, data: bytes) -> dict:
        """One input file: imported, re-sent (no-op), or rejected whole with the reason."""
        state = self.day(date) or self.open_day(date)
        sha = hashlib.sha256(data).hexdigest()
        input_id = f"{name}@{sha[:16]}"
        file_key = _k("in", date, "file", input_id)
        found = self.store.kv_get(file_key)
        if found is not None:
            info = json.loads(found[0])
            if info["status"] == "withdrawn":
                info["status"] = "imported"
                self.store.kv_put(file_key, _json(info))
                self._bump_gen(date)
                return {"file": name, "input": input_id, "status": "reactivated"}
            return {"file": name, "input": input_id, "status": "resent" if info["status"] == "imported"
                    else info["status"], **{k: info.get(k) for k in ("code", "reason", "line")}}  # fmt: skip

        def work(record, save):
            try:
                df = read_data_file(data, name)
                if df.date != date:
                    raise FileRejected(FileError.NAME_MISMATCH, f"file is for {df.date}, not {date}")
                if df.file_type not in (FileType.ACCOUNT_APPLICATIONS, FileType.ORDER_APPLICATIONS):
                    raise FileRejected(FileError.BAD_HEADER, f"type {df.file_type.value} is not an input")
                kind = df.file_type.value
                intake = orders.take_new(df, self._known(date, kind, input_id))
            except FileRejected as e:
                info = {"status": "rejected", "kind": "", "code": e.code.value, "reason": e.reason,
                        "line": e.line, "sha256": sha}  # fmt: skip
                self.store.kv_put(file_key, _json(info))
                return info
            # The input id carries the content's digest: its keys are fresh, or hold this same content.
            digests = [[d, s, g] for (d, s), g in sorted(intake.digests.items())]
            pairs = chunk_items(_k("in", date, "digests", input_id) + b"/", digests)
            if kind == "03":
                buckets: dict[int, list] = {}
                for r in intake.new:
                    r = dict(r, DistributorCode=r.get("DistributorCode") or df.creator)
                    buckets.setdefault(holder_bucket(holder_of(r)), []).append(_rec_out(r, ORDER_FIELDS))
                for b, rows in sorted(buckets.items()):
                    pairs += chunk_items(_k("in", date, "orders", f"{b:03d}", input_id) + b"/", rows)
            else:
                rows = [_rec_out(dict(r, DistributorCode=r.get("DistributorCode") or df.creator),
                                 ACCOUNT_FIELDS) for r in intake.new]  # fmt: skip
                pairs += chunk_items(_k("in", date, "accts", input_id) + b"/", rows)
            self.store.kv_put_many(pairs)
            info = {"status": "imported", "kind": kind, "sha256": sha, "new": len(intake.new),
                    "resent": len(intake.resent), "creator": df.creator}  # fmt: skip
            if intake.new:
                self._bump_gen(date)
            self.store.kv_put(file_key, _json(info))
            return info

        record = self._run_unit(state, "IMPORT", "*", input_id, work, run="-")
        detail = record["detail"]
        status = detail["status"]
        if status == "imported" and not detail.get("new"):
            status = "resent"
        return {"file": name, "input": input_id, "status": status,
                **{k: detail.get(k) for k in ("code", "reason", "line", "new", "resent")}}  # fmt: skip

    def inputs(self, date: str) -> dict[str, dict]:
        return {key.decode().split("/", 4)[4]: json.loads(value)
                for key, value, _ in self.store.kv_scan(_k("in", date, "file") + b"/")}  # fmt: skip

    def _orders(self, date: str, buckets: Iterable[int]) -> list[dict]:
        """The day's active orders (files imported, online not cancelled) in ``buckets``."""
        active = {i for i, info in self.inputs(date).items() if info["status"] == "imported"}
        wanted = set(buckets)
        out: list[dict] = []
        for b in sorted(wanted):
            prefix = _k("in", date, "orders", f"{b:03d}") + b"/"
            for key, value, _ in self.store.kv_scan(prefix):
                input_id = key[len(prefix):].decode().rsplit("/", 1)[0]
                if input_id in active:
                    out += [dict(_rec_in(v, ORDER_FIELDS), _input=input_id) for v in unpack(value)]
        for _, value, _ in self.store.kv_scan(_k("online", date) + b"/"):
            o = unpack(value)
            if o["code"] == BusinessCode.ACCOUNT_OPENING.value or o["status"] != "accepted":
                continue
            record = _rec_in(o["record"], ORDER_FIELDS)
            if holder_bucket(holder_of(record)) in wanted:
                out.append(dict(record, _input=ONLINE, _resv=o.get("reservation_id", b"")))
        return out

    # ------------------------------------------------------------ VALIDATE

    def _validate(self, state: DayState, ref: refdata.Reference) -> None:
        def work(record, save):
            known = self.registry(state.date, ref)
            counts: dict[str, int] = {}
            for r in self._orders(state.date, range(BUCKETS)):
                terms = ref.funds[r["FundCode"]].terms(state.date) if r["FundCode"] in ref.funds else None
                rc = orders.validate_order(r, state.date, terms, holder_of(r) in known, AMOUNT_MAX)
                counts[rc.code] = counts.get(rc.code, 0) + 1
            return {"orders": sum(counts.values()), "return_codes": dict(sorted(counts.items()))}

        self._run_unit(state, "VALIDATE", "*", 0, work)

    # ------------------------------------------------------------ ACCOUNTS

    def _accounts(self, state: DayState, ref: refdata.Reference) -> None:
        def work(record, save):
            date = state.date
            known = set(self.registry(date, ref, before=True))
            active = [i for i, info in sorted(self.inputs(date).items())
                      if info["status"] == "imported" and info["kind"] == "01"]  # fmt: skip
            apps = []
            for input_id in active:
                apps += [_rec_in(v, ACCOUNT_FIELDS) for v in get_chunks(self.store, _k("in", date, "accts", input_id) + b"/")]
            for _, value, _ in self.store.kv_scan(_k("online", date) + b"/"):
                o = unpack(value)
                if o["code"] == BusinessCode.ACCOUNT_OPENING.value and o["status"] == "accepted":
                    apps.append(_rec_in(o["record"], ACCOUNT_FIELDS))
            apps.sort(key=lambda r: (r["TransactionDate"], r["TransactionTime"], r["AppSheetSerialNo"], r["DistributorCode"]))
            rows, opened = [], []
            for app in apps:
                dist = app["DistributorCode"]
                ta_account = app["TAAccountID"] or _new_ta_account(ref.ta_code, dist, app["AppSheetSerialNo"])
                h = HolderKey(ta_account, dist, app["TransactionAccountID"])
                if app["BusinessCode"] != BusinessCode.ACCOUNT_OPENING.value:
                    rc = ReturnCode.BUSINESS_CODE_INVALID
                elif dist not in ref.distributors:
                    rc = ReturnCode.DISTRIBUTOR_UNKNOWN
                elif not app["InvestorName"] or not app["CertificateNo"]:
                    rc = ReturnCode.INVESTOR_INFO_INVALID
                elif h in known:
                    rc = ReturnCode.ACCOUNT_EXISTS
                else:
                    rc = ReturnCode.SUCCESS
                    known.add(h)
                    opened.append([h.ta_account_id, h.distributor_code, h.transaction_account_id, date, "0"])
                row = confirm.account_confirmation(app, rc, ta_code=ref.ta_code, cfm_date=date,
                                                   distributor_code=dist, ta_account_id=ta_account)  # fmt: skip
                rows.append(row)
            specs = []
            for ta_account, dist, txn, _, _ in opened:
                h = HolderKey(ta_account, dist, txn)
                specs += [self.book(ref.ta_code, code).holder(h) for code in sorted(ref.funds)]
                specs.append(self.book(ref.ta_code, "000000").settlement(dist))
            ensure_accounts(self.store, specs)
            put_chunks(self.store, _k("holders", date) + b"/", opened)
            put_chunks(self.store, _k("res", date, record["plan_run"], "ACCOUNTS") + b"/",
                       [_rec_out(r, STANDARD_FIELDS[FileType.ACCOUNT_CONFIRMATIONS]) for r in rows])
            return {"applications": len(apps), "opened": len(opened)}

        self._run_unit(state, "ACCOUNTS", "*", 0, work)

    # ------------------------------------------------------------ plans

    def _plan_prefix(self, date: str, run: int, step: str, fund: str, shard: int | str) -> bytes:
        return _k("plan", date, run, step, fund, shard) + b"/"

    def _booked(self, chains: list[list]) -> list[bool]:
        firsts = [int.from_bytes(c[0][0], "big") for c in chains if c]
        found = {t.id for t in self.store.lookup_transfers(firsts)}
        return [bool(c) and int.from_bytes(c[0][0], "big") in found for c in chains]

    def _book_entries(self, entries: list[dict], what: str) -> int:
        chains = [[_p_in(p) for p in chain] for e in entries for chain in e["chains"]]
        half = len(chains) // 2
        codes = book_chains(self.store, chains[:half])
        self._crash_point(f"{what.split()[0]}:half-booked")
        codes += book_chains(self.store, chains[half:])
        bad = [(c, code) for c, code in zip(chains, codes) if code != OK]
        if bad:
            chain, code = bad[0]
            raise ClearingError(f"{what}: the ledger refused {len(bad)} chains, first "
                                f"{chain[0].id:032x}: {transfer_result_name(code)}")  # fmt: skip
        return len(chains)

    def _reverse_entry(self, date: str, entry: dict) -> None:
        """Book the mirror of every booked chain of ``entry`` (never deletes).
        A reservation taken before the batch (online redemption) that the
        entry posted or voided is taken again, so the holder is exactly as
        before the entry."""
        chains = entry["chains"]
        booked = self._booked(chains)
        undo: list[Posting] = []
        for chain, was_booked in zip(reversed(chains), reversed(booked)):
            if not was_booked:
                continue
            postings = [_p_in(p) for p in chain]
            inner = {p.id for p in postings if p.kind is PostingKind.PENDING}
            for p in reversed(postings):
                if p.kind is PostingKind.PENDING:
                    continue  # posted within the chain: its post is mirrored
                if p.kind in (PostingKind.POST_PENDING, PostingKind.VOID_PENDING) and p.pending_id not in inner:
                    if p.kind is PostingKind.POST_PENDING:
                        undo.append(reverse(p))
                    again = Posting(id=reversal_id(p.id, 1), leg=Leg.RESERVE, ledger=p.ledger,
                                    code=p.code, debit_account_id=p.debit_account_id,
                                    credit_account_id=p.credit_account_id, amount=p.amount,
                                    kind=PostingKind.PENDING)  # fmt: skip
                    undo.append(again)
                    for dist, serial, resv in entry["resv"]:
                        if int.from_bytes(resv, "big") == p.pending_id:
                            self._set_reservation(date, dist, serial, again.id)
                    continue
                undo.append(reverse(p))
        if undo:
            code = book_chains(self.store, [tuple(undo)])[0]
            if code != OK:
                raise ClearingError(f"reversal of {entry['h']} refused: {transfer_result_name(code)}")

    def _set_reservation(self, date: str, dist: str, serial: str, reservation_id: int) -> None:
        key = _k("online", date, dist, serial)
        found = self.store.kv_get(key)
        if found is not None:
            o = unpack(found[0])
            o["reservation_id"] = reservation_id.to_bytes(16, "big")
            self.store.kv_put(key, pack(o))

    def _simple_booking_unit(self, state: DayState, step: str, fund: str,
                             plan: Callable[[], list[dict]]) -> None:  # fmt: skip
        """A booking unit whose plan does not depend on the day's orders."""
        def work(record, save):
            prefix = self._plan_prefix(state.date, record["plan_run"], step, fund, 0)
            if record.get("planned"):  # a stored plan is booked again, never recomputed
                entries = get_chunks(self.store, prefix)
            else:
                entries = plan()
                put_chunks(self.store, prefix, entries)
                save({"status": "planned", "planned": True, "entries": len(entries)})
            chains = self._book_entries(entries, f"{step} {fund}")
            return {"entries": len(entries), "chains": chains}

        self._run_unit(state, step, fund, 0, work)

    # ------------------------------------------------------------ DIVIDEND / MMF / ADJUST

    def _register(self, ta_code: str, fund: str, holders: Iterable[HolderKey]) -> dict[HolderKey, int]:
        """Posted shares (pending reservations still count) of each holder with an account."""
        fb = self.book(ta_code, fund)
        holders = sorted(holders)
        specs = [fb.holder(h) for h in holders]
        balances = self.balances(specs)
        return {h: balances[s.id][3] - balances[s.id][1] for h, s in zip(holders, specs) if s.id in balances}

    def _dividends(self, state: DayState, ref: refdata.Reference) -> None:
        for d in ref.dividends:
            if d.registration_date != state.date or d.fund not in ref.funds:
                continue
            fund = ref.funds[d.fund]

            def plan(d=d, fund=fund):
                ex_nav = fund.navs.get(d.xr_date)
                if ex_nav is None:
                    raise ClearingError(f"dividend of {d.fund}: no NAV on the ex-date {d.xr_date}; load it")
                attempt = state.run * ATTEMPTS_PER_RUN
                register = self._register(ref.ta_code, d.fund, self.registry(state.date, ref, before=True))
                methods = self.methods(state.date, ref, d.fund)
                entitled = {h: (s, methods.get(h, DividendMethod.REINVEST)) for h, s in register.items() if s > 0}
                dist = arith.dividend_distribution(entitled, d.per_unit, ex_nav, fund.rounding)
                fb = self.book(ref.ta_code, d.fund)
                terms = fund.terms(state.date) or fund.terms(d.xr_date)
                entries = []
                for h, result in dist.per_holder.items():
                    e = _empty_entry(h, attempt, state.gen)
                    chain = fb.dividend(h, state.date, result, attempt)
                    e["chains"] = [[_p_out(p) for p in chain]] if chain else []
                    row = confirm.dividend_row(terms, h, result, ta_code=ref.ta_code, cfm_date=state.date,
                                               registration_date=d.registration_date, xr_date=d.xr_date,
                                               per_unit_dividend=d.per_unit, ex_nav=ex_nav)  # fmt: skip
                    e["rows06"] = [_rec_out(row, STANDARD_FIELDS[FileType.DIVIDENDS])]
                    _add_delta(e, d.fund, 2, result.reinvested_shares)
                    entries.append(e)
                e = _empty_entry(None, attempt, state.gen)
                chain = fb.dividend_residual(state.date, dist.residual, attempt)
                e["chains"] = [[_p_out(p) for p in chain]] if chain else []
                e["residual"] = {d.fund: dist.residual}
                entries.append(e)
                return entries

            self._simple_booking_unit(state, "DIVIDEND", d.fund, plan)

    def _mmf(self, state: DayState, ref: refdata.Reference) -> None:
        for code, fund in sorted(ref.funds.items()):
            income = fund.income_per_10k.get(state.date)
            if not fund.mmf or income is None:
                continue

            def plan(code=code, income=income):
                attempt = state.run * ATTEMPTS_PER_RUN
                register = self._register(ref.ta_code, code, self.registry(state.date, ref, before=True))
                result = arith.mmf_income({h: s for h, s in register.items() if s > 0}, income)
                fb = self.book(ref.ta_code, code)
                entries = []
                for h, amount in result.per_holder.items():
                    e = _empty_entry(h, attempt, state.gen)
                    chain = fb.mmf_income(h, state.date, amount, attempt)
                    e["chains"] = [[_p_out(p) for p in chain]] if chain else []
                    _add_delta(e, code, 3, amount)
                    entries.append(e)
                e = _empty_entry(None, attempt, state.gen)
                chain = fb.mmf_residual(state.date, result.residual, attempt)
                e["chains"] = [[_p_out(p) for p in chain]] if chain else []
                e["residual"] = {code: result.residual}
                entries.append(e)
                return entries

            self._simple_booking_unit(state, "MMF", code, plan)

    def _adjust(self, state: DayState, ref: refdata.Reference) -> None:
        if not ref.adjustments:
            return

        def plan():
            attempt = state.run * ATTEMPTS_PER_RUN
            known = self.registry(state.date, ref)
            entries = []
            held: dict[tuple[str, HolderKey], int] = {}
            by_fund: dict[str, set[HolderKey]] = {}
            for a in ref.adjustments:
                if a.fund in ref.funds and a.holder in known:
                    by_fund.setdefault(a.fund, set()).add(a.holder)
            for code, holders in sorted(by_fund.items()):
                ensure_accounts(self.store, [self.book(ref.ta_code, code).holder(h) for h in sorted(holders)])
                register = self._register(ref.ta_code, code, holders)
                for h in holders:
                    held[(code, h)] = register.get(h, 0)
            for a in ref.adjustments:
                e = _empty_entry(a.holder, attempt, state.gen)
                code = "144" if a.increase else "145"
                order = {"AppSheetSerialNo": a.id, "TransactionDate": state.date, "TransactionTime": "000000",
                         "FundCode": a.fund, "ShareClass": "A", "BusinessCode": code,
                         "DistributorCode": a.holder.distributor_code,
                         "TransactionAccountID": a.holder.transaction_account_id,
                         "TAAccountID": a.holder.ta_account_id, "ApplicationVol": a.shares}  # fmt: skip
                rc = ReturnCode.SUCCESS
                if a.fund not in ref.funds:
                    rc = ReturnCode.FUND_UNKNOWN
                elif a.holder not in known:
                    rc = ReturnCode.ACCOUNT_UNKNOWN
                elif not a.increase and a.shares > held[(a.fund, a.holder)]:
                    rc = ReturnCode.INSUFFICIENT_SHARES
                if rc.ok:
                    fb = self.book(ref.ta_code, a.fund)
                    chain = fb.adjustment(a.holder, state.date, a.shares, a.increase, attempt)
                    e["chains"] = [[_p_out(p) for p in chain]]
                    held[(a.fund, a.holder)] += a.shares if a.increase else -a.shares
                    _add_delta(e, a.fund, 4 if a.increase else 5, a.shares)
                    terms = ref.funds[a.fund].terms(state.date)
                    nav = terms.nav if terms else 0
                    row = confirm.order_confirmation(order, ta_code=ref.ta_code, cfm_date=state.date,
                                                     distributor_code=a.holder.distributor_code,
                                                     return_code=rc, confirmed_vol=a.shares, nav=nav)  # fmt: skip
                else:
                    row = confirm.failure_confirmation(order, rc, ta_code=ref.ta_code, cfm_date=state.date,
                                                       distributor_code=a.holder.distributor_code)  # fmt: skip
                e["rows04"] = [[[state.date, "000000", a.id, a.holder.distributor_code],
                                _rec_out(row, CFM_FIELDS)]]  # fmt: skip
                entries.append(e)
            return entries

        self._simple_booking_unit(state, "ADJUST", "*", plan)

    # ------------------------------------------------------------ CONFIRM

    def _plan_holder(self, date: str, ref: refdata.Reference, h: HolderKey, records: list[dict],
                     digest: str, attempt: int, gen: int, opened: str | None,
                     available: dict[str, int]) -> dict:  # fmt: skip
        """One holder's orders of the day, in processing order: rows and chains."""
        e = _empty_entry(h, attempt, gen, digest)
        for r in orders.processing_order(records):
            fund_code = r["FundCode"]
            fund = ref.funds.get(fund_code)
            terms = self._terms(fund, date) if fund else None
            dist, serial = r["DistributorCode"], r["AppSheetSerialNo"]
            e["keys"].append([dist, serial, r["_input"]])
            online_resv = int.from_bytes(r.get("_resv") or b"", "big")
            code = r["BusinessCode"]
            avail = available.get(fund_code, 0)
            if online_resv and code == BusinessCode.REDEMPTION.value:
                avail += r["ApplicationVol"]  # its own reservation
            if fund is not None and terms is None:
                rc = ReturnCode.NAV_MISSING if opened is not None else ReturnCode.ACCOUNT_UNKNOWN
            else:
                rc = orders.validate_order(r, date, terms, opened is not None, avail)
            kw = dict(ta_code=ref.ta_code, cfm_date=date, distributor_code=dist)
            chain: tuple = ()
            fb = self.book(ref.ta_code, fund_code) if fund else None
            if not rc.ok:
                row = confirm.failure_confirmation(r, rc, **kw)
                if online_resv and code == BusinessCode.REDEMPTION.value:
                    chain = (self._online_resolve(fb or self.book(ref.ta_code, fund_code), h, r,
                                                  online_resv, attempt, void=True),)  # fmt: skip
            elif code in (BusinessCode.PURCHASE.value, BusinessCode.SUBSCRIPTION.value):
                bcode = BusinessCode(code)
                nav = terms.nav if bcode is BusinessCode.PURCHASE else arith.PAR_NAV
                p = arith.purchase(r["ApplicationAmount"], terms.purchase_fee_rate,
                                   orders.fee_discount(r), nav, terms.rounding)  # fmt: skip
                chain = fb.purchase(h, serial, p, bcode, attempt)
                row = confirm.purchase_confirmation(r, p, **kw)
                available[fund_code] = available.get(fund_code, 0) + p.shares
                _add_delta(e, fund_code, 0, p.shares)
                e["chk"].append(["P", p.amount, p.fee, p.net])
            elif code == BusinessCode.REDEMPTION.value:
                held = _days_between(opened, date) if opened else 0
                red = arith.redemption(r["ApplicationVol"], terms.nav, terms.redemption_fee_rate(held),
                                       terms.fund_fee_share(held), terms.rounding)  # fmt: skip
                if online_resv:
                    post = self._online_resolve(fb, h, r, online_resv, attempt, void=False)
                    cash = fb.redemption_confirm(h, serial, red, attempt)[1:]
                    chain = (post,) + cash
                else:
                    chain = fb.redemption_reserve(h, serial, red.shares, attempt) + \
                        fb.redemption_confirm(h, serial, red, attempt)
                row = confirm.redemption_confirmation(r, red, **kw)
                available[fund_code] = avail - red.shares
                _add_delta(e, fund_code, 1, red.shares)
                e["chk"].append(["R", red.gross, red.fee, red.paid])
            else:
                row = confirm.dividend_method_confirmation(r, **kw)
                e["methods"].append([fund_code, r["DefDividendMethod"]])
            if online_resv:
                e["resv"].append([dist, serial, online_resv.to_bytes(16, "big")])
            if chain:
                e["chains"].append([_p_out(p) for p in chain])
            e["rows04"].append([[r["TransactionDate"], r["TransactionTime"], serial, dist],
                                _rec_out(row, CFM_FIELDS)])  # fmt: skip
        return e

    def _online_resolve(self, fb: FundBook, h: HolderKey, r: dict, resv: int, attempt: int,
                        void: bool) -> Posting:  # fmt: skip
        holder, issuance = fb.holder(h), fb.issuance
        leg = Leg.RESERVE_VOID if void else Leg.RESERVE_POST
        return Posting(id=transfer_id(fb.ta_code, h.distributor_code, r["AppSheetSerialNo"], leg, attempt),
                       leg=leg, ledger=holder.ledger, code=TransferCode.REDEMPTION,
                       debit_account_id=holder.id, credit_account_id=issuance.id,
                       amount=r["ApplicationVol"],
                       kind=PostingKind.VOID_PENDING if void else PostingKind.POST_PENDING,
                       pending_id=resv)  # fmt: skip

    def _available(self, ref: refdata.Reference, holders: list[HolderKey], funds: set[str]) -> dict[HolderKey, dict[str, int]]:
        """Shares each holder can redeem now: posted minus reserved."""
        out: dict[HolderKey, dict[str, int]] = {h: {} for h in holders}
        for code in sorted(funds):
            if code not in ref.funds:
                continue
            fb = self.book(ref.ta_code, code)
            specs = [fb.holder(h) for h in holders]
            balances = self.balances(specs)
            for h, s in zip(holders, specs):
                b = balances.get(s.id)
                if b:
                    out[h][code] = b[3] - b[1] - b[0]
        return out

    @staticmethod
    def _digest(records: list[dict]) -> str:
        parts = sorted(f"{r['DistributorCode']}|{r['AppSheetSerialNo']}|{r['_input'] if r['_input'] == ONLINE else ''}|"
                       + hashlib.blake2b(repr(sorted((k, v) for k, v in r.items() if not k.startswith('_'))).encode(),
                                         digest_size=16).hexdigest() for r in records)  # fmt: skip
        return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()

    def _confirm_shard(self, state: DayState, ref: refdata.Reference, shard: int) -> None:
        date, run = state.date, state.run

        def work(record, save):
            buckets = [b for b in range(BUCKETS) if b % state.shards == shard]
            by_holder: dict[HolderKey, list[dict]] = {}
            for r in self._orders(date, buckets):
                by_holder.setdefault(holder_of(r), []).append(r)
            registry = self.registry(date, ref)
            prefix = self._plan_prefix(date, record["plan_run"], "CONFIRM", "*", shard)
            over_prefix = _k("hplan", date, record["plan_run"], f"{shard:03d}") + b"/"

            def digest_of(h: HolderKey) -> str:
                # What a holder's plan depends on besides balances: its orders
                # and whether (since when) its account is open.
                opened = registry.get(h, ("-",))[0]
                return self._digest(by_holder.get(h, [])) + "/" + opened

            def plan(holders: list[HolderKey], attempts: dict[HolderKey, int]) -> list[dict]:
                funds = {r["FundCode"] for h in holders for r in by_holder.get(h, [])}
                available = self._available(ref, holders, funds)
                out = []
                for i, h in enumerate(holders):
                    records = by_holder.get(h, [])
                    opened = registry.get(h, (None,))[0]
                    out.append(self._plan_holder(date, ref, h, records, digest_of(h),
                                                 attempts.get(h, run * ATTEMPTS_PER_RUN), state.gen,
                                                 opened, available[h]))  # fmt: skip
                    if i % 1000 == 0:
                        self.progress(f"CONFIRM {shard}", i, len(holders))
                return out

            if record.get("status") != "planned" and not record.get("base_done"):
                # First run of this unit in this run: plan every holder, then book.
                holders = sorted(by_holder)
                entries = plan(holders, {})
                put_chunks(self.store, prefix, entries)
                save({"status": "planned", "base_done": True, "entries": len(entries)})
                booked = self._book_entries(entries, f"CONFIRM shard {shard}")
                return {"holders": len(entries), "chains": booked, "replanned": 0}
            # A plan exists: re-book what this gen planned, re-plan holders whose orders changed.
            base = {HolderKey(*e["h"]): e for e in get_chunks(self.store, prefix)}
            overrides = {HolderKey(*e["h"]): e for e in
                         (unpack(v) for _, v, _ in self.store.kv_scan(over_prefix))}  # fmt: skip
            live = {**base, **overrides}
            changed = [h for h in sorted(set(live) | set(by_holder))
                       if live.get(h, {}).get("digest") != digest_of(h)]
            for h in changed:
                if h in live:
                    self._reverse_entry(date, live[h])
            attempts = {h: (live[h]["attempt"] + 1 if h in live else run * ATTEMPTS_PER_RUN) for h in changed}
            fresh = plan(changed, attempts)
            for e in fresh:
                self.store.kv_put(over_prefix + holder_text(HolderKey(*e["h"])).encode(), pack(e))
            booked_gen = record.get("booked_gen", -1)
            todo = [e for h, e in sorted({**live, **{HolderKey(*e["h"]): e for e in fresh}}.items())
                    if e["gen"] > booked_gen]  # fmt: skip
            booked = self._book_entries(todo, f"CONFIRM shard {shard}")
            return {"holders": len(live), "chains": booked, "replanned": len(changed)}

        self._run_unit(state, "CONFIRM", "*", shard, work)

    def live_entries(self, date: str, step: str) -> list[dict]:
        """The entries in force of a booking step (all its units, overrides applied)."""
        state = self.day(date)
        entries: list[dict] = []
        for unit in self.flow(date):
            if unit["step"] != step or unit["run"] != str(state.run) or unit["status"] not in ("done", "planned"):
                continue
            shard = unit["shard"]
            base = get_chunks(self.store, self._plan_prefix(date, unit["plan_run"], step, unit["fund"], shard))
            if step == "CONFIRM":
                over_prefix = _k("hplan", date, unit["plan_run"], f"{int(shard):03d}") + b"/"
                overrides = {tuple(e["h"]): e for e in (unpack(v) for _, v, _ in self.store.kv_scan(over_prefix))}
                merged = {tuple(e["h"]): e for e in base}
                merged.update(overrides)
                base = [merged[k] for k in sorted(merged)]
            entries += base
        return entries

    # ------------------------------------------------------------ CHECK / EXPORT

    def outgoing(self, date: str) -> tuple[dict[str, dict[FileType, list[dict]]], dict]:
        """The rows of every outgoing file per distributor, and the numbers the checks need."""
        state = self.day(date)
        ref = self.reference(date)
        rows: dict[str, dict[FileType, list]] = {}

        def add(dist: str, t: FileType, row: dict, sort_key) -> None:
            rows.setdefault(dist, {t: [] for t in OUTGOING_TYPES})[t].append((sort_key, row))

        for dist in ref.distributors:
            rows.setdefault(dist, {t: [] for t in OUTGOING_TYPES})
        f02 = STANDARD_FIELDS[FileType.ACCOUNT_CONFIRMATIONS]
        accounts_unit, _ = self._unit_get(self._flow_key(date, state.run, "ACCOUNTS", "*", 0))
        if accounts_unit:
            for v in get_chunks(self.store, _k("res", date, accounts_unit["plan_run"], "ACCOUNTS") + b"/"):
                r = _rec_in(v, f02)
                add(r["DistributorCode"], FileType.ACCOUNT_CONFIRMATIONS, r, (r["AppSheetSerialNo"],))
        numbers = {"delta": {}, "residual": {}, "chk": [], "keys": [], "rows04": 0}
        for step in BOOKING_STEPS:
            for e in self.live_entries(date, step):
                for key, values in e["rows04"]:
                    r = _rec_in(values, CFM_FIELDS)
                    add(r["DistributorCode"], FileType.ORDER_CONFIRMATIONS, r, tuple(key))
                    if step == "CONFIRM":
                        numbers["rows04"] += 1
                for values in e["rows06"]:
                    r = _rec_in(values, STANDARD_FIELDS[FileType.DIVIDENDS])
                    add(r["DistributorCode"], FileType.DIVIDENDS, r,
                        (r["FundCode"], r["TAAccountID"], r["DistributorCode"], r["TransactionAccountID"]))  # fmt: skip
                for fund, d in e["delta"].items():
                    total = numbers["delta"].setdefault(fund, [0] * 6)
                    for i, v in enumerate(d):
                        total[i] += v
                for fund, v in e["residual"].items():
                    numbers["residual"][fund] = numbers["residual"].get(fund, 0) + v
                numbers["chk"] += e["chk"]
                if step == "CONFIRM":
                    numbers["keys"] += [tuple(k) for k in e["keys"]]
        holders = sorted(self.registry(date, ref))
        numbers["holders"] = {}
        numbers["issuance"] = {}
        fund_rows: list = []
        for code in sorted(ref.funds):
            fund = ref.funds[code]
            terms = fund.terms(date)
            fb = self.book(ref.ta_code, code)
            specs = [fb.holder(h) for h in holders]
            balances = self.balances(specs + [fb.issuance])
            held = 0
            for h, s in zip(holders, specs):
                b = balances.get(s.id)
                if b is None:
                    continue
                available = b[3] - b[1] - b[0]
                held += b[3] - b[1]
                if terms is not None:
                    add(h.distributor_code, FileType.SHARE_BALANCES,
                        confirm.balance_row(terms, h, cfm_date=date, available=available, frozen=b[0]),
                        (code, h.ta_account_id, h.distributor_code, h.transaction_account_id))  # fmt: skip
            iss = balances.get(fb.issuance.id, (0, 0, 0, 0))
            numbers["holders"][code] = held
            numbers["issuance"][code] = iss[1] - iss[3]
            if terms is not None:
                income = fund.income_per_10k.get(date, 0) if fund.mmf else 0
                row = confirm.fund_status_row(terms, cfm_date=date, total_fund_vol=iss[1] - iss[3],
                                              fund_income=income)  # fmt: skip
                fund_rows.append((code, row))
        for d in rows:
            for code, row in fund_rows:
                add(d, FileType.FUND_STATUS, row, (code,))
        out = {d: {t: [r for _, r in sorted(v, key=lambda kr: kr[0])] for t, v in per.items()}
               for d, per in rows.items()}  # fmt: skip
        return out, numbers

    def checks(self, date: str) -> tuple[list[str], dict]:
        """TA.md's checks 1-5 on the day as it stands: a list of failures (empty: proven)."""
        ref = self.reference(date)
        files, numbers = self.outgoing(date)
        failures: list[str] = []
        bp_balances, bp_issuance = self.bp0(date)
        for code in sorted(ref.funds):
            total05 = sum(r["AvailableVol"] + r["TotalFrozenVol"] for per in files.values()
                          for r in per.get(FileType.SHARE_BALANCES, []) if r["FundCode"] == code)  # fmt: skip
            rows07 = {r["TotalFundVol"] for per in files.values()
                      for r in per.get(FileType.FUND_STATUS, []) if r["FundCode"] == code}  # fmt: skip
            issued = numbers["issuance"][code]
            if numbers["holders"][code] != issued:
                failures.append(f"1: fund {code} holders hold {numbers['holders'][code]} but issuance is {issued}")
            if rows07 and rows07 != {issued}:
                failures.append(f"1: fund {code} 07 TotalFundVol {sorted(rows07)} != issuance {issued}")
            if ref.funds[code].terms(date) is not None and total05 != issued:
                failures.append(f"1: fund {code} sum of 05 balances {total05} != issuance {issued}")
            d = numbers["delta"].get(code, [0] * 6)
            moved = d[0] + d[2] + d[3] + d[4] - d[5] - d[1]
            opening = bp_issuance.get(code, 0)
            if issued - opening != moved:
                failures.append(f"2: fund {code} close - open = {issued - opening} but confirmations move {moved}")
            fb = self.book(ref.ta_code, code)
            res = self.balances([fb.residual]).get(fb.residual.id, (0, 0, 0, 0))
            res_bp = bp_balances.get(fb.residual.id, (0, 0, 0, 0))
            residual_delta = (res[3] - res[1]) - (res_bp[3] - res_bp[1])
            if residual_delta != numbers["residual"].get(code, 0):
                failures.append(f"4: fund {code} residual account moved {residual_delta}, "
                                f"residuals sum to {numbers['residual'].get(code, 0)}")  # fmt: skip
        specs = self._all_accounts(date, ref)
        balances = self.balances(specs)
        per_ledger: dict[int, list[int]] = {}
        for s in specs:
            b = balances.get(s.id)
            if b is None:
                continue
            t = per_ledger.setdefault(s.ledger, [0, 0])
            t[0] += b[1]
            t[1] += b[3]
            if s.never_negative and b[1] > b[3]:
                failures.append(f"3: account {s.id:032x} is negative")
            if b[0] or b[2]:
                failures.append(f"3: account {s.id:032x} has a pending transfer open")
        for ledger_id, (debits, credits) in sorted(per_ledger.items()):
            if debits != credits:
                failures.append(f"3: ledger {ledger_id} debits {debits} != credits {credits}")
        for kind, a, b, c in numbers["chk"]:
            if (kind == "P" and a != b + c) or (kind == "R" and c != a - b):
                failures.append(f"4: confirmation {kind} {a} {b} {c} does not add up")
        imported = self._orders(date, range(BUCKETS))
        want = sorted((r["DistributorCode"], r["AppSheetSerialNo"], r["_input"]) for r in imported)
        got = sorted(numbers["keys"])
        if want != got or numbers["rows04"] != len(imported):
            failures.append(f"5: {len(imported)} orders imported but {numbers['rows04']} confirmation rows")
        return failures[:50], numbers

    def render(self, date: str) -> dict[str, bytes]:
        """The outgoing files' bytes, by name (index files included)."""
        ref = self.reference(date)
        files, _ = self.outgoing(date)
        out: dict[str, bytes] = {}
        for dist in sorted(files):
            names = []
            for t in OUTGOING_TYPES:
                df = DataFile(ref.ta_code, dist, date, t, STANDARD_FIELDS[t], tuple(files[dist].get(t, [])))
                out[df.name] = write_data_file(df)
                names.append(df.name)
            index = IndexFile(ref.ta_code, dist, date, tuple(names))
            out[index.name] = write_index_file(index)
        return out

    def export(self, date: str, directory: str | Path) -> dict[str, str]:
        """Write the day's files into ``directory``, data files first, each
        index last (atomic renames); returns name -> sha256."""
        state = self.day(date)
        if state is None or state.status not in ("checked", "exported", "closed"):
            raise ClearingError(f"day {date} has not passed CHECK; run `ta clear {date}` first")
        files = self.render(date)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        order = sorted(files, key=lambda n: (n.startswith("OFI_"), n))
        for name in order:
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(files[name])
            os.replace(tmp, directory / name)
        return {name: hashlib.sha256(files[name]).hexdigest() for name in order}

    # ------------------------------------------------------------ the day

    def clear(self, date: str, *, shards: int | None = None, inbox: str | Path | None = None,
              outbox: str | Path | None = None) -> dict:  # fmt: skip
        """Run (or resume) the day's batch; returns the day's status."""
        state = self.open_day(date, shards or 1)
        from ta.txservice import finish_reservations  # the service builds on this module

        finish_reservations(self.store, date)
        if inbox is not None:
            self.import_dir(date, inbox, shards=state.shards)
        state = self.day(date)
        if state.paused:
            raise Paused(f"day {date} is paused; `ta resume {date}` to go on")
        ref = self.reference(date)
        self.progress("INIT", 0, 1)
        self._init(state, ref)
        self.progress("VALIDATE", 0, 1)
        self._validate(state, ref)
        self.progress("ACCOUNTS", 0, 1)
        self._accounts(state, ref)
        self.progress("DIVIDEND", 0, 1)
        self._dividends(state, ref)
        self._mmf(state, ref)
        self._adjust(state, ref)
        done = [0]

        def shard_work(shard: int) -> None:
            self._confirm_shard(state, ref, shard)
            done[0] += 1
            self.progress("CONFIRM", done[0], state.shards)

        self.progress("CONFIRM", 0, state.shards)
        with ThreadPoolExecutor(max_workers=min(self.workers, state.shards)) as pool:
            for f in [pool.submit(shard_work, s) for s in range(state.shards)]:
                f.result()

        def check(record, save):
            failures, numbers = self.checks(date)
            if failures:
                raise ChecksFailed(failures)
            return {"checks": "passed", "orders": numbers["rows04"]}

        self.progress("CHECK", 0, 1)
        self._run_unit(state, "CHECK", "*", 0, check)
        self._update_day(date, lambda s: setattr(s, "status", "checked") if s.status == "open" else None)

        def export(record, save):
            if outbox is None:
                return {"files": {}}
            return {"files": self.export(date, outbox)}

        self.progress("EXPORT", 0, 1)
        self._run_unit(state, "EXPORT", "*", 0, export)

        def close(record, save):
            methods = []
            for e in self.live_entries(date, "CONFIRM"):
                for fund, method in e["methods"]:
                    methods.append([*e["h"], fund, method])
            put_chunks(self.store, _k("methods", date) + b"/", sorted(methods))
            return {"methods": len(methods)}

        self._run_unit(state, "CLOSE", "*", 0, close)
        self._update_day(date, lambda s: setattr(s, "status", "closed"))
        self.progress("CLOSE", 1, 1)
        return self.status(date)

    def status(self, date: str) -> dict:
        state = self.day(date)
        if state is None:
            return {"date": date, "status": "absent"}
        units = sorted((u for u in self.flow(date) if u["run"] in ("-", str(state.run))),
                       key=lambda u: (STEPS.index(u["step"]), u["fund"], str(u["shard"]).zfill(3)))
        return {"date": date, "status": state.status, "run": state.run, "gen": state.gen,
                "shards": state.shards, "paused": state.paused,
                "inputs": self.inputs(date),
                "units": [{k: u.get(k) for k in ("step", "fund", "shard", "run", "status", "attempts", "gen",
                                                  "error", "detail")} for u in units]}  # fmt: skip

    def retry(self, date: str) -> int:
        """Mark failed units of the current run for another attempt (the next
        ``clear`` runs them); returns how many."""
        state = self.day(date)
        n = 0
        for u in self.flow(date):
            if u["status"] == "failed" and u["run"] in ("-", str(state.run)):
                key = self._flow_key(date, u["run"], u["step"], u["fund"], u["shard"])
                record, version = self._unit_get(key)
                record["status"] = "retry"
                self._unit_set(key, record, version)
                n += 1
        return n

    # ------------------------------------------------------------ rollback

    def rollback_to(self, date: str, point: str = "BP0") -> dict:
        """Reverse every live entry of the booking steps after ``point``
        (``BP0`` or ``after:<STEP>``), start the next run, and (for BP0)
        prove the balances equal the snapshot. Nothing is deleted."""
        state = self.day(date)
        if state is None:
            raise ClearingError(f"day {date} is not open")
        if point == "BP0":
            keep_upto = STEPS.index("IMPORT")
        elif point.startswith("after:") and point[6:] in STEPS:
            keep_upto = STEPS.index(point[6:])
        else:
            raise ClearingError(f"unknown backup point {point!r}: BP0 or after:<STEP> ({', '.join(STEPS)})")
        reversed_entries = 0
        for step in reversed(BOOKING_STEPS):
            if STEPS.index(step) <= keep_upto:
                continue
            entries = self.live_entries(date, step)
            for e in reversed(entries):
                self._reverse_entry(date, e)
            reversed_entries += len(entries)
            self.progress(f"ROLLBACK {step}", len(entries), len(entries))
        new_run = state.run + 1
        for u in self.flow(date):
            if u["run"] != str(state.run):
                continue
            if STEPS.index(u["step"]) <= keep_upto and u["step"] not in ("CHECK", "EXPORT", "CLOSE"):
                record = {k: v for k, v in u.items() if k not in ("run", "step", "fund", "shard")}
                key = self._flow_key(date, new_run, u["step"], u["fund"], u["shard"])
                if self.store.kv_get(key) is None:
                    self.store.kv_put(key, _json(record))
            else:
                key = self._flow_key(date, u["run"], u["step"], u["fund"], u["shard"])
                record, version = self._unit_get(key)
                record["status"] = "rolled_back"
                self._unit_set(key, record, version)

        def change(s: DayState) -> None:
            s.run, s.gen, s.status = new_run, s.gen + 1, "open"

        self._update_day(date, change)
        result = {"date": date, "point": point, "reversed_entries": reversed_entries, "run": new_run}
        if point == "BP0":
            result["differences"] = self.compare_bp0(date)
            if result["differences"]:
                raise ClearingError(f"after rollback to BP0 {len(result['differences'])} balances differ "
                                    f"from the snapshot, first {result['differences'][0]}")  # fmt: skip
        return result

    def compare_bp0(self, date: str) -> list[str]:
        ref = self.reference(date)
        snapshot, _ = self.bp0(date)
        balances = self.balances(self._all_accounts(date, ref))
        diffs = []
        for account_id in sorted(set(snapshot) | set(balances)):
            want = snapshot.get(account_id, (0, 0, 0, 0))
            got = balances.get(account_id, (0, 0, 0, 0))
            if (want[1] - want[3], want[0], want[2]) != (got[1] - got[3], got[0], got[2]):
                diffs.append(f"{account_id:032x}: BP0 {want} now {got}")
        return diffs

    def rollback_holders(self, date: str, holders: Iterable[HolderKey]) -> dict:
        """Reverse these holders' confirmations of the day; the next ``clear``
        re-runs them alone (with new ids)."""
        state = self.day(date)
        wanted = set(holders)
        reversed_n = 0
        for unit in self.flow(date):
            if unit["step"] != "CONFIRM" or unit["run"] != str(state.run) or unit["status"] not in ("done", "planned"):
                continue
            shard = int(unit["shard"])
            over_prefix = _k("hplan", date, unit["plan_run"], f"{shard:03d}") + b"/"
            for e in self.live_entries_of_unit(date, unit):
                h = HolderKey(*e["h"])
                if h not in wanted or e["digest"] == "rolled-back":
                    continue
                self._reverse_entry(date, e)
                gone = _empty_entry(h, e["attempt"], state.gen + 1, "rolled-back")
                self.store.kv_put(over_prefix + holder_text(h).encode(), pack(gone))
                reversed_n += 1
        self._bump_gen(date)
        return {"date": date, "holders": reversed_n}

    def live_entries_of_unit(self, date: str, unit: dict) -> list[dict]:
        shard = unit["shard"]
        base = get_chunks(self.store, self._plan_prefix(date, unit["plan_run"], "CONFIRM", "*", shard))
        over_prefix = _k("hplan", date, unit["plan_run"], f"{int(shard):03d}") + b"/"
        merged = {tuple(e["h"]): e for e in base}
        merged.update({tuple(e["h"]): e for e in (unpack(v) for _, v, _ in self.store.kv_scan(over_prefix))})
        return [merged[k] for k in sorted(merged)]

    def rollback_file(self, date: str, name: str) -> dict:
        """Reverse everything derived from one input file (its holders' day)
        and withdraw it; importing the same file again brings it back."""
        matches = [i for i in self.inputs(date) if i == name or i.split("@")[0] == name]
        if not matches:
            raise ClearingError(f"no input file {name!r} on {date}")
        holders: set[HolderKey] = set()
        for input_id in matches:
            info = self.inputs(date)[input_id]
            if info.get("kind") == "01":
                raise ClearingError("an account file cannot be rolled back: accounts are never deleted")
            for r in self._orders(date, range(BUCKETS)):
                if r["_input"] == input_id:
                    holders.add(holder_of(r))
        result = self.rollback_holders(date, holders)
        for input_id in matches:
            key = _k("in", date, "file", input_id)
            info = json.loads(self.store.kv_get(key)[0])
            if info["status"] == "imported":
                info["status"] = "withdrawn"
                self.store.kv_put(key, _json(info))
        self._bump_gen(date)
        return {**result, "files": matches}


def _new_ta_account(ta_code: str, dist: str, serial: str) -> str:
    digest = hashlib.blake2b(f"{ta_code}|{dist}|{serial}".encode(), digest_size=8).digest()
    return f"{ta_code[:2]}{int.from_bytes(digest, 'big') % 10**10:010d}"
