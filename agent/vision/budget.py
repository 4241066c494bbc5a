"""What an analysis may spend and what it reports back to the scheduler: the priority its
camera needs next, the global cap on faces embedded per second (:class:`EmbedBudget`) and
the CPU budget of full-resolution detection (:class:`FineBudget`).

The analysis scheduler (``agent.session.scheduler``) owns the budgets and grants them; the
analysis (``agent.vision.recognition``, ``agent.vision.coverage``) spends them from
inference threads, so the buckets are thread-safe.
"""

from __future__ import annotations

import threading
import time
from enum import IntEnum

__all__ = ["EmbedBudget", "FineBudget", "Priority", "TokenBucket"]


class Priority(IntEnum):
    """What a camera's last analysis found; lower goes first."""

    UNRECOGNISED = 0  # faces in view not yet recognised (and a camera not yet analysed)
    EMPTY = 1  # nobody in view
    SETTLED = 2  # everyone in view recognised, or a stranger already checked


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. Thread-safe."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, want: int) -> int:
        """Take up to ``want`` whole tokens; returns how many were taken."""
        with self._lock:
            self._refill(time.monotonic())
            granted = max(0, min(want, int(self._tokens)))
            self._tokens -= granted
            return granted

    def peek(self) -> int:
        """Whole tokens available now (nothing is taken)."""
        return int(self.level())

    def level(self) -> float:
        """Tokens available now, fractions and debt included (nothing is taken)."""
        with self._lock:
            self._refill(time.monotonic())
            return self._tokens

    def charge(self, amount: float) -> None:
        """Take ``amount`` whether or not it is there (the level may go below zero)."""
        with self._lock:
            self._refill(time.monotonic())
            self._tokens -= amount

    def wait_time(self) -> float:
        """Seconds until one token is available (0 if one is now)."""
        with self._lock:
            self._refill(time.monotonic())
            return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate


class EmbedBudget:
    """The global cap on faces embedded per second, taken from inference threads."""

    def __init__(self, per_s: float) -> None:
        self._bucket = TokenBucket(per_s, max(4.0, per_s / 2))

    def take(self, want: int) -> int:
        """How many of ``want`` faces may be embedded now."""
        return self._bucket.take(want) if want else 0

    def available(self) -> int:
        """How many faces could be embedded now (nothing is taken)."""
        return self._bucket.peek()


class FineBudget:
    """CPU seconds per second that full-resolution detection may use over all cameras.

    Detections are timed and charged after they run (from inference threads); a charge
    may overdraw, and then no camera may start one until the debt is repaid. At most one
    second's worth is saved up.
    """

    def __init__(self, cores: float) -> None:
        self.cores = cores
        self._bucket = TokenBucket(cores, max(0.05, cores))

    def available(self, reserve: float = 0.0) -> bool:
        """Whether a full-resolution detection may start now, leaving ``reserve`` (a
        fraction of what may be saved up) for more urgent ones."""
        return self.cores > 0 and self._bucket.level() > reserve * self._bucket.burst

    def charge(self, seconds: float) -> None:
        """Account for a detection that took ``seconds``."""
        self._bucket.charge(seconds)
