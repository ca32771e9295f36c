"""Result codes of the ledger state machine. Numbers are stable: they are on the wire.

Each create event answers one code (TigerBeetle's model). The codes of an
enumeration are declared in precedence order: when an event breaks several
rules, the first failing check in the order below is the one reported. A new
code is only ever appended with a new number; a number is never reused.

``CreateAccountResult`` (checked in this order)::

    0  ok
    1  linked_event_failed            another event of its linked chain failed
    2  linked_event_chain_open        last event of the command has LINKED set
    3  timestamp_must_be_zero         the state machine assigns timestamps
    4  reserved_field                 the reserved bytes must be zero
    5  reserved_flag                  an undefined flag bit is set
    6  id_must_not_be_zero
    7  id_must_not_be_int_max
    8  flags_are_mutually_exclusive   DEBITS_MUST_NOT_EXCEED_CREDITS with
                                      CREDITS_MUST_NOT_EXCEED_DEBITS
    9  debits_pending_must_be_zero    balances start at zero
    10 debits_posted_must_be_zero
    11 credits_pending_must_be_zero
    12 credits_posted_must_be_zero
    13 ledger_must_not_be_zero
    14 code_must_not_be_zero
    15 exists_with_different_flags    the id exists; first differing field wins
    16 exists_with_different_user_data_128
    17 exists_with_different_user_data_64
    18 exists_with_different_user_data_32
    19 exists_with_different_ledger
    20 exists_with_different_code
    21 exists                         identical account already created

``CreateTransferResult`` (checked in this order)::

    0  ok
    1  linked_event_failed
    2  linked_event_chain_open
    3  timestamp_must_be_zero
    4  reserved_flag
    5  id_must_not_be_zero
    6  id_must_not_be_int_max
    7  flags_are_mutually_exclusive   two of PENDING / POST / VOID, or BALANCING_*
                                      with POST / VOID
    -- a POST_PENDING_TRANSFER or VOID_PENDING_TRANSFER goes on at 12 --
    8  debit_account_id_must_not_be_zero
    9  debit_account_id_must_not_be_int_max
    10 credit_account_id_must_not_be_zero
    11 credit_account_id_must_not_be_int_max
    12 accounts_must_be_different     (post/void: skipped)
    13 pending_id_must_be_zero        (regular and pending transfers)
    14 pending_id_must_not_be_zero    (post/void, from here to 28)
    15 pending_id_must_not_be_int_max
    16 pending_id_must_be_different   (the same id as the transfer itself)
    17 timeout_reserved_for_pending_transfer
    18 ledger_must_not_be_zero        (regular; post/void may leave 0 to inherit)
    19 code_must_not_be_zero          (regular; post/void may leave 0 to inherit)
    20 debit_account_not_found
    21 credit_account_not_found
    22 accounts_must_have_the_same_ledger
    23 transfer_must_have_the_same_ledger_as_accounts
    24 pending_transfer_not_found
    25 pending_transfer_not_pending   (pending_id names a transfer that is not PENDING)
    26 pending_transfer_has_different_debit_account_id
    27 pending_transfer_has_different_credit_account_id
    28 pending_transfer_has_different_ledger
    29 pending_transfer_has_different_code
    30 exceeds_pending_transfer_amount
    31 pending_transfer_has_different_amount   (a void names another amount)
    -- the id exists (both paths): --
    32 exists_with_different_flags
    33 exists_with_different_pending_id
    34 exists_with_different_debit_account_id
    35 exists_with_different_credit_account_id
    36 exists_with_different_amount
    37 exists_with_different_user_data_128
    38 exists_with_different_user_data_64
    39 exists_with_different_user_data_32
    40 exists_with_different_timeout
    41 exists_with_different_ledger   (never answered: the ledger must equal the
                                      debit account's, which must be the same)
    42 exists_with_different_code
    43 exists
    -- post/void only: --
    44 pending_transfer_already_posted
    45 pending_transfer_already_voided
    46 pending_transfer_expired
    -- regular and pending transfers only: --
    47 overflows_debits_pending
    48 overflows_credits_pending
    49 overflows_debits_posted
    50 overflows_credits_posted
    51 overflows_debits               pending + posted would pass 2**128 - 1
    52 overflows_credits
    53 overflows_timeout              timestamp + timeout would pass 2**64 - 1 ns
    54 exceeds_credits                the debit account has DEBITS_MUST_NOT_EXCEED_CREDITS
    55 exceeds_debits                 the credit account has CREDITS_MUST_NOT_EXCEED_DEBITS

The post/void path (flags POST_PENDING_TRANSFER or VOID_PENDING_TRANSFER)
checks 1-7, then 14-17, 24-31 (debit/credit account, ledger, code and amount
may be zero: they are taken from the pending transfer), then the exists
codes, then 44-46. The regular path checks 1-13, 17-23, the exists codes,
then 47-55. As in TigerBeetle, the exists check comes after the accounts are
found, so an existing transfer never influences the overflow or limit checks.

``KvResult``::

    0 ok
    1 key_must_not_be_empty
    2 key_too_long                    longer than ``commands.KV_KEY_BYTES_MAX``
    3 value_too_long                  longer than ``commands.KV_VALUE_BYTES_MAX``
    4 not_found                       KV_DELETE of an absent key
    5 version_mismatch                KV_CAS whose expected version is not current

Errors of a whole slot value (bad framing, unknown command kind, more events
than ``commands.EVENTS_PER_COMMAND_MAX``) are not result codes: decoding raises
``commands.MalformedCommand`` and the state machine applies nothing.
"""

