"""What a camera reader counts, and the frames it hands over.

Two sets of counters because two threads write them: :class:`ReaderCounters` only the
reader thread (the loop reads them for status), :class:`LoopCounters` only the event loop.
Nothing is locked: each field has one writer, and a status read that is one frame behind
is harmless.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from agent.vision.faces import Image

RATE_WINDOW_S = 10.0  # analysis rate shown in status: analyses over the last 10 s


@dataclass(frozen=True)
class Frame:
    """One decoded frame and when it was read."""

    image: Image
    monotonic: float
    wall: float


@dataclass
class ReaderCounters:
    """Written by the reader thread only (the loop reads them for status)."""

    frames_read: int = 0  # video packets (PyAV) or frames (OpenCV) received from the stream
    frames_decoded: int = 0
    frames_invalid: int = 0  # decoded but unusable
    reconnects: int = 0
    last_error: str = ""
    # Monotonic time of the last usable video packet or frame (one a decoder can use: not
    # before the stream's first keyframe, not audio).
    last_frame_at: float | None = None
    next_retry_at: float | None = None  # wall time of the next open attempt while down


@dataclass
class LoopCounters:
    """Written on the event loop only."""

    frames_analysed: int = 0
    analysis_errors: int = 0
    analyses_shed: int = 0  # analyses a busy box skipped (the scheduler's count)
    stall_error: str = ""  # the loop's own finding: no frame for max_frame_age_s
    up_seconds: float = 0.0
    live_since: float | None = None
    analysed_at: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    def analysis_rate(self, now: float) -> float:
        """Analyses per second over the last ``RATE_WINDOW_S`` seconds before ``now``."""
        since = now - RATE_WINDOW_S
        return sum(1 for t in self.analysed_at if t >= since) / RATE_WINDOW_S
