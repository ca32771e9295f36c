"""Replacing a replica works the same with mutual TLS.

Goal: in a cluster with a [tls] table, a joining r4 (its certificate made with
the others, as it is listed with join = true) fetches a snapshot over the
authenticated peer channel, and the admin identity adds, promotes it and
removes r3. Every process is killed by PID at the end.
"""

from __future__ import annotations

import pytest

from ledger.model import Account, Transfer
from test_security_tls import SecureCluster

pytestmark = pytest.mark.timeout(240)


def test_replace_with_tls():
    c = SecureCluster(3, joiners=1, extra_toml="[snapshot]\nevery_slots = 4\nkeep_slots = 1\n")
    try:
        c.start()
        with c.client() as cl:
            cl.create_accounts([Account(id=i, ledger=1, code=1) for i in (1, 2)])
            for n in range(30):
                cl.create_transfers([Transfer(id=10_000 + n, debit_account_id=1, credit_account_id=2, amount=1,
                                              ledger=1, code=1)])
        c.add("r4")
        with c.client("admin") as admin:
            admin.replace_member("r3", "r4", catch_up_timeout_s=120)
            assert {m.id: m.kind for m in admin.list_members().members} == {
                "r1": "voter", "r2": "voter", "r4": "voter"}
        assert "snapshot installed" in (c.data / "r4.log").read_text()
        c.forget("r3")
        c.wait_converged(120)
    finally:
        c.stop()
