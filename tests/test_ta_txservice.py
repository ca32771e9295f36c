"""The transaction service over gRPC, on the twin store.

Goal: orders are idempotent by (distributor, AppSheetSerialNo) - a re-send
answers EXISTS, other content under the same key is REFUSED 5001; a
redemption reserves its shares at once (a second one cannot sell them);
cancel before the cut-off voids the reservation; after the cut-off nothing is
taken; bad orders get clear return codes; the night's clearing confirms the
online orders with the files, leaves no pending transfer, and a rollback to
BP0 takes the reservations back so the balances equal BP0 exactly.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
import threading
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ta_worked_day_data import A, B, DIST, REFERENCE, T, T0, TA  # noqa: E402
from ta import reference  # noqa: E402
from ta.clearing import Clearing  # noqa: E402
from ta.money import cents  # noqa: E402
from ta.postings import FundBook  # noqa: E402
from ta.store import TwinStore  # noqa: E402
from ta.txproto import pb, pb_grpc  # noqa: E402
from ta.txservice import start  # noqa: E402

BOOK = FundBook(TA, "000001")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 11, 26, 10, 0, 0)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture()
def service():
    store = TwinStore()
    reference.load(store, reference.parse(REFERENCE))
    Clearing(store).clear(T0)
    clock = Clock()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        box["server"], box["port"] = loop.run_until_complete(start(store, "127.0.0.1", 0, clock))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    channel = grpc.insecure_channel(f"127.0.0.1:{box['port']}")
    stub = pb_grpc.TransactionsStub(channel)
    try:
        yield stub, store, clock
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(box["server"].stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def purchase(serial: str, who=A, amount: str = "10000.00", **kw):
    return pb.OrderRequest(business_date=T, business_code="022", distributor_code=DIST,
                           app_sheet_serial_no=serial, transaction_time="093000", fund_code="000001",
                           share_class="A", ta_account_id=who.ta_account_id,
                           transaction_account_id=who.transaction_account_id,
                           application_amount=amount, currency="156", **kw)  # fmt: skip


def redemption(serial: str, who=B, vol: str = "2000.00", time: str = "100000"):
    return pb.OrderRequest(business_date=T, business_code="024", distributor_code=DIST,
                           app_sheet_serial_no=serial, transaction_time=time, fund_code="000001",
                           share_class="A", ta_account_id=who.ta_account_id,
                           transaction_account_id=who.transaction_account_id,
                           application_vol=vol, currency="156")  # fmt: skip


def key(serial: str):
    return pb.OrderKey(business_date=T, distributor_code=DIST, app_sheet_serial_no=serial)


def test_orders_are_idempotent_by_key(service) -> None:
    """Goal: a re-send answers EXISTS; other content under the key is refused."""
    stub, _, _ = service
    first = stub.Submit(purchase("W1"))
    assert (first.outcome, first.return_code, first.status) == (pb.OrderReply.ACCEPTED, "0000", "accepted")
    again = stub.Submit(purchase("W1"))
    assert again.outcome == pb.OrderReply.EXISTS and again.ta_serial_no == first.ta_serial_no
    other = stub.Submit(purchase("W1", amount="9999.00"))
    assert (other.outcome, other.return_code) == (pb.OrderReply.REFUSED, "5001")
    assert stub.Get(key("W1")).status == "accepted"
    assert stub.Get(key("NOPE")).outcome == pb.OrderReply.NOT_FOUND


def test_a_redemption_reserves_its_shares_at_once(service) -> None:
    """Goal: B holds 5,000.00: a redemption of 2,000.00 reserves them with a
    pending transfer, so a second one of 3,500.00 is refused (4003); once the
    first is cancelled its shares are free again."""
    stub, store, _ = service
    first = stub.Submit(redemption("R1"))
    assert first.outcome == pb.OrderReply.ACCEPTED and first.reservation_id
    (account,) = store.lookup_accounts([BOOK.holder(B).id])
    assert account.debits_pending == cents("2,000.00")
    second = stub.Submit(redemption("R2", vol="3500.00", time="133000"))
    assert (second.outcome, second.return_code) == (pb.OrderReply.REFUSED, "4003")
    assert stub.Cancel(key("R1")).outcome == pb.OrderReply.CANCELLED
    assert stub.Cancel(key("R1")).outcome == pb.OrderReply.CANCELLED  # idempotent
    (account,) = store.lookup_accounts([BOOK.holder(B).id])
    assert account.debits_pending == 0
    assert stub.Submit(redemption("R3", vol="3500.00")).outcome == pb.OrderReply.ACCEPTED


def test_bad_orders_get_clear_return_codes(service) -> None:
    """Goal: validation answers with the project's return codes."""
    stub, _, clock = service
    assert stub.Submit(purchase("V1", amount="abc")).return_code == "4001"
    assert stub.Submit(purchase("V2", amount="0.00")).return_code == "4001"
    bad_fund = purchase("V3")
    bad_fund.fund_code = "999999"
    assert stub.Submit(bad_fund).return_code == "3001"
    stranger = purchase("V4")
    stranger.ta_account_id = "019999999999"
    assert stub.Submit(stranger).return_code == "2001"
    bad_code = purchase("V5")
    bad_code.business_code = "099"
    assert stub.Submit(bad_code).return_code == "1002"
    clock.now = datetime.datetime(2026, 11, 26, 15, 0, 1)
    late = stub.Submit(purchase("V6"))
    assert (late.outcome, late.return_code) == (pb.OrderReply.REFUSED, "1004")


def test_online_orders_are_cleared_and_roll_back_exactly(service, tmp_path) -> None:
    """Goal: the night's clearing confirms the online orders (no pending
    transfer left: check 3), and a rollback to BP0 - where B's reservation
    was still pending - leaves every balance exactly as at BP0; clearing
    again gives the same files."""
    stub, store, clock = service
    assert stub.Submit(purchase("N1")).outcome == pb.OrderReply.ACCEPTED
    assert stub.Submit(redemption("N2")).outcome == pb.OrderReply.ACCEPTED
    assert stub.Submit(redemption("N3", vol="100.00", time="110000")).outcome == pb.OrderReply.ACCEPTED
    assert stub.Cancel(key("N3")).outcome == pb.OrderReply.CANCELLED
    clock.now = datetime.datetime(2026, 11, 26, 20, 0, 0)
    clearing = Clearing(store)
    assert clearing.clear(T)["status"] == "closed"
    files = clearing.render(T)
    f04 = files[f"OFD_{TA}_{DIST}_{T}_04.TXT"].decode("gb18030")
    assert "\r\nN1 " in f04 and "\r\nN2 " in f04 and "\r\nN3 " not in f04
    (b,) = store.lookup_accounts([BOOK.holder(B).id])
    assert (b.credits_posted - b.debits_posted, b.debits_pending) == (cents("3,000.00"), 0)
    assert clearing.rollback_to(T, "BP0")["differences"] == []
    (b,) = store.lookup_accounts([BOOK.holder(B).id])
    assert (b.credits_posted - b.debits_posted, b.debits_pending) == (cents("5,000.00"), cents("2,000.00"))
    clearing.clear(T)
    assert clearing.render(T) == files
