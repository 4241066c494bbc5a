"""Camera placement telemetry: the widths of the faces a camera sees and recognises.

Each tracked face is counted once when it is first seen and once when it is recognised,
by its width in source pixels. When most faces a camera sees are narrower than it can
recognise reliably, status and the status page say so, so a technician moves the camera
or changes its lens before a school complains.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from agent.status.models import FaceWidths

EDGES = (16, 20, 24, 32, 48, 80)  # bucket edges (px); the buckets the benchmarks report
LABELS = ("<16", "16-20", "20-24", "24-32", "32-48", "48-80", "80+")
RELIABLE_PX = 24  # below this, recognition needs many analyses and often stays uncertain
HINT_MIN_FACES = 8  # say nothing about placement before this many faces were seen
HINT_SHARE = 0.5


class FaceWidthCounts:
    """Per-camera counts of faces seen and recognised, by width (loop only)."""

    def __init__(self) -> None:
        self.seen = [0] * len(LABELS)
        self.recognised = [0] * len(LABELS)

    @staticmethod
    def bucket(width: float) -> int:
        """Index of the bucket a width falls into."""
        return bisect.bisect_right(EDGES, width)

    def add(self, seen: Iterable[float], recognised: Iterable[float]) -> None:
        """Count faces first seen and faces newly recognised in one analysis."""
        for width in seen:
            self.seen[self.bucket(width)] += 1
        for width in recognised:
            self.recognised[self.bucket(width)] += 1

    def status(self) -> FaceWidths:
        """The counts for status."""
        return FaceWidths(
            buckets=list(LABELS), seen=list(self.seen), recognised=list(self.recognised)
        )

    def hint(self) -> str | None:
        """A sentence for the technician when most faces are too small, else None."""
        total = sum(self.seen)
        small = sum(self.seen[: self.bucket(RELIABLE_PX - 0.5) + 1])
        if total < HINT_MIN_FACES or small / total <= HINT_SHARE:
            return None
        return (
            f"{round(100 * small / total)}% of the faces this camera sees are under "
            f"{RELIABLE_PX} px wide: move it closer to the class or use a narrower lens "
            "(or a higher resolution)."
        )
