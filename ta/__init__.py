"""The fund transfer agent's pure domain layer.

No networking, no ledger calls, no clocks: every function here is a
deterministic function of its arguments, so a re-run of a day computes the
same numbers, the same ids and the same bytes.

Modules, one concept each (imports point one way, top to bottom):

``errors``  the exception hierarchy (file rejections, bad caller input)
``money``   units (cents, NAV in 1/10000, exact rates), rounding modes
``codes``   business codes, return codes, fund status, dividend method
``arith``   purchase, redemption, dividend and MMF income arithmetic
``fund``    a fund's terms for the day (status, NAV, fee schedule, rounding)
``ids``     deterministic 128-bit ledger ids, account ids, TA serial numbers
``files``   profile-21 fixed-width data files and the index file
``orders``  order keys and re-sends (IMPORT), ``validate_order`` (VALIDATE),
            the fixed processing order (CONFIRM)
``confirm`` rows of the outgoing 02, 04, 05, 06 and 07 files
``postings`` the booking plan: the ledger transfers (accounts, amounts,
            ledgers, codes, pending/post/void) of each confirmation, and the
            reversals a rollback books
``memory_ledger`` an in-memory twin that applies postings with the ledger's
            rules (linked, idempotent, never negative), for tests

The standard library is all these modules import (no time, no random, no I/O);
``tests/test_ta_purity.py`` keeps it so, and keeps each module importing
only modules listed above it.

The clearing service (later) books through the replicated ledger using these:
it turns each ``postings.Posting`` into a ledger transfer and submits a
confirmation's chain as one linked group.
"""
