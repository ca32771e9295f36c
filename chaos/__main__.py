"""Chaos suite commands.

    python -m chaos quick [--network loopback|netns] [--topology one-city]
        a short schedule on one topology; ends with one line
        "chaos: valid=<true|false> ..." and exits 1 when any checker fails
    python -m chaos full [--network ...]
        the survival matrix: every shipped topology under every fault
    python -m chaos run --topology T --schedule kill:leader,partition [--fault-s 6 --gap-s 5 ...]
    python -m chaos rtt [--network netns|loopback] [--topology three-cities]
        measure the round-trip times the delay stage gives between zones
    python -m chaos gaps RUN_DIR [--top 10]
        the longest gaps between acknowledged writes of a run, with the fault windows they overlap
    python -m chaos cleanup [--all]
        kill processes, delete namespaces and unmount tmpfs left by runs whose process
        has died (a run running now keeps its own); --all: everything of every run

``--toxiproxy URL`` uses a real Toxiproxy server instead of the bundled one
(loopback network).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from chaos import netns, runner

TOPOLOGIES = ("one-city", "two-cities", "three-cities")
QUICK_SCHEDULE = ["kill:leader", "partition", "pause:leader", "clock-drift:leader", "fsync-fail:follower"]
QUICK_LAST = {"loopback": ["toxic-latency:leader"], "netns": ["one-way", "toxic-latency:leader"]}


TOXIC_SCHEDULE = ["toxic-latency:leader", "toxic-timeout:leader", "toxic-reset:follower", "toxic-latency:follower"]


def full_schedule(topology: str, network: str) -> list[str]:
    s = ["kill:leader", "kill:follower", "pause:leader", "isolate:leader", "leader-alone", "partition",
         "bridge", "one-way", "clock-step:leader", "clock-drift:leader", "fsync-fail:leader", "disk-full:leader"]
    s += ["replace"]  # lose the last replica for good; a spare from an empty directory replaces it
    s += TOXIC_SCHEDULE  # loopback: the bundled (or a real) Toxiproxy; netns: each host's delay stage
    if topology == "one-city":
        s += ["lose-dc:fra-a", "lose-dc:fra-b:kill"]
    elif topology == "two-cities":
        s += ["lose-dc:fra-a", "lose-city:paris", "lose-city:frankfurt", "lose-city:paris:kill"]
    else:
        s += ["lose-dc:fra-a", "lose-city:frankfurt", "lose-city:paris", "lose-city:amsterdam",
              "lose-city:paris:kill"]
    return s


def _default_network() -> str:
    return "netns" if netns.is_root() else "loopback"


def _interrupt_cleanly() -> None:
    # SIGTERM as Ctrl-C: the runner's finally blocks stop replicas and delete namespaces
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def _print_run(r: dict) -> None:
    for row in r.get("survival", []):
        if row.get("skipped"):
            print(f"  {row['fault']:<26} {row['what']}")
            continue
        extra = f" replaced_after_s={row['replaced_after_s']:.2f}" if "replaced_after_s" in row else ""
        print(f"  {row['fault']:<26} writes_continued={str(row['writes_continued']).lower():<5} "
              f"rto_s={row['rto_s']:.2f} lost={row['rpo_lost_acknowledged']}{extra}  ({row['what']})")
    for v in r.get("verdicts", []):
        print(f"  checker {v['checker']}: valid={v['valid']} {v['stats']} {v['errors'][:2]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--network", choices=("loopback", "netns"), default=None,
                        help="default: netns as root, else loopback")
        sp.add_argument("--toxiproxy", help="URL of a real Toxiproxy server (loopback network)")
        sp.add_argument("--seed", type=int, default=int(time.time()) % 100000)
        sp.add_argument("--fault-s", type=float, default=None)
        sp.add_argument("--gap-s", type=float, default=None)
        sp.add_argument("--concurrency", type=int, default=3)

    sp = sub.add_parser("quick", help="short schedule, one topology, one summary line")
    common(sp)
    sp.add_argument("--topology", default="one-city")
    sp = sub.add_parser("full", help="every topology under every fault; survival matrix")
    common(sp)
    sp.add_argument("--topologies", default=",".join(TOPOLOGIES))
    sp = sub.add_parser("run", help="one run with a given schedule")
    common(sp)
    sp.add_argument("--topology", default="one-city")
    sp.add_argument("--schedule", default="kill:leader")
    sp.add_argument("--stale-reads", action="store_true",
                    help="make the register workload read locally at any replica (a known bug: the checker must fail)")
    sp = sub.add_parser("rtt", help="measure the zone round-trip times")
    sp.add_argument("--network", choices=("loopback", "netns"), default=None)
    sp.add_argument("--topology", default="three-cities")
    sp = sub.add_parser("gaps", help="the longest write gaps of a run and the faults around them")
    sp.add_argument("run_dir")
    sp.add_argument("--top", type=int, default=10)
    sp = sub.add_parser("cleanup", help="remove what runs whose process died left")
    sp.add_argument("--all", action="store_true", help="also what live runs (and older versions) hold")
    args = p.parse_args(argv)

    if args.cmd == "cleanup":
        gone, kept = runner.cleanup(everything=args.all)
        print("removed: " + (", ".join(gone) if gone else "nothing"))
        if kept:
            print("kept (their run is alive, or they name no owner; --all removes them): " + ", ".join(kept))
        return 0
    if args.cmd == "gaps":
        for g in runner.write_gaps(args.run_dir, args.top):
            print(f"{g['gap_s']:7.3f} s  from t={g['from_s']:8.2f} to {g['to_s']:8.2f}  "
                  f"(monotonic {g['from_monotonic']:.3f})  during: {'; '.join(g['windows'])}")
            for rid, states in g["replicas"].items():
                print(f"           {rid}: {states}")
        return 0
    if args.cmd == "rtt":
        from chaos import rtt

        return rtt.main(args.topology, args.network or _default_network())

    _interrupt_cleanly()
    network = args.network or _default_network()
    configs = []
    if args.cmd == "quick":
        configs.append(runner.RunConfig(topology=args.topology, network=network, schedule=QUICK_SCHEDULE + QUICK_LAST[network],
                                        fault_s=args.fault_s or 5.0, gap_s=args.gap_s or 4.0, seed=args.seed,
                                        concurrency=args.concurrency, toxiproxy_url=args.toxiproxy))
    elif args.cmd == "run":
        configs.append(runner.RunConfig(topology=args.topology, network=network,
                                        schedule=args.schedule.split(","), fault_s=args.fault_s or 6.0,
                                        gap_s=args.gap_s or 5.0, seed=args.seed, concurrency=args.concurrency,
                                        toxiproxy_url=args.toxiproxy, stale_reads=args.stale_reads))
    else:
        for t in args.topologies.split(","):
            configs.append(runner.RunConfig(topology=t, network=network, schedule=full_schedule(t, network),
                                            fault_s=args.fault_s or 8.0, gap_s=args.gap_s or 6.0,
                                            seed=args.seed, concurrency=args.concurrency,
                                            toxiproxy_url=args.toxiproxy))
    results = []
    try:
        for i, cfg in enumerate(configs):
            total = len(cfg.schedule)
            done = [0]

            def progress(spec, i=i, cfg=cfg, total=total, done=done):
                done[0] += 1
                bar = "#" * done[0] + "." * (total - done[0])
                print(f"\r[{i + 1}/{len(configs)} {cfg.topology}] [{bar}] {spec:<24}", end="",
                      file=sys.stderr, flush=True)

            r = runner.execute(cfg, progress=progress)
            print(file=sys.stderr)
            results.append(r)
            print(f"{cfg.topology} ({cfg.network}): valid={str(r['valid']).lower()} run={r['run_dir']}")
            _print_run(r)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    if args.cmd == "full" and results:
        from chaos import report

        path = report.write_matrix(runner.RUNS_ROOT / "survival.html", results)
        (runner.RUNS_ROOT / "survival.json").write_text(json.dumps(
            [{"topology": r["topology"], "network": r["network"], "valid": r["valid"], "survival": r["survival"]}
             for r in results], indent=2))
        print(f"survival matrix: {path}")
    print(runner.summary_line(results))
    return 0 if results and all(r["valid"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
