"""Integration tests start their clusters through ``cluster.local`` (see there)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.local import LocalCluster, free_ports, wait_until  # noqa: E402,F401


@contextmanager
def running_with_accounts(cluster: LocalCluster, ledger: int, ids):
    """Start ``cluster`` with accounts ``ids`` on ``ledger``; stop it (every process by PID) after."""
    from ledger.model import Account

    try:
        cluster.start()
        with cluster.client() as client:
            results = client.create_accounts([Account(id=i, ledger=ledger, code=1) for i in ids])
            assert [r.name for r in results] == ["ok"] * len(ids)
        yield cluster
    finally:
        cluster.stop()
