"""Command line: ``python -m sim --seeds N`` or ``python -m sim --seed S --verbose``."""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import sys
import time

from sim.cluster import RunResult, Simulation


def _workload(name: str):
    if name == "log":
        return None
    from sim.ledger_workload import LedgerWorkload

    return LedgerWorkload


def _run_one(seed: int, *, replicas: int | None, workload: str, verbose: bool):
    sim = Simulation(seed, replicas=replicas, workload_factory=_workload(workload), verbose=verbose)
    try:
        return sim.run()
    except Exception as e:  # noqa: BLE001 - any crash is a finding, reported with its seed
        import traceback

        sim.checker.fail(f"crashed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        return RunResult(seed, sim.profile, list(sim.checker.violations), 0, 0, None, sim.events, False, sim.log_lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    ap.add_argument("--seeds", type=int, default=100, help="run seeds 1..N")
    ap.add_argument("--first", type=int, default=1, help="first seed of the range")
    ap.add_argument("--seed", type=int, help="run this one seed")
    ap.add_argument("--verbose", action="store_true", help="print the run's events")
    ap.add_argument("--replicas", type=int, choices=(3, 5), help="force the cluster size")
    ap.add_argument("--workload", choices=("ledger", "log"), default="ledger")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (seeds are independent)")
    args = ap.parse_args(argv)

    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    started = time.monotonic()
    failures = []
    election: list[int] = []
    chosen = acked = events = 0
    runner = functools.partial(_run_one, replicas=args.replicas, workload=args.workload, verbose=args.verbose)
    if args.jobs > 1 and len(seeds) > 1:
        pool = multiprocessing.get_context("fork").Pool(args.jobs)
        results = pool.imap(runner, seeds, chunksize=4)
    else:
        pool = None
        results = map(runner, seeds)
    for i, result in enumerate(results, 1):
        seed = result.seed
        chosen += result.chosen_slots
        acked += result.acked
        events += result.events
        if result.election_ticks is not None:
            election.append(result.election_ticks)
        if args.verbose:
            for line in result.log:
                print(line)
        if result.violations:
            failures.append(result)
            print(f"seed {seed}: {len(result.violations)} violation(s); profile {result.profile.describe()}")
            for v in result.violations[:5]:
                print(f"  {v}")
            print(f"  replay: make sim SEED={seed}")
        elif len(seeds) > 1 and i % 100 == 0:
            print(f"  ... {i}/{len(seeds)} seeds", file=sys.stderr)
    if pool is not None:
        pool.close()
        pool.join()
    elapsed = time.monotonic() - started
    med = statistics.median(election) if election else 0
    mx = max(election) if election else 0
    print(
        f"sim: seeds={len(seeds)} violations={len(failures)} seeds_per_s={len(seeds) / elapsed:.1f} "
        f"chosen_slots={chosen} acked={acked} events={events} "
        f"election_ticks_median={med} election_ticks_max={mx}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
