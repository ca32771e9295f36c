"""The worked day of TA.md, cleared with the pure TA modules only.

Fund 000001, HALF_UP, purchase fee 1.5%, redemption fee 0.5% (25% to the
fund), NAV_T 1.2345, and T is the registration and ex-date of a dividend of
0.50 per 10 shares. The test plays the day's steps in memory (import,
validate, accounts, dividend, confirm, export) with a dict as the register
and checks every number TA.md states, the day's checks that need no ledger
(roll-forward, amount = fee + net, one confirmation per order), and that the
exported files are byte-identical whatever the input file's record order.
"""

from __future__ import annotations

import random

from ta import arith, confirm, orders
from ta.codes import BusinessCode, DividendMethod, FileType, FundStatus, ReturnCode
from ta.files import (
    STANDARD_FIELDS,
    DataFile,
    IndexFile,
    read_data_file,
    read_index_file,
    write_data_file,
    write_index_file,
)
from ta.fund import FundTerms
from ta.ids import HolderKey
from ta.memory_ledger import ChainResult, MemoryLedger
from ta.money import cents, nav, parse_decimal, rate
from ta.postings import FundBook, PostingKind, reverse

from ta_worked_day_data import A, ACCOUNT_APPLICATION, B, C, DIST, ORDERS, TA, T  # noqa: E402

FUND = FundTerms(
    fund_code="000001",
    status=FundStatus.OPEN,
    nav=nav("1.2345"),
    purchase_fee_rate=rate("1.5%"),
    redemption_fee_schedule=((0, rate("1.5%")), (7, rate("0.5%"))),
)
BOOK = FundBook(TA, "000001")
HELD_DAYS = 400  # B's shares are old: 0.5% fee, 25% of it to the fund
DIVIDEND_PER_UNIT = parse_decimal("0.05", 4)  # 0.50 per 10 shares




def distributor_files(order_records: list[dict]) -> dict[str, bytes]:
    """The distributor's 01 and 03 files and its index, as bytes."""
    files = [
        DataFile(DIST, TA, T, FileType.ACCOUNT_APPLICATIONS,
                 STANDARD_FIELDS[FileType.ACCOUNT_APPLICATIONS], (ACCOUNT_APPLICATION,)),
        DataFile(DIST, TA, T, FileType.ORDER_APPLICATIONS,
                 STANDARD_FIELDS[FileType.ORDER_APPLICATIONS], tuple(order_records)),
    ]  # fmt: skip
    out = {f.name: write_data_file(f) for f in files}
    index = IndexFile(DIST, TA, T, tuple(out))
    out[index.name] = write_index_file(index)
    return out


def opening_ledger() -> MemoryLedger:
    """The ledger at BP0: A holds 10,000.00 and B 5,000.00 shares."""
    ledger = MemoryLedger()
    ledger.create_accounts(BOOK.fund_accounts())
    ledger.create_accounts([BOOK.holder(A), BOOK.holder(B), BOOK.settlement(DIST)])
    for holder, shares in ((A, cents("10,000.00")), (B, cents("5,000.00"))):
        chain = BOOK.adjustment(holder, "20261125", shares, increase=True)
        assert ledger.apply(chain) is ChainResult.OK
    return ledger


def book(ledger: MemoryLedger, chain) -> None:
    assert ledger.apply(chain) is not ChainResult.FAILED


