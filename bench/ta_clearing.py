"""Orders confirmed per second clearing a generated day on a local three-replica cluster.

    .venv/bin/python bench/ta_clearing.py --orders 100000 --accounts 10000 --shards 16

Starts a fresh cluster of real replica processes on 127.0.0.1 (free ports, a
temporary directory), runs ``ta.bench.run`` against it through the
replicated ledger, prints the figures as JSON, and kills every replica by PID
at the end. ``--twin`` runs the same day on the in-process state machine
instead, for comparison.

Measured here (2 cores shared with other workloads, 3 replicas + the clearing
process on one machine, 16 shards, 4 workers), 2026-11-26:

    orders   accounts  CONFIRM s  orders/s CONFIRM  orders/s import+clear
    100,000    10,000       92.6             1,080                    504
    300,000    30,000      180.6             1,661                    906
  1,000,000   100,000      642.4             1,557                    873

The CONFIRM step is bound by the Python planning (arithmetic, ids, rows) of
one process under the GIL; the ledger books each request of up to 8,190
transfers in one slot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ta.bench import run  # noqa: E402
from ta.cli import ProgressBar  # noqa: E402
from ta.store import ClusterStore, TwinStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--twin", action="store_true")
    args = parser.parse_args()
    progress = ProgressBar(enabled=True)
    if args.twin:
        result = run(TwinStore(), orders_n=args.orders, accounts_n=args.accounts, shards=args.shards,
                     date="20270104", workers=args.workers, progress=progress)
        result["store"] = "twin (in-process state machine)"
    else:
        from cluster_harness import LocalCluster

        cluster = LocalCluster(3, cluster_id="ta-bench")
        try:
            cluster.start()
            cluster.wait_leader()
            store = ClusterStore(list(cluster.addresses.values()), timeout_s=120.0)
            try:
                result = run(store, orders_n=args.orders, accounts_n=args.accounts, shards=args.shards,
                             date="20270104", workers=args.workers, progress=progress)
            finally:
                store.close()
            result["store"] = "local 3-replica cluster (127.0.0.1)"
        finally:
            cluster.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
