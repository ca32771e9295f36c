"""``python -m ta``: the TA's command line over a ledger cluster.

    python -m ta --cluster cluster/topologies/one-city.toml load reference.toml
    python -m ta --cluster TOPO import 20261126 inbox/
    python -m ta --cluster TOPO clear 20261126 --inbox inbox/ --out outbox/ --shards 16
    python -m ta --cluster TOPO status 20261126 [--json]
    python -m ta --cluster TOPO export 20261126 --out outbox/
    python -m ta --cluster TOPO rollback 20261126 --to BP0 | --to after:DIVIDEND
                                                  | --account TAACCT/DIST/TXNACCT | --file NAME
    python -m ta --cluster TOPO pause|resume|retry 20261126
    python -m ta --cluster TOPO serve --port 7300          # the transaction service
    python -m ta --cluster TOPO bench --orders 100000 --accounts 10000

``--addresses host:port,...`` may replace ``--cluster``; so may the
environment variable ``TA_LEDGER`` (addresses, comma-separated). Every
command prints a short human summary, or with ``--json`` one JSON document.
Exit status: 0 done, 1 the day cannot go on (checks failed, paused, a
refused input: the message says why), 2 usage or reference data errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ta import reference
from ta.clearing import ChecksFailed, Clearing, ClearingError, Paused
from ta.ids import HolderKey
from ta.store import ClusterStore


class ProgressBar:
    """One line per step on stderr, redrawn in place on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = ""
        self.started = time.monotonic()

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // total if total else width
        line = f"{step:<12} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} " \
               f"{time.monotonic() - self.started:6.1f}s"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(len(self.last)))
            if done >= total:
                sys.stderr.write("\n")
        elif done >= total or step != self.last.split(" ")[0]:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.last = line


def _store(args) -> ClusterStore:
    if args.cluster:
        return ClusterStore.for_topology(args.cluster)
    addresses = args.addresses or os.environ.get("TA_LEDGER", "")
    if not addresses:
        raise SystemExit("give the ledger: --cluster TOPOLOGY.toml or --addresses host:port,... "
                         "(or TA_LEDGER=host:port,...)")  # fmt: skip
    return ClusterStore([a.strip() for a in addresses.split(",") if a.strip()])


def _emit(args, value, human: str) -> None:
    if args.json:
        print(json.dumps(value, indent=2, sort_keys=True, default=str))
    else:
        print(human)


