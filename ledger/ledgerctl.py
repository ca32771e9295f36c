"""ledgerctl: command-line access to a ledger cluster.

    python -m ledger.ledgerctl [--cluster TOPOLOGY | --address HOST:PORT,...] [--json] COMMAND ...

    status                                        replicas, roles, ballot, indexes, digests
    accounts create --id 1 --ledger 1 --code 10 [--flags debits_must_not_exceed_credits,history]
    accounts get ID [ID ...]
    transfer --id 100 --debit 1 --credit 2 --amount 50 --ledger 1 --code 1 [--pending [--timeout S]]
    transfer --id 101 --post 100 [--amount N]     post a pending transfer (all, or N)
    transfer --id 102 --void 100                  void a pending transfer
    transfers get ID [ID ...]
    transfers list --account 1 [--limit N] [--reversed]
    kv put KEY VALUE | kv get KEY | kv delete KEY
    kv cas KEY --expect VERSION VALUE             VERSION 0: the key must not exist
    kv range [--prefix P | --start A --end B] [--limit N]
    leader transfer r2

TLS: with a topology that has a ``[tls]`` table, ledgerctl connects with the
certificates of its cert dir: the admin identity for admin commands (leader,
members), the ordinary client identity for everything else; ``--identity``
picks one, and ``--cert/--key/--ca`` (or ``--cert-dir``) give other files.
With ``--address`` and none of these it connects in plaintext.

Ids and amounts are decimal or 0x-hex integers up to 2**128-1. Reads are
linearizable; ``--stale`` reads a replica's local state instead. Every command
prints JSON with ``--json``. Errors say what went wrong and how to fix it, and
exit non-zero (2: bad usage or request, 3: cluster unavailable, 4: event
results other than ok/exists).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from cluster.certs import CertError, TlsCredentials
from ledger import errors
from ledger.client import LINEARIZABLE, LOCAL, Client
from ledger.model import U128_MAX, Account, AccountFlags, Transfer, TransferFlags

def _default_cluster() -> str:
    """$LEDGER_CLUSTER, else the cluster `python -m cluster up/run` last started here, else one-city."""
    if os.environ.get("LEDGER_CLUSTER"):
        return os.environ["LEDGER_CLUSTER"]
    try:
        run_dir = open(os.path.join("data", ".current")).read().strip()
        with open(os.path.join(run_dir, "cluster.json")) as f:
            return json.load(f)["topology"]
    except (OSError, ValueError, KeyError):
        return "one-city"


DEFAULT_CLUSTER = _default_cluster()
# Commands that need the admin identity (ledger.server_auth's policy).
ADMIN_COMMANDS = frozenset({"leader", "members"})


def _recorded_cert_dir(topology_path: str) -> str | None:
    """The absolute cert dir `python -m cluster up` recorded for this topology, if it is the current one."""
    try:
        run_dir = open(os.path.join("data", ".current")).read().strip()
        with open(os.path.join(run_dir, "cluster.json")) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    if os.path.realpath(state.get("topology", "")) == os.path.realpath(topology_path):
        return state.get("cert_dir")
    return None


def tls_for(args, topology=None) -> TlsCredentials | None:
    """The credentials to connect with (None: plaintext); see the module docstring."""
    identity = args.identity or ("admin" if args.command in ADMIN_COMMANDS else "client")
    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if any(given):
        if not all(given):
            raise UsageError("--cert, --key and --ca go together", "give all three PEM files, or --cert-dir DIR")
        return TlsCredentials.load(args.tls_cert, args.tls_key, args.tls_ca)
    cert_dir = args.cert_dir
    if cert_dir is None and topology is not None and topology.tls_cert_dir is not None:
        cert_dir = _recorded_cert_dir(str(topology.path)) or topology.tls_cert_dir
    return TlsCredentials.from_cert_dir(cert_dir, identity) if cert_dir else None


class UsageError(Exception):
    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def u128_arg(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (decimal, or hex with 0x)") from None
    if not 0 <= value <= U128_MAX:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..2**128-1")
    return value


def _flags(text: str, enum) -> int:
    value = 0
    for name in filter(None, (x.strip() for x in text.split(","))):
        try:
            value |= enum[name.upper()]
        except KeyError:
            valid = ", ".join(m.name.lower() for m in enum)
            raise UsageError(f"unknown flag {name!r}", f"use one or more of: {valid}") from None
    return int(value)


def _account_json(a: Account) -> dict:
    return {
        "id": a.id, "ledger": a.ledger, "code": a.code, "flags": a.flags,
        "flag_names": [f.name.lower() for f in AccountFlags if a.flags & f],
        "debits_pending": a.debits_pending, "debits_posted": a.debits_posted,
        "credits_pending": a.credits_pending, "credits_posted": a.credits_posted,
        "user_data_128": a.user_data_128, "user_data_64": a.user_data_64,
        "user_data_32": a.user_data_32, "timestamp": a.timestamp,
    }


def _transfer_json(t: Transfer) -> dict:
    return {
        "id": t.id, "debit_account_id": t.debit_account_id, "credit_account_id": t.credit_account_id,
        "amount": t.amount, "pending_id": t.pending_id, "ledger": t.ledger, "code": t.code,
        "flags": t.flags, "flag_names": [f.name.lower() for f in TransferFlags if t.flags & f],
        "timeout": t.timeout, "user_data_128": t.user_data_128, "user_data_64": t.user_data_64,
        "user_data_32": t.user_data_32, "timestamp": t.timestamp,
    }


def _b(text: str) -> bytes:
    return text.encode()


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------- commands


def do_status(c: Client, args) -> tuple[dict, str]:
    s = c.status(all=True)
    replicas = [
        {
            "id": r.id, "address": r.address, "zone": f"{r.city}/{r.data_center}", "role": r.role,
            "ballot": r.ballot, "chosen_index": r.chosen_index, "applied_index": r.applied_index,
            "state_digest": r.state_digest, "leader_id": r.leader_id, "pid": r.pid or None,
            "reachable": r.reachable,
        }
        for r in s.replicas
    ]
    out = {"cluster_id": s.cluster_id, "primary_zone": s.primary_zone, "leader_id": s.leader_id, "replicas": replicas}
    lines = [f"cluster {s.cluster_id}  leader {s.leader_id or '(none)'}  primary zone {s.primary_zone}"]
    for r in replicas:
        lines.append(
            f"  {r['id']:<4} {r['zone']:<22} {r['role']:<12} ballot {r['ballot'] or '-':>6}  "
            f"chosen {r['chosen_index']:>8}  applied {r['applied_index']:>8}  {r['state_digest'][:16]}"
        )
    return out, "\n".join(lines), 0


def _results_out(results, what: str) -> tuple[dict, str, int]:
    rows = [{"index": r.index, "code": r.code, "result": r.name} for r in results]
    bad = [r for r in results if r.name not in ("ok", "exists")]
    text = "\n".join(f"{what}[{r.index}]: {r.name}" for r in results)
    return {"results": rows}, text, (4 if bad else 0)


def do_accounts_create(c: Client, args):
    account = Account(
        id=args.id, ledger=args.ledger, code=args.code, flags=_flags(args.flags, AccountFlags),
        user_data_128=args.user_data_128, user_data_64=args.user_data_64, user_data_32=args.user_data_32,
    )
    return _results_out(c.create_accounts([account]), "account")


def do_accounts_get(c: Client, args):
    found = c.lookup_accounts(args.ids, consistency=LOCAL if args.stale else LINEARIZABLE)
    out = {"accounts": [_account_json(a) for a in found], "missing": sorted(set(args.ids) - {a.id for a in found})}
    lines = [
        f"account {a.id}: ledger {a.ledger} code {a.code} debits {a.debits_posted} (+{a.debits_pending} pending) "
        f"credits {a.credits_posted} (+{a.credits_pending} pending)"
        for a in found
    ] + [f"account {i}: not found" for i in out["missing"]]
    return out, "\n".join(lines), (0 if not out["missing"] else 4)


def do_transfer(c: Client, args):
    flags = 0
    if args.linked:
        flags |= TransferFlags.LINKED
    pending_id = 0
    if args.post is not None and args.void is not None:
        raise UsageError("--post and --void together", "post or void a pending transfer, not both")
    if args.post is not None:
        flags |= TransferFlags.POST_PENDING_TRANSFER
        pending_id = args.post
    elif args.void is not None:
        flags |= TransferFlags.VOID_PENDING_TRANSFER
        pending_id = args.void
    else:
        missing = [n for n in ("debit", "credit", "amount", "ledger", "code") if getattr(args, n) is None]
        if missing:
            raise UsageError(
                f"missing {', '.join('--' + m for m in missing)}",
                "a transfer needs --debit, --credit, --amount, --ledger and --code "
                "(or --post/--void PENDING_ID to resolve a pending one)",
            )
        if args.pending:
            flags |= TransferFlags.PENDING
    if args.timeout and not args.pending:
        raise UsageError("--timeout without --pending", "only pending transfers time out: add --pending")
    transfer = Transfer(
        id=args.id, debit_account_id=args.debit or 0, credit_account_id=args.credit or 0,
        amount=args.amount or 0, ledger=args.ledger or 0, code=args.code or 0, flags=int(flags),
        pending_id=pending_id, timeout=args.timeout, user_data_128=args.user_data_128,
        user_data_64=args.user_data_64, user_data_32=args.user_data_32,
    )
    return _results_out(c.create_transfers([transfer]), "transfer")


def do_transfers_get(c: Client, args):
    found = c.lookup_transfers(args.ids, consistency=LOCAL if args.stale else LINEARIZABLE)
    out = {"transfers": [_transfer_json(t) for t in found], "missing": sorted(set(args.ids) - {t.id for t in found})}
    lines = [
        f"transfer {t.id}: {t.amount} from {t.debit_account_id} to {t.credit_account_id} ledger {t.ledger} "
        f"code {t.code} [{','.join(f.name.lower() for f in TransferFlags if t.flags & f)}] ts {t.timestamp}"
        for t in found
    ] + [f"transfer {i}: not found" for i in out["missing"]]
    return out, "\n".join(lines), (0 if not out["missing"] else 4)


def do_transfers_list(c: Client, args):
    found = c.get_account_transfers(
        args.account, limit=args.limit, reversed=args.reversed,
        consistency=LOCAL if args.stale else LINEARIZABLE,
    )
    out = {"transfers": [_transfer_json(t) for t in found]}
    lines = [f"{t.timestamp} transfer {t.id}: {t.amount} from {t.debit_account_id} to {t.credit_account_id}" for t in found]
    return out, "\n".join(lines) or "(no transfers)", 0


def do_kv_put(c: Client, args):
    version = c.kv_put(_b(args.key), _b(args.value))
    return {"key": args.key, "version": version}, f"{args.key}: version {version}", 0


def do_kv_get(c: Client, args):
    found = c.kv_get(_b(args.key), consistency=LOCAL if args.stale else LINEARIZABLE)
    if found is None:
        return {"key": args.key, "found": False}, f"{args.key}: not found", 4
    value, version = found
    return {"key": args.key, "found": True, "value": _s(value), "version": version}, f"{_s(value)}  (version {version})", 0


def do_kv_delete(c: Client, args):
    deleted = c.kv_delete(_b(args.key))
    return {"key": args.key, "deleted": deleted}, f"{args.key}: {'deleted' if deleted else 'not found'}", 0 if deleted else 4


def do_kv_cas(c: Client, args):
    ok, version = c.kv_cas(_b(args.key), args.expect, _b(args.value))
    text = f"{args.key}: set, version {version}" if ok else (
        f"{args.key}: not set: current version is {version}, not {args.expect} (read it again and retry)"
    )
    return {"key": args.key, "ok": ok, "version": version}, text, 0 if ok else 4


def do_kv_range(c: Client, args):
    rows, more = c.kv_range(
        prefix=_b(args.prefix or ""), start=_b(args.start or ""), end=_b(args.end or ""), limit=args.limit,
        consistency=LOCAL if args.stale else LINEARIZABLE,
    )
    out = {"items": [{"key": _s(k), "value": _s(v), "version": ver} for k, v, ver in rows], "more": more}
    text = "\n".join(f"{_s(k)} = {_s(v)}  (version {ver})" for k, v, ver in rows) or "(no keys)"
    if more:
        text += "\n... more (raise --limit or continue from the last key)"
    return out, text, 0


def do_leader_transfer(c: Client, args):
    leader = c.transfer_leader(args.target)
    return {"leader_id": leader}, f"leader is now {leader}", 0


def _members_out(m):
    members = [
        {"id": x.id, "address": x.address, "kind": x.kind, "chosen_index": x.chosen_index, "caught_up": x.caught_up}
        for x in m.members
    ]
    out = {"leader_id": m.leader_id, "chosen_index": m.chosen_index, "changing": m.changing, "members": members}
    lines = [f"leader {m.leader_id or '(none)'}  chosen {m.chosen_index}"
             + ("  (a change is taking effect)" if m.changing else "")]
    lines += [f"{x['id']:6s} {x['kind']:8s} {x['address']:22s} chosen {x['chosen_index']:>10d}"
              f"  {'caught up' if x['caught_up'] else 'behind'}" for x in members]
    return out, "\n".join(lines)


def do_members_list(c: Client, args):
    out, text = _members_out(c.list_members())
    return out, text, 0


def do_members_change(c: Client, args):
    kind = {"add": "add_learner", "promote": "promote", "remove": "remove"}[args.sub]
    response = c.change_membership(kind, args.replica)
    out, text = _members_out(response.members)
    out["slot"] = response.slot
    return out, f"{args.sub} {args.replica}: took effect (chosen at slot {response.slot})\n{text}", 0


def do_members_replace(c: Client, args):
    c.replace_member(args.old, args.new, catch_up_timeout_s=args.timeout)
    out, text = _members_out(c.list_members())
    return out, f"{args.old} replaced by {args.new}\n{text}", 0


# ---------------------------------------------------------------- parsing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ledgerctl", description="Command-line access to a ledger cluster.")
    p.add_argument("--cluster", default=None,
                   help="topology file or shipped name (default: $LEDGER_CLUSTER, else the cluster last "
                   f"started here with `python -m cluster`, else one-city; now: {DEFAULT_CLUSTER})")
    p.add_argument("--address", help="comma-separated replica addresses instead of a topology")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--deadline", dest="deadline_s", type=float, default=10.0,
                   help="seconds before giving up on the cluster (default 10)")
    p.add_argument("--identity", choices=("admin", "client"),
                   help="which certificate of the cert dir to use (default: admin for leader/members "
                   "commands, client otherwise)")
    p.add_argument("--cert-dir", help="cert dir (default: the topology's [tls] cert_dir)")
    p.add_argument("--cert", dest="tls_cert", help="client certificate (PEM); with --key and --ca")
    p.add_argument("--key", dest="tls_key", help="private key of --cert (PEM)")
    p.add_argument("--ca", dest="tls_ca", help="the cluster CA certificate (PEM)")
    sub = p.add_subparsers(dest="command", required=True)

    def user_data(q):
        q.add_argument("--user-data-128", dest="user_data_128", type=u128_arg, default=0)
        q.add_argument("--user-data-64", dest="user_data_64", type=int, default=0)
        q.add_argument("--user-data-32", dest="user_data_32", type=int, default=0)

    def stale(q):
        q.add_argument("--stale", action="store_true", help="read local (possibly stale) state of any replica")

    sub.add_parser("status", help="replicas, roles, ballot, indexes").set_defaults(func=do_status)

    acc = sub.add_parser("accounts", help="create or get accounts").add_subparsers(dest="sub", required=True)
    q = acc.add_parser("create")
    q.add_argument("--id", type=u128_arg, required=True)
    q.add_argument("--ledger", type=int, required=True)
    q.add_argument("--code", type=int, required=True)
    q.add_argument("--flags", default="", help="comma list: linked, debits_must_not_exceed_credits, "
                   "credits_must_not_exceed_debits, history")
    user_data(q)
    q.set_defaults(func=do_accounts_create)
    q = acc.add_parser("get")
    q.add_argument("ids", type=u128_arg, nargs="+")
    stale(q)
    q.set_defaults(func=do_accounts_get)

    q = sub.add_parser("transfer", help="create a transfer (plain, pending, post, void)")
    q.add_argument("--id", type=u128_arg, required=True)
    q.add_argument("--debit", type=u128_arg)
    q.add_argument("--credit", type=u128_arg)
    q.add_argument("--amount", type=u128_arg)
    q.add_argument("--ledger", type=int)
    q.add_argument("--code", type=int)
    q.add_argument("--pending", action="store_true", help="reserve the amount; post or void it later")
    q.add_argument("--timeout", type=int, default=0, help="seconds until a pending transfer expires")
    q.add_argument("--post", type=u128_arg, metavar="PENDING_ID", help="post a pending transfer")
    q.add_argument("--void", type=u128_arg, metavar="PENDING_ID", help="void a pending transfer")
    q.add_argument("--linked", action="store_true")
    user_data(q)
    q.set_defaults(func=do_transfer)

    tr = sub.add_parser("transfers", help="look up transfers").add_subparsers(dest="sub", required=True)
    q = tr.add_parser("get", aliases=["lookup"])
    q.add_argument("ids", type=u128_arg, nargs="+")
    stale(q)
    q.set_defaults(func=do_transfers_get)
    q = tr.add_parser("list", help="an account's transfers by time")
    q.add_argument("--account", type=u128_arg, required=True)
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--reversed", action="store_true", help="newest first")
    stale(q)
    q.set_defaults(func=do_transfers_list)

    kv = sub.add_parser("kv", help="key-value operations").add_subparsers(dest="sub", required=True)
    q = kv.add_parser("put")
    q.add_argument("key")
    q.add_argument("value")
    q.set_defaults(func=do_kv_put)
    q = kv.add_parser("get")
    q.add_argument("key")
    stale(q)
    q.set_defaults(func=do_kv_get)
    q = kv.add_parser("delete")
    q.add_argument("key")
    q.set_defaults(func=do_kv_delete)
    q = kv.add_parser("cas")
    q.add_argument("key")
    q.add_argument("--expect", type=int, required=True, help="the version you read (0: must not exist)")
    q.add_argument("value")
    q.set_defaults(func=do_kv_cas)
    q = kv.add_parser("range")
    q.add_argument("--prefix")
    q.add_argument("--start")
    q.add_argument("--end")
    q.add_argument("--limit", type=int, default=100)
    stale(q)
    q.set_defaults(func=do_kv_range)

    ld = sub.add_parser("leader", help="leadership").add_subparsers(dest="sub", required=True)
    q = ld.add_parser("transfer", help="move leadership to a replica")
    q.add_argument("target", help="replica id, e.g. r2")
    q.set_defaults(func=do_leader_transfer)

    mb = sub.add_parser(
        "members", help="membership: list, add (as learner), promote, remove, replace",
        description="A replica to add must first be listed in the topology file (join = true) and started "
        "(python -m ledger.server --topology FILE --id r4 --join).",
    ).add_subparsers(dest="sub", required=True)
    mb.add_parser("list", help="voters and learners, with their progress").set_defaults(func=do_members_list)
    for name, help_ in (("add", "add a replica as a non-voting learner"),
                        ("promote", "make a caught-up learner a voter"),
                        ("remove", "remove a voter or learner")):
        q = mb.add_parser(name, help=help_)
        q.add_argument("replica", help="replica id, e.g. r4")
        q.set_defaults(func=do_members_change)
    q = mb.add_parser("replace", help="add NEW, wait until it caught up, promote it, remove OLD")
    q.add_argument("old", help="the voter to replace, e.g. r3")
    q.add_argument("new", help="its replacement, e.g. r4")
    q.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for NEW to catch up")
    q.set_defaults(func=do_members_replace)
    return p


def _fix_for(e: Exception) -> str:
    if isinstance(e, errors.PermissionDenied):
        return "this needs the admin identity: --identity admin, or the admin certificate with --cert/--key/--ca"
    if isinstance(e, errors.Unauthenticated):
        return "connect with a certificate of this cluster's CA (--cert-dir, or --cert/--key/--ca)"
    text = getattr(e, "message", str(e))
    if any(sign in text for sign in ("Socket closed", "handshake", "SSL", "Ssl")):
        return ("the connection was closed at once: if the cluster uses TLS, connect with its certificates "
                "(--cluster TOPOLOGY with a [tls] table, --cert-dir DIR, or --cert/--key/--ca); "
                "else check that a majority of replicas runs")
    if isinstance(e, errors.NotLeader):
        return "start the cluster (python -m cluster up one-city) or check that a majority of replicas runs"
    if isinstance(e, errors.DeadlineExceeded):
        return ("check `python -m cluster status`: a majority of replicas must be up; "
                "a write may still land, so rerun the same command (same ids are idempotent)")
    if isinstance(e, errors.Overloaded):
        return "the leader is overloaded: retry in a moment"
    if isinstance(e, errors.ReplicaStopped):
        return "free disk space on that replica (see its log); it resumes by itself"
    if isinstance(e, errors.RequestError):
        return "correct the request as the message says"
    if isinstance(e, errors.OutcomeUnknown):
        return "read the key or transfer back to see whether the change landed, then retry if not"
    return "see the message"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    as_json = args.json

    def fail(message: str, fix: str, code: int) -> int:
        if as_json:
            print(json.dumps({"error": message, "fix": fix}))
        else:
            print(f"error: {message}\n  fix: {fix}", file=sys.stderr)
        return code

    try:
        loaded = None
        if args.address:
            addresses = [a.strip() for a in args.address.split(",") if a.strip()]
        else:
            from cluster import topology

            cluster = args.cluster or DEFAULT_CLUSTER
            try:
                loaded = topology.load(cluster)
            except topology.TopologyError as e:
                return fail(str(e), "pass --cluster FILE (a topology TOML) or --address host:port,...", 2)
            addresses = [r.address for r in loaded.replicas]
        try:
            tls = tls_for(args, loaded)
        except CertError as e:
            return fail(str(e), "run `python -m cluster certs <topology>` (or `python -m cluster up`), "
                        "or pass --cert/--key/--ca", 2)
        client = Client(addresses, timeout_s=args.deadline_s, tls=tls)
        try:
            out, text, code = args.func(client, args)
        finally:
            client.close()
    except UsageError as e:
        return fail(str(e), e.fix, 2)
    except errors.RequestError as e:
        return fail(e.message, _fix_for(e), 2)
    except errors.LedgerError as e:
        return fail(e.message, _fix_for(e), 3)
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