from __future__ import annotations

from enum import IntEnum


class CreateAccountResult(IntEnum):
    OK = 0
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    TIMESTAMP_MUST_BE_ZERO = 3
    RESERVED_FIELD = 4
    RESERVED_FLAG = 5
    ID_MUST_NOT_BE_ZERO = 6
    ID_MUST_NOT_BE_INT_MAX = 7
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 8
    DEBITS_PENDING_MUST_BE_ZERO = 9
    DEBITS_POSTED_MUST_BE_ZERO = 10
    CREDITS_PENDING_MUST_BE_ZERO = 11
    CREDITS_POSTED_MUST_BE_ZERO = 12
    LEDGER_MUST_NOT_BE_ZERO = 13
    CODE_MUST_NOT_BE_ZERO = 14
    EXISTS_WITH_DIFFERENT_FLAGS = 15
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = 16
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = 17
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = 18
    EXISTS_WITH_DIFFERENT_LEDGER = 19
    EXISTS_WITH_DIFFERENT_CODE = 20
    EXISTS = 21


class CreateTransferResult(IntEnum):
    OK = 0
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    TIMESTAMP_MUST_BE_ZERO = 3
    RESERVED_FLAG = 4
    ID_MUST_NOT_BE_ZERO = 5
    ID_MUST_NOT_BE_INT_MAX = 6
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 7
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 8
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 9
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 10
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 11
    ACCOUNTS_MUST_BE_DIFFERENT = 12
    PENDING_ID_MUST_BE_ZERO = 13
    PENDING_ID_MUST_NOT_BE_ZERO = 14
    PENDING_ID_MUST_NOT_BE_INT_MAX = 15
    PENDING_ID_MUST_BE_DIFFERENT = 16
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 17
    LEDGER_MUST_NOT_BE_ZERO = 18
    CODE_MUST_NOT_BE_ZERO = 19
    DEBIT_ACCOUNT_NOT_FOUND = 20
    CREDIT_ACCOUNT_NOT_FOUND = 21
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 22
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 23
    PENDING_TRANSFER_NOT_FOUND = 24
    PENDING_TRANSFER_NOT_PENDING = 25
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 26
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 27
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 28
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = 29
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 30
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 31
    EXISTS_WITH_DIFFERENT_FLAGS = 32
    EXISTS_WITH_DIFFERENT_PENDING_ID = 33
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 34
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 35
    EXISTS_WITH_DIFFERENT_AMOUNT = 36
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = 37
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = 38
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = 39
    EXISTS_WITH_DIFFERENT_TIMEOUT = 40
    EXISTS_WITH_DIFFERENT_LEDGER = 41
    EXISTS_WITH_DIFFERENT_CODE = 42
    EXISTS = 43
    PENDING_TRANSFER_ALREADY_POSTED = 44
    PENDING_TRANSFER_ALREADY_VOIDED = 45
    PENDING_TRANSFER_EXPIRED = 46
    OVERFLOWS_DEBITS_PENDING = 47
    OVERFLOWS_CREDITS_PENDING = 48
    OVERFLOWS_DEBITS_POSTED = 49
    OVERFLOWS_CREDITS_POSTED = 50
    OVERFLOWS_DEBITS = 51
    OVERFLOWS_CREDITS = 52
    OVERFLOWS_TIMEOUT = 53
    EXCEEDS_CREDITS = 54
    EXCEEDS_DEBITS = 55


class KvResult(IntEnum):
    OK = 0
    KEY_MUST_NOT_BE_EMPTY = 1
    KEY_TOO_LONG = 2
    VALUE_TOO_LONG = 3
    NOT_FOUND = 4
    VERSION_MISMATCH = 5


class PendingStatus(IntEnum):
    """The first byte of a ``pending_status`` row. No row: still pending."""

    POSTED = 2
    VOIDED = 3
    EXPIRED = 4
