"""The technician's camera test: open a stream, read it for a moment, and report whether
it delivers frames, at what resolution and rate, with one frame to look at.

Opening a stream blocks in OpenCV, so :func:`probe_camera` runs on a worker thread with
the configured open and read timeouts. Which streams may be opened: the registry's
cameras always, other URLs only under ``[webui] camera_test_allowed_urls`` (same
scheme, host and port, path under the entry's path by whole segments) so the page cannot
be used to make the box connect wherever a visitor likes. Nothing of the URL's
credentials appears in results or logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

# The capture is opened as the camera reader opens it (same backend choice, same
# credential masking); camera.py keeps those helpers private to its module.
from agent.allowlist import check_under
from agent.camera.snapshot import SnapshotError, encode_jpeg
from agent.camera.urls import CAMERA_PORTS, CameraUrlError
from agent.camera.video_source import (
    DecodeMode,
    SourceError,
    SourceFailure,
    VideoSource,
    failure_kind,
    open_source,
)
from agent.config import CamerasConfig
from agent.errors import ErrorCode
from agent.redaction import redact_text, redact_url, url_secrets

MAX_TEST_FRAMES = 300  # a 60 fps camera read for the longest test (5 s)


def _forbidden(reason: str) -> CameraUrlError:
    """The camera test answers a URL it may not open with 403."""
    return CameraUrlError(reason, status=403)


def check_camera_url(url: str, allowed_urls: Iterable[str]) -> None:
    """Raise :class:`CameraUrlError` unless ``url`` lies under one of ``allowed_urls``:
    same scheme, host and port, and a path under the entry's path by whole segments (the
    callback allowlist's rules, with camera schemes and the camera's credentials allowed)."""
    check_under(
        url.strip(),
        allowed_urls,
        ports=CAMERA_PORTS,
        allow_userinfo=True,
        error=_forbidden,
        refusal="is not a registry camera and not under [webui] camera_test_allowed_urls",
    )


@dataclass(frozen=True)
class CameraTestResult:
    """What the test found. ``jpeg`` is one frame (scaled down), kept in memory only."""

    source: str  # the URL with its credentials removed
    ok: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None  # measured over the test
    reported_fps: float | None = None  # what the stream says
    frames: int = 0
    seconds: float = 0.0
    error_code: ErrorCode | None = None
    error: str | None = None
    jpeg: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        """The result as the page receives it (the frame separately)."""
        return {
            "source": self.source,
            "ok": self.ok,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "reportedFps": self.reported_fps,
            "frames": self.frames,
            "seconds": self.seconds,
            "error": None
            if self.error_code is None
            else {"code": self.error_code.value, "message": self.error},
        }


def probe_camera(
    url: str,
    cameras: CamerasConfig,
    *,
    seconds: float,
    max_width: int,
    quality: int,
    cancel: threading.Event,
) -> CameraTestResult:
    """Open ``url`` as a camera reader would (same library, options and timeouts) and read
    it for ``seconds`` (blocking; run it on a worker thread). Never raises: every failure
    is a result with an error code and what to fix."""
    secrets = url_secrets(url)
    safe = redact_url(url)
    started = time.monotonic()
    try:
        source = open_source(url, cameras)
    except Exception as exc:  # SourceError, or anything a backend raises
        took = time.monotonic() - started
        text, kind = str(exc), failure_kind(exc)
        if isinstance(exc, SourceError) and exc.code is ErrorCode.CAMERA_FRAME_TOO_LARGE:
            return CameraTestResult(
                safe, False, seconds=round(took, 2), error_code=exc.code, error=text
            )
        # A library may report an open that waited out the timeout as something else (PyAV
        # against a silent socket: "Invalid data"); to a technician it is a timeout.
        if kind is SourceFailure.TIMEOUT or took >= cameras.open_timeout_s * 0.9:
            why = (
                f"no answer within {cameras.open_timeout_s:g} s ([cameras] open_timeout_s): "
                "check the address, that the camera is powered and on this network, and the "
                "port"
            )
        elif kind is SourceFailure.REFUSED:
            why = (
                "the camera refused the stream: check the path, the user and password, "
                "and that the stream (e.g. H.264) is enabled on the camera"
            )
        else:
            why = redact_text(f"the stream did not open: {text}", secrets)
        return CameraTestResult(
            safe,
            False,
            seconds=round(took, 2),
            error_code=ErrorCode.CAMERA_OPEN_FAILED,
            error=why,
        )
    try:
        return _read_for(source, safe, cameras, seconds, max_width, quality, cancel, started)
    finally:
        source.release()


def _read_for(
    source: VideoSource,
    safe: str,
    cameras: CamerasConfig,
    seconds: float,
    max_width: int,
    quality: int,
    cancel: threading.Event,
    started: float,
) -> CameraTestResult:
    """Decode frames for ``seconds``; keep the last one."""
    reported = source.fps or None
    times: list[float] = []
    last: np.ndarray[Any, Any] | None = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(times) < MAX_TEST_FRAMES and not cancel.is_set():
        try:
            grab = source.grab(DecodeMode.FULL, wanted=True)
            image = source.retrieve() if grab.decoded else None
        except SourceError as exc:  # a failed read like any other, but say a refused size
            if exc.code is ErrorCode.CAMERA_FRAME_TOO_LARGE:
                took = round(time.monotonic() - started, 2)
                return CameraTestResult(
                    safe, False, seconds=took, error_code=exc.code, error=str(exc)
                )
            break
        if not grab.ok:
            break
        if image is None:
            continue
        times.append(time.monotonic())
        last = image
    took = round(time.monotonic() - started, 2)
    if last is None:
        return CameraTestResult(
            safe,
            False,
            reported_fps=reported,
            seconds=took,
            error_code=ErrorCode.CAMERA_NO_FRAME,
            error=f"the stream opened but delivered no frame within "
            f"{cameras.read_timeout_s:g} s: check the camera's video codec (H.264, H.265 or "
            "MJPEG) and its stream settings",
        )
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    height, width = last.shape[:2]
    return CameraTestResult(
        safe,
        True,
        width=int(width),
        height=int(height),
        fps=None if fps is None else round(fps, 1),
        reported_fps=None if reported is None else round(reported, 1),
        frames=len(times),
        seconds=took,
        jpeg=_jpeg_or_none(last, max_width, quality),
    )


def _jpeg_or_none(image: np.ndarray[Any, Any], max_width: int, quality: int) -> bytes | None:
    """The frame to show, or None when it cannot be encoded (the test result stands)."""
    try:
        return encode_jpeg(image, max_width, quality)
    except SnapshotError:
        return None
