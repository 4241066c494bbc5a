"""Small unit checks of the camera reader's helpers."""

from __future__ import annotations

import cv2
import pytest

from agent.camera import _source, redact_url


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("rtsp://admin:secret@192.0.2.1:554/s", "rtsp://***@192.0.2.1:554/s"),
        ("rtsp://admin@192.0.2.1/s", "rtsp://***@192.0.2.1/s"),
        ("rtsp://192.0.2.1/s", "rtsp://192.0.2.1/s"),
    ],
)
def test_urls_are_logged_without_credentials(url: str, safe: str) -> None:
    assert redact_url(url) == safe


def test_sources() -> None:
    assert _source("0") == (0, cv2.CAP_V4L2)
    assert _source("file:///tmp/x.mp4") == ("/tmp/x.mp4", cv2.CAP_FFMPEG)
    assert _source("rtsp://h/s") == ("rtsp://h/s", cv2.CAP_FFMPEG)
