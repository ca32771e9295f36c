"""Property tests of the clearing service on generated days (twin store).

Goal: for any generated day (orders, holders, seeds), clearing with 1 shard
and with several gives byte-identical files, every check of TA.md passes,
a rollback to BP0 leaves the balances exactly as at BP0, and clearing again
after it gives the same files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ta import bench, reference
from ta.clearing import Clearing
from ta.store import TwinStore

DATE = "20270104"


def clear(doc: dict, inbox: Path, shards: int) -> Clearing:
    store = TwinStore()
    reference.load(store, reference.parse(doc))
    clearing = Clearing(store, workers=2)
    clearing.clear(bench.previous_day(DATE), shards=shards)
    clearing.import_dir(DATE, inbox, shards=shards)
    assert clearing.clear(DATE, shards=shards)["status"] == "closed"
    return clearing


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders=st.integers(1, 120), accounts=st.integers(1, 25), seed=st.integers(0, 10**6),
       shards=st.sampled_from([2, 3, 7, 16]))
def test_generated_days_are_shard_independent_and_roll_back_exactly(orders, accounts, seed, shards) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inbox = Path(tmp) / "in"
        doc = bench.generate(inbox, orders, accounts, DATE, seed)
        one = clear(doc, inbox, 1)
        many = clear(doc, inbox, shards)
    files = one.render(DATE)
    assert many.render(DATE) == files
    assert one.checks(DATE)[0] == [] and many.checks(DATE)[0] == []
    result = many.rollback_to(DATE, "BP0")
    assert result["differences"] == []
    many.clear(DATE)
    assert many.render(DATE) == files
