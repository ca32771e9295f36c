"""Replica configuration and its limits.

Every queue, batch and message has a named maximum, and the relationships
between the limits are checked once, at construction (``Config.validate``).
Units go last in names: ``*_ticks``, ``*_bytes``, ``*_max``.

Time is counted in ticks. The server ticks every ``tick_ms`` of its monotonic
clock; the simulator ticks each replica at a rate that drifts by at most
``clock_drift_ppm`` from the nominal rate.

Leader lease (the read-path assumption)
---------------------------------------
A follower that has heard the leader of ballot *b* refuses to promise any other
ballot for ``election_timeout_min_ticks`` of *its own* ticks after the last
message of *b* (leader stickiness, ``Replica._sticky``). The leader counts its
lease from the moment it *sent* the heartbeat round that a majority
acknowledged, and trusts it for ``lease_ticks`` of *its own* ticks. If clock
rates differ by at most a factor ``(1 + d)`` in either direction, then

    (lease_ticks + 1) * (1 + d) ** 2 < election_timeout_min_ticks - 1

(one tick of rounding on each side, since both are counted in whole ticks)
guarantees that no majority can promise a new ballot while the old leader still
believes its lease, so a lease read never returns stale state. ``validate``
asserts that inequality with ``d = clock_drift_ppm / 1e6``. Where the clocks
cannot be trusted to that bound, set ``lease_reads=False``: reads then always
take the read-index round (confirm leadership with a majority).
"""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration whose limits contradict each other."""


@dataclass(frozen=True)
class Config:
    replica_id: int
    replica_ids: tuple[int, ...]  # the initial voters
    learner_ids: tuple[int, ...] = ()  # the initial learners (a joining replica)

    # Timing, in ticks.
    heartbeat_ticks: int = 2
    election_timeout_min_ticks: int = 20
    # The election timeout is drawn uniformly from [min, min + spread).
    election_timeout_spread_ticks: int = 20
    lease_ticks: int = 14
    retransmit_ticks: int = 4
    catchup_retry_ticks: int = 4
    transfer_timeout_ticks: int = 20
    # A leader whose heartbeat round no majority acknowledged for this long
    # steps down. This is for liveness only (the lease keeps reads safe, and
    # nothing is chosen without a majority), so it is longer than the
    # election timeout: followers busy with a long storage step (a large
    # batch to apply) acknowledge late, and their leader should not abdicate
    # for that.
    check_quorum_ticks: int = 40
    clock_drift_ppm: int = 50_000  # 5 %: generous, checked by the simulator
    lease_reads: bool = True

    # Sizes.
    window_slots_max: int = 256
    slot_bytes_max: int = 16 * 1024 * 1024
    message_bytes_max: int = 64 * 1024 * 1024
    catchup_slots_max: int = 64
    reads_pending_max: int = 10_000
    # A promise carries at most this many slots the promiser already knows
    # chosen; a candidate further behind learns them by catch-up first.
    promise_chosen_slots_max: int = 1024

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, why: str) -> None:
            if not ok:
                raise ConfigError(why)

        ids = self.replica_ids
        need(len(ids) in (1, 3, 5, 7), f"cluster size must be 1, 3, 5 or 7, got {len(ids)}")
        need(len(set(ids)) == len(ids), "replica ids must be distinct")
        need(all(isinstance(i, int) and 0 < i < 2**16 for i in ids), "replica ids must be in 1..65535")
        need(not set(ids) & set(self.learner_ids), "a replica is a voter or a learner, not both")
        need(
            self.replica_id in ids or self.replica_id in self.learner_ids,
            f"replica id {self.replica_id} is not a member",
        )
        need(self.heartbeat_ticks >= 1, "heartbeat_ticks must be >= 1")
        need(
            self.election_timeout_min_ticks >= 5 * self.heartbeat_ticks,
            "election timeout must be at least 5 heartbeat intervals, so a few lost "
            "heartbeats never cause an election",
        )
        need(self.election_timeout_spread_ticks >= 1, "election timeout spread must be >= 1")
        need(
            self.check_quorum_ticks >= self.election_timeout_min_ticks,
            "check_quorum_ticks must be >= election_timeout_min_ticks",
        )
        drift = self.clock_drift_ppm / 1e6
        need(0 <= drift < 0.5, "clock_drift_ppm must be below 500000")
        need(
            self.lease_ticks >= self.heartbeat_ticks,
            "lease must outlast one heartbeat interval or it is never usable",
        )
        need(
            (self.lease_ticks + 1) * (1 + drift) ** 2 < self.election_timeout_min_ticks - 1,
            "(lease_ticks + 1) * (1 + drift)^2 must stay below election_timeout_min_ticks - 1 "
            "(see the module docstring; one tick of rounding on each side)",
        )
        need(self.retransmit_ticks >= 1, "retransmit_ticks must be >= 1")
        need(
            self.retransmit_ticks < self.election_timeout_min_ticks,
            "retransmission must happen well within an election timeout",
        )
        need(self.catchup_retry_ticks >= 1, "catchup_retry_ticks must be >= 1")
        need(self.transfer_timeout_ticks >= 1, "transfer_timeout_ticks must be >= 1")
        need(self.window_slots_max >= 1, "window_slots_max must be >= 1")
        need(self.slot_bytes_max >= 1, "slot_bytes_max must be >= 1")
        need(
            self.message_bytes_max >= 2 * self.slot_bytes_max,
            "a message must hold at least one full slot plus framing",
        )
        need(self.catchup_slots_max >= 1, "catchup_slots_max must be >= 1")
        need(self.reads_pending_max >= 1, "reads_pending_max must be >= 1")
        need(
            self.promise_chosen_slots_max >= self.window_slots_max,
            "a promise must be able to carry a full window of slots",
        )
