"""Snapshots for the technician's page: a camera's last analysed frame, scaled down, with
its face boxes and labels drawn, as JPEG bytes in memory (never written to disk).

Blocking (resize, draw, encode): call it on a worker thread, never on the event loop.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from agent.camera.view import CameraView
from agent.errors import AgentError, ErrorCode

RECOGNISED = (80, 200, 60)  # BGR green
UNKNOWN = (0, 170, 255)  # BGR amber
_FOLD = str.maketrans({"đ": "d", "Đ": "D", "ø": "o", "Ø": "O", "ß": "ss", "ł": "l", "Ł": "L"})


class SnapshotError(AgentError):
    """The frame could not be encoded."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.IMAGE_PROCESSING_FAILED, reason, status=500)


def ascii_label(text: str, limit: int = 32) -> str:
    """``text`` as OpenCV's fonts can draw it: accents dropped, other characters '?'."""
    folded = unicodedata.normalize("NFKD", text.translate(_FOLD))
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    out = "".join(c if " " <= c <= "~" else "?" for c in plain)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _scaled(image: np.ndarray[Any, Any], max_width: int) -> tuple[np.ndarray[Any, Any], float]:
    height, width = image.shape[:2]
    if width <= max_width:
        return image.copy(), 1.0
    scale = max_width / width
    size = (max_width, max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def encode_jpeg(image: np.ndarray[Any, Any], max_width: int, quality: int) -> bytes:
    """``image`` (BGR) scaled to at most ``max_width`` and JPEG-encoded."""
    scaled, _ = _scaled(image, max_width)
    return _encode(scaled, quality)


def _encode(image: np.ndarray[Any, Any], quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SnapshotError("JPEG encoding failed")
    return bytes(data.tobytes())


def render_snapshot(
    view: CameraView, labels: Sequence[str | None], max_width: int, quality: int
) -> bytes:
    """The view's frame with each face's box and label drawn (on a copy).

    ``labels[i]`` is what face ``i`` is called (None: not recognised, drawn as
    "unknown"); the image shows it with accents folded to ASCII.
    """
    image, scale = _scaled(np.asarray(view.image), max_width)
    height, width = image.shape[:2]
    thickness = max(2, round(width / 320))
    font_scale = max(0.5, width / 1000)
    for face, label in zip(view.faces, labels, strict=True):
        x1, y1, x2, y2 = (round(v * scale) for v in face.bbox)
        x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
        y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
        color = UNKNOWN if label is None else RECOGNISED
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        text = "unknown" if label is None else ascii_label(label)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - th - base - 4 if y1 - th - base - 4 >= 0 else y2 + 1
        top = min(top, max(0, height - th - base - 4))
        cv2.rectangle(image, (x1, top), (x1 + tw + 6, top + th + base + 4), color, cv2.FILLED)
        cv2.putText(
            image,
            text,
            (x1 + 3, top + th + 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return _encode(image, quality)
