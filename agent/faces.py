"""Light types shared by the camera, tracking and recognition code: image arrays and
detected faces. Only numpy here, so modules that handle frames and boxes (cameras, the
tracker, the scheduler, the status page) never import ONNX Runtime or InsightFace."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""A BGR image, height x width x 3."""
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DetectedFace:
    """One face found by the detector, in source-image pixels."""

    bbox: FloatArray  # x1, y1, x2, y2
    score: float
    kps: FloatArray  # 5 x 2: left eye, right eye, nose, left mouth, right mouth

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
