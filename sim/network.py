"""The simulated network: loss, duplication, delay (hence reordering), partitions.

Links are directed: ``blocked`` holds (src, dst) pairs whose messages vanish,
so one-way partitions are one entry and symmetric ones are two.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class NetworkProfile:
    loss: float = 0.0  # probability a message is dropped
    duplicate: float = 0.0  # probability a message is delivered twice
    delay_min: int = 1  # time units
    delay_max: int = 5
    tail: float = 0.0  # probability of a delay far beyond the timeouts
    tail_min: int = 150
    tail_max: int = 400

    @classmethod
    def draw(cls, rng: random.Random) -> "NetworkProfile":
        delay_min = rng.randint(1, 3)
        return cls(
            loss=rng.choice([0.0, 0.0, 0.01, 0.05, 0.1, 0.2, 0.3]),
            duplicate=rng.choice([0.0, 0.0, 0.01, 0.05, 0.1]),
            delay_min=delay_min,
            delay_max=delay_min + rng.choice([1, 3, 10, 30]),
            tail=rng.choice([0.0, 0.0, 0.01, 0.03]),
        )


@dataclass
class Network:
    rng: random.Random
    profile: NetworkProfile
    blocked: set[tuple[int, int]] = field(default_factory=set)
    sent: int = 0
    dropped: int = 0

    def delays(self, src: int, dst: int) -> list[int]:
        """Delivery delays for one message: [] lost, one entry, or two (duplicate)."""
        self.sent += 1
        if (src, dst) in self.blocked or self.rng.random() < self.profile.loss:
            self.dropped += 1
            return []
        p = self.profile
        out = [self.rng.randint(p.delay_min, p.delay_max)]
        if p.tail and self.rng.random() < p.tail:
            out[0] += self.rng.randint(p.tail_min, p.tail_max)
        if self.rng.random() < p.duplicate:
            out.append(self.rng.randint(p.delay_min, p.delay_max * 2))
        return out

    def delivers(self, src: int, dst: int) -> bool:
        """A partition installed while a message was in flight also cuts it."""
        return (src, dst) not in self.blocked

    def isolate(self, group: set[int], everyone: tuple[int, ...], one_way: bool = False) -> None:
        for a in group:
            for b in everyone:
                if b in group:
                    continue
                self.blocked.add((a, b))
                if not one_way:
                    self.blocked.add((b, a))

    def heal(self) -> None:
        self.blocked.clear()
