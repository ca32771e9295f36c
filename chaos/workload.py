"""The client side of a chaos run: bank, register and set workloads through the real client.

Runs as its own process (in netns mode: inside the client namespace, the only
place from which the replicas' addresses are reachable)::

    python -m chaos.workload --addresses A,B,C --out RUN_DIR --control CTRL_DIR [--seed N]

Phases, steered by files in ``CTRL_DIR`` that the runner writes:

1. setup    create the bank and set accounts, fund the bank (retried until done)
            then write ``ready``
2. run      ``--concurrency`` processes per workload issue operations until
            the file ``stop`` appears; every op lands in RUN_DIR/<workload>.jsonl;
            meanwhile every replica's status is polled into RUN_DIR/status.jsonl
3. final    wait until a write succeeds again, poll every replica's status
            until all report the same state digest and applied index, do the
            final reads (bank balances, the set's elements), write
            RUN_DIR/final.json

Every op has a bounded client timeout; an op whose outcome the client cannot
know ends "unknown", and its process id is retired (see chaos.history).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

from chaos.history import History
from cluster.certs import TlsCredentials, open_channel
from ledger import errors
from ledger.api_proto import pb, pb_grpc
from ledger.client import LOCAL, AsyncClient
from ledger.model import Account, AccountFlags, Transfer

LEDGER = 1
CODE = 1
BANK_ACCOUNTS = (1, 2, 3, 4, 5)
BANK_FUNDING_ACCOUNT = 100
BANK_BALANCE_START = 1_000
BANK_TOTAL = BANK_BALANCE_START * len(BANK_ACCOUNTS)
SET_FROM, SET_TO = 201, 202
REGISTER_KEYS_LIVE = 4  # keys in use at once
REGISTER_OPS_PER_KEY_MAX = 120  # then the key is retired (keeps the linearizability search small)
OP_TIMEOUT_S = 3.0
ATTEMPT_TIMEOUT_S = 1.0
SETUP_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 60.0
FINAL_READS_TIMEOUT_S = 60.0  # all final-read attempts of one workload together
FINAL_READ_TIMEOUT_S = 15.0  # one final read (the set's may be several pages of 8,190)
POLL_S = 0.1
STATUS_EVERY_S = 0.25
OPS_MAX = 1_000_000  # per run, all workloads together: a hard stop


def _is_request_error(e: BaseException) -> bool:
    return isinstance(e, errors.RequestError)


class Workloads:
    def __init__(self, addresses: list[str], out: Path, control: Path, seed: int, concurrency: int,
                 workloads: list[str], tls: TlsCredentials | None = None) -> None:
        self.addresses = addresses
        self.tls = tls
        self.out = out
        self.control = control
        self.rng = random.Random(seed)
        self.seed = seed
        self.concurrency = concurrency
        self.workloads = workloads
        self.histories = {w: History() for w in workloads}
        for w, h in self.histories.items():
            h.stream_to(out / f"{w}.jsonl")
        self.client = AsyncClient(addresses, timeout_s=OP_TIMEOUT_S, attempt_timeout_s=ATTEMPT_TIMEOUT_S, tls=tls)
        self.ops = 0
        self.next_id = (seed % 1000 + 1) * 10**12  # transfer ids of this run
        self.reg_keys: list[str] = []
        self.reg_key_ops: dict[str, int] = {}
        self.reg_generation = 0
        self.set_next = 1
        self.stale_reads = False

    def stopping(self) -> bool:
        return (self.control / "stop").exists() or self.ops >= OPS_MAX

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # ------------------------------------------------------------ setup

    async def setup(self) -> None:
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        accounts = [Account(id=a, ledger=LEDGER, code=CODE, flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS))
                    for a in BANK_ACCOUNTS]
        accounts += [Account(id=a, ledger=LEDGER, code=CODE) for a in (BANK_FUNDING_ACCOUNT, SET_FROM, SET_TO)]
        funding = [Transfer(id=a, debit_account_id=BANK_FUNDING_ACCOUNT, credit_account_id=a,
                            amount=BANK_BALANCE_START, ledger=LEDGER, code=CODE) for a in BANK_ACCOUNTS]
        for what, call in (("accounts", lambda: self.client.create_accounts(accounts)),
                           ("funding", lambda: self.client.create_transfers(funding))):
            while True:
                try:
                    results = await call()
                    bad = [r for r in results if r.name not in ("ok", "exists")]
                    if bad:
                        raise SystemExit(f"setup of {what} refused: {bad}")
                    break
                except errors.LedgerError as e:
                    if _is_request_error(e) or time.monotonic() > deadline:
                        raise SystemExit(f"setup of {what} failed: {e}")
                    await asyncio.sleep(POLL_S)

    # ------------------------------------------------------------ one op

    async def _op(self, history: History, process: int, f: str, args, call, *, is_read: bool):
        """Run ``call``; record ok / fail / unknown; return (status, result)."""
        self.ops += 1
        op = history.invoke(process, f, args)
        try:
            result = await call()
        except Exception as e:  # noqa: BLE001 - every failure is classified and recorded
            text = f"{type(e).__name__}: {str(e)[:200]}"
            if is_read or _is_request_error(e):
                history.fail(op, text)
                return "fail", None
            history.unknown(op, text)
            return "unknown", None
        history.ok(op, result)
        return "ok", result

    # ------------------------------------------------------------ bank

    async def bank_process(self, worker: int) -> None:
        h = self.histories["bank"]
        process = worker
        rng = random.Random(self.seed * 1000 + worker)
        while not self.stopping():
            if rng.random() < 0.5:
                async def read():
                    accounts = await self.client.lookup_accounts(BANK_ACCOUNTS)
                    return {a.id: a.credits_posted - a.debits_posted for a in accounts}
                await self._op(h, process, "read", None, read, is_read=True)
            else:
                a, b = rng.sample(BANK_ACCOUNTS, 2)
                amount = rng.randint(1, 50)
                t = Transfer(id=self.new_id(), debit_account_id=a, credit_account_id=b, amount=amount,
                             ledger=LEDGER, code=CODE)

                async def transfer():
                    results = await self.client.create_transfers([t])
                    return results[0].name
                status, _ = await self._op(h, process, "transfer",
                                           {"debit": a, "credit": b, "amount": amount, "id": t.id}, transfer,
                                           is_read=False)
                if status == "unknown":
                    process += 1000
            await asyncio.sleep(0)

    # ------------------------------------------------------------ register

    def _reg_key(self, rng: random.Random) -> str:
        while len(self.reg_keys) < REGISTER_KEYS_LIVE:
            self.reg_generation += 1
            key = f"chaos/{self.seed}/reg/{self.reg_generation}"
            self.reg_keys.append(key)
            self.reg_key_ops[key] = 0
        key = rng.choice(self.reg_keys)
        self.reg_key_ops[key] += 1
        if self.reg_key_ops[key] >= REGISTER_OPS_PER_KEY_MAX:
            self.reg_keys.remove(key)
        return key

    async def register_process(self, worker: int) -> None:
        h = self.histories["register"]
        process = worker
        rng = random.Random(self.seed * 2000 + worker)
        seq = 0
        while not self.stopping():
            key = self._reg_key(rng)
            seq += 1
            value = f"{worker}-{seq}"
            roll = rng.random()
            if roll < 0.4:
                async def read():
                    if self.stale_reads:  # a deliberate bug: local reads at any replica
                        got = await self.client.kv_get(key.encode(), consistency=LOCAL,
                                                       address=rng.choice(self.addresses))
                    else:
                        got = await self.client.kv_get(key.encode())
                    return None if got is None else got[0].decode()
                await self._op(h, process, "read", {"key": key}, read, is_read=True)
            elif roll < 0.7:
                async def write():
                    await self.client.kv_put(key.encode(), value.encode())
                    return None
                status, _ = await self._op(h, process, "write", {"key": key, "value": value}, write,
                                           is_read=False)
                if status == "unknown":
                    process += 1000
            else:
                # cas: read the version, then swap; the read is an op of its own
                async def read_versioned():
                    return await self.client.kv_get(key.encode())
                self.ops += 1
                rop = h.invoke(process, "read", {"key": key})
                try:
                    got = await read_versioned()
                except Exception as e:  # noqa: BLE001
                    h.fail(rop, f"{type(e).__name__}: {str(e)[:200]}")
                    continue
                current = None if got is None else got[0].decode()
                h.ok(rop, current)
                version = 0 if got is None else got[1]

                async def cas():
                    ok, _ = await self.client.kv_cas(key.encode(), version, value.encode())
                    return ok
                status, _ = await self._op(h, process, "cas", {"key": key, "value": [current, value]}, cas,
                                           is_read=False)
                if status == "unknown":
                    process += 1000
            await asyncio.sleep(0)

    # ------------------------------------------------------------ set

    async def set_process(self, worker: int) -> None:
        h = self.histories["set"]
        process = worker
        while not self.stopping():
            element = self.next_element()
            t = Transfer(id=element, debit_account_id=SET_FROM, credit_account_id=SET_TO, amount=1,
                         ledger=LEDGER, code=CODE)

            async def add():
                results = await self.client.create_transfers([t])
                if results[0].name not in ("ok", "exists"):
                    raise errors.InvalidArgument(f"add refused: {results[0].name}")
                return results[0].name
            status, _ = await self._op(h, process, "add", element, add, is_read=False)
            if status == "unknown":
                process += 1000
            await asyncio.sleep(0)

    def next_element(self) -> int:
        self.set_next += 1
        return (self.seed % 1000 + 1) * 10**13 + self.set_next

    async def set_final_read(self) -> list[int]:
        elements: list[int] = []
        ts_min = 0
        while True:
            batch = await self.final_client.get_account_transfers(SET_FROM, timestamp_min=ts_min, limit=8190,
                                                                  credits=False)
            elements.extend(t.id for t in batch)
            if len(batch) < 8190:
                return elements
            ts_min = batch[-1].timestamp + 1

    # ------------------------------------------------------------ phases

    async def run(self) -> None:
        tasks = []
        for w in self.workloads:
            body = {"bank": self.bank_process, "register": self.register_process, "set": self.set_process}[w]
            for i in range(self.concurrency):
                tasks.append(asyncio.create_task(body(i)))
        await asyncio.gather(*tasks)

    async def statuses(self, addresses: list[str] | None = None) -> dict[str, dict | None]:
        addresses = self.addresses if addresses is None else addresses

        async def one(address):
            try:
                async with open_channel(address, self.tls) as ch:
                    resp = await pb_grpc.ClusterStub(ch).Status(pb.StatusRequest(all=False), timeout=1.0)
                r = resp.replicas[0]
                return {"id": r.id, "role": r.role, "applied_index": r.applied_index,
                        "chosen_index": r.chosen_index, "state_digest": r.state_digest, "leader_id": r.leader_id}
            except Exception:  # noqa: BLE001 - unreachable is an answer here
                return None
        answers = await asyncio.gather(*(one(a) for a in addresses))
        return dict(zip(addresses, answers))

    async def watch_statuses(self, path: Path) -> None:
        """Every replica's status every STATUS_EVERY_S while the workloads run (status.jsonl: the
        monotonic time and, per address, role, leader, ballot-free progress, or null when it did
        not answer within a second): shows who led, who followed and who stopped answering when
        writes stalled."""
        with open(path, "a") as f:
            while not self.stopping():
                t = time.monotonic()
                answers = await self.statuses()
                f.write(json.dumps({"t": t, "took_s": round(time.monotonic() - t, 3), "replicas": {
                    a: (None if s is None else {k: s[k] for k in ("id", "role", "leader_id", "applied_index",
                                                                    "chosen_index")})
                    for a, s in answers.items()}}) + "\n")
                f.flush()
                await asyncio.sleep(max(0.0, STATUS_EVERY_S - (time.monotonic() - t)))

    async def final(self, healed_at: float) -> dict:
        result: dict = {"healed_at": healed_at, "stopped_at": time.monotonic()}
        # 1. full service: a write succeeds (a KV put of a marker key)
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while True:
            try:
                await self.client.kv_put(f"chaos/{self.seed}/marker".encode(), b"healed")
                result["write_ok_at"] = time.monotonic()
                break
            except errors.LedgerError:
                if time.monotonic() > deadline:
                    result["write_ok_at"] = None
                    break
                await asyncio.sleep(POLL_S)
        # 2. convergence: every replica reports the same digest, applied and chosen index (every final
        # member, when the runner names them: a replaced replica is gone for good)
        members = self.control / "members"
        final_addresses = members.read_text().split(",") if members.exists() else self.addresses
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        last = {}
        while True:
            last = await self.statuses(final_addresses)
            answers = [s for s in last.values() if s]
            # Applies commit a little after they run: converged once every
            # replica's committed applies reach its chosen point, all alike.
            marks = {(s["state_digest"], s["applied_index"], s["chosen_index"]) for s in answers}
            if len(answers) == len(final_addresses) and len(marks) == 1 and all(
                    s["applied_index"] == s["chosen_index"] for s in answers):
                result["converged_at"] = time.monotonic()
                break
            if time.monotonic() > deadline:
                result["converged_at"] = None
                break
            await asyncio.sleep(POLL_S)
        result["statuses"] = last
        print(f"final: write_ok_at={result['write_ok_at']} converged_at={result['converged_at']}", flush=True)
        # 3. final reads, with a patient client of their own and one overall budget
        self.final_client = AsyncClient(self.addresses, timeout_s=FINAL_READ_TIMEOUT_S, attempt_timeout_s=5.0,
                                        tls=self.tls)
        if "bank" in self.workloads:
            h = self.histories["bank"]
            deadline = time.monotonic() + FINAL_READS_TIMEOUT_S
            while time.monotonic() < deadline:
                async def read():
                    accounts = await self.final_client.lookup_accounts(BANK_ACCOUNTS)
                    return {a.id: a.credits_posted - a.debits_posted for a in accounts}
                status, _ = await self._op(h, 999_999, "read", None, read, is_read=True)
                if status == "ok":
                    break
                await asyncio.sleep(POLL_S)
        if "set" in self.workloads:
            h = self.histories["set"]
            deadline = time.monotonic() + FINAL_READS_TIMEOUT_S
            while time.monotonic() < deadline:
                status, elements = await self._op(h, 999_999, "read", None, self.set_final_read, is_read=True)
                print(f"final: set read {status} ({len(elements or [])} elements)", flush=True)
                if status == "ok":
                    break
                await asyncio.sleep(POLL_S)
        await self.final_client.close()
        return result


async def probe(addresses: list[str], tls: TlsCredentials | None) -> int:
    w = Workloads.__new__(Workloads)
    w.addresses = addresses
    w.tls = tls
    print(json.dumps(await w.statuses()))
    return 0


def _tls(args) -> TlsCredentials | None:
    return TlsCredentials.from_cert_dir(Path(args.cert_dir), "client") if args.cert_dir else None


async def amain(args) -> int:
    out = Path(args.out)
    control = Path(args.control)
    w = Workloads(args.addresses.split(","), out, control, args.seed, args.concurrency, args.workloads.split(","),
                  _tls(args))
    w.stale_reads = args.stale_reads
    await w.setup()
    (control / "ready").write_text(str(time.monotonic()))
    watcher = asyncio.create_task(w.watch_statuses(out / "status.jsonl"))
    await w.run()
    watcher.cancel()
    while not (control / "healed").exists():
        await asyncio.sleep(POLL_S)
    healed_at = float((control / "healed").read_text() or time.monotonic())
    result = await w.final(healed_at)
    for h in w.histories.values():
        h.finish_pending()
        h.close()
    (out / "final.json").write_text(json.dumps(result, indent=2))
    await w.client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.workload", description=__doc__.splitlines()[0])
    p.add_argument("--addresses", required=True)
    p.add_argument("--out")
    p.add_argument("--control")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=4, help="processes per workload")
    p.add_argument("--workloads", default="bank,register,set")
    p.add_argument("--stale-reads", action="store_true",
                   help="register reads at LOCAL consistency on any replica: a known bug, to see the checker fail")
    p.add_argument("--cert-dir", help="cluster cert dir: connect with mutual TLS as the 'client' identity")
    p.add_argument("--probe", action="store_true", help="print every replica's status as JSON and exit")
    args = p.parse_args(argv)
    if args.probe:
        return asyncio.run(probe(args.addresses.split(","), _tls(args)))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
