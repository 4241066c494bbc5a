"""Quality verdict for an enrollment face: size, sharpness, pose, exposure, detector score.

Each part has a measured value, the limit from config, and a 0..1 score; the overall score
is the geometric mean of the part scores. A face fails when any part is past its limit.
Pose is estimated from the five landmarks in the aligned (ArcFace template) frame, which is
coarse but needs no extra model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from agent.config import EnrollmentConfig
from agent.vision.faces import DetectedFace, Image

_NOSE_DROP = 0.494  # nose height between eye line (0) and mouth line (1) on a frontal face


@dataclass(frozen=True)
class QualityPart:
    """One measured aspect of a face."""

    value: float
    limit: str
    score: float
    ok: bool


@dataclass(frozen=True)
class QualityReport:
    """All parts, the overall score, and the parts that failed."""

    parts: dict[str, QualityPart]
    score: float

    @property
    def failed(self) -> list[str]:
        """Names of the parts past their limits."""
        return [name for name, part in self.parts.items() if not part.ok]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form used in replies."""
        return {
            "score": round(self.score, 3),
            "passed": not self.failed,
            "failed": self.failed,
            "parts": {
                name: {
                    "value": round(p.value, 3),
                    "limit": p.limit,
                    "score": round(p.score, 3),
                    "ok": p.ok,
                }
                for name, p in self.parts.items()
            },
        }


def _clip01(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


def estimate_pose(face: DetectedFace) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees, approximated from the five landmarks."""
    left_eye, right_eye = face.kps[0].astype(np.float64), face.kps[1].astype(np.float64)
    eye_vec = right_eye - left_eye
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    # Undo roll, then measure the nose against the eyes and the mouth.
    c, s = math.cos(math.radians(-roll)), math.sin(math.radians(-roll))
    rot = np.array([[c, -s], [s, c]])
    pts = (rot @ (face.kps.astype(np.float64) - left_eye).T).T
    eye_mid = (pts[0] + pts[1]) / 2
    mouth_mid = (pts[3] + pts[4]) / 2
    half_eye = max(1e-6, float(np.linalg.norm(pts[1] - pts[0])) / 2)
    yaw_ratio = (pts[2][0] - eye_mid[0]) / half_eye
    vertical = max(1e-6, float(mouth_mid[1] - eye_mid[1]))
    pitch_ratio = ((pts[2][1] - eye_mid[1]) / vertical - _NOSE_DROP) / _NOSE_DROP
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, yaw_ratio))))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, pitch_ratio))))
    return yaw, pitch, roll


def assess(face: DetectedFace, aligned: Image, cfg: EnrollmentConfig) -> QualityReport:
    """Quality verdict for one detected face and its aligned 112x112 crop."""
    gray = cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)
    # Inner region only: the warp leaves black borders on faces near the image edge.
    inner = gray[16:96, 16:96]
    sharpness = float(cv2.Laplacian(inner, cv2.CV_64F).var())
    brightness = float(inner.mean())
    yaw, pitch, roll = estimate_pose(face)
    iod = face.inter_eye_px
    pose_score = 1.0 - max(
        abs(yaw) / cfg.max_yaw_deg, abs(pitch) / cfg.max_pitch_deg, abs(roll) / cfg.max_roll_deg
    )
    mid = (cfg.min_brightness + cfg.max_brightness) / 2
    half = max(1e-6, (cfg.max_brightness - cfg.min_brightness) / 2)
    parts = {
        "faceSize": QualityPart(
            iod,
            f">= {cfg.min_inter_eye_px:g} px between the eyes",
            _clip01(iod / (2 * cfg.min_inter_eye_px)),
            iod >= cfg.min_inter_eye_px,
        ),
        "sharpness": QualityPart(
            sharpness,
            f">= {cfg.min_sharpness:g} (Laplacian variance)",
            _clip01(sharpness / (2 * cfg.min_sharpness)) if cfg.min_sharpness else 1.0,
            sharpness >= cfg.min_sharpness,
        ),
        "pose": QualityPart(
            max(abs(yaw), abs(pitch), abs(roll)),
            f"yaw <= {cfg.max_yaw_deg:g}, pitch <= {cfg.max_pitch_deg:g}, "
            f"roll <= {cfg.max_roll_deg:g} degrees (yaw {yaw:.0f}, pitch {pitch:.0f}, "
            f"roll {roll:.0f})",
            _clip01(pose_score),
            pose_score >= 0.0,
        ),
        "exposure": QualityPart(
            brightness,
            f"mean brightness {cfg.min_brightness:g}-{cfg.max_brightness:g}",
            _clip01(1.0 - abs(brightness - mid) / half),
            cfg.min_brightness <= brightness <= cfg.max_brightness,
        ),
        "detScore": QualityPart(
            face.score,
            f">= {cfg.min_det_score:g}",
            _clip01(face.score),
            face.score >= cfg.min_det_score,
        ),
    }
    scores = [max(p.score, 1e-3) for p in parts.values()]
    overall = float(np.exp(np.mean(np.log(scores))))
    return QualityReport(parts=parts, score=overall)
