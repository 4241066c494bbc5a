"""Small unit checks of the camera reader's helpers."""

from __future__ import annotations

import cv2
import pytest

from agent.camera.reader import redact_url
from agent.camera.video_source import _opencv_source, choose_decoder
from agent.config import load_config


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
    assert _opencv_source("0") == (0, cv2.CAP_V4L2)
    assert _opencv_source("file:///tmp/x.mp4") == ("/tmp/x.mp4", cv2.CAP_FFMPEG)
    assert _opencv_source("rtsp://h/s") == ("rtsp://h/s", cv2.CAP_FFMPEG)


@pytest.mark.parametrize(
    ("url", "decoder", "chosen"),
    [
        ("rtsp://h/s", "auto", "pyav"),
        ("file:///tmp/x.mp4", "auto", "pyav"),
        ("0", "auto", "opencv"),  # a device index: V4L2 through OpenCV
        ("rtsp://h/s", "opencv", "opencv"),
        ("rtsp://h/s", "pyav", "pyav"),
    ],
)
def test_decoder_choice(url: str, decoder: str, chosen: str) -> None:
    cfg = load_config(None).cameras.model_copy(update={"decoder": decoder})
    assert choose_decoder(url, cfg) == chosen
