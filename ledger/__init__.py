"""The ledger: its deterministic state machine, storage, and the replica server.

Imports point one way: the domain modules (``tables``, ``digest``, ``codes``,
``commands``, ``state_machine``) import nothing of the server; ``storage``
implements ``tables`` on LMDB; the server modules wire consensus, storage and
the state machine together.
"""
