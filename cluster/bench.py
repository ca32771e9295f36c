"""Benchmark a local three-replica cluster: throughput, latency, and the write gap after a leader SIGKILL.

    python -m cluster.bench [--seconds 5] [--gap-rounds 5] [--out results.json]

Starts its own cluster (``cluster.local``: free loopback ports, temporary
data directory on this disk, synced LMDB) and measures, from one client
process (asyncio, one gRPC channel per replica):

* single-transfer clients: 1, 16 and 64 concurrent callers, each sending one
  transfer per request and waiting for its answer;
* batches of 1,000 transfers per request: 1 and 4 concurrent callers;
* 256 concurrent single-transfer callers through ``ledger.client.Batcher``
  (one request carries what all callers handed in within a millisecond);
* the write gap after a leader SIGKILL: a writer sends one transfer at a
  time; the leader is killed; the gap is the time between the last answer
  before the kill and the first answer after it (the client's own leader
  discovery and retries included). Repeated ``--gap-rounds`` times, the
  killed replica restarted and caught up in between.

Figures depend on the machine: on 2 shared cores all three replicas and the
client compete for CPU, and every write is fsynced on every replica.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from cluster.local import LocalCluster, wait_until
from ledger.client import AsyncClient, Batcher
from ledger.model import Account, Transfer

LEDGER = 1
ACCOUNTS = 100


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


class Ids:
    def __init__(self, start: int) -> None:
        self.next = start

    def take(self, n: int) -> range:
        r = range(self.next, self.next + n)
        self.next += n
        return r


async def _load(addresses, concurrency: int, batch: int, seconds: float, ids: Ids, batcher: bool = False) -> dict:
    client = AsyncClient(addresses, timeout_s=30)
    packer = Batcher(client) if batcher else None
    latencies: list[float] = []
    transfers = 0
    stop_at = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal transfers
        while time.monotonic() < stop_at:
            events = [
                Transfer(id=i, debit_account_id=1 + i % ACCOUNTS,
                         credit_account_id=1 + (i + 1 + w % (ACCOUNTS - 1)) % ACCOUNTS,
                         amount=1, ledger=LEDGER, code=1)
                for i in ids.take(batch)
            ]
            t0 = time.perf_counter()
            if packer is not None:
                results = [await packer.create_transfer(events[0])]
            else:
                results = await client.create_transfers(events)
            latencies.append(time.perf_counter() - t0)
            bad = [r for r in results if r.name not in ("ok", "exists")]
            assert not bad, bad[:3]
            transfers += len(events)

    # Warm up the channels and find the leader first.
    await client.create_transfers([Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=1,
                                            ledger=LEDGER, code=1) for i in ids.take(1)])
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await client.close()
    latencies.sort()
    return {
        "concurrency": concurrency, "events_per_request": batch, "batcher": batcher, "seconds": round(elapsed, 2),
        "requests": len(latencies), "transfers": transfers,
        "transfers_per_s": round(transfers / elapsed),
        "p50_ms": round(_percentile(latencies, 0.50) * 1e3, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 2),
        "client_retries": client.retries,
    }


async def _gap_round(cluster: LocalCluster, ids: Ids) -> float:
    leader = await asyncio.to_thread(cluster.wait_leader)
    client = AsyncClient(list(cluster.addresses.values()), timeout_s=30, attempt_timeout_s=0.5)
    answers: list[float] = []
    killed_at: list[float] = []
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            (i,) = ids.take(1)
            await client.create_transfers([Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=1,
                                                    ledger=LEDGER, code=1)])
            answers.append(time.monotonic())

    task = asyncio.create_task(writer())
    while len(answers) < 50:
        await asyncio.sleep(0.01)
    await asyncio.to_thread(cluster.kill, leader)
    killed_at.append(time.monotonic())
    while not answers or answers[-1] < killed_at[0] or len([a for a in answers if a > killed_at[0]]) < 20:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    await client.close()
    before = max(a for a in answers if a <= killed_at[0])
    after = min(a for a in answers if a > killed_at[0])
    await asyncio.to_thread(cluster.restart, leader)
    await asyncio.to_thread(lambda: wait_until(lambda: leader in cluster.statuses(), 30, "restart"))
    await asyncio.to_thread(cluster.wait_converged)
    return after - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load run")
    parser.add_argument("--gap-rounds", type=int, default=5)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    cluster = LocalCluster(3, cluster_id="bench")
    results: dict = {"load": [], "write_gap_ms": []}
    try:
        cluster.start()
        addresses = list(cluster.addresses.values())
        with cluster.client() as c:
            codes = c.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in range(1, ACCOUNTS + 1)])
            assert all(r.name == "ok" for r in codes), codes[:3]
        ids = Ids(1_000_000)
        for concurrency, batch, batcher in ((1, 1, False), (16, 1, False), (64, 1, False), (1, 1000, False),
                                            (4, 1000, False), (256, 1, True)):
            row = asyncio.run(_load(addresses, concurrency, batch, args.seconds, ids, batcher))
            results["load"].append(row)
            how = "via Batcher " if batcher else ""
            print(
                f"clients {concurrency:>3}  {how}events/request {batch:>5}: {row['transfers_per_s']:>7} transfers/s  "
                f"p50 {row['p50_ms']:>8.2f} ms  p99 {row['p99_ms']:>8.2f} ms  ({row['requests']} requests)",
                flush=True,
            )
        for _ in range(args.gap_rounds):
            gap = asyncio.run(_gap_round(cluster, ids))
            results["write_gap_ms"].append(round(gap * 1e3, 1))
            print(f"write gap after leader SIGKILL: {gap * 1e3:.0f} ms", flush=True)
        if results["write_gap_ms"]:
            gaps = results["write_gap_ms"]
            results["write_gap_median_ms"] = statistics.median(gaps)
            results["write_gap_max_ms"] = max(gaps)
            print(f"write gap: median {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms "
                  f"over {len(gaps)} kills")
        digest = cluster.wait_converged()
        results["final_state_digest"] = digest
        print(f"all replicas converged to digest {digest[:16]}")
    finally:
        cluster.stop()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
