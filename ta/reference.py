"""Reference data: funds, NAV per date, fees, rounding, dividends, MMF income,
distributors, opening holders and share adjustments, loaded from a TOML or
JSON file into the store and versioned by date.

A file is one version, effective from its ``effective_date``; the clearing of
day T uses the latest version effective on or before T (funds, NAVs,
dividends, MMF income, distributors). Holders and adjustments accumulate over
all versions up to T. Loading the same file twice changes nothing.

Example (TOML)::

    ta_code = "01"
    effective_date = "20261125"

    [[distributors]]
    code = "ZS001"

    [[funds]]
    code = "000001"
    status = "0"                 # ta.codes.FundStatus value
    rounding = "HALF_UP"         # or DOWN
    purchase_fee = "1.5%"
    redemption_fees = [[0, "1.5%"], [7, "0.5%"]]   # (min held days, rate)
    fund_fee_share_min = "25%"
    min_purchase = "0.01"
    min_redemption = "0.01"
    mmf = false
    nav = { 20261125 = "1.2000", 20261126 = "1.2345" }
    income_per_10k = { }         # MMF: date -> income per 10,000 units (5 decimals)

    [[dividends]]
    fund = "000001"
    registration_date = "20261126"
    xr_date = "20261126"
    per_unit = "0.05"            # money per share, 4 decimals

    [[holders]]                  # accounts that exist before the first cleared day
    ta_account = "010000000001"
    distributor = "ZS001"
    transaction_account = "TX0000000000000A"
    opened = "20250101"
    method = "0"                 # default dividend method

    [[adjustments]]              # 144 (increase) / 145 (decrease) by the TA
    id = "ADJ0001"
    date = "20261125"
    fund = "000001"
    ta_account = "010000000001"
    distributor = "ZS001"
    transaction_account = "TX0000000000000A"
    code = "144"
    shares = "10000.00"
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from ta.codes import DividendMethod, FundStatus
from ta.errors import InvalidInput
from ta.files import is_valid_date
from ta.fund import FundTerms
from ta.ids import HolderKey
from ta.money import (
    DIVIDEND_PER_UNIT_DECIMALS,
    MMF_INCOME_DECIMALS,
    Rounding,
    cents,
    nav,
    parse_decimal,
    rate,
)
from ta.store import Store, get_chunks, pack, put_chunks, unpack

PREFIX = b"ta/ref/"


class ReferenceError(InvalidInput):
    """The reference file is malformed: the operator's fault; nothing was loaded."""


@dataclass(frozen=True)
class FundRef:
    code: str
    status: FundStatus
    rounding: Rounding
    purchase_fee: Fraction
    redemption_fees: tuple[tuple[int, Fraction], ...]
    fund_fee_share_min: Fraction
    min_purchase: int
    min_redemption: int
    mmf: bool
    navs: dict[str, int]
    income_per_10k: dict[str, int]

    def terms(self, date: str) -> FundTerms | None:
        """The fund's terms on ``date``; None when it has no NAV that day."""
        value = self.navs.get(date)
        if value is None:
            return None
        return FundTerms(
            fund_code=self.code, status=self.status, nav=value,
            purchase_fee_rate=self.purchase_fee, redemption_fee_schedule=self.redemption_fees,
            rounding=self.rounding, fund_fee_share_min=self.fund_fee_share_min,
            min_purchase=self.min_purchase, min_redemption=self.min_redemption,
        )  # fmt: skip


@dataclass(frozen=True)
class DividendRef:
    fund: str
    registration_date: str
    xr_date: str
    per_unit: int  # 1/10000 money per share


@dataclass(frozen=True)
class HolderRef:
    key: HolderKey
    opened: str
    method: DividendMethod


@dataclass(frozen=True)
class AdjustmentRef:
    id: str
    date: str
    fund: str
    holder: HolderKey
    increase: bool
    shares: int


@dataclass(frozen=True)
class Reference:
    """What the clearing of one day needs to know."""

    ta_code: str
    effective_date: str
    funds: dict[str, FundRef]
    distributors: tuple[str, ...]
    dividends: tuple[DividendRef, ...]
    holders: tuple[HolderRef, ...] = ()
    adjustments: tuple[AdjustmentRef, ...] = ()
    versions: tuple[str, ...] = field(default=())


