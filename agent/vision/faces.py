"""Light types shared by the camera, tracking and recognition code: image arrays and
detected faces. Only numpy here, so modules that handle frames and boxes (cameras, the
tracker, the scheduler, the status page) never import ONNX Runtime or InsightFace."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

DETECTOR_STRIDE = 32
"""The coarsest SCRFD feature stride: detector inputs are multiples of it."""

Image = npt.NDArray[np.uint8]
"""A BGR image, height x width x 3."""
FloatArray = npt.NDArray[np.float32]


class FaceSource(StrEnum):
    """Which detection pass found a face (``agent.vision.coverage``)."""

    COARSE = "coarse"  # the whole frame, shrunk to the detector's input size
    REGION = "region"  # a region around a candidate or a track, at native resolution
    TILE = "tile"  # a tile of a full-resolution sweep


@dataclass(frozen=True)
class DetectedFace:
    """One face found by the detector, in source-image pixels."""

    bbox: FloatArray  # x1, y1, x2, y2
    score: float
    kps: FloatArray  # 5 x 2: left eye, right eye, nose, left mouth, right mouth
    # A face found on a shrunk frame is only a candidate when it is small: its landmarks
    # are a few detector pixels apart, too coarse to align for recognition.
    source: FaceSource = FaceSource.COARSE

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return float(self.bbox[2] - self.bbox[0])

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    @property
    def inter_eye_px(self) -> float:
        """Distance between the two eye landmarks."""
        return float(np.linalg.norm(self.kps[1] - self.kps[0]))


@dataclass(frozen=True)
class Face(DetectedFace):
    """A detected face with its L2-normalised embedding."""

    embedding: FloatArray = field(default_factory=lambda: np.zeros(0, np.float32))
