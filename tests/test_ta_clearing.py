"""The clearing service over the ledger's own state machine (the twin store).

Goal: the worked day of TA.md cleared through the flow table and the real
ledger rules gives TA.md's numbers to the cent and the same bytes as the pure
domain walk-through; 1 and 16 shards give byte-identical files; re-running
any step or the whole day books nothing new and gives the same files; each
rollback (to BP0, to a later backup point, by holder, by file) round-trips;
secondary clearing moves only what changed; a failing check blocks export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_ta_worked_day as pure  # noqa: E402
from ta_worked_day_data import (  # noqa: E402
    A, B, C, DIST, ORDERS, REFERENCE, T, T0, TA, order, resent_order_file, write_inbox,
)
from ta import reference  # noqa: E402
from ta.clearing import ChecksFailed, Clearing, ClearingError  # noqa: E402
from ta.codes import BusinessCode  # noqa: E402
from ta.money import cents  # noqa: E402
from ta.postings import FundBook  # noqa: E402
from ta.store import TwinStore  # noqa: E402

BOOK = FundBook(TA, "000001")


def cleared_day(tmp_path: Path, shards: int = 1, order_records=ORDERS) -> tuple[Clearing, TwinStore]:
    store = TwinStore()
    reference.load(store, reference.parse(REFERENCE))
    clearing = Clearing(store, workers=4)
    clearing.clear(T0, shards=shards)
    write_inbox(tmp_path / "in", order_records)
    clearing.import_dir(T, tmp_path / "in", shards=shards)
    name, data = resent_order_file()
    assert clearing.import_file(T, name, data)["status"] == "resent"  # order 6: a no-op
    status = clearing.clear(T, shards=shards)
    assert status["status"] == "closed"
    return clearing, store


def balance(store: TwinStore, spec) -> int:
    (account,) = store.lookup_accounts([spec.id])
    return account.credits_posted - account.debits_posted


def holder_shares(store: TwinStore) -> dict:
    return {h: balance(store, BOOK.holder(h)) for h in (A, B, C)}


def all_balances(clearing: Clearing, date: str = T) -> dict:
    ref = clearing.reference(date)
    return clearing.balances(clearing._all_accounts(date, ref))


def test_worked_day_to_the_cent_through_the_ledger(tmp_path) -> None:
    """Goal: TA.md's worked day through the flow table and the ledger state
    machine: closing register A 18,385.76, B 3,000.00, C 798.07 (22,183.83),
    cash to the cent, 5 rows in 04, and the very bytes the pure walk-through
    of tests/test_ta_worked_day.py produces."""
    clearing, store = cleared_day(tmp_path)
    assert holder_shares(store) == {A: cents("18,385.76"), B: cents("3,000.00"), C: cents("798.07")}
    assert -balance(store, BOOK.issuance) == cents("22,183.83")
    assert balance(store, BOOK.fund_assets) == cents("8,121.53")
    assert balance(store, BOOK.fee) == cents("147.78") + cents("14.78") + cents("9.26")
    assert balance(store, BOOK.dividend_payable) == cents("250.00")
    assert balance(store, BOOK.residual) == 0
    files = clearing.render(T)
    expected = pure.clear_day(pure.distributor_files(pure.ORDERS), pure.resent_file())["files"]
    assert files == expected
    failures, numbers = clearing.checks(T)
    assert failures == [] and numbers["rows04"] == 5


def test_one_shard_and_sixteen_shards_give_identical_files(tmp_path) -> None:
    """Goal: TA.md check 8, with more holders than the worked day so that
    the 16 shards really split the orders."""
    extra = [order(f"T1126X{n:05d}", "120000", A if n % 2 else B, BusinessCode.PURCHASE,
                   ApplicationAmount=cents("100.00") + n) for n in range(40)]  # fmt: skip
    one, _ = cleared_day(tmp_path / "one", 1, ORDERS + extra)
    sixteen, _ = cleared_day(tmp_path / "sixteen", 16, ORDERS + extra)
    assert one.render(T) == sixteen.render(T)
    assert len([u for u in sixteen.flow(T) if u["step"] == "CONFIRM"]) == 16


def test_rerunning_the_day_or_any_step_books_nothing_new(tmp_path) -> None:
    """Goal: TA.md check 6: clearing the day again, and forcing each unit of
    the flow table to run again, books no transfer and gives the same files."""
    clearing, store = cleared_day(tmp_path, shards=4)
    files, count = clearing.render(T), store.transfer_count()
    clearing.clear(T)
    assert store.transfer_count() == count and clearing.render(T) == files
    for unit in clearing.flow(T):
        if unit["step"] in ("IMPORT", "INIT"):
            continue
        key = clearing._flow_key(T, unit["run"], unit["step"], unit["fund"], unit["shard"])
        record, version = clearing._unit_get(key)
        record["status"] = "retry"  # as if it had failed
        clearing._unit_set(key, record, version)
        clearing.clear(T)
        assert store.transfer_count() == count, unit
        assert clearing.render(T) == files


def test_rollback_to_bp0_round_trips(tmp_path) -> None:
    """Goal: TA.md check 7: a rollback to BP0 books reversals only (never
    deletes), leaves every balance exactly as at BP0, and clearing again gives
    the same balances and files; clearing once more books nothing."""
    clearing, store = cleared_day(tmp_path)
    files, final = clearing.render(T), all_balances(clearing)
    before = store.transfer_count()
    result = clearing.rollback_to(T, "BP0")
    assert result["differences"] == [] and result["reversed_entries"] > 0
    assert store.transfer_count() > before  # reversals added, nothing removed
    assert holder_shares(store) == {A: cents("10,000.00"), B: cents("5,000.00"), C: 0}
    clearing.clear(T)
    assert clearing.render(T) == files
    assert {k: (v[1] - v[3], v[0], v[2]) for k, v in all_balances(clearing).items()} == \
        {k: (v[1] - v[3], v[0], v[2]) for k, v in final.items()}
    count = store.transfer_count()
    clearing.clear(T)
    assert store.transfer_count() == count


def test_rollback_to_a_later_backup_point_keeps_the_steps_before_it(tmp_path) -> None:
    """Goal: a rollback to the point after DIVIDEND reverses the orders only:
    the dividend stays booked (A holds 10,405.02), and clearing again gives
    the same files."""
    clearing, store = cleared_day(tmp_path)
    files = clearing.render(T)
    clearing.rollback_to(T, "after:ADJUST")
    assert holder_shares(store) == {A: cents("10,405.02"), B: cents("5,000.00"), C: 0}
    clearing.clear(T)
    assert clearing.render(T) == files
    with pytest.raises(ClearingError):
        clearing.rollback_to(T, "after:NOWHERE")


def test_rollback_by_holder_round_trips(tmp_path) -> None:
    """Goal: rolling back B's day reverses only B's confirmations (A and C
    untouched), B is back where CONFIRM found it, and clearing again re-runs
    B alone and gives the same files."""
    clearing, store = cleared_day(tmp_path)
    files = clearing.render(T)
    result = clearing.rollback_holders(T, [B])
    assert result["holders"] == 1
    assert holder_shares(store) == {A: cents("18,385.76"), B: cents("5,000.00"), C: cents("798.07")}
    count = store.transfer_count()
    status = clearing.clear(T)
    confirm = [u for u in status["units"] if u["step"] == "CONFIRM"]
    assert confirm[0]["detail"]["replanned"] == 1
    assert store.transfer_count() == count + 4  # B's one confirmed redemption: reserve, post, net, fee
    assert clearing.render(T) == files


def test_rollback_by_file_round_trips(tmp_path) -> None:
    """Goal: rolling back the 03 file reverses everything derived from it and
    withdraws it (the day clears without its orders); importing the same file
    again and clearing gives the original files and balances."""
    clearing, store = cleared_day(tmp_path)
    files = clearing.render(T)
    name = next(n for n in files if n.endswith("_04.TXT"))
    order_file = next(p.name for p in (tmp_path / "in").iterdir() if p.name.endswith("_03.TXT"))
    clearing.rollback_file(T, order_file)
    assert holder_shares(store) == {A: cents("10,405.02"), B: cents("5,000.00"), C: 0}
    clearing.clear(T)
    without = clearing.render(T)
    assert b"00000000\r\n" in without[name]  # no order confirmations
    outcome = clearing.import_file(T, order_file, (tmp_path / "in" / order_file).read_bytes())
    assert outcome["status"] == "reactivated"
    clearing.clear(T)
    assert clearing.render(T) == files
    assert holder_shares(store) == {A: cents("18,385.76"), B: cents("3,000.00"), C: cents("798.07")}


def test_secondary_clearing_moves_only_what_changed(tmp_path) -> None:
    """Goal: a late file after the day closed (a new order of C and a re-send
    of A's order): the second run re-plans C alone; A and B book nothing; the
    new 04 file has one more row."""
    from ta.codes import FileType
    from ta.files import STANDARD_FIELDS, DataFile, write_data_file

    clearing, store = cleared_day(tmp_path)
    count = store.transfer_count()
    late = order("T1126000009", "143000", C, BusinessCode.PURCHASE, ApplicationAmount=cents("500.00"))
    f = DataFile(DIST, TA, T, FileType.ORDER_APPLICATIONS, STANDARD_FIELDS[FileType.ORDER_APPLICATIONS],
                 (ORDERS[0], late))  # fmt: skip
    outcome = clearing.import_file(T, f.name, write_data_file(f))
    assert (outcome["status"], outcome["new"], outcome["resent"]) == ("imported", 1, 1)
    status = clearing.clear(T)
    assert status["status"] == "closed"
    confirm = [u for u in status["units"] if u["step"] == "CONFIRM"]
    assert confirm[0]["detail"]["replanned"] == 1
    # C: its first purchase reversed (3 legs) and re-booked (3) plus the late one (3).
    assert store.transfer_count() == count + 9
    f04 = clearing.render(T)[f"OFD_{TA}_{DIST}_{T}_04.TXT"]
    assert b"\r\n00000006\r\n" in f04
    assert balance(store, BOOK.holder(A)) == cents("18,385.76")


def test_a_rejected_file_is_refused_whole_with_its_reason(tmp_path) -> None:
    """Goal: a malformed file is refused whole with code and line; a re-used
    order key with other content rejects the file; nothing of it is imported."""
    from ta.codes import FileType
    from ta.files import STANDARD_FIELDS, DataFile, write_data_file

    clearing, store = cleared_day(tmp_path)
    name, data = resent_order_file()
    bad = data.replace(b"OFDCFEND", b"OFDCFXXX")
    outcome = clearing.import_file(T, name, bad)
    assert outcome["status"] == "rejected" and outcome["code"] == "F011"
    changed = dict(ORDERS[0], ApplicationAmount=cents("9,999.00"))
    f = DataFile(DIST, TA, T, FileType.ORDER_APPLICATIONS, STANDARD_FIELDS[FileType.ORDER_APPLICATIONS],
                 (changed,))  # fmt: skip
    outcome = clearing.import_file(T, f.name, write_data_file(f))
    assert outcome["status"] == "rejected" and outcome["code"] == "F016" and outcome["line"] > 0
    assert clearing.import_file(T, f.name, write_data_file(f))["status"] == "rejected"  # remembered
    assert clearing.day(T).status == "closed"  # nothing new: still closed


def test_a_failing_check_blocks_export_and_close(tmp_path) -> None:
    """Goal: when the ledger disagrees with the plan (a transfer booked
    behind the TA's back), CHECK fails with the reason and the day is
    neither exported nor closed."""
    from ta.store import book_chains

    clearing, store = cleared_day(tmp_path)
    clearing.rollback_holders(T, [A])
    stray = BOOK.adjustment(A, T, 1, increase=True, attempt=999)
    assert book_chains(store, [stray]) == [0]
    with pytest.raises(ChecksFailed) as failed:
        clearing.clear(T, outbox=tmp_path / "out")
    assert any(f.startswith("2:") for f in failed.value.failures)
    assert clearing.day(T).status == "open"
    assert not (tmp_path / "out").exists()
    check = [u for u in clearing.status(T)["units"] if u["step"] == "CHECK"][0]
    assert check["status"] == "failed" and "checks failed" in check["error"]


def test_reference_data_is_versioned_by_date() -> None:
    """Goal: a later version takes effect on its date only; earlier days
    keep the version that was in force."""
    store = TwinStore()
    reference.load(store, reference.parse(REFERENCE))
    later = json.loads(json.dumps(REFERENCE))
    later["effective_date"] = "20261201"
    later["funds"][0]["purchase_fee"] = "1.0%"
    later["holders"] = []
    reference.load(store, reference.parse(later))
    assert reference.for_day(store, T).funds["000001"].purchase_fee == reference.parse(REFERENCE)["funds"][0][
        "purchase_fee"] or str(reference.for_day(store, T).funds["000001"].purchase_fee) == "3/200"
    assert str(reference.for_day(store, "20261202").funds["000001"].purchase_fee) == "1/100"
    assert len(reference.for_day(store, "20261202").holders) == 2  # holders accumulate
    with pytest.raises(reference.ReferenceError):
        reference.for_day(store, "20200101")
    with pytest.raises(reference.ReferenceError):
        reference.parse({**REFERENCE, "effective_date": "2026-11-25"})


def test_pause_stops_the_batch_and_resume_goes_on(tmp_path) -> None:
    """Goal: a paused day runs no unit (the clear says why); resumed, the
    same call finishes the day."""
    from ta.clearing import Paused

    store = TwinStore()
    reference.load(store, reference.parse(REFERENCE))
    clearing = Clearing(store)
    clearing.clear(T0)
    write_inbox(tmp_path / "in")
    clearing.import_dir(T, tmp_path / "in")
    clearing.pause(T)
    with pytest.raises(Paused):
        clearing.clear(T)
    assert not [u for u in clearing.flow(T) if u["step"] == "CONFIRM"]
    clearing.pause(T, False)
    assert clearing.clear(T)["status"] == "closed"


def test_a_failed_unit_is_retried(tmp_path) -> None:
    """Goal: a unit that failed (here: the ledger refuses a booking because
    the fund accounts vanished from the plan's view) is recorded failed with
    its error, and runs again on the next clear once the cause is gone."""
    store = TwinStore()
    reference.load(store, reference.parse(REFERENCE))
    clearing = Clearing(store)
    doc = reference.parse(REFERENCE)
    broken = json.loads(json.dumps(REFERENCE))
    broken["dividends"][0]["xr_date"] = "20261124"  # no NAV on that date
    reference.load(store, reference.parse(broken))
    clearing.clear(T0)
    write_inbox(tmp_path / "in")
    clearing.import_dir(T, tmp_path / "in")
    with pytest.raises(ClearingError, match="no NAV on the ex-date"):
        clearing.clear(T)
    failed = [u for u in clearing.status(T)["units"] if u["status"] == "failed"]
    assert [u["step"] for u in failed] == ["DIVIDEND"] and "20261124" in failed[0]["error"]
    reference.load(store, doc)  # the operator fixes the reference data
    assert clearing.retry(T) == 1
    assert clearing.clear(T)["status"] == "closed"
    assert holder_shares(store)[A] == cents("18,385.76")


def test_share_adjustments_and_mmf_income(tmp_path) -> None:
    """Goal: 145 decreases a holding (and one beyond the holding is answered
    4003 in the 04 file, booking nothing); a money-market fund's daily income
    is carried into units, truncated per holder, the remainder to the
    residual account; the day's checks hold."""
    doc = json.loads(json.dumps(REFERENCE))
    doc["funds"].append({"code": "000009", "status": "0", "mmf": True, "nav": {T0: "1.0000", T: "1.0000"},
                         "income_per_10k": {T: "0.65432"}})
    for who, shares in ((A, "3333.33"), (B, "1234.56")):
        doc["adjustments"].append({"id": f"MMF-{who.ta_account_id}", "date": T0, "fund": "000009",
                                   "ta_account": who.ta_account_id, "distributor": DIST,
                                   "transaction_account": who.transaction_account_id, "code": "144",
                                   "shares": shares})
    doc["adjustments"] += [
        {"id": "CUT-A", "date": T, "fund": "000001", "ta_account": A.ta_account_id, "distributor": DIST,
         "transaction_account": A.transaction_account_id, "code": "145", "shares": "100.00"},
        {"id": "CUT-B", "date": T, "fund": "000001", "ta_account": B.ta_account_id, "distributor": DIST,
         "transaction_account": B.transaction_account_id, "code": "145", "shares": "99999.00"},
    ]  # fmt: skip
    store = TwinStore()
    reference.load(store, reference.parse(doc))
    clearing = Clearing(store)
    clearing.clear(T0)
    assert clearing.clear(T)["status"] == "closed"
    assert balance(store, BOOK.holder(A)) == cents("10,405.02") - cents("100.00")
    assert balance(store, BOOK.holder(B)) == cents("5,000.00")
    mmf = FundBook(TA, "000009")
    # 3,333.33 units * 0.65432 / 10000 = 0.2181 -> 0.21; 1,234.56 * 0.65432 / 10000 = 0.0807 -> 0.08
    assert balance(store, mmf.holder(A)) == cents("3,333.33") + cents("0.21")
    assert balance(store, mmf.holder(B)) == cents("1,234.56") + cents("0.08")
    total_income = (cents("3,333.33") + cents("1,234.56")) * 65432 // (100000 * 10000)
    assert balance(store, mmf.residual) == total_income - cents("0.29")
    rows = clearing.render(T)[f"OFD_{TA}_{DIST}_{T}_04.TXT"].decode("gb18030")
    assert "CUT-A" in rows and "CUT-B" in rows
    cut_b = next(line for line in rows.split("\r\n") if line.startswith("CUT-B"))
    assert "4003" in cut_b and "145" in cut_b
    assert clearing.checks(T)[0] == []


def test_a_late_account_file_moves_the_orders_that_waited_for_it(tmp_path) -> None:
    """Goal: secondary clearing after a late 01 file: C's purchase, first
    answered 2001 (account unknown), is confirmed in the second run; nobody
    else moves."""
    from ta.codes import FileType
    from ta.files import STANDARD_FIELDS, DataFile, write_data_file
    from ta_worked_day_data import ACCOUNT_APPLICATION

    store = TwinStore()
    reference.load(store, reference.parse(REFERENCE))
    clearing = Clearing(store)
    clearing.clear(T0)
    files = write_inbox(tmp_path / "in")
    only_orders = next(n for n in files if n.endswith("_03.TXT"))
    clearing.import_file(T, only_orders, files[only_orders])
    clearing.clear(T)
    f04 = clearing.render(T)[f"OFD_{TA}_{DIST}_{T}_04.TXT"].decode("gb18030")
    assert "2001" in next(line for line in f04.split("\r\n") if line.startswith("T1126000003"))
    count = store.transfer_count()
    f01 = DataFile(DIST, TA, T, FileType.ACCOUNT_APPLICATIONS, STANDARD_FIELDS[FileType.ACCOUNT_APPLICATIONS],
                   (ACCOUNT_APPLICATION,))  # fmt: skip
    assert clearing.import_file(T, f01.name, write_data_file(f01))["status"] == "imported"
    status = clearing.clear(T)
    assert [u["detail"]["replanned"] for u in status["units"] if u["step"] == "CONFIRM"] == [1]
    assert store.transfer_count() == count + 3  # C's purchase: net, fee, shares
    assert clearing.render(T) == cleared_day(tmp_path / "full")[0].render(T)