def _text(doc: dict, name: str, where: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise ReferenceError(f"{where}: `{name}` must be a non-empty string")
    return value


def _date(doc: dict, name: str, where: str) -> str:
    value = _text(doc, name, where)
    if not is_valid_date(value):
        raise ReferenceError(f"{where}: `{name}` {value!r} is not a YYYYMMDD date")
    return value


def parse(doc: dict) -> dict:
    """Validate a loaded document and return its canonical form (plain data,
    sorted), the form that is stored; ReferenceError names the bad entry."""
    try:
        ta_code = _text(doc, "ta_code", "top level")
        effective = _date(doc, "effective_date", "top level")
        out: dict = {"ta_code": ta_code, "effective_date": effective, "funds": [],
                     "distributors": [], "dividends": [], "holders": [], "adjustments": []}  # fmt: skip
        for d in doc.get("distributors", []):
            out["distributors"].append(_text(d, "code", "distributor"))
        for f in doc.get("funds", []):
            code = _text(f, "code", "fund")
            where = f"fund {code}"
            fund = {
                "code": code,
                "status": FundStatus(f.get("status", "0")).value,
                "rounding": Rounding[f.get("rounding", "HALF_UP")].name,
                "purchase_fee": str(rate(f.get("purchase_fee", "0"))),
                "redemption_fees": [[int(d), str(rate(r))]
                                    for d, r in f.get("redemption_fees", [[0, "0"]])],
                "fund_fee_share_min": str(rate(f.get("fund_fee_share_min", "25%"))),
                "min_purchase": cents(f.get("min_purchase", "0.01")),
                "min_redemption": cents(f.get("min_redemption", "0.01")),
                "mmf": bool(f.get("mmf", False)),
                "navs": {str(k): nav(v) for k, v in sorted(f.get("nav", {}).items())},
                "income_per_10k": {str(k): parse_decimal(v, MMF_INCOME_DECIMALS)
                                   for k, v in sorted(f.get("income_per_10k", {}).items())},
            }  # fmt: skip
            for day in list(fund["navs"]) + list(fund["income_per_10k"]):
                if not is_valid_date(day):
                    raise ReferenceError(f"{where}: {day!r} is not a YYYYMMDD date")
            _fund_ref(fund).terms(next(iter(fund["navs"]), "")) if fund["navs"] else None
            out["funds"].append(fund)
        for d in doc.get("dividends", []):
            out["dividends"].append({
                "fund": _text(d, "fund", "dividend"),
                "registration_date": _date(d, "registration_date", "dividend"),
                "xr_date": _date(d, "xr_date", "dividend"),
                "per_unit": parse_decimal(d["per_unit"], DIVIDEND_PER_UNIT_DECIMALS),
            })  # fmt: skip
        for h in doc.get("holders", []):
            out["holders"].append([
                _text(h, "ta_account", "holder"), _text(h, "distributor", "holder"),
                h.get("transaction_account", ""), _date(h, "opened", "holder"),
                DividendMethod(h.get("method", "0")).value,
            ])  # fmt: skip
        for a in doc.get("adjustments", []):
            code = a.get("code", "144")
            if code not in ("144", "145"):
                raise ReferenceError(f"adjustment {a.get('id')}: code must be 144 or 145")
            out["adjustments"].append([
                _text(a, "id", "adjustment"), _date(a, "date", "adjustment"),
                _text(a, "fund", "adjustment"), _text(a, "ta_account", "adjustment"),
                _text(a, "distributor", "adjustment"), a.get("transaction_account", ""),
                code, cents(a["shares"]),
            ])  # fmt: skip
    except ReferenceError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise ReferenceError(f"reference data: {type(e).__name__}: {e}") from None
    out["distributors"].sort()
    out["funds"].sort(key=lambda f: f["code"])
    out["dividends"].sort(key=lambda d: (d["fund"], d["registration_date"]))
    out["holders"].sort()
    out["adjustments"].sort()
    return out


def read_file(path: str | Path) -> dict:
    """A reference file (``.toml`` or ``.json``), parsed and validated."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        doc = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReferenceError(f"{path}: not valid {path.suffix[1:] or 'json'}: {e}") from None
    return parse(doc)


def load(store: Store, doc: dict) -> str:
    """Store a parsed document as the version of its effective date."""
    effective = doc["effective_date"]
    core = {k: v for k, v in doc.items() if k not in ("holders", "adjustments")}
    base = PREFIX + effective.encode() + b"/"
    put_chunks(store, base + b"holders/", doc["holders"])
    put_chunks(store, base + b"adjustments/", doc["adjustments"])
    store.kv_put(base + b"core", pack(core))
    return effective


def _fund_ref(f: dict) -> FundRef:
    return FundRef(
        code=f["code"], status=FundStatus(f["status"]), rounding=Rounding[f["rounding"]],
        purchase_fee=Fraction(f["purchase_fee"]),
        redemption_fees=tuple((d, Fraction(r)) for d, r in f["redemption_fees"]),
        fund_fee_share_min=Fraction(f["fund_fee_share_min"]), min_purchase=f["min_purchase"],
        min_redemption=f["min_redemption"], mmf=f["mmf"], navs=dict(f["navs"]),
        income_per_10k=dict(f["income_per_10k"]),
    )  # fmt: skip


def versions(store: Store) -> list[str]:
    return sorted({key[len(PREFIX):].split(b"/")[0].decode()
                   for key, _, _ in store.kv_scan(PREFIX) if key.endswith(b"/core")})  # fmt: skip


def for_day(store: Store, date: str) -> Reference:
    """The reference data in force on ``date``."""
    usable = [v for v in versions(store) if v <= date]
    if not usable:
        raise ReferenceError(f"no reference data effective on or before {date}; run `ta load`")
    holders: dict[tuple, HolderRef] = {}
    adjustments: list[AdjustmentRef] = []
    core = None
    for version in usable:
        base = PREFIX + version.encode() + b"/"
        found = store.kv_get(base + b"core")
        assert found is not None
        core = unpack(found[0])
        for ta_account, dist, txn, opened, method in get_chunks(store, base + b"holders/"):
            key = HolderKey(ta_account, dist, txn)
            holders.setdefault((ta_account, dist, txn), HolderRef(key, opened, DividendMethod(method)))
        for adj_id, day, fund, ta_account, dist, txn, code, shares in get_chunks(store, base + b"adjustments/"):
            if day == date:
                adjustments.append(AdjustmentRef(adj_id, day, fund, HolderKey(ta_account, dist, txn),
                                                 code == "144", shares))  # fmt: skip
    assert core is not None
    return Reference(
        ta_code=core["ta_code"], effective_date=core["effective_date"],
        funds={f["code"]: _fund_ref(f) for f in core["funds"]},
        distributors=tuple(core["distributors"]),
        dividends=tuple(DividendRef(d["fund"], d["registration_date"], d["xr_date"], d["per_unit"])
                        for d in core["dividends"]),
        holders=tuple(holders[k] for k in sorted(holders)),
        adjustments=tuple(sorted({a.id: a for a in adjustments}.values(), key=lambda a: a.id)),
        versions=tuple(usable),
    )  # fmt: skip
