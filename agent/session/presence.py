"""The presence verdict: for every roster student, PRESENT, UNCERTAIN or NOT_SEEN.

The backend only hears RECOGNITION events for the students the agent confirmed; without a
verdict it cannot tell "absent" from "sat in the back row, too small to confirm". So each
session keeps a :class:`PresenceBook` on the event loop:

* **PRESENT**: the student got a RECOGNITION (the book is told when the event is stored),
  with the first and last time they were seen recognised, the camera that recognised
  them, their best score and the number of analyses that saw them.
* **UNCERTAIN**: never confirmed, but some face's best match was this student with a score
  no more than ``stranger_margin`` below the threshold (or above it, without enough
  agreeing votes to confirm): how many such matches, the camera of the closest, its score.
  The teacher can check these.
* **NOT_SEEN**: nothing pointed at them.

The book is kept in the state file with the session (``Store.save_presence``): written
when a student is recognised and every few seconds while it changes, so it survives an
agent restart like the rest of the session. It holds no embeddings and no names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from agent.protocol import PresenceCounts, PresenceEntry, PresenceStatus


@dataclass
class StudentTrace:
    """What the session saw of one student."""

    recognised_at: float | None = None  # wall time of the RECOGNITION
    camera_id: str | None = None  # the camera that recognised them
    last_seen: float | None = None
    best_score: float | None = None
    sightings: int = 0
    near_count: int = 0  # close matches that did not confirm
    near_best: float | None = None
    near_camera: str | None = None


class PresenceBook:
    """Per-student evidence of one session, and its verdict (loop only)."""

    def __init__(self, student_ids: Sequence[str]) -> None:
        self._traces: dict[str, StudentTrace] = {sid: StudentTrace() for sid in student_ids}
        self.changed = False  # since the last save

    def recognised(self, student_id: str, wall: float, camera_id: str, score: float) -> None:
        """The student's RECOGNITION was stored."""
        trace = self._traces.get(student_id)
        if trace is None or trace.recognised_at is not None:
            return
        trace.recognised_at = wall
        trace.camera_id = camera_id
        self.seen(student_id, wall, score)

    def seen(self, student_id: str, wall: float, score: float) -> None:
        """An analysis saw the student as recognised (a confirmed track)."""
        trace = self._traces.get(student_id)
        if trace is None:
            return
        trace.last_seen = max(wall, trace.last_seen or wall)
        trace.best_score = max(score, trace.best_score if trace.best_score is not None else score)
        trace.sightings += 1
        self.changed = True

    def near(self, student_id: str, camera_id: str, score: float) -> None:
        """A face's best match was this student, close to the threshold, unconfirmed."""
        trace = self._traces.get(student_id)
        if trace is None:
            return
        trace.near_count += 1
        if trace.near_best is None or score > trace.near_best:
            trace.near_best = score
            trace.near_camera = camera_id
        self.changed = True

    def status(self, student_id: str) -> PresenceStatus:
        """The verdict on one student so far."""
        trace = self._traces[student_id]
        if trace.recognised_at is not None:
            return PresenceStatus.PRESENT
        if trace.near_count:
            return PresenceStatus.UNCERTAIN
        return PresenceStatus.NOT_SEEN

    def missing(self) -> int:
        """Roster students not (yet) recognised."""
        return sum(1 for t in self._traces.values() if t.recognised_at is None)

    def counts(self) -> PresenceCounts:
        """How many students are present, uncertain and not seen so far."""
        verdicts = [self.status(sid) for sid in self._traces]
        return PresenceCounts(
            present=verdicts.count(PresenceStatus.PRESENT),
            uncertain=verdicts.count(PresenceStatus.UNCERTAIN),
            not_seen=verdicts.count(PresenceStatus.NOT_SEEN),
        )

    def entries(self, at: Callable[[float], datetime]) -> list[PresenceEntry]:
        """One entry per roster student, in roster order (``at`` makes wire times)."""
        out = []
        for student_id, trace in self._traces.items():
            status = self.status(student_id)
            if status is PresenceStatus.PRESENT:
                assert trace.recognised_at is not None
                entry = PresenceEntry(
                    student_id=student_id,
                    status=status,
                    first_seen_at=at(trace.recognised_at),
                    last_seen_at=at(trace.last_seen or trace.recognised_at),
                    camera_id=trace.camera_id,
                    best_score=_score(trace.best_score),
                    sightings=trace.sightings,
                )
            elif status is PresenceStatus.UNCERTAIN:
                entry = PresenceEntry(
                    student_id=student_id,
                    status=status,
                    camera_id=trace.near_camera,
                    best_score=_score(trace.near_best),
                    sightings=trace.near_count,
                )
            else:
                entry = PresenceEntry(student_id=student_id, status=status)
            out.append(entry)
        return out

    # Persistence ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The book as plain data for the state file."""
        return {"students": {sid: asdict(t) for sid, t in self._traces.items()}, "v": 1}

    def restore(self, data: dict[str, Any] | None) -> None:
        """Take back what a saved book knew about this roster's students."""
        if not data or data.get("v") != 1:
            return
        fields = set(StudentTrace.__dataclass_fields__)
        for student_id, saved in dict(data.get("students", {})).items():
            if student_id in self._traces and isinstance(saved, dict):
                self._traces[student_id] = StudentTrace(
                    **{k: v for k, v in saved.items() if k in fields}
                )


def _score(value: float | None) -> float | None:
    return None if value is None else round(min(1.0, max(-1.0, value)), 4)
