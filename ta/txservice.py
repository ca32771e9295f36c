"""The transaction service: distributors' orders during business day T (gRPC).

``Transactions`` takes purchase 022 (and subscription 020), redemption 024,
dividend method 029 and account opening 001; ``ta/proto/ta_service.proto``
is the contract. State lives only in the ledger store:

- ``ta/online/<T>/<dist>/<serial>`` holds the order, its content digest,
  status (reserving, accepted, refused, cancelled), return code, and for a
  redemption the id of the pending transfer that reserves its shares. It is
  created with compare-and-set (version 0), so the key is the idempotency
  key: the same content answers EXISTS with the stored answer, other content
  is REFUSED (5001).
- A redemption's reservation is a PENDING transfer holder -> issuance with an
  id derived from the order key; the ledger refuses it when the holder's
  posted shares minus everything already reserved would go negative, so two
  redemptions can never sell the same shares. An order stuck in "reserving"
  (a crash between the two writes) is finished by its next Submit, or by the
  clearing (``finish_reservations``), from what the ledger holds.
- Cancel before the cut-off voids the reservation, then marks the order.

The night's clearing reads the accepted orders with the day's files.

Errors: bad requests are answered REFUSED with a return code (the caller's
fault, never an RPC error); the store being unreachable is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Callable

import grpc

from ta import orders
from ta import reference as refdata
from ta.clearing import ONLINE, Clearing, holder_of
from ta.codes import BusinessCode, FileType, ReturnCode
from ta.files import STANDARD_FIELDS, is_valid_date
from ta.ids import HolderKey, Leg, record_digest, ta_serial_no, transfer_id
from ta.money import AMOUNT_MAX, parse_decimal
from ta.postings import FundBook, Posting, PostingKind, TransferCode
from ta.store import OK, Store, StoreError, book_chains, ensure_accounts, pack, unpack
from ta.txproto import pb, pb_grpc

CUTOFF = datetime.time(15, 0, 0)
ORDER_FIELDS = STANDARD_FIELDS[FileType.ORDER_APPLICATIONS]
ACCOUNT_FIELDS = STANDARD_FIELDS[FileType.ACCOUNT_APPLICATIONS]
ORDER_CODES = {c.value for c in (BusinessCode.PURCHASE, BusinessCode.SUBSCRIPTION,
                                 BusinessCode.REDEMPTION, BusinessCode.DIVIDEND_METHOD)}  # fmt: skip

Clock = Callable[[], datetime.datetime]


def _key(date: str, dist: str, serial: str) -> bytes:
    return f"ta/{ONLINE}/{date}/{dist}/{serial}".encode()


def _decimal(text: str, decimals: int) -> int | None:
    if not text:
        return 0
    try:
        value = parse_decimal(text, decimals)
    except ValueError:
        return None
    return value if 0 <= value <= AMOUNT_MAX else None


class TransactionDesk:
    """The service's logic over a ``Store`` (synchronous; the gRPC layer runs
    it in threads). ``clock`` gives the TA's local time (tests inject one)."""

    def __init__(self, store: Store, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or datetime.datetime.now
        self.clearing = Clearing(store)
        self._ref_cache: dict[str, tuple[tuple[str, ...], refdata.Reference]] = {}

    # ------------------------------------------------------------ answers

    @staticmethod
    def _reply(outcome, rc: ReturnCode, status: str = "", serial_no: str = "", resv: bytes = b""):
        return pb.OrderReply(outcome=outcome, return_code=rc.code,
                             error_detail="" if rc.ok else rc.reason, ta_serial_no=serial_no,
                             reservation_id=resv.hex() if resv else "", status=status)  # fmt: skip

    def _refuse(self, rc: ReturnCode):
        return self._reply(pb.OrderReply.REFUSED, rc, "refused")

    @staticmethod
    def _stored_reply(o: dict, outcome=None):
        rc = ReturnCode.from_code(o["rc"])
        status = o["status"]
        if outcome is None:
            outcome = {"cancelled": pb.OrderReply.CANCELLED, "refused": pb.OrderReply.REFUSED}.get(
                status, pb.OrderReply.EXISTS)
        return pb.OrderReply(outcome=outcome, return_code=rc.code, error_detail="" if rc.ok else rc.reason,
                             ta_serial_no=o["serial_no"], status=status,
                             reservation_id=o.get("reservation_id", b"").hex())  # fmt: skip

    # ------------------------------------------------------------ submit

    def _before_cutoff(self, date: str) -> bool:
        now = self.clock()
        return now.strftime("%Y%m%d") == date and now.time() < CUTOFF

    def _record(self, r) -> tuple[dict | None, ReturnCode]:
        """The 03 (or 01) record of a request, or a return code for a malformed one."""
        code = r.business_code
        if code == BusinessCode.ACCOUNT_OPENING.value:
            record = {
                "AppSheetSerialNo": r.app_sheet_serial_no, "TransactionDate": r.business_date,
                "TransactionTime": r.transaction_time, "BusinessCode": code,
                "DistributorCode": r.distributor_code, "TransactionAccountID": r.transaction_account_id,
                "TAAccountID": r.ta_account_id, "IndividualOrInstitution": r.individual_or_institution,
                "InvestorName": r.investor_name, "CertificateType": r.certificate_type,
                "CertificateNo": r.certificate_no,
            }  # fmt: skip
            return record, ReturnCode.SUCCESS
        if code not in ORDER_CODES:
            return None, ReturnCode.BUSINESS_CODE_INVALID
        amount = _decimal(r.application_amount, 2)
        vol = _decimal(r.application_vol, 2)
        discount = _decimal(r.discount_rate, 4)
        if amount is None:
            return None, ReturnCode.AMOUNT_INVALID
        if vol is None:
            return None, ReturnCode.VOLUME_INVALID
        if discount is None:
            return None, ReturnCode.DISCOUNT_INVALID
        record = {
            "AppSheetSerialNo": r.app_sheet_serial_no, "TransactionDate": r.business_date,
            "TransactionTime": r.transaction_time, "FundCode": r.fund_code,
            "ShareClass": r.share_class, "BusinessCode": code, "DistributorCode": r.distributor_code,
            "TransactionAccountID": r.transaction_account_id, "TAAccountID": r.ta_account_id,
            "ApplicationAmount": amount, "ApplicationVol": vol,
            "DefDividendMethod": r.def_dividend_method, "LargeRedemptionFlag": "",
            "DiscountRateOfCommission": discount, "CurrencyType": r.currency or "156",
        }  # fmt: skip
        return record, ReturnCode.SUCCESS

    def submit(self, r):
        date, dist, serial = r.business_date, r.distributor_code, r.app_sheet_serial_no
        if not (is_valid_date(date) and dist and serial and len(serial) <= 24 and "/" not in dist + serial):
            return self._refuse(ReturnCode.MISSING_FIELD)
        record, rc = self._record(r)
        if record is None:
            return self._refuse(rc)
        digest = record_digest(record)
        key = _key(date, dist, serial)
        found = self.store.kv_get(key)
        if found is not None:
            o = unpack(found[0])
            if o["digest"] != digest:
                return self._refuse(ReturnCode.DUPLICATE_ORDER_DIFFERENT)
            if o["status"] == "reserving":
                return self._finish(key, o, found[1])
            return self._stored_reply(o)
        if not self._before_cutoff(date):
            return self._refuse(ReturnCode.TIME_AFTER_CUTOFF)
        try:
            ref = self._reference(date)
        except refdata.ReferenceError:
            return self._refuse(ReturnCode.FUND_UNKNOWN)
        rc = self._validate(record, ref, date)
        code = record["BusinessCode"]
        o = {"record": [record.get(n, "") for n in (ACCOUNT_FIELDS if code == "001" else ORDER_FIELDS)],
             "digest": digest, "dist": dist, "serial": serial, "code": code, "rc": rc.code,
             "serial_no": ta_serial_no(ref.ta_code, dist, serial),
             "status": "refused" if not rc.ok else
             ("reserving" if code == BusinessCode.REDEMPTION.value else "accepted")}  # fmt: skip
        if rc.ok and code == BusinessCode.REDEMPTION.value:
            o["ta_code"] = ref.ta_code
            o["reservation_id"] = self._reserve_posting(ref.ta_code, record).id.to_bytes(16, "big")
        ok, version = self.store.kv_cas(key, 0, pack(o))
        if not ok:  # someone took the key meanwhile: answer as a re-send
            return self.submit(r)
        if o["status"] == "reserving":
            return self._finish(key, o, version, outcome=pb.OrderReply.ACCEPTED)
        return self._stored_reply(o, pb.OrderReply.ACCEPTED if rc.ok else pb.OrderReply.REFUSED)

    def _reference(self, date: str) -> refdata.Reference:
        """The reference data of ``date``, read again only when a version was loaded."""
        versions = tuple(v for v in refdata.versions(self.store) if v <= date)
        cached = self._ref_cache.get(date)
        if cached is None or cached[0] != versions:
            cached = self._ref_cache[date] = (versions, refdata.for_day(self.store, date))
        return cached[1]

    def _known(self, holder: HolderKey, ref: refdata.Reference, date: str) -> bool:
        """The holder's account is open: its share accounts exist in the ledger
        (opened on an earlier day), or an account opening of today was taken."""
        ids = [FundBook(ref.ta_code, code).holder(holder).id for code in sorted(ref.funds)[:1]]
        if ids and self.store.lookup_accounts(ids):
            return True
        if any(h.key == holder for h in ref.holders):
            return True
        for _, value, _ in self.store.kv_scan(f"ta/{ONLINE}/{date}/".encode()):
            o = unpack(value)
            if o["code"] == "001" and o["status"] == "accepted":
                rec = dict(zip(ACCOUNT_FIELDS, o["record"]))
                if HolderKey(rec["TAAccountID"], rec["DistributorCode"], rec["TransactionAccountID"]) == holder:
                    return True
        return holder in self.clearing.registry(date, ref)

    def _validate(self, record: dict, ref: refdata.Reference, date: str) -> ReturnCode:
        code = record["BusinessCode"]
        dist = record["DistributorCode"]
        if dist not in ref.distributors:
            return ReturnCode.DISTRIBUTOR_UNKNOWN
        holder = holder_of(record)
        if code == BusinessCode.ACCOUNT_OPENING.value:
            if not record["InvestorName"] or not record["CertificateNo"] or not record["TAAccountID"]:
                return ReturnCode.INVESTOR_INFO_INVALID
            return ReturnCode.ACCOUNT_EXISTS if self._known(holder, ref, date) else ReturnCode.SUCCESS
        fund = ref.funds.get(record["FundCode"])
        terms = None
        if fund is not None:
            navs = [d for d in fund.navs if d <= date]
            terms = fund.terms(max(navs)) if navs else None
            if terms is None:
                return ReturnCode.NAV_MISSING
        # Shares are checked by the reservation itself (the ledger's rule).
        return orders.validate_order(record, date, terms, self._known(holder, ref, date), AMOUNT_MAX)

    def _reserve_posting(self, ta_code: str, record: dict) -> Posting:
        fb = FundBook(ta_code, record["FundCode"])
        return fb.redemption_reserve(holder_of(record), record["AppSheetSerialNo"], record["ApplicationVol"])[0]

    def _finish(self, key: bytes, o: dict, version: int, outcome=None):
        """Take the reservation of a redemption in "reserving" and record the answer."""
        record = dict(zip(ORDER_FIELDS, o["record"]))
        posting = self._reserve_posting(o["ta_code"], record)
        fb = FundBook(o["ta_code"], record["FundCode"])
        ensure_accounts(self.store, fb.fund_accounts())
        code = book_chains(self.store, [(posting,)])[0]
        o["status"] = "accepted" if code == OK else "refused"
        if code != OK:
            o["rc"] = ReturnCode.INSUFFICIENT_SHARES.code
            o.pop("reservation_id", None)
        ok, _ = self.store.kv_cas(key, version, pack(o))
        if not ok:
            found = self.store.kv_get(key)
            return self._stored_reply(unpack(found[0]))
        if outcome is None or code != OK:
            outcome = pb.OrderReply.ACCEPTED if code == OK else pb.OrderReply.REFUSED
        return self._stored_reply(o, outcome)

    # ------------------------------------------------------------ cancel / get

    def cancel(self, k):
        key = _key(k.business_date, k.distributor_code, k.app_sheet_serial_no)
        while True:
            found = self.store.kv_get(key)
            if found is None:
                return pb.OrderReply(outcome=pb.OrderReply.NOT_FOUND, status="")
            o, version = unpack(found[0]), found[1]
            if o["status"] == "cancelled":
                return self._stored_reply(o, pb.OrderReply.CANCELLED)
            if o["status"] == "refused":
                return self._stored_reply(o)
            if not self._before_cutoff(k.business_date):
                return self._reply(pb.OrderReply.REFUSED, ReturnCode.TIME_AFTER_CUTOFF, o["status"],
                                   o["serial_no"])  # fmt: skip
            if o["status"] == "reserving":
                self._finish(key, o, version)
                continue
            if o.get("reservation_id"):
                record = dict(zip(ORDER_FIELDS, o["record"]))
                reserve = self._reserve_posting(o["ta_code"], record)
                holder = holder_of(record)
                void = Posting(
                    id=transfer_id(o["ta_code"], holder.distributor_code, record["AppSheetSerialNo"],
                                   Leg.RESERVE_VOID, 0),
                    leg=Leg.RESERVE_VOID, ledger=reserve.ledger, code=TransferCode.REDEMPTION,
                    debit_account_id=reserve.debit_account_id, credit_account_id=reserve.credit_account_id,
                    amount=reserve.amount, kind=PostingKind.VOID_PENDING,
                    pending_id=int.from_bytes(o["reservation_id"], "big"))  # fmt: skip
                code = book_chains(self.store, [(void,)])[0]
                if code != OK:
                    raise StoreError(f"voiding reservation {o['reservation_id'].hex()} refused: {code}")
            o["status"] = "cancelled"
            ok, _ = self.store.kv_cas(key, version, pack(o))
            if ok:
                return self._stored_reply(o, pb.OrderReply.CANCELLED)

    def get(self, k):
        found = self.store.kv_get(_key(k.business_date, k.distributor_code, k.app_sheet_serial_no))
        if found is None:
            return pb.OrderReply(outcome=pb.OrderReply.NOT_FOUND)
        return self._stored_reply(unpack(found[0]))


def finish_reservations(store: Store, date: str) -> int:
    """Settle redemptions left in "reserving" by a crash (the clearing calls this first)."""
    desk = TransactionDesk(store)
    n = 0
    for key, value, version in list(store.kv_scan(f"ta/{ONLINE}/{date}/".encode())):
        o = unpack(value)
        if o["status"] == "reserving":
            desk._finish(key, o, version)
            n += 1
    return n


class TransactionsServicer(pb_grpc.TransactionsServicer):
    """gRPC adapter: runs the desk in threads; store failures become UNAVAILABLE."""

    def __init__(self, desk: TransactionDesk) -> None:
        self.desk = desk

    async def _call(self, method, request, context):
        try:
            return await asyncio.to_thread(method, request)
        except StoreError as e:
            await context.abort(grpc.StatusCode.INTERNAL, f"the ledger refused a TA write: {e}")
        except Exception as e:  # the ledger store unreachable, a timeout
            from ledger import errors

            if isinstance(e, errors.LedgerError):
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"ledger store unavailable: {e}")
            raise

    async def Submit(self, request, context):
        return await self._call(self.desk.submit, request, context)

    async def Cancel(self, request, context):
        return await self._call(self.desk.cancel, request, context)

    async def Get(self, request, context):
        return await self._call(self.desk.get, request, context)


async def start(store: Store, host: str, port: int, clock: Clock | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_TransactionsServicer_to_server(TransactionsServicer(TransactionDesk(store, clock)), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


def serve(store: Store, host: str, port: int) -> None:
    async def main() -> None:
        server, bound = await start(store, host, port)
        print(f"transaction service on {host}:{bound}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())
