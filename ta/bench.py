"""A generated day for benchmarks and crash tests, and the clearing benchmark.

``generate`` writes reference data (two funds, four distributors, holders
with opening shares booked as 144 adjustments the day before) and each
distributor's 03 file with its index: purchases, redemptions (some too large:
failure confirmations), dividend method changes, a few after the cut-off.
The same seed gives the same bytes.

``run`` loads it into a store, clears the day before, imports and clears the
day, and reports orders confirmed per second (the CONFIRM step alone, and
the whole day)::

    python -m ta --cluster TOPOLOGY bench --orders 1000000 --accounts 100000 --shards 16
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from ta import reference
from ta.clearing import Clearing
from ta.codes import FileType
from ta.files import STANDARD_FIELDS, DataFile, IndexFile, write_data_file, write_index_file

TA = "01"
DISTRIBUTORS = ("D0001", "D0002", "D0003", "D0004")
FUNDS = ("000001", "000002")
MMF_FUND = "000003"


def previous_day(date: str) -> str:
    import datetime

    d = datetime.date(int(date[:4]), int(date[4:6]), int(date[6:])) - datetime.timedelta(days=1)
    return d.strftime("%Y%m%d")


def holder(i: int) -> tuple[str, str, str]:
    return (f"{TA}{i:010d}", DISTRIBUTORS[i % len(DISTRIBUTORS)], f"TX{i:015d}")


def opening_shares(i: int) -> int:
    return 100_000 + (i % 997) * 100  # 1,000.00 .. 100,600.00 shares


def generate(directory: Path, orders_n: int, accounts_n: int, date: str, seed: int = 1) -> dict:
    """Write the day's inbox into ``directory``; return the reference document."""
    rng = random.Random(seed)
    t0 = previous_day(date)
    doc = {
        "ta_code": TA, "effective_date": t0,
        "distributors": [{"code": d} for d in DISTRIBUTORS],
        "funds": [
            {"code": FUNDS[0], "status": "0", "rounding": "HALF_UP", "purchase_fee": "1.5%",
             "redemption_fees": [[0, "1.5%"], [7, "0.5%"], [365, "0%"]],
             "nav": {t0: "1.2000", date: "1.2345"}},
            {"code": FUNDS[1], "status": "0", "rounding": "DOWN", "purchase_fee": "0.6%",
             "redemption_fees": [[0, "0.5%"]], "nav": {t0: "0.9876", date: "1.0123"}},
            {"code": MMF_FUND, "status": "0", "mmf": True, "purchase_fee": "0%",
             "nav": {t0: "1.0000", date: "1.0000"}, "income_per_10k": {date: "0.61234"}},
        ],
        "dividends": [{"fund": FUNDS[0], "registration_date": date, "xr_date": date, "per_unit": "0.0123"}],
        "holders": [], "adjustments": [],
    }  # fmt: skip
    for i in range(accounts_n):
        ta_account, dist, txn = holder(i)
        doc["holders"].append({"ta_account": ta_account, "distributor": dist, "transaction_account": txn,
                               "opened": "20250101" if i % 10 else t0, "method": str(i % 2)})  # fmt: skip
        doc["adjustments"].append({"id": f"OPEN{i:010d}", "date": t0, "fund": FUNDS[0], "ta_account": ta_account,
                                   "distributor": dist, "transaction_account": txn, "code": "144",
                                   "shares": f"{opening_shares(i) // 100}.{opening_shares(i) % 100:02d}"})  # fmt: skip
        if i % 3 == 0:
            doc["adjustments"].append({"id": f"MMF{i:010d}", "date": t0, "fund": MMF_FUND, "ta_account": ta_account,
                                       "distributor": dist, "transaction_account": txn, "code": "144",
                                       "shares": f"{5000 + i % 77}.{i % 100:02d}"})  # fmt: skip
    fields = STANDARD_FIELDS[FileType.ORDER_APPLICATIONS]
    per_dist: dict[str, list[dict]] = {d: [] for d in DISTRIBUTORS}
    for n in range(orders_n):
        i = rng.randrange(accounts_n)
        ta_account, dist, txn = holder(i)
        kind = rng.random()
        record = {name: 0 if name in ("ApplicationAmount", "ApplicationVol",
                                      "DiscountRateOfCommission") else "" for name in fields}  # fmt: skip
        late = rng.random() < 0.01
        record.update(AppSheetSerialNo=f"B{n:011d}", TransactionDate=date,
                      TransactionTime=f"{rng.randrange(9, 15) if not late else 15:02d}{rng.randrange(60):02d}"
                                      f"{rng.randrange(1, 60):02d}",
                      ShareClass="A", DistributorCode=dist, TransactionAccountID=txn,
                      TAAccountID=ta_account, CurrencyType="156")  # fmt: skip
        if kind < 0.55:
            record.update(BusinessCode="022", FundCode=rng.choice((FUNDS[0], FUNDS[1], MMF_FUND)),
                          ApplicationAmount=rng.randrange(100_00, 5_000_000),
                          DiscountRateOfCommission=rng.choice((0, 0, 4000, 10000)))  # fmt: skip
        elif kind < 0.90:
            record.update(BusinessCode="024", FundCode=FUNDS[0],
                          ApplicationVol=rng.randrange(1_00, opening_shares(i) // 3))
        else:
            record.update(BusinessCode="029", FundCode=FUNDS[rng.randrange(2)],
                          DefDividendMethod=str(rng.randrange(2)))
        per_dist[dist].append(record)
    directory.mkdir(parents=True, exist_ok=True)
    for dist, records in per_dist.items():
        f = DataFile(dist, TA, date, FileType.ORDER_APPLICATIONS, fields, tuple(records))
        (directory / f.name).write_bytes(write_data_file(f))
        index = IndexFile(dist, TA, date, (f.name,))
        (directory / index.name).write_bytes(write_index_file(index))
    return doc


def run(store, *, orders_n: int, accounts_n: int, shards: int, date: str, workers: int = 4,
        progress=None, seed: int = 1) -> dict:  # fmt: skip
    """Clear a generated day on ``store``; the figures of the run."""
    marks: dict[str, float] = {}

    def watch(step: str, done: int, total: int) -> None:
        marks.setdefault(f"{step}:start", time.monotonic())
        if done >= total:
            marks[f"{step}:end"] = time.monotonic()
        if progress:
            progress(step, done, total)

    clearing = Clearing(store, workers=workers, progress=watch)
    with tempfile.TemporaryDirectory(prefix="ta-bench-") as tmp:
        started = time.monotonic()
        doc = generate(Path(tmp) / "in", orders_n, accounts_n, date, seed)
        generated = time.monotonic()
        reference.load(store, reference.parse(doc))
        clearing.clear(previous_day(date), shards=shards)
        opened = time.monotonic()
        clearing.import_dir(date, Path(tmp) / "in", shards=shards)
        imported = time.monotonic()
        marks.clear()
        resumed = 0
        while True:  # an operator runs `ta clear` again after a failure; it resumes
            try:
                clearing.clear(date, shards=shards, outbox=Path(tmp) / "out")
                break
            except Exception as e:  # noqa: BLE001 - reported in the figures
                resumed += 1
                if resumed > 3:
                    raise
                print(f"clear failed ({type(e).__name__}: {e}); resuming", flush=True)
        cleared = time.monotonic()
        out_bytes = sum(p.stat().st_size for p in (Path(tmp) / "out").iterdir())
    confirm_s = marks.get("CONFIRM:end", cleared) - marks.get("CONFIRM:start", imported)
    clear_s = cleared - imported
    return {
        "orders": orders_n, "accounts": accounts_n, "shards": shards, "workers": workers,
        "generate_s": round(generated - started, 2),
        "opening_day_s": round(opened - generated, 2),
        "import_s": round(imported - opened, 2),
        "confirm_s": round(confirm_s, 2),
        "clear_s": round(clear_s, 2),
        "orders_confirmed_per_s": round(orders_n / confirm_s) if confirm_s else None,
        "orders_per_s_whole_day": round(orders_n / (cleared - opened)),
        "output_bytes": out_bytes,
        "resumed_after_failure": resumed,
    }  # fmt: skip
