"""Business codes, return codes and the small code tables of the files.

Business codes (``BusinessCode`` field, A3). An application ``0xx`` sent by
a distributor is confirmed as ``1xx`` (022 -> 122). The TA's own events
(143 dividend, 144/145 share adjustment) are confirmations from the start.

Return codes (``ReturnCode`` field, A4; reason in ``ErrorDetail``, A60).
``0000`` is success; every other code is a failure of one order, answered in
a failure confirmation (an order is never dropped). The numbers are stable:
never reused, never renumbered; new codes are appended. Blocks:

====  =====================================================================
1xxx  the order itself is malformed (caught in VALIDATE)
2xxx  accounts (TA account, transaction account, distributor)
3xxx  the fund (unknown, closed, business not allowed in its status)
4xxx  amounts and shares
5xxx  duplicates and idempotency
====  =====================================================================

When several failures apply, the confirmation carries the first in the
order of ``RETURN_CODE_PRECEDENCE`` (malformed before accounts before fund
before amounts), so a re-run always answers the same code.
"""

from __future__ import annotations

import enum

from ta.errors import InvalidInput


class BusinessCode(enum.Enum):
    """Application and TA-initiated business codes (value: the A3 text)."""

    ACCOUNT_OPENING = "001"
    SUBSCRIPTION = "020"
    PURCHASE = "022"
    REDEMPTION = "024"
    DIVIDEND_METHOD = "029"
    # Confirmations of the applications above.
    ACCOUNT_OPENING_CFM = "101"
    SUBSCRIPTION_CFM = "120"
    PURCHASE_CFM = "122"
    REDEMPTION_CFM = "124"
    DIVIDEND_METHOD_CFM = "129"
    # TA-initiated events: they are confirmations themselves.
    DIVIDEND = "143"
    SHARE_ADJUSTMENT_INCREASE = "144"
    SHARE_ADJUSTMENT_DECREASE = "145"

    @property
    def is_application(self) -> bool:
        """True for a distributor's application (``0xx``)."""
        return self.value.startswith("0")

    @classmethod
    def parse(cls, text: str) -> "BusinessCode":
        """The code for its 3-character text; InvalidInput if unknown."""
        try:
            return cls(text)
        except ValueError:
            raise InvalidInput(f"unknown business code {text!r}") from None


APPLICATION_CODES = frozenset(c for c in BusinessCode if c.is_application)
TA_EVENT_CODES = frozenset(
    {
        BusinessCode.DIVIDEND,
        BusinessCode.SHARE_ADJUSTMENT_INCREASE,
        BusinessCode.SHARE_ADJUSTMENT_DECREASE,
    }
)


def confirmation_code(code: BusinessCode) -> BusinessCode:
    """The confirmation code of ``code``: ``0xx`` -> ``1xx``; a TA event is
    its own confirmation; a confirmation code is refused (InvalidInput)."""
    if code in TA_EVENT_CODES:
        return code
    if not code.is_application:
        raise InvalidInput(f"{code.value} is already a confirmation code")
    return BusinessCode("1" + code.value[1:])


