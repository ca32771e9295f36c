"""The fund transfer agent (TA): a pure domain layer and the services over it.

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

The services (the only modules that do I/O; no domain module imports them)::

``store``     the one interface to the ledger store (accounts, linked transfer
              chains, KV); ``TwinStore`` runs the ledger's own state machine
              in process, ``ClusterStore`` the replicated cluster
``reference`` reference data from TOML/JSON into KV, versioned by date
``clearing``  the day's batch as steps in a flow table (INIT .. CLOSE),
              sharded CONFIRM, checks, export, rollback, secondary clearing
``txservice`` the gRPC transaction service (``txproto``: its generated code)
``cli``       ``python -m ta``: load, import, clear, export, status, rollback
``bench``     a generated day and the clearing benchmark

All TA state lives in the ledger store, so every service can crash and start
again anywhere (see ``ta.clearing`` for the flow table and the KV layout).
"""