def clear_day(
    inbox: dict[str, bytes], resent_orders: bytes, ledger: MemoryLedger | None = None,
    attempt: int = 0,
) -> dict:
    """The day's steps over the inbox, booking into ``ledger`` (a fresh BP0
    ledger by default); returns the register, rows, files and ledger."""
    ledger = opening_ledger() if ledger is None else ledger
    # BP0: the register at the start of T, and each holder's dividend method.
    register = {A: cents("10,000.00"), B: cents("5,000.00")}
    methods = {A: DividendMethod.REINVEST, B: DividendMethod.CASH}
    opening_total = sum(register.values())

    # IMPORT: the index names the files; each is read whole or rejected.
    index_name = next(n for n in inbox if n.startswith("OFI_"))
    index = read_index_file(inbox[index_name], index_name)
    data = {read_data_file(inbox[n], n).file_type: read_data_file(inbox[n], n)
            for n in index.file_names}  # fmt: skip
    intake = orders.take_new(data[FileType.ORDER_APPLICATIONS], {})
    again = orders.take_new(read_data_file(resent_orders), intake.digests)
    assert again.new == () and again.resent == ((DIST, "T1126000001"),)  # order 6: no-op

    # ACCOUNTS: open C, answer with 02.
    accounts = {A, B}
    rows_02 = []
    for application in data[FileType.ACCOUNT_APPLICATIONS].records:
        holder = HolderKey(application["TAAccountID"], DIST, application["TransactionAccountID"])
        accounts.add(holder)
        ledger.create_accounts([BOOK.holder(holder)])
        register.setdefault(holder, 0)
        methods.setdefault(holder, DividendMethod.REINVEST)
        rows_02.append(confirm.account_confirmation(
            application, ReturnCode.SUCCESS, ta_code=TA, cfm_date=T, distributor_code=DIST,
            ta_account_id=holder.ta_account_id))  # fmt: skip

    # DIVIDEND on the register at the start of the registration date (BP0).
    entitled = {h: (register[h], methods[h]) for h in (A, B)}
    distribution = arith.dividend_distribution(entitled, DIVIDEND_PER_UNIT, FUND.nav, FUND.rounding)
    rows_06 = []
    book(ledger, BOOK.dividend_residual(T, distribution.residual, attempt))
    for holder, result in distribution.per_holder.items():
        register[holder] += result.reinvested_shares
        book(ledger, BOOK.dividend(holder, T, result, attempt))
        rows_06.append(confirm.dividend_row(
            FUND, holder, result, ta_code=TA, cfm_date=T, registration_date=T, xr_date=T,
            per_unit_dividend=DIVIDEND_PER_UNIT, ex_nav=FUND.nav))  # fmt: skip

    # CONFIRM in the fixed processing order, one chain per order.
    rows_04, chains = [], {}
    purchased = redeemed = 0
    for record in orders.processing_order(intake.new):
        holder = HolderKey(record["TAAccountID"], record["DistributorCode"],
                           record["TransactionAccountID"])  # fmt: skip
        rc = orders.validate_order(record, T, FUND, holder in accounts, register.get(holder, 0))
        kw = dict(ta_code=TA, cfm_date=T, distributor_code=DIST)
        chain: tuple = ()
        if not rc.ok:
            rows_04.append(confirm.failure_confirmation(record, rc, **kw))
        elif record["BusinessCode"] == BusinessCode.PURCHASE.value:
            p = arith.purchase(record["ApplicationAmount"], FUND.purchase_fee_rate,
                               orders.fee_discount(record), FUND.nav, FUND.rounding)  # fmt: skip
            register[holder] += p.shares
            purchased += p.shares
            chain = BOOK.purchase(holder, record["AppSheetSerialNo"], p, attempt=attempt)
            rows_04.append(confirm.purchase_confirmation(record, p, **kw))
        elif record["BusinessCode"] == BusinessCode.REDEMPTION.value:
            r = arith.redemption(record["ApplicationVol"], FUND.nav,
                                 FUND.redemption_fee_rate(HELD_DAYS),
                                 FUND.fund_fee_share(HELD_DAYS), FUND.rounding)  # fmt: skip
            register[holder] -= r.shares
            redeemed += r.shares
            serial = record["AppSheetSerialNo"]
            book(ledger, BOOK.redemption_reserve(holder, serial, r.shares, attempt))  # accepted
            chain = BOOK.redemption_confirm(holder, serial, r, attempt)
            rows_04.append(confirm.redemption_confirmation(record, r, **kw))
        else:
            methods[holder] = DividendMethod(record["DefDividendMethod"])
            rows_04.append(confirm.dividend_method_confirmation(record, **kw))
        book(ledger, chain)
        chains[record["AppSheetSerialNo"]] = [posting.id for posting in chain]

    # EXPORT: 02, 04, 05, 06, 07, index last.
    total = sum(register.values())
    rows_05 = [confirm.balance_row(FUND, h, cfm_date=T, available=register[h])
               for h in sorted(register)]  # fmt: skip
    rows_07 = [confirm.fund_status_row(FUND, cfm_date=T, total_fund_vol=total)]
    outgoing = [
        (FileType.ACCOUNT_CONFIRMATIONS, rows_02),
        (FileType.ORDER_CONFIRMATIONS, rows_04),
        (FileType.SHARE_BALANCES, rows_05),
        (FileType.DIVIDENDS, rows_06),
        (FileType.FUND_STATUS, rows_07),
    ]
    files = {}
    for file_type, rows in outgoing:
        f = DataFile(TA, DIST, T, file_type, STANDARD_FIELDS[file_type], tuple(rows))
        files[f.name] = write_data_file(f)
    index_out = IndexFile(TA, DIST, T, tuple(files))
    files[index_out.name] = write_index_file(index_out)
    return dict(register=register, methods=methods, distribution=distribution, rows_04=rows_04,
                files=files, chains=chains, opening_total=opening_total, purchased=purchased,
                redeemed=redeemed, ledger=ledger)  # fmt: skip


