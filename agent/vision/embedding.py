"""Enrollment: one photo in, one embedding (with its quality verdict) out.

Used by ``python -m agent embed`` and by the ``embedding/generate`` MQTT command. The
function is synchronous and CPU-bound: the agent runs it in its inference pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import EnrollmentConfig
from agent.errors import AgentError, ErrorCode
from agent.vision.engine import FaceEngine
from agent.vision.faces import DetectedFace
from agent.vision.photo import decode_photo, read_photo_file
from agent.vision.quality import QualityReport, assess

log = logging.getLogger(__name__)

# Enrollment photos are portraits: detect at the full 640 long side whatever the config
# says for video, and on the exact input the reference pipeline uses.
ENROLL_LONG_SIDE = 640


@dataclass(frozen=True)
class EmbeddingResult:
    """What enrollment returns for one accepted photo."""

    embedding: list[float]
    embedding_space: str
    bbox: list[float]
    det_score: float
    quality: QualityReport
    submission_id: str | None = None

    def as_data(self) -> dict[str, Any]:
        """The reply's ``data`` object."""
        data: dict[str, Any] = {
            "embedding": self.embedding,
            "embeddingSpace": self.embedding_space,
            "bbox": self.bbox,
            "detScore": round(self.det_score, 4),
            "quality": self.quality.as_dict(),
        }
        if self.submission_id is not None:
            data["submissionId"] = self.submission_id
        return data


def significant_faces(faces: list[DetectedFace], ratio: float) -> list[DetectedFace]:
    """Faces at least ``ratio`` times the area of the largest one, largest first.

    This is the rule that ignores tiny background faces (a poster, a passer-by far behind)
    when deciding whether a photo shows more than one person.
    """
    if not faces:
        return []
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    largest = ordered[0].area
    return [f for f in ordered if f.area >= ratio * largest]


def generate_embedding(
    engine: FaceEngine,
    cfg: EnrollmentConfig,
    *,
    photo: bytes | None = None,
    path: Path | str | None = None,
    submission_id: str | None = None,
) -> EmbeddingResult:
    """Embed the one face of an enrollment photo given as bytes or as a file path.

    Raises :class:`AgentError` with ``PHOTO_FILE_REQUIRED``, ``PHOTO_FILE_NOT_FOUND``,
    ``INVALID_FILE_FORMAT``, ``NO_FACE_IN_PHOTO``, ``MULTIPLE_FACES_DETECTED``,
    ``LOW_QUALITY_FACE`` or (status 500) ``IMAGE_PROCESSING_FAILED``.
    """
    if photo is None:
        photo = read_photo_file(path, cfg.max_photo_bytes)
    image = decode_photo(photo, max_bytes=cfg.max_photo_bytes, max_pixels=cfg.max_photo_pixels)
    try:
        faces = engine.detect(image, long_side=ENROLL_LONG_SIDE)
        if not faces:
            raise AgentError(
                ErrorCode.NO_FACE_IN_PHOTO,
                "No face was found in the photo. Use a well-lit, front-facing photo "
                "where the face is clearly visible.",
            )
        main = significant_faces(faces, cfg.significant_face_ratio)
        if len(main) > 1:
            raise AgentError(
                ErrorCode.MULTIPLE_FACES_DETECTED,
                f"{len(main)} faces of similar size were found. Use a photo of the student alone.",
                details={"faces": len(main)},
            )
        face = main[0]
        crop = engine.align(image, [face])[0]
        quality = assess(face, crop, cfg)
        if quality.failed:
            reasons = "; ".join(
                f"{name} {quality.parts[name].value:.1f} (needs {quality.parts[name].limit})"
                for name in quality.failed
            )
            raise AgentError(
                ErrorCode.LOW_QUALITY_FACE,
                f"The face is not good enough for enrollment: {reasons}. Retake the photo.",
                details={"quality": quality.as_dict()},
            )
        vector = engine.embed([crop])[0]
    except AgentError:
        raise
    except Exception as exc:
        log.exception("IMAGE_PROCESSING_FAILED submission=%s", submission_id)
        raise AgentError(
            ErrorCode.IMAGE_PROCESSING_FAILED,
            f"The photo could not be processed ({type(exc).__name__}). It was logged; "
            "try again or contact support.",
            status=500,
        ) from exc
    return EmbeddingResult(
        embedding=[float(x) for x in vector],
        embedding_space=engine.embedding_space,
        bbox=[round(float(v), 1) for v in face.bbox],
        det_score=face.score,
        quality=quality,
        submission_id=submission_id,
    )
