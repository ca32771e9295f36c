"""The server's view of the ledger state machine: apply a slot, run a query.

A thin adapter so that ``ledger.server`` and ``ledger.api`` speak in the
shapes the API answers with (dense per-event codes, (value, version) pairs),
while ``ledger.state_machine`` keeps TigerBeetle's sparse result shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ledger import commands as cmd
from ledger import state_machine as sm
from ledger.model import Account, AccountBalance, Transfer
from ledger.tables import Tables

logger = logging.getLogger("ledger.apply")


@dataclass(frozen=True, slots=True)
class AccountFilter:
    account_id: int
    timestamp_min: int
    timestamp_max: int
    limit: int
    debits: bool
    credits: bool
    reverse: bool


def make_applier():
    """``apply(tables, slot, value) -> per-command results`` for the driver."""

    def apply(tables: Tables, slot: int, value: bytes) -> list | None:
        try:
            return sm.LedgerStateMachine(tables).apply_batch(value)
        except cmd.MalformedCommand as e:
            # Only a faulty leader proposes such a value; every replica skips
            # it identically (nothing written), so the replicas stay equal.
            logger.error("skipped a malformed slot value", extra={"fields": {"slot": slot, "error": str(e)}})
            return None

    return apply


def kv_result(result) -> tuple[int, int]:
    """(KvResult code, version) of a KV command's outcome."""
    return int(result.result), result.version


def has_pending_expiries(tables: Tables, now_ns: int) -> bool:
    """True if some pending transfer's timeout has passed by ``now_ns``."""
    for key, _ in tables.range(sm.T_PENDING_EXPIRY, b"", None, 1):
        return int.from_bytes(key[:8], "big") <= now_ns
    return False


def lookup_accounts(tables: Tables, ids: list[int]) -> list[Account]:
    return sm.lookup_accounts(tables, ids)


def lookup_transfers(tables: Tables, ids: list[int]) -> list[Transfer]:
    return sm.lookup_transfers(tables, ids)


def account_transfers(tables: Tables, f: AccountFilter) -> list[Transfer]:
    return sm.get_account_transfers(
        tables, f.account_id, timestamp_min=f.timestamp_min, timestamp_max=f.timestamp_max,
        limit=f.limit, reverse=f.reverse, debits=f.debits, credits=f.credits,
    )


def account_balances(tables: Tables, f: AccountFilter) -> list[AccountBalance]:
    return sm.get_account_balances(
        tables, f.account_id, timestamp_min=f.timestamp_min, timestamp_max=f.timestamp_max,
        limit=f.limit, reverse=f.reverse,
    )


def kv_get(tables: Tables, key: bytes) -> tuple[bytes, int] | None:
    found = sm.kv_get(tables, key)
    if found is None:
        return None
    version, value = found
    return value, version


def kv_range(tables: Tables, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes, int]]:
    return [(k, v, ver) for k, ver, v in sm.kv_range(tables, start=start, end=end, limit=limit)]
