"""The simulator itself: deterministic, quiet on the real core, loud on a broken one.

Goal: a seed replays exactly; the real replicas pass a batch of seeds; and a
replica with the highest-ballot rule of phase 1 deliberately broken (it keeps
the value of the LOWEST ballot, contradicting P2c of "Paxos Made Simple") is
caught within the seeds CI runs. If the last test ever fails, the simulator has
lost its teeth.
"""

from __future__ import annotations

from consensus.replica import Replica
from sim.cluster import Simulation


class LowestBallotWins(Replica):
    def _recover_values(self, promises, from_slot):
        best = {}
        for p in promises:
            for s, b, v in p.accepted:
                if s >= from_slot and (s not in best or b < best[s][0]):
                    best[s] = (b, v)
        return {s: v for s, (_, v) in best.items()}


def test_a_seed_replays_identically():
    a = Simulation(7).run()
    b = Simulation(7).run()
    assert (a.events, a.chosen_slots, a.acked, a.election_ticks) == (b.events, b.chosen_slots, b.acked, b.election_ticks)


def test_real_core_passes_seeds():
    for seed in range(1, 21):
        result = Simulation(seed).run()
        assert not result.violations, f"seed {seed}: {result.violations[0]} (replay: make sim SEED={seed})"
        assert result.liveness_ok


def test_broken_phase1_is_caught_within_ci_seeds():
    for seed in range(1, 301):
        if Simulation(seed, replica_class=LowestBallotWins).run().violations:
            return
    raise AssertionError("the simulator missed a core that ignores the highest-ballot rule")


class EternalLease(Replica):
    """A leader that trusts its lease forever and never notices it lost its majority."""

    def lease_valid(self):
        ls = self._leader
        return ls is not None and self.chosen_below > ls.noop_slot

    def _tick_leader(self):
        self._leader.last_quorum_tick = self.now
        super()._tick_leader()


def test_broken_lease_is_caught_within_ci_seeds():
    for seed in range(1, 201):
        if Simulation(seed, replica_class=EternalLease).run().violations:
            return
    raise AssertionError("the simulator missed a leader that serves stale lease reads")
