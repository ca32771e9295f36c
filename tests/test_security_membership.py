"""Membership changes over mutual TLS (real processes on 127.0.0.1).

Goal: an ordinary client can neither change the membership nor list it; the
admin identity adds a learner, which `python -m cluster add` started with a
certificate it issued then from the cluster's CA (the replica was listed
after `up` made the others), and the learner catches up over TLS to the same
state digest.
"""

from __future__ import annotations

import pytest

from ledger import errors
from ledger.model import Account
from test_security_tls import SecureCluster


@pytest.fixture(scope="module")
def cluster():
    c = SecureCluster(3, "secm", joiners=1)
    try:
        c.start()
        c.wait_leader()
        with c.client("admin") as admin:
            admin.transfer_leader("r1")
        with c.client() as cl:
            assert all(r.ok for r in cl.create_accounts([Account(id=i, ledger=1, code=1) for i in (1, 2, 3)]))
        yield c
    finally:
        c.stop()


def _members(cluster) -> dict[str, str]:
    with cluster.client("admin") as admin:
        return {m.id: m.kind for m in admin.list_members().members}


def test_client_cannot_change_membership_admin_can(cluster):
    """PERMISSION_DENIED for the client identity, nothing changes; the admin's learner joins over TLS."""
    before = _members(cluster)
    assert before == {"r1": "voter", "r2": "voter", "r3": "voter"}
    # As if r4 had been listed in the topology only now: `cluster add` issues its certificate.
    for suffix in (".pem", ".key"):
        (cluster.cert_dir / f"r4{suffix}").unlink()
    cluster.add("r4")
    assert (cluster.cert_dir / "r4.pem").exists()
    with cluster.client("client") as c:
        for kind in ("add_learner", "promote", "remove"):
            with pytest.raises(errors.PermissionDenied):
                c.change_membership(kind, "r4" if kind != "remove" else "r3")
        with pytest.raises(errors.PermissionDenied):
            c.list_members()
    assert _members(cluster) == before
    with cluster.client("admin") as admin:
        admin.change_membership("add_learner", "r4")
    assert _members(cluster)["r4"] == "learner"
    cluster.wait_converged()  # r4 (now counted) holds the same state digest as the voters
