"""How much one match counts: votes weighted by face quality.

A back-row face is 16-35 px wide: its embedding is made from a 112x112 crop upscaled
3-7x, so its match scores are noisier than a front-row face's (measured on 1080p frames
with buffalo_sc: genuine scores 0.34-0.60 at 16-18 px against 0.55-0.90 at 32-40 px;
impostors at most 0.31 at every size). So a vote from a small, blurred or unsure face
counts for less than one from a sharp 32 px face:

* **Weight** = size x sqrt(sharpness x detector score), each part in [0.25, 1]:
  size is ``width / full_weight_px``; sharpness is the variance of the Laplacian of the
  aligned crop against :data:`SHARP_REF` (a 2-pixel blur brings it from 13-47 down to
  3-10 at 16-24 px); the detector part rises from 0.3 to 0.7. A track is confirmed when
  its student's votes weigh ``confirm_k`` within votes weighing ``confirm_n``
  (:meth:`agent.vision.tracker.Track.vote`): a sharp 32 px face needs 2 votes (or one of at
  least ``instant_score``), a sharp 18 px face about 4, a blurred one more.
* **A higher bar per vote**: a vote counts for a student only with a score of at least
  ``match_threshold + small_face_margin x (1 - weight)``, so a run of weak matches from a
  tiny face cannot add up to a wrong student.
* **No instant confirmation** (``instant_score``) from a face weighing less than
  :data:`INSTANT_MIN_WEIGHT`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2

from agent.vision.faces import DetectedFace, Image

if TYPE_CHECKING:
    from agent.config import RecognitionConfig

SHARP_REF = 25.0  # Laplacian variance of an aligned crop that counts as sharp
INSTANT_MIN_WEIGHT = 0.75
FLOOR = 0.25


def _part(value: float) -> float:
    return min(1.0, max(FLOOR, value))


def sharpness(crop: Image) -> float:
    """Variance of the Laplacian of an aligned face crop (higher is sharper)."""
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


def vote_weight(face: DetectedFace, crop: Image, cfg: RecognitionConfig) -> float:
    """How much one match of this face counts, in (0, 1] (see the module doc)."""
    size = _part(face.width / cfg.full_weight_px)
    sharp = _part(sharpness(crop) / SHARP_REF)
    detector = _part((face.score - 0.3) / 0.4)
    return size * math.sqrt(sharp * detector)


def vote_threshold(threshold: float, weight: float, cfg: RecognitionConfig) -> float:
    """The score a match of this weight needs to count as a vote for its student."""
    return threshold + cfg.small_face_margin * (1.0 - weight)