def resent_file() -> bytes:
    return write_data_file(DataFile(DIST, TA, T, FileType.ORDER_APPLICATIONS,
                                    STANDARD_FIELDS[FileType.ORDER_APPLICATIONS], (ORDERS[0],)))  # fmt: skip


def test_order_arithmetic_of_the_worked_day() -> None:
    """Goal: the per-order numbers of TA.md, to the cent."""
    p = arith.purchase(cents("10,000.00"), rate("1.5%"), nav=nav("1.2345"))
    assert (p.net, p.fee, p.shares) == (cents("9,852.22"), cents("147.78"), cents("7,980.74"))
    r = arith.redemption(cents("2,000.00"), nav("1.2345"), rate("0.5%"), arith.fund_fee_share(400))
    assert (r.gross, r.fee, r.fee_to_fund, r.paid) == (
        cents("2,469.00"), cents("12.35"), cents("3.09"), cents("2,456.65"))  # fmt: skip
    c = arith.purchase(cents("1,000.00"), rate("1.5%"), nav=nav("1.2345"))
    assert (c.net, c.fee, c.shares) == (cents("985.22"), cents("14.78"), cents("798.07"))
    d = arith.dividend(cents("10,000.00"), DIVIDEND_PER_UNIT, nav("1.2345"), DividendMethod.REINVEST)
    assert (d.cash, d.reinvested_shares) == (cents("500.00"), cents("405.02"))
    b = arith.dividend(cents("5,000.00"), DIVIDEND_PER_UNIT, nav("1.2345"), DividendMethod.CASH)
    assert (b.cash_paid, b.reinvested_shares) == (cents("250.00"), 0)


def test_worked_day_closing_register_and_files() -> None:
    """Goal: the cleared day ends with TA.md's register (A 18,385.76,
    B 3,000.00, C 798.07, total 22,183.83), a 04 file of 5 rows with B's
    second redemption failed for insufficient shares, and the checks that
    need no ledger hold (roll-forward; sums of 05 = 07 TotalFundVol)."""
    day = clear_day(distributor_files(ORDERS), resent_file())
    register = day["register"]
    assert register == {A: cents("18,385.76"), B: cents("3,000.00"), C: cents("798.07")}
    total = sum(register.values())
    assert total == cents("22,183.83")

    # Check 2: close - open = purchases + reinvested - redemptions.
    reinvested = sum(d.reinvested_shares for d in day["distribution"].per_holder.values())
    assert total - day["opening_total"] == day["purchased"] + reinvested - day["redeemed"]
    assert day["distribution"].residual == 0
    assert day["methods"][A] is DividendMethod.CASH  # 129, effective after today's registration

    files = day["files"]
    out_index = read_index_file(files["OFI_01_ZS001_20261126.TXT"], "OFI_01_ZS001_20261126.TXT")
    assert out_index.file_names == tuple(sorted(n for n in files if n.startswith("OFD_")))
    f04 = read_data_file(files["OFD_01_ZS001_20261126_04.TXT"], "OFD_01_ZS001_20261126_04.TXT")
    assert len(f04.records) == 5  # check 5: one row per imported order, the re-send adds none
    rows = {r["AppSheetSerialNo"]: r for r in f04.records}
    one, two, three, four, five = (rows[f"T1126{n:06d}"] for n in range(1, 6))
    assert (one["BusinessCode"], one["ConfirmedAmount"], one["Charge"], one["ConfirmedVol"]) == (
        "122", cents("10,000.00"), cents("147.78"), cents("7,980.74"))  # fmt: skip
    assert (two["BusinessCode"], two["ConfirmedAmount"], two["Charge"], two["ConfirmedVol"]) == (
        "124", cents("2,469.00"), cents("12.35"), cents("2,000.00"))  # fmt: skip
    assert (three["ConfirmedVol"], three["NAV"], three["ReturnCode"]) == (cents("798.07"), 12345, "0000")
    assert (four["BusinessCode"], four["ReturnCode"], four["ConfirmedVol"]) == ("124", "4003", 0)
    assert four["ErrorDetail"] == ReturnCode.INSUFFICIENT_SHARES.reason
    assert (five["BusinessCode"], five["ReturnCode"]) == ("129", "0000")

    f05 = read_data_file(files["OFD_01_ZS001_20261126_05.TXT"])
    f07 = read_data_file(files["OFD_01_ZS001_20261126_07.TXT"])
    assert sum(r["AvailableVol"] for r in f05.records) == f07.records[0]["TotalFundVol"] == total
    f06 = read_data_file(files["OFD_01_ZS001_20261126_06.TXT"])
    assert [(r["DividendAmount"], r["VolOfDividendforReinvestment"]) for r in f06.records] == [
        (cents("500.00"), cents("405.02")), (cents("250.00"), 0)]  # fmt: skip
    f02 = read_data_file(files["OFD_01_ZS001_20261126_02.TXT"])
    assert [(r["BusinessCode"], r["ReturnCode"]) for r in f02.records] == [("101", "0000")]


