"""Small unit checks of the camera reader's helpers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import cv2
import pytest

from agent.camera.reader import redact_url
from agent.camera.reconnect import Reconnects
from agent.camera.video_source import (
    SourceError,
    SourceFailure,
    _opencv_source,
    choose_decoder,
    failure_kind,
    open_source,
)
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


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (SourceError("open refused", opening=True, kind=SourceFailure.REFUSED), "REFUSED"),
        (SourceError("read failed"), "OTHER"),
        (TimeoutError("Connection timed out"), "TIMEOUT"),
        (ConnectionRefusedError("Connection refused"), "CONNECTION_REFUSED"),
        (ValueError("timed out, refused"), "OTHER"),  # the words do not decide, the type does
    ],
)
def test_failure_kinds_come_from_the_error_not_its_words(exc: Exception, kind: str) -> None:
    assert failure_kind(exc) is SourceFailure(kind)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    with socket.socket() as s:  # accepts connections and never says a word
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("decoder", "kind"), [("pyav", "CONNECTION_REFUSED"), ("opencv", "REFUSED")]
)
def test_a_closed_port_is_an_open_failure_of_its_kind(
    decoder: str, kind: str, closed_port: int
) -> None:
    cfg = load_config(None).cameras.model_copy(update={"decoder": decoder})
    with pytest.raises(SourceError) as failed:
        open_source(f"rtsp://127.0.0.1:{closed_port}/x", cfg)
    assert failed.value.kind is SourceFailure(kind)


def test_opencv_open_that_waits_out_its_timeout_is_a_timeout(silent_port: int) -> None:
    cfg = load_config(None).cameras.model_copy(
        update={"decoder": "opencv", "open_timeout_s": 1.0, "read_timeout_s": 1.0}
    )
    with pytest.raises(SourceError) as failed:
        open_source(f"rtsp://127.0.0.1:{silent_port}/x", cfg)
    assert failed.value.kind is SourceFailure.TIMEOUT
    assert str(failed.value) == "open timed out"


def _reconnects(**cameras: float) -> Reconnects:
    return Reconnects(load_config(None).cameras.model_copy(update=cameras))


def test_a_dead_camera_is_probed_fast_after_its_loss() -> None:
    retry = _reconnects(probe_min_s=2.0, probe_max_s=30.0, probe_fast_for_s=180.0)
    assert [retry.probe_wait() for _ in range(5)] == [2.0] * 5


def test_then_the_probes_back_off_to_probe_max_and_start_over_after_a_loss() -> None:
    retry = _reconnects(probe_min_s=2.0, probe_max_s=30.0, probe_fast_for_s=0.0)
    assert [retry.probe_wait() for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    retry.lost()
    assert retry.probe_wait() == 2.0
    assert time.monotonic() - retry.lost_at < 1.0


def test_attempts_count_to_dead_and_start_over_when_lost() -> None:
    retry = _reconnects(reconnect_attempts=2, reconnect_interval_s=0.5, probe_min_s=3.0)
    waits = [retry.failed("cam", "rtsp://h/s", "open refused", dead=False, timed_out=False)]
    assert (waits, retry.gave_up) == ([0.5], False)
    waits.append(retry.failed("cam", "rtsp://h/s", "open refused", dead=False, timed_out=False))
    assert (waits, retry.gave_up) == ([0.5, 3.0], True)  # DEAD: the first probe in probe_min_s
    retry.lost()
    assert (retry.attempts, retry.gave_up) == (0, False)
