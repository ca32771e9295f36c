"""Benchmark a local three-replica cluster: throughput, latency, and the write gap after a leader SIGKILL.

    python -m cluster.bench [--quick] [--seconds 5] [--repeat 3] [--gap-rounds 10] [--out bench/results.json]
    make bench          # the full run; JSON to $BENCH_JSON (default bench/results.json)
    make bench-quick    # a shorter run (under two minutes)

Starts its own cluster (``cluster.local``: free loopback ports, temporary
data directory on this disk, synced LMDB) and measures, from one client
process (asyncio, one gRPC channel to the leader):

* single-transfer clients: 1, 16 and 64 concurrent callers, each sending one
  transfer per request and waiting for its answer, once with one unary
  ``CreateTransfers`` RPC per request and once with each request one message
  of a shared ``Ledger.Submit`` stream (what ``ledger.client`` sends; each
  request is still its own command with its own results);
* batched clients: 4 concurrent callers sending 1,000 (and, in the full run,
  8,000) transfers per request;
* the full run also repeats the batched load over 200,000 accounts (the
  account-count scaling check) and 256 callers through ``ledger.client.Batcher``;
* the write gap after a leader SIGKILL: a writer sends one transfer at a
  time through ``AsyncClient`` (leader discovery and retries included); the
  leader is killed; the gap is the largest time between two consecutive
  answers from the last answer before the kill through the 20th after it (an
  answer already on its way when the leader died may arrive just after the
  kill; the outage follows it). Repeated ``--gap-rounds`` times, the
  killed replica restarted and caught up in between. Elections other than the
  ones the kills cause are counted (``spurious_leader_changes``).

The load generator must not be what is measured: requests are encoded
straight to protobuf wire bytes (a transfer costs ~0.5 us to encode that way
against ~40 us through ``ledger.model.Transfer`` and ``client.transfer_pb``)
and sent on a raw gRPC method to the leader. By default a request carries its
transfers in the ``packed`` field (128-byte rows, what ``ledger.client``
sends); ``--encoding messages`` sends one ``Transfer`` message each instead,
which the leader parses one by one. Every answer is checked: each event must
be ``ok`` (or ``exists`` after a retry).

Figures depend on the machine: on 2 shared cores all three replicas and the
client compete for CPU, and every write is fsynced on every replica, and
two runs of one scenario minutes apart can differ by a third. So the full
run measures every load scenario ``--repeat`` times (3), in rounds of all
scenarios, and reports each scenario's median run (the JSON keeps every
run under ``runs``); the load average is recorded with each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import grpc

from cluster.local import LocalCluster, wait_until
from ledger.api_proto import pb, varint
from ledger.client import AsyncClient, Batcher, SubmitStream
from ledger.model import Account, Transfer

LEDGER = 1
ACCOUNTS = 10_000
ACCOUNTS_LARGE = 200_000  # 10,000,000 takes too long to create on a shared box
REPLICAS = 3
FSYNC = "on: LMDB synced commit on every replica (sync=True)"
_CREATE_TRANSFERS = "/ledgerdb.v1.Ledger/CreateTransfers"
_CREATE_ACCOUNTS = "/ledgerdb.v1.Ledger/CreateAccounts"
_TRANSFERS_FIELD = 4  # WriteRequest.create_transfers
_U128_ONE = (1).to_bytes(16, "big")
_ATTEMPT_TIMEOUT_S = 30.0
_ATTEMPTS_MAX = 30


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


class Ids:
    def __init__(self, start: int) -> None:
        self.next = start

    def take(self, n: int) -> range:
        r = range(self.next, self.next + n)
        self.next += n
        return r


class TransferEncoder:
    """CreateTransfersRequest wire bytes, one varying id per transfer.

    ``packed``: the request's ``packed`` field, one 128-byte row per transfer
    (``ledger.model.TRANSFER_ROW``): the id, then a precomputed 112-byte tail
    per (debit, credit) pair. Otherwise one ``Transfer`` message per transfer:
    field 1 (id) followed by a precomputed tail, equal to
    ``pb.Transfer(...).SerializeToString()``.
    """

    def __init__(self, accounts: int, packed: bool = True) -> None:
        self.accounts = accounts
        self.packed = packed
        self._tails: dict[tuple[int, int], bytes] = {}

    def _tail(self, debit: int, credit: int) -> bytes:
        tail = self._tails.get((debit, credit))
        if tail is None:
            if self.packed:
                tail = Transfer(id=0, debit_account_id=debit, credit_account_id=credit, amount=1,
                                ledger=LEDGER, code=1).pack()[16:]
            else:
                tail = pb.Transfer(debit_account_id=debit.to_bytes(16, "big"),
                                   credit_account_id=credit.to_bytes(16, "big"),
                                   amount=_U128_ONE, ledger=LEDGER, code=1).SerializeToString()
            if len(self._tails) < 100_000:
                self._tails[(debit, credit)] = tail
        return tail

    def request(self, ids: range, worker: int) -> bytes:
        n = self.accounts
        parts = []
        for i in ids:
            debit = 1 + (i * 7919) % n
            credit = 1 + (debit + 1 + worker % (n - 1)) % n
            if credit == debit:
                credit = 1 + debit % n
            if self.packed:
                parts.append(i.to_bytes(16, "big") + self._tail(debit, credit))
            else:
                body = b"\x0a\x10" + i.to_bytes(16, "big") + self._tail(debit, credit)
                parts.append(b"\x0a" + varint(len(body)) + body)
        return _field(2, b"".join(parts)) if self.packed else b"".join(parts)


def _accounts_request(ids: range) -> bytes:
    return _field(2, b"".join(Account(id=i, ledger=LEDGER, code=1).pack() for i in ids))


class Leader:
    """A raw channel to the current leader; found again after an error."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.channel: grpc.aio.Channel | None = None
        self.old_channels: list[grpc.aio.Channel] = []  # other workers may still be using them
        self.address = ""
        self.errors = 0
        self.stream: SubmitStream | None = None  # Ledger.Submit on ``stream_channel``
        self.stream_channel: grpc.aio.Channel | None = None

    async def find(self) -> None:
        rid = await asyncio.to_thread(self.cluster.wait_leader)
        address = self.cluster.addresses[rid]
        if address != self.address:
            if self.channel is not None:
                self.old_channels.append(self.channel)
            self.address = address
            self.channel = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
            self.transfers = self.channel.unary_unary(
                _CREATE_TRANSFERS, response_deserializer=pb.CreateTransfersResponse.FromString)
            self.accounts = self.channel.unary_unary(
                _CREATE_ACCOUNTS, response_deserializer=pb.CreateAccountsResponse.FromString)

    def _stream(self) -> SubmitStream:
        if self.stream is None or self.stream.failure is not None or self.stream_channel is not self.channel:
            self.stream = SubmitStream(self.channel)
            self.stream_channel = self.channel
        return self.stream

    async def _over_stream(self, request: bytes, timeout: float):
        """CreateTransfers as one message of the leader's Ledger.Submit stream."""
        response = await self._stream().submit(_TRANSFERS_FIELD, request, timeout)
        if response.HasField("error"):
            busy = response.error.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if busy else grpc.StatusCode.UNAVAILABLE
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), response.error.message)
        return response

    async def call(self, method: str, request: bytes, events: int):
        """``method``: "transfers" or "accounts" (unary), or "stream" (transfers over Ledger.Submit)."""
        for attempt in range(_ATTEMPTS_MAX):
            try:
                if method == "stream":
                    response = await self._over_stream(request, _ATTEMPT_TIMEOUT_S)
                else:
                    response = await getattr(self, method)(request, timeout=_ATTEMPT_TIMEOUT_S)
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as e:
                self.errors += 1
                if attempt == _ATTEMPTS_MAX - 1:
                    raise
                await asyncio.sleep(0.02 * (attempt + 1))
                if getattr(e, "code", lambda: None)() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await self.find()  # an election (counted in the results)
                continue  # the same ids again: answered ok or exists
            results = response.results
            assert len(results) == events, (len(results), events)
            for r in results:
                if r.code:
                    assert r.name == "exists", (r.index, r.name)
            return

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        for channel in self.old_channels + [self.channel]:
            if channel is not None:
                await channel.close()