def test_worked_day_is_deterministic() -> None:
    """Goal: clearing the day again, with the distributor's records in any
    file order, gives byte-identical files and the same transfer ids (a
    re-run books nothing new)."""
    first = clear_day(distributor_files(ORDERS), resent_file())
    for seed in range(5):
        shuffled = list(ORDERS)
        random.Random(seed).shuffle(shuffled)
        again = clear_day(distributor_files(shuffled), resent_file())
        assert again["files"] == first["files"]
        assert again["chains"] == first["chains"]
    all_ids = [i for chain in first["chains"].values() for i in chain]
    assert len(all_ids) == len(set(all_ids))


def test_worked_day_on_the_ledger() -> None:
    """Goal: the day's bookings prove the day (TA.md checks 1, 3, 4): holder
    shares = issuance = 07 TotalFundVol; debits = credits per ledger; no
    pending left; cash: fund assets, fee and dividend payable add up to what
    the distributor's settlement account owes, to the cent."""
    day = clear_day(distributor_files(ORDERS), resent_file())
    ledger: MemoryLedger = day["ledger"]
    for holder, shares in day["register"].items():
        assert ledger.balance(BOOK.holder(holder)) == shares
    assert -ledger.balance(BOOK.issuance) == cents("22,183.83")
    assert all(debits == credits for debits, credits in ledger.totals_by_ledger().values())
    assert not ledger.open_pending
    # net 9,852.22 + 985.22 in; paid 2,456.65 and the agent's 9.26 of the fee out;
    # B's 250.00 cash dividend moved to dividend payable.
    assert ledger.balance(BOOK.fund_assets) == cents("8,121.53")
    assert ledger.balance(BOOK.fee) == cents("147.78") + cents("14.78") + cents("9.26")
    assert ledger.balance(BOOK.dividend_payable) == cents("250.00")
    assert ledger.balance(BOOK.residual) == 0
    owed = -ledger.balance(BOOK.settlement(DIST))
    assert owed == cents("10,000.00") + cents("1,000.00") - cents("2,456.65")
    assert owed == sum(ledger.balance(a) for a in (BOOK.fund_assets, BOOK.fee,
                                                   BOOK.dividend_payable, BOOK.residual))  # fmt: skip


def test_rollback_to_bp0_and_rerun_gives_the_same_day() -> None:
    """Goal: TA.md check 7: reverse every transfer booked after BP0 (never
    deleting), re-run the day with the next attempt: same balances, same
    files, and re-running that again books nothing new."""
    first = clear_day(distributor_files(ORDERS), resent_file())
    ledger: MemoryLedger = first["ledger"]
    bp0 = len(opening_ledger().order)
    after_bp0 = [ledger.postings[i] for i in reversed(ledger.order[bp0:])]
    undo = tuple(reverse(p) for p in after_bp0 if p.kind is not PostingKind.PENDING)
    assert ledger.apply(undo) is ChainResult.OK
    assert ledger.balance(BOOK.holder(A)) == cents("10,000.00")
    assert ledger.balance(BOOK.fund_assets) == 0 and not ledger.open_pending
    second = clear_day(distributor_files(ORDERS), resent_file(), ledger, attempt=1)
    assert second["files"] == first["files"]
    fresh: MemoryLedger = clear_day(distributor_files(ORDERS), resent_file())["ledger"]
    assert {k: ledger.balance(k) for k in ledger.accounts} == {
        k: fresh.balance(k) for k in fresh.accounts}  # fmt: skip
    booked = len(ledger.order)
    clear_day(distributor_files(ORDERS), resent_file(), ledger, attempt=1)  # re-run: all exist
    assert len(ledger.order) == booked
