"""Does transfer throughput stay flat as the number of accounts grows?

    .venv/bin/python bench/accounts_scaling.py [--max 10000000] [--transfers 80000] [--out F]
    make bench-accounts     # 10,000 -> 10,000,000 accounts; JSON to bench/accounts_scaling.json

One replica's storage and state machine, exactly as the server runs them
(``ledger.storage.ReplicaStorage`` on this disk, ``ledger.server_sm``'s
applier): each batch of 8,000 transfers is one ``write_step`` that stores the
log entry (a synced transaction of the acceptor environment) and applies it
(a transaction of the state environment, committed on its own as a replica
commits a batch). The accounts grow in stages (10k, 100k, 1M, 10M); at each stage
``--transfers`` transfers between accounts drawn uniformly from all of them
(the worst case for locality: every lookup is a random B-tree path) are timed.
Creating the accounts is not timed. The network and consensus part of a write
does not depend on the number of accounts, so this is the part that could
make a cluster's throughput fall as it grows.

Prints one line per stage and writes JSON: per stage the accounts, the
transfers/s, the size of the data files, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consensus import Ballot, Persist  # noqa: E402
from ledger import commands as cmd  # noqa: E402
from ledger.model import Account, Transfer  # noqa: E402
from ledger.server_sm import make_applier  # noqa: E402
from ledger.storage import ReplicaStorage, data_file_bytes  # noqa: E402

LEDGER = 1
BATCH = 8000
STAGES = (10_000, 100_000, 1_000_000, 10_000_000)
BALLOT = Ballot(1, 1)


class Replica:
    """A replica's storage and applier, fed one slot per batch."""

    def __init__(self, path: str) -> None:
        self.storage = ReplicaStorage(path, cluster_id="bench-accounts", replica_id=1)
        self.apply = make_applier()
        self.slot = 0
        self.timestamp = time.time_ns()

    def step(self, command) -> list:
        self.timestamp += 1_000_000
        value = cmd.encode_batch(self.timestamp, [command])
        slot = self.slot
        out: list = []

        def apply(tables) -> int:
            out.append(self.apply(tables, slot, value))
            return slot + 1

        self.storage.write_step(Persist(accepted=((slot, BALLOT, value),), chosen_below=slot + 1), apply)
        self.slot += 1
        return out[0][0]  # the one command's sparse (index, code) failures


def _account_rows(first: int, count: int) -> bytes:
    return b"".join(Account(id=i, ledger=LEDGER, code=1).pack() for i in range(first, first + count))


def _transfer_rows(rng: random.Random, next_id: int, accounts: int, count: int) -> bytes:
    rows = []
    for i in range(count):
        debit = rng.randrange(1, accounts + 1)
        credit = rng.randrange(1, accounts)
        if credit >= debit:
            credit += 1
        rows.append(Transfer(id=next_id + i, debit_account_id=debit, credit_account_id=credit,
                             amount=1, ledger=LEDGER, code=1).pack())
    return b"".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/accounts_scaling.py", description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=STAGES[-1], help="largest stage (default 10,000,000)")
    parser.add_argument("--transfers", type=int, default=80_000, help="transfers timed per stage")
    parser.add_argument("--dir", help="data directory (default: a temporary one under data/)")
    parser.add_argument("--out", default="bench/accounts_scaling.json")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    stages = [s for s in STAGES if s <= args.max] or [args.max]
    (ROOT / "data").mkdir(exist_ok=True)
    path = args.dir or tempfile.mkdtemp(prefix="bench-accounts-", dir=ROOT / "data")
    rng = random.Random(args.seed)
    results = {"batch": BATCH, "fsync": "on: per batch, a synced log entry and a committed apply",
               "transfers_per_stage": args.transfers, "seed": args.seed, "stages": []}
    print(f"accounts scaling: one replica's storage + state machine, batches of {BATCH}, synced; {path}")
    print(f"{'accounts':>11} {'transfers/s':>12} {'create s':>9} {'data MiB':>9} {'load':>5}", flush=True)
    replica = Replica(path)
    made = 0
    next_transfer = 10**12
    try:
        for stage in stages:
            t0 = time.monotonic()
            while made < stage:
                n = min(BATCH, stage - made)
                codes = replica.step(cmd.CreateAccounts(_account_rows(made + 1, n)))
                assert not any(codes), "account creation failed"
                made += n
            created_s = time.monotonic() - t0
            batches = [
                _transfer_rows(rng, next_transfer + i * BATCH, made, BATCH)
                for i in range(max(1, args.transfers // BATCH))
            ]
            next_transfer += len(batches) * BATCH
            t0 = time.monotonic()
            for rows in batches:
                codes = replica.step(cmd.CreateTransfers(rows))
                assert not any(codes), "a transfer failed"
            elapsed = time.monotonic() - t0
            rate = round(len(batches) * BATCH / elapsed)
            size = data_file_bytes(path) / 2**20
            load = round(os.getloadavg()[0], 2)
            results["stages"].append({"accounts": made, "transfers_per_s": rate, "create_s": round(created_s, 1),
                                      "data_mib": round(size), "load_average": load})
            print(f"{made:>11,} {rate:>12,} {created_s:>9.1f} {size:>9.0f} {load:>5.1f}", flush=True)
    finally:
        replica.storage.close()
        if not args.dir:
            shutil.rmtree(path, ignore_errors=True)
    rates = [s["transfers_per_s"] for s in results["stages"]]
    results["largest_over_smallest"] = round(rates[-1] / rates[0], 2)
    print(f"throughput at {stages[-1]:,} accounts / at {stages[0]:,}: {results['largest_over_smallest']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
