"""What a camera saw at its last analysis: the frame and the faces on it.

Each camera's work (:class:`~agent.session.camera_work.CameraWork`) keeps its last
:class:`CameraView` in memory (replaced at each analysis, never written to disk) so the
technician's page can draw a snapshot on request.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.vision.faces import Image


@dataclass(frozen=True)
class FaceBox:
    """One tracked face of an analysis, in frame pixels."""

    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    student_id: str | None  # the confirmed student; None while unknown
    score: float  # best match score of that student on this track (0.0 when unknown)


@dataclass(frozen=True)
class CameraView:
    """The frame of a camera's last analysis and the faces found on it."""

    camera_id: str
    image: Image  # BGR, as decoded; read-only by convention
    wall: float  # time.time() when the frame was read
    faces: tuple[FaceBox, ...]
