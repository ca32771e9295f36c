"""Figures of issue 5 on local clusters of real processes (127.0.0.1), printed as JSON.

    .venv/bin/python bench/replace_replica.py catchup --transfers 1000000
    .venv/bin/python bench/replace_replica.py disk --seconds 120
    .venv/bin/python bench/replace_replica.py primary --moves 5

catchup: r3 is stopped, the others take ``--transfers`` transfers in batches of
8,000 (compacting their logs), r3 restarts and the time until it applied the
leader's chosen index is measured (it catches up by a snapshot, then the tail).
disk: the same write load with and without compaction; data.mdb bytes and log
bytes sampled every few seconds.
primary: leadership is moved out of the primary zone ``--moves`` times; the
replicas move it back after primary_hold_ms; the largest gap between
acknowledged writes of a closed-loop writer around each return is reported.
Every process started is killed by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cluster.local import LocalCluster, wait_until  # noqa: E402
from ledger import errors  # noqa: E402
from ledger.client import Client  # noqa: E402
from ledger.model import Account, Transfer  # noqa: E402
from ledger.storage import data_file_bytes  # noqa: E402

LEDGER = 1
ACCOUNTS = 1000
BATCH = 8000


def _accounts(c: Client) -> None:
    c.create_accounts([Account(id=i + 1, ledger=LEDGER, code=1) for i in range(ACCOUNTS)])


def _load(c: Client, first_id: int, transfers: int, batch: int = BATCH, pipeline: int = 4) -> float:
    """Write ``transfers`` transfers; returns seconds. A few requests in flight at once."""
    ids = iter(range(first_id, first_id + transfers, batch))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                start = next(ids, None)
            if start is None:
                return
            n = min(batch, first_id + transfers - start)
            c.create_transfers([
                Transfer(id=i, debit_account_id=1 + i % ACCOUNTS, credit_account_id=1 + (i * 7 + 1) % ACCOUNTS,
                         amount=1, ledger=LEDGER, code=1)
                for i in range(start, start + n)
            ])

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(pipeline)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


def catchup(args) -> dict:
    c = LocalCluster(3, extra_toml=f"[snapshot]\nevery_slots = {args.every}\nkeep_slots = {args.keep}\n")
    try:
        c.start()
        with c.client(attempt_timeout_s=60) as cl:
            _accounts(cl)
            c.kill("r3")
            load_s = _load(cl, 1, args.transfers)
            leader = c.wait_leader()
            target = c.statuses()[leader].chosen_index
            t0 = time.monotonic()
            c.restart("r3")
            wait_until(lambda: c.statuses().get("r3") and c.statuses()["r3"].applied_index >= target,
                       3600, "r3 to catch up", interval_s=0.2)
            caught_s = time.monotonic() - t0
        log = (c.data / "r3.log").read_text()
        snapshot_lines = [json.loads(line) for line in log.splitlines() if "snapshot" in line and line.startswith("{")]
        return {
            "transfers_behind": args.transfers, "load_seconds": round(load_s, 1),
            "catch_up_seconds_from_restart": round(caught_s, 1),
            "slots_behind": target,
            "snapshot_events": [{k: e.get(k) for k in ("msg", "index", "bytes", "seconds")} for e in snapshot_lines],
        }
    finally:
        c.stop()


def disk(args) -> dict:
    out = {}
    for label, every in (("with_compaction", args.every), ("without_compaction", 10**9)):
        c = LocalCluster(3, extra_toml=f"[snapshot]\nevery_slots = {every}\nkeep_slots = {args.keep}\n")
        try:
            c.start()
            samples = []
            with c.client(attempt_timeout_s=60) as cl:
                _accounts(cl)
                t0 = time.monotonic()
                next_id = 1
                while time.monotonic() - t0 < args.seconds:
                    if args.kv:  # overwrites: the state stays the same size
                        for k in range(200):
                            try:
                                cl.kv_put(b"key-%d" % (k % 50), b"v" * 1000 + b"%d" % next_id)
                            except errors.LedgerError:
                                pass  # e.g. an outcome unknown after a leader change: only the disk use counts here
                        next_id += 200
                        size = data_file_bytes(c.data / "r1")
                        samples.append((round(time.monotonic() - t0, 1), next_id - 1, size))
                        continue
                    _load(cl, next_id, 4 * args.batch, batch=args.batch, pipeline=4)
                    next_id += 4 * args.batch
                    size = data_file_bytes(c.data / "r1")
                    samples.append((round(time.monotonic() - t0, 1), next_id - 1, size))
            out[label] = {"samples_t_s_transfers_bytes": samples[:: max(1, len(samples) // 12)] + samples[-1:],
                          "final_data_mdb_bytes": samples[-1][2],
                          "kv_puts" if args.kv else "transfers": samples[-1][1]}
        finally:
            c.stop()
    return out


def primary(args) -> dict:
    c = LocalCluster(3, primary_zone="dc1", extra_toml="[timing]\nprimary_hold_ms = 1000\n")
    try:
        c.start()
        gaps = []
        with c.client() as cl:
            _accounts(cl)
        wait_until(lambda: c.leader() == "r1", 60, "leadership in the primary zone")
        acks: list[float] = []
        stop = threading.Event()

        def writer():
            with c.client() as w:
                i = 10_000_000
                while not stop.is_set():
                    w.create_transfers([Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=1,
                                                 ledger=LEDGER, code=1)])
                    acks.append(time.monotonic())
                    i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            admin = Client(list(c.addresses.values()))
            for _ in range(args.moves):
                admin.transfer_leader("r2")
                away = time.monotonic()
                wait_until(lambda: c.leader() == "r1", 60, "leadership back in the primary zone", interval_s=0.02)
                back = time.monotonic()
                time.sleep(0.5)  # let the writer record acks after the move
                window = [a for a in acks if away - 1 <= a <= back + 0.5]
                gaps.append(max(b - a for a, b in zip(window, window[1:])))
            admin.close()
        finally:
            stop.set()
            t.join(30)
        gaps_ms = sorted(round(g * 1000) for g in gaps)
        return {"moves": args.moves, "write_gap_ms_sorted": gaps_ms, "median_ms": gaps_ms[len(gaps_ms) // 2],
                "max_ms": gaps_ms[-1], "writes_acked": len(acks)}
    finally:
        c.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("catchup")
    q.add_argument("--transfers", type=int, default=1_000_000)
    q.add_argument("--every", type=int, default=32)
    q.add_argument("--keep", type=int, default=8)
    q.set_defaults(func=catchup)
    q = sub.add_parser("disk")
    q.add_argument("--seconds", type=float, default=120)
    q.add_argument("--batch", type=int, default=2000)
    q.add_argument("--every", type=int, default=64)
    q.add_argument("--keep", type=int, default=16)
    q.add_argument("--kv", action="store_true", help="KV overwrites of 50 keys (bounded state) instead of transfers")
    q.set_defaults(func=disk)
    q = sub.add_parser("primary")
    q.add_argument("--moves", type=int, default=5)
    q.set_defaults(func=primary)
    args = p.parse_args()
    print(json.dumps(args.func(args), indent=1))


if __name__ == "__main__":
    main()