async def _create_accounts(cluster: LocalCluster, first: int, count: int) -> None:
    leader = Leader(cluster)
    await leader.find()
    ids = Ids(first)
    step = 8_000
    sem = asyncio.Semaphore(4)

    async def one(r: range) -> None:
        async with sem:
            await leader.call("accounts", _accounts_request(r), len(r))

    await asyncio.gather(*(one(ids.take(min(step, first + count - ids.next)))
                           for _ in range((count + step - 1) // step)))
    await leader.close()


async def _load(cluster: LocalCluster, concurrency: int, batch: int, seconds: float, ids: Ids,
                accounts: int, batcher: bool = False, packed: bool = True, stream: bool = False) -> dict:
    latencies: list[float] = []
    transfers = 0
    encoder = TransferEncoder(accounts, packed)
    leader = Leader(cluster)
    await leader.find()
    client = AsyncClient(list(cluster.addresses.values()), timeout_s=30) if batcher else None
    packer = Batcher(client) if client is not None else None
    load_before = os.getloadavg()[0]

    async def worker(w: int) -> None:
        nonlocal transfers
        while time.monotonic() < stop_at:
            r = ids.take(batch)
            if packer is not None:
                i = r[0]
                t0 = time.perf_counter()
                result = await packer.create_transfer(Transfer(
                    id=i, debit_account_id=1 + i % accounts, credit_account_id=1 + (i + 1) % accounts,
                    amount=1, ledger=LEDGER, code=1))
                assert result.name in ("ok", "exists"), result
            else:
                request = encoder.request(r, w)
                t0 = time.perf_counter()
                await leader.call(method, request, batch)
            latencies.append(time.perf_counter() - t0)
            transfers += batch

    method = "stream" if stream else "transfers"
    # Warm up the channel (and the leader's caches) first.
    await leader.call(method, encoder.request(ids.take(batch), 0), batch)
    stop_at = time.monotonic() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await leader.close()
    if client is not None:
        await client.close()
    latencies.sort()
    return {
        "clients": concurrency, "batch_size": batch, "batcher": batcher, "accounts": accounts,
        "replicas": REPLICAS, "fsync": FSYNC, "seconds": round(elapsed, 2),
        "encoding": "Batcher (packed rows)" if batcher else "packed rows" if packed else "Transfer messages",
        "transport": "Ledger.Submit stream, one message per request" if stream or batcher
        else "one unary RPC per request",
        "requests": len(latencies), "transfers": transfers,
        "transfers_per_s": round(transfers / elapsed),
        "p50_ms": round(_percentile(latencies, 0.50) * 1e3, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 2),
        "client_errors": leader.errors,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
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
    # The largest gap between consecutive answers from the last one before
    # the kill through the 20th after it: an answer already on its way when
    # the leader died arrives after the kill, and the outage follows it.
    first_after = next(i for i, a in enumerate(answers) if a > killed_at[0])
    around = answers[max(0, first_after - 1):first_after + 20]
    gap = max(b - a for a, b in zip(around, around[1:]))
    await asyncio.to_thread(cluster.restart, leader)
    await asyncio.to_thread(lambda: wait_until(lambda: leader in cluster.statuses(), 30, "restart"))
    await asyncio.to_thread(cluster.wait_converged)
    return gap


_RUN_KEYS = ("transfers_per_s", "p50_ms", "p99_ms", "requests", "client_errors", "load_average",
             "leader_ballot_after")


def _median_run(rows: list[dict]) -> dict:
    """The run with the median throughput (the lower middle one of an even count)."""
    ordered = sorted(rows, key=lambda r: r["transfers_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def _print_row(row: dict, scenario: tuple, tail: str = "") -> None:
    concurrency, batch, batcher, accounts, stream = scenario
    how = " (Batcher)" if batcher else "  stream" if stream else "  unary"
    print(f"{concurrency:>7} {batch:>10} {accounts:>9} {row['transfers_per_s']:>12} {row['p50_ms']:>8.2f} "
          f"{row['p99_ms']:>8.2f} {row['requests']:>9} {row['load_average'][1]:>5.1f}{how}{tail}", flush=True)


def _leader_ballot(cluster: LocalCluster) -> str:
    rid = cluster.wait_leader()
    return str(cluster.statuses()[rid].ballot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter scenarios (under two minutes)")
    parser.add_argument("--seconds", type=float, help="duration of each load run (default 5; quick 3)")
    parser.add_argument("--gap-rounds", type=int, help="leader kills (default 10; quick 3)")
    parser.add_argument("--repeat", type=int,
                        help="runs of every load scenario, in rounds; figures are each one's median run "
                             "(default 3; quick 1)")
    parser.add_argument("--encoding", choices=("packed", "messages"), default="packed",
                        help="CreateTransfers as packed 128-byte rows (default) or one Transfer message each")
    parser.add_argument("--tick-ms", type=int,
                        help="consensus tick period of the bench cluster (default: the topology default)")
    parser.add_argument("--out", default=os.environ.get("BENCH_JSON", "bench/results.json"),
                        help="write the figures as JSON here (default $BENCH_JSON or bench/results.json)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 5.0)
    gap_rounds = args.gap_rounds if args.gap_rounds is not None else (3 if args.quick else 10)
    repeat = args.repeat or (1 if args.quick else 3)
    # (clients, events per request, through Batcher, accounts, over the Ledger.Submit stream)
    singles = [(n, 1, False, ACCOUNTS, stream) for n in ((1, 64) if args.quick else (1, 16, 64))
               for stream in (False, True)]
    scenarios = singles + [(4, 1000, False, ACCOUNTS, False)]
    if not args.quick:
        scenarios += [(4, 8000, False, ACCOUNTS, False), (256, 1, True, ACCOUNTS, True),
                      (4, 1000, False, ACCOUNTS_LARGE, False)]

    started = time.time()
    cluster = LocalCluster(REPLICAS, cluster_id="bench")
    if args.tick_ms:
        with open(cluster.topology, "a") as f:
            f.write(f"\n[timing]\ntick_ms = {args.tick_ms}\n")
    results: dict = {
        "mode": "quick" if args.quick else "full", "started_unix": round(started),
        "load_average_start": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        "tick_ms": args.tick_ms or "default", "encoding": args.encoding, "repeat": repeat, "load": [],
        "write_gap_ms": [],
    }
    print(f"bench ({results['mode']}): {REPLICAS} replicas on loopback, fsync {FSYNC}; "
          f"load average {results['load_average_start'][0]:.2f} on {os.cpu_count()} cores", flush=True)
    try:
        cluster.start()
        asyncio.run(_create_accounts(cluster, 1, ACCOUNTS))
        accounts_made = ACCOUNTS
        ids = Ids(1_000_000_000)
        print(f"{'clients':>7} {'events/req':>10} {'accounts':>9} {'transfers/s':>12} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'requests':>9} {'load':>5}", flush=True)
        ballot_before = _leader_ballot(cluster)
        # Rounds of every scenario in turn (not one scenario N times in a row),
        # so that a slow spell of the box spreads over scenarios; each figure
        # reported is the scenario's median run.
        runs: list[list[dict]] = [[] for _ in scenarios]
        for round_ in range(repeat):
            if repeat > 1:
                print(f"-- round {round_ + 1} of {repeat}", flush=True)
            for i, (concurrency, batch, batcher, accounts, stream) in enumerate(scenarios):
                if accounts > accounts_made:
                    t0 = time.monotonic()
                    asyncio.run(_create_accounts(cluster, accounts_made + 1, accounts - accounts_made))
                    print(f"(created {accounts - accounts_made} more accounts in {time.monotonic() - t0:.1f} s)",
                          flush=True)
                    accounts_made = accounts
                row = asyncio.run(_load(cluster, concurrency, batch, seconds, ids, accounts, batcher,
                                        args.encoding == "packed", stream))
                row["leader_ballot_after"] = _leader_ballot(cluster)  # which scenario an election fell in
                runs[i].append(row)
                _print_row(row, scenarios[i])
        for i, scenario_runs in enumerate(runs):
            row = dict(_median_run(scenario_runs))
            row["runs"] = [{k: r[k] for k in _RUN_KEYS} for r in scenario_runs]
            results["load"].append(row)
        if repeat > 1:
            print(f"-- medians of {repeat} runs (transfers/s min-max in brackets)", flush=True)
            for i, row in enumerate(results["load"]):
                spread = [r["transfers_per_s"] for r in row["runs"]]
                _print_row(row, scenarios[i], f" [{min(spread)}-{max(spread)}]")
        ballot_after = _leader_ballot(cluster)
        results["spurious_leader_changes"] = int(ballot_after != ballot_before)
        results["leader_ballot_before_after_load"] = [ballot_before, ballot_after]
        for _ in range(gap_rounds):
            gap = asyncio.run(_gap_round(cluster, ids))
            results["write_gap_ms"].append(round(gap * 1e3, 1))
            print(f"write gap after leader SIGKILL: {gap * 1e3:.0f} ms", flush=True)
        digest = cluster.wait_converged()
        results["final_state_digest"] = digest
        print(f"all replicas converged to digest {digest[:16]}")
    finally:
        cluster.stop()
    _summarize(results, seconds, gap_rounds)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"figures written to {args.out}")
    return 0


def _summarize(results: dict, seconds: float, gap_rounds: int) -> None:
    """The headline keys (issue 8), each with the conditions it was measured under."""
    rows = results["load"]
    base = {"replicas": REPLICAS, "fsync": FSYNC, "seconds": seconds}
    batched = [r for r in rows if r["batch_size"] >= 1000 and r["accounts"] == ACCOUNTS]
    if batched:
        best = max(batched, key=lambda r: r["transfers_per_s"])
        results["batched_transfers_per_s"] = best["transfers_per_s"]
        results["batched_conditions"] = dict(base, clients=best["clients"], batch_size=best["batch_size"],
                                             accounts=best["accounts"])
    # Single-transfer figures: the headline keys over the Ledger.Submit stream
    # (what ledger.client sends), the same keys with "_unary" over one RPC each.
    for suffix, streamed in (("", True), ("_unary", False)):
        single = [r for r in rows if r["batch_size"] == 1 and r["clients"] == 64 and not r["batcher"]
                  and r["transport"].startswith("Ledger.Submit") == streamed]
        if single:
            results[f"single{suffix}_transfers_per_s"] = single[0]["transfers_per_s"]
            results[f"single{suffix}_p99_ms"] = single[0]["p99_ms"]
            results[f"single{suffix}_conditions"] = dict(base, clients=64, batch_size=1, accounts=single[0]["accounts"],
                                                         transport=single[0]["transport"])
        one = [r for r in rows if r["batch_size"] == 1 and r["clients"] == 1
               and r["transport"].startswith("Ledger.Submit") == streamed]
        if one:
            results[f"single_client{suffix}_p50_ms"] = one[0]["p50_ms"]
            results[f"single_client{suffix}_conditions"] = dict(base, clients=1, batch_size=1,
                                                                accounts=one[0]["accounts"],
                                                                transport=one[0]["transport"])
    large = [r for r in rows if r["accounts"] == ACCOUNTS_LARGE]
    small = [r for r in rows if r["accounts"] == ACCOUNTS and r["clients"] == 4 and r["batch_size"] == 1000]
    if large and small:
        results["accounts_scaling"] = {
            "accounts": [ACCOUNTS, ACCOUNTS_LARGE],
            "batched_transfers_per_s": [small[0]["transfers_per_s"], large[0]["transfers_per_s"]],
            "conditions": dict(base, clients=4, batch_size=1000),
        }
    gaps = results["write_gap_ms"]
    if gaps:
        results["failover_ms_median"] = round(statistics.median(gaps), 1)
        results["failover_ms_max"] = max(gaps)
        results["failover_conditions"] = dict(
            base, kills=len(gaps), clients=1, batch_size=1,
            what="leader SIGKILL under a one-transfer-at-a-time writer; gap between answers")
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print("summary")
    for key, unit in (("batched_transfers_per_s", "/s"), ("single_transfers_per_s", "/s"),
                      ("single_p99_ms", " ms"), ("single_client_p50_ms", " ms"),
                      ("single_unary_transfers_per_s", "/s"), ("single_unary_p99_ms", " ms"),
                      ("single_client_unary_p50_ms", " ms"),
                      ("failover_ms_median", " ms"), ("failover_ms_max", " ms")):
        if key in results:
            print(f"  {key:<26} {results[key]}{unit}")
    if "accounts_scaling" in results:
        s = results["accounts_scaling"]
        print(f"  accounts {s['accounts'][0]:,} -> {s['accounts'][1]:,}: "
              f"{s['batched_transfers_per_s'][0]} -> {s['batched_transfers_per_s'][1]} transfers/s")
    print(f"  load average {results['load_average_start'][0]} -> {results['load_average_end'][0]}")


if __name__ == "__main__":
    raise SystemExit(main())