def _status_text(status: dict) -> str:
    if status.get("status") == "absent":
        return f"{status['date']}: nothing imported or cleared"
    lines = [f"{status['date']}: {status['status']}  run {status['run']}  gen {status['gen']}  "
             f"shards {status['shards']}{'  PAUSED' if status['paused'] else ''}"]  # fmt: skip
    for input_id, info in sorted(status["inputs"].items()):
        extra = f"{info.get('new', 0)} new, {info.get('resent', 0)} re-sent" if info["status"] == "imported" \
            else f"{info.get('code', '')} {info.get('reason', '')} (line {info.get('line', 0)})"
        lines.append(f"  input {input_id}: {info['status']} {extra}")
    for u in status["units"]:
        err = f"  ERROR {u['error']}" if u.get("error") else ""
        lines.append(f"  {u['step']:<9} fund {u['fund']:<6} shard {str(u['shard'])[:40]:<6} "
                     f"{u['status']:<11} attempts {u['attempts']}{err}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ta", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", help="topology TOML of the ledger cluster")
    parser.add_argument("--addresses", help="ledger replicas host:port,host:port,...")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--workers", type=int, default=4, help="parallel CONFIRM workers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load", help="load a reference data file (TOML or JSON)")
    p.add_argument("file")
    p = sub.add_parser("import", help="import a directory of distributor files for a date")
    p.add_argument("date")
    p.add_argument("directory")
    p.add_argument("--shards", type=int, default=1)
    p = sub.add_parser("clear", help="run or resume the day's batch")
    p.add_argument("date")
    p.add_argument("--inbox")
    p.add_argument("--out")
    p.add_argument("--shards", type=int, default=None)
    p = sub.add_parser("export", help="write a checked day's files to a directory")
    p.add_argument("date")
    p.add_argument("--out", required=True)
    p = sub.add_parser("status", help="a day's flow table and inputs")
    p.add_argument("date")
    p = sub.add_parser("rollback", help="reverse part of a day (never deletes)")
    p.add_argument("date")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", help="BP0 or after:<STEP>")
    group.add_argument("--account", help="TAACCOUNT/DISTRIBUTOR/TRANSACTIONACCOUNT")
    group.add_argument("--file", help="an input file name")
    for name in ("pause", "resume", "retry"):
        p = sub.add_parser(name, help=f"{name} a day's batch")
        p.add_argument("date")
    p = sub.add_parser("serve", help="run the transaction service (gRPC)")
    p.add_argument("--port", type=int, default=7300)
    p.add_argument("--host", default="127.0.0.1")
    p = sub.add_parser("bench", help="clear a generated day and report orders confirmed per second")
    p.add_argument("--orders", type=int, default=100_000)
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--date", default="20270104")
    args = parser.parse_args(argv)

    try:
        store = _store(args)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    progress = ProgressBar(enabled=not args.json)
    clearing = Clearing(store, workers=args.workers, progress=progress)
    try:
        if args.command == "load":
            doc = reference.read_file(args.file)
            version = reference.load(store, doc)
            _emit(args, {"loaded": version, "funds": len(doc["funds"]), "holders": len(doc["holders"])},
                  f"reference data effective {version} loaded: {len(doc['funds'])} funds, "
                  f"{len(doc['holders'])} holders, {len(doc['adjustments'])} adjustments")  # fmt: skip
        elif args.command == "import":
            outcomes = clearing.import_dir(args.date, args.directory, shards=args.shards)
            lines = [f"{o['file']}: {o['status']}" + (f" {o.get('code')} {o.get('reason')} (line {o.get('line')})"
                                                     if o["status"] == "rejected" else "") for o in outcomes]
            _emit(args, outcomes, "\n".join(lines) or "no index file for this date in the directory")
            if any(o["status"] == "rejected" for o in outcomes):
                return 1
        elif args.command == "clear":
            status = clearing.clear(args.date, shards=args.shards, inbox=args.inbox, outbox=args.out)
            _emit(args, status, _status_text(status))
        elif args.command == "export":
            files = clearing.export(args.date, args.out)
            _emit(args, files, "\n".join(f"{n}  sha256 {h[:16]}" for n, h in files.items()))
        elif args.command == "status":
            status = clearing.status(args.date)
            _emit(args, status, _status_text(status))
        elif args.command == "rollback":
            if args.to:
                result = clearing.rollback_to(args.date, args.to)
            elif args.account:
                parts = args.account.split("/")
                if len(parts) != 3:
                    print("--account is TAACCOUNT/DISTRIBUTOR/TRANSACTIONACCOUNT", file=sys.stderr)
                    return 2
                result = clearing.rollback_holders(args.date, [HolderKey(*parts)])
            else:
                result = clearing.rollback_file(args.date, args.file)
            _emit(args, result, f"rolled back: {json.dumps(result, default=str)}; "
                                f"run `ta clear {args.date}` to clear it again")  # fmt: skip
        elif args.command in ("pause", "resume"):
            state = clearing.pause(args.date, args.command == "pause")
            _emit(args, {"date": args.date, "paused": state.paused},
                  f"{args.date}: {'paused' if state.paused else 'resumed'}")
        elif args.command == "retry":
            n = clearing.retry(args.date)
            _emit(args, {"date": args.date, "retry": n}, f"{n} failed units will run again on `ta clear`")
        elif args.command == "serve":
            from ta.txservice import serve

            serve(store, args.host, args.port)
        elif args.command == "bench":
            from ta.bench import run

            result = run(store, orders_n=args.orders, accounts_n=args.accounts, shards=args.shards,
                         date=args.date, workers=args.workers, progress=progress)  # fmt: skip
            _emit(args, result, "\n".join(f"{k}: {v}" for k, v in result.items()))
    except ChecksFailed as e:
        _emit(args, {"error": "checks failed", "failures": e.failures},
              "CHECK failed; export and close are blocked:\n  " + "\n  ".join(e.failures))
        return 1
    except (Paused, ClearingError) as e:
        _emit(args, {"error": str(e)}, f"error: {e}")
        return 1
    except reference.ReferenceError as e:
        _emit(args, {"error": str(e)}, f"reference data refused: {e}")
        return 2
    finally:
        store.close()
    return 0
