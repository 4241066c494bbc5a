"""OpenCV's FFmpeg options reach each open without writing os.environ at run time: the
agent sets OPENCV_FFMPEG_CAPTURE_OPTIONS once at start-up (OpenCV reads them from nowhere
else), and neither a camera reader thread nor the camera test writes the environment,
while a real RTSP camera still opens with them and a redirect is still not followed
(``max_redirects;0`` is one of those options)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from agent.camera.check import probe_camera
from agent.camera.reader import CameraReader, CameraState
from agent.camera.video_source import OPENCV_OPTIONS_ENV, install_opencv_options, opencv_options
from agent.config import CamerasConfig, load_config
from tests.mjpeg import MjpegServer, jpeg
from tests.rtsp import RtspServer
from tests.waiting import wait_until


def _opencv_cfg() -> CamerasConfig:
    cfg = load_config(None).cameras.model_copy(update={"decoder": "opencv"})
    return cfg


async def test_camera_reader_and_camera_test_open_opencv_without_writing_environ(
    yao_camera: RtspServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _opencv_cfg()
    monkeypatch.delenv(OPENCV_OPTIONS_ENV, raising=False)
    install_opencv_options(cfg)  # what App.run does first, before any camera thread
    assert os.environ[OPENCV_OPTIONS_ENV] == opencv_options(cfg)
    outside = MjpegServer([(jpeg(320, 240), 1.0)])
    await outside.start()
    redirector = MjpegServer([(jpeg(160, 120), 1.0)], redirect_to=outside.url)
    await redirector.start()
    writes: list[tuple[str, str]] = []
    environ_type: Any = type(os.environ)
    set_item = environ_type.__setitem__

    def recording_set(self: Any, key: str, value: str) -> None:
        writes.append((key, threading.current_thread().name))
        set_item(self, key, value)

    monkeypatch.setattr(environ_type, "__setitem__", recording_set)
    reader = CameraReader(
        camera_id="c1",
        name="Room 1",
        url=yao_camera.url,
        cfg=cfg,
        loop=asyncio.get_running_loop(),
        on_state=lambda cid, state, reason: None,
    )
    reader.start()
    try:
        await wait_until(lambda: reader.state is CameraState.LIVE, 10, "the camera is live")
        assert reader.decoder == "opencv"
        assert await reader.next_frame(timeout=5) is not None

        def probe(url: str) -> Any:
            return probe_camera(
                url, cfg, seconds=0.5, max_width=320, quality=70, cancel=threading.Event()
            )

        result = await asyncio.to_thread(probe, yao_camera.url)
        assert result.ok, result
        # The options are in force for that open: the redirect is not followed.
        result = await asyncio.to_thread(probe, redirector.redirect_url)
        assert not result.ok
        assert redirector.hits["/redirect"] == 1 and outside.hits["/camera"] == 0
    finally:
        await reader.stop()
        await redirector.stop()
        await outside.stop()
    assert writes == [], f"os.environ written at run time: {writes}"
