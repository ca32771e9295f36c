"""The fund transfer agent's pure domain layer.

No networking, no ledger calls, no clocks: every function here is a
deterministic function of its arguments, so a re-run of a day computes the
same numbers, the same ids and the same bytes.

Modules, one concept each (imports point one way, top to bottom):

``errors``  the exception hierarchy (file rejections, bad caller input)
``money``   units (cents, NAV in 1/10000, exact rates), rounding modes
``arith``   purchase, redemption, dividend and MMF income arithmetic
``codes``   business codes and return codes with their reasons
``ids``     deterministic 128-bit ledger ids for transfers and accounts
``files``   profile-21 fixed-width data files and the index file

The clearing service (later) books through the replicated ledger using these.
"""