class ReturnCode(enum.Enum):
    """Result of one order: ``code`` (A4) and ``reason`` (fits ErrorDetail A60)."""

    SUCCESS = ("0000", "success")
    # 1xxx: malformed order
    MISSING_FIELD = ("1001", "required field missing")
    BUSINESS_CODE_INVALID = ("1002", "business code not accepted")
    DATE_INVALID = ("1003", "transaction date is not the business date")
    TIME_AFTER_CUTOFF = ("1004", "transaction time after cut-off")
    CURRENCY_INVALID = ("1005", "currency not supported")
    DIVIDEND_METHOD_INVALID = ("1006", "dividend method must be 0 or 1")
    DISCOUNT_INVALID = ("1007", "fee discount out of range")
    # 2xxx: accounts
    ACCOUNT_UNKNOWN = ("2001", "TA account unknown")
    ACCOUNT_EXISTS = ("2002", "TA account already open")
    TRANSACTION_ACCOUNT_UNKNOWN = ("2003", "transaction account unknown")
    ACCOUNT_FROZEN = ("2004", "account frozen")
    DISTRIBUTOR_UNKNOWN = ("2005", "distributor unknown")
    INVESTOR_INFO_INVALID = ("2006", "investor name or certificate invalid")
    # 3xxx: fund
    FUND_UNKNOWN = ("3001", "fund unknown")
    FUND_CLOSED = ("3002", "fund closed for this business")
    NOT_IN_OFFER_PERIOD = ("3003", "subscription outside the offer period")
    NAV_MISSING = ("3004", "no NAV for the business date")
    # 4xxx: amounts and shares
    AMOUNT_INVALID = ("4001", "amount invalid")
    VOLUME_INVALID = ("4002", "share volume invalid")
    INSUFFICIENT_SHARES = ("4003", "insufficient available shares")
    BELOW_MINIMUM = ("4004", "below the fund's minimum")
    SHARES_ROUND_TO_ZERO = ("4005", "amount buys no shares at this NAV")
    # 5xxx: duplicates
    # A re-used key with different content normally rejects its whole file
    # (FileError.ORDER_KEY_REUSED); this code answers it where a single
    # order is refused instead (e.g. a correction arriving in secondary clearing).
    DUPLICATE_ORDER_DIFFERENT = ("5001", "order key re-used with different content")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]

    @property
    def ok(self) -> bool:
        return self is ReturnCode.SUCCESS

    @classmethod
    def from_code(cls, code: str) -> "ReturnCode":
        """The ReturnCode for its 4-character code; InvalidInput if unknown."""
        try:
            return _BY_CODE[code]
        except KeyError:
            raise InvalidInput(f"unknown return code {code!r}") from None


_BY_CODE = {rc.code: rc for rc in ReturnCode}
assert len(_BY_CODE) == len(ReturnCode), "return codes must be unique"

# First applicable failure wins: enumeration order is the precedence.
RETURN_CODE_PRECEDENCE = tuple(rc for rc in ReturnCode if not rc.ok)


def first_failure(failures: "set[ReturnCode] | frozenset[ReturnCode]") -> ReturnCode:
    """The failure to report when several apply (SUCCESS when none)."""
    for rc in RETURN_CODE_PRECEDENCE:
        if rc in failures:
            return rc
    return ReturnCode.SUCCESS


class DividendMethod(enum.Enum):
    """``DefDividendMethod`` (A1): the investor's choice for dividends."""

    REINVEST = "0"
    CASH = "1"


class FileType(enum.Enum):
    """Profile-21 data file types (line 7 of a data file, last part of its name)."""

    ACCOUNT_APPLICATIONS = "01"
    ACCOUNT_CONFIRMATIONS = "02"
    ORDER_APPLICATIONS = "03"
    ORDER_CONFIRMATIONS = "04"
    SHARE_BALANCES = "05"
    DIVIDENDS = "06"
    FUND_STATUS = "07"


class FundStatus(enum.Enum):
    """``FundStatus`` (A1) of the 07 file, and what each allows."""

    OPEN = "0"  # purchases and redemptions
    OFFER = "1"  # offer period: subscriptions only
    SUSPENDED = "4"  # neither purchases nor redemptions
    PURCHASE_SUSPENDED = "5"  # redemptions only
    REDEMPTION_SUSPENDED = "6"  # purchases only
    TERMINATED = "8"
    CLOSED = "9"

    def allows(self, code: BusinessCode) -> bool:
        """Whether an application of ``code`` can be confirmed in this status."""
        if code is BusinessCode.SUBSCRIPTION:
            return self is FundStatus.OFFER
        if code is BusinessCode.PURCHASE:
            return self in (FundStatus.OPEN, FundStatus.REDEMPTION_SUSPENDED)
        if code is BusinessCode.REDEMPTION:
            return self in (FundStatus.OPEN, FundStatus.PURCHASE_SUSPENDED)
        if code is BusinessCode.DIVIDEND_METHOD:
            return self not in (FundStatus.TERMINATED, FundStatus.CLOSED)
        return True
