"""The Multi-Paxos replica (being written; the public surface below is fixed).

Public surface, used by the replica server and the simulator:

    r = Replica(config, durable_state, rng)    # rng: a seeded random.Random
    r.tick()                                   # one unit of time passed
    r.step(message)                            # a message from a peer arrived
    slot = r.propose(value)                    # leader only; raises Refused
    r.read(token)                              # linearizable read request
    r.transfer_leadership(target_id)           # leader only; raises Refused
    ready = r.ready()                          # drain: persist, send, apply
    r.role, r.leader_id, r.ballot, r.promised, r.chosen_below

``propose`` returns the slot the value will be proposed in. The value is
committed when ``ready().committed`` contains (slot, the same value); if a
later leader filled that slot with another value, the proposal failed and the
client may retry (client-chosen ids make retries idempotent).
"""

from __future__ import annotations

from enum import Enum


class Role(Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class Replica:  # filled in by the next commit
    pass
