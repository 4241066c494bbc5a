"""Capped exponential backoff with jitter: the one rule every retry loop of the agent uses
(MQTT reconnects, camera probes, callback delivery rounds, supervised task restarts).

Jitter spreads the retries of many agents (or many cameras) that failed together, so a
broker or backend that comes back is not hit by all of them in the same second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "Retries"]


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """The wait before retry ``n`` (from 0): ``min(cap_s, first_s * factor ** n)``, then
    scaled by a random factor drawn from ``jitter`` (``(1.0, 1.0)``: no jitter)."""

    first_s: float
    cap_s: float
    factor: float = 2.0
    jitter: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        low, high = self.jitter
        if not (0 < self.first_s <= self.cap_s and self.factor >= 1 and 0 <= low <= high):
            raise ValueError(f"not a usable backoff: {self!r}")

    def base(self, attempt: int) -> float:
        """The wait before retry ``attempt`` without jitter."""
        # Capped before the power can overflow: factor ** attempt grows without bound.
        wait = self.first_s
        for _ in range(max(0, attempt)):
            wait *= self.factor
            if wait >= self.cap_s:
                return self.cap_s
        return min(self.cap_s, wait)

    def delay(self, attempt: int) -> float:
        """The wait before retry ``attempt``, jittered."""
        low, high = self.jitter
        return self.base(attempt) * random.uniform(low, high)

    def retries(self) -> Retries:
        """A counter that walks this backoff one retry at a time."""
        return Retries(self)


@dataclass
class Retries:
    """A :class:`Backoff` walked by a loop: :meth:`next` gives the next wait, and
    :meth:`reset` starts over (after a success, or after the work ran well a while)."""

    backoff: Backoff
    attempt: int = field(default=0)

    def next(self) -> float:
        """The jittered wait before the next retry; the one after it will be longer."""
        wait = self.backoff.delay(self.attempt)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        """Start over at the first wait."""
        self.attempt = 0
