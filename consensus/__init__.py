"""Pure, synchronous Multi-Paxos.

This package implements the algorithm only: it never touches sockets, disks,
clocks, threads or the global random source. Time arrives as ``tick()`` calls,
randomness as a seeded ``random.Random`` handed in, and messages as frozen
dataclasses (``consensus.messages``). Everything the caller must do is handed
back as one ``Ready`` value (``consensus.ready``): persist, then send, then
apply, then answer clients.
"""

from consensus.config import Config, ConfigError
from consensus.ballot import Ballot, ZERO_BALLOT
from consensus.ready import (
    DurableState,
    Persist,
    ReadReady,
    ReadRefused,
    Ready,
    RefuseReason,
    Refused,
)
from consensus.replica import Replica, Role

__all__ = [
    "Ballot",
    "Config",
    "ConfigError",
    "DurableState",
    "Persist",
    "Ready",
    "ReadReady",
    "ReadRefused",
    "RefuseReason",
    "Refused",
    "Replica",
    "Role",
    "ZERO_BALLOT",
]
