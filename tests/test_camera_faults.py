"""Camera reader faults: a bad URL, an exception inside the reader thread, OpenCV raising.
Every one must end in a reported state (DEAD / RECONNECTING) with a reason, never a
silently dead thread, and the URL's password must never reach a log."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.camera.reader import CameraReader, CameraState
from agent.config import CamerasConfig, load_config
from agent.devkit.brokers import Mosquitto
from tests.agent_harness import RecordingSink, agent_config, backend, running_agent, start_payload
from tests.waiting import wait_until

BAD_URL = "rtsp://user:secret@127.0.0.1:99999/x"
# Through session/start a URL must parse (an invalid port is refused with
# CAMERA_URL_NOT_ALLOWED, tests/test_camera_urls.py): nothing listens on port 1.
UNREACHABLE_URL = "rtsp://user:secret@127.0.0.1:1/x"
FAST = {
    "reconnect_attempts": 1,
    "reconnect_interval_s": 0.1,
    "open_timeout_s": 1.0,
    "read_timeout_s": 1.0,
    "probe_min_s": 0.2,
    "probe_max_s": 0.5,
    "all_dead_grace_s": 0,  # the session stops at once (the grace: tests/test_camera_grace.py)
}

Change = tuple[str, CameraState, str]


def _cameras_cfg(**overrides: Any) -> CamerasConfig:
    return load_config(None).cameras.model_copy(update={**FAST, **overrides})


def _reader(url: str, changes: list[Change], **kwargs: Any) -> CameraReader:
    cfg = kwargs.pop("cfg", None) or _cameras_cfg()
    return CameraReader(
        camera_id="c1",
        name="Room 1",
        url=url,
        cfg=cfg,
        loop=asyncio.get_running_loop(),
        on_state=lambda cid, state, reason: changes.append((cid, state, reason)),
        **kwargs,
    )


def _states(changes: list[Change]) -> list[CameraState]:
    return [state for _, state, _ in changes]


@pytest.fixture
def video(tmp_path: Path) -> str:
    """A real 3 s MJPEG video file, as a file:// camera URL."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, (160, 120))
    assert writer.isOpened()
    for i in range(90):
        frame = np.full((120, 160, 3), i * 2, np.uint8)
        cv2.putText(frame, str(i), (40, 70), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return f"file://{path}"


# Unit level: a real reader thread and a real event loop ---------------------------------


async def test_bad_port_with_userinfo_reaches_dead_with_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    changes: list[Change] = []
    reader = _reader(BAD_URL, changes)
    reader.start()
    try:
        took = await wait_until(lambda: reader.state is CameraState.DEAD, timeout=5)
    finally:
        await reader.stop()
    assert took < 5
    (dead,) = [c for c in changes if c[1] is CameraState.DEAD]
    assert dead[0] == "c1" and dead[2]  # a reason, for CAMERA_DISCONNECTED's message
    assert reader.describe().last_error
    assert "CAMERA_DEAD" in caplog.text
    assert "rtsp://***@127.0.0.1:99999/x" in caplog.text
    assert "secret" not in caplog.text and "user:" not in caplog.text


async def test_camera_id_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.camera.reader")
    changes: list[Change] = []
    reader = _reader(BAD_URL, changes)
    reader.camera_id = "c1\n2030-01-01 INFO agent FAKE_EVENT"
    reader.start()
    try:
        await wait_until(lambda: reader.state is CameraState.DEAD, timeout=5)
    finally:
        await reader.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "agent.camera.reader"]
    assert messages and all("\n" not in m for m in messages)
    assert any("camera=c1\\n2030-01-01 INFO agent FAKE_EVENT" in m for m in messages)
    assert changes[0][0] == reader.camera_id  # the loop still gets the real id


@pytest.mark.slow
async def test_exception_in_reader_thread_is_logged_and_reported_dead(
    video: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The stage-timing callback is code outside OpenCV running on the reader thread; a
    # bug there used to end the thread silently with the camera stuck in its old state.
    caplog.set_level(logging.INFO)

    def broken_observe(stage: str, seconds: float) -> None:
        raise RuntimeError("metrics down while reading rtsp://admin:hunter2@10.0.0.9/live")

    changes: list[Change] = []
    reader = _reader(video, changes, observe=broken_observe)
    reader.start()
    try:
        await wait_until(lambda: reader.state is CameraState.LIVE, timeout=5)
        assert await reader.next_frame(timeout=2) is None  # the thread died on it
        await wait_until(lambda: reader.state is CameraState.DEAD, timeout=5)
        assert reader._thread is not None
        await wait_until(lambda: not reader._thread.is_alive(), timeout=5)  # type: ignore[union-attr]
    finally:
        await reader.stop()
    reason = next(r for _, s, r in changes if s is CameraState.DEAD)
    assert reason.startswith("reader crashed: RuntimeError: metrics down")
    assert "rtsp://***@10.0.0.9/live" in reason
    assert reader.describe().last_error == reason
    assert "CAMERA_THREAD_CRASHED camera=c1" in caplog.text
    assert "Traceback (most recent call last)" in caplog.text and "broken_observe" in caplog.text
    assert "hunter2" not in caplog.text


async def test_open_raising_anything_is_an_open_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Seam fake at the OpenCV boundary: a backend raising something other than cv2.error,
    # with the password in its message.
    caplog.set_level(logging.INFO)

    def exploding_capture(*args: object) -> None:
        raise TypeError("backend rejected credentials user:secret")

    monkeypatch.setattr(cv2, "VideoCapture", exploding_capture)
    changes: list[Change] = []
    reader = _reader(BAD_URL, changes, cfg=_cameras_cfg(decoder="opencv"))
    reader.start()
    try:
        await wait_until(lambda: reader.state is CameraState.DEAD, timeout=5)
    finally:
        await reader.stop()
    reason = next(r for _, s, r in changes if s is CameraState.DEAD)
    assert reason == "open failed: TypeError: backend rejected credentials ***"
    assert "CAMERA_RECONNECT_ERROR" in caplog.text
    assert "CAMERA_THREAD_CRASHED" not in caplog.text
    assert "secret" not in caplog.text


_REAL_CAPTURE = cv2.VideoCapture


class _FailingCapture:
    """A real VideoCapture whose ``grab`` raises cv2.error once, on the 5th frame."""

    grabs = 0

    def __init__(self, *args: Any) -> None:
        self._cap = _REAL_CAPTURE(*args)

    def grab(self) -> bool:
        _FailingCapture.grabs += 1
        if _FailingCapture.grabs == 5:
            raise cv2.error("simulated demuxer failure")
        return bool(self._cap.grab())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cap, name)


async def test_opencv_error_while_reading_reconnects(
    video: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(_FailingCapture, "grabs", 0)
    monkeypatch.setattr(cv2, "VideoCapture", _FailingCapture)
    changes: list[Change] = []
    reader = _reader(video, changes, cfg=_cameras_cfg(reconnect_attempts=3, decoder="opencv"))
    reader.start()
    try:
        await wait_until(lambda: CameraState.RECONNECTING in _states(changes), timeout=5)
        await wait_until(lambda: _states(changes).count(CameraState.LIVE) >= 2, timeout=5)
        assert await reader.next_frame(timeout=2) is not None  # reading again
    finally:
        await reader.stop()
    reason = next(r for _, s, r in changes if s is CameraState.RECONNECTING)
    assert reason.startswith("read failed: error:") and "simulated demuxer failure" in reason
    assert "CAMERA_READ_FAIL camera=c1" in caplog.text
    assert "CAMERA_THREAD_CRASHED" not in caplog.text


# Through the real agent: MQTT command, real pipeline, real sink ------------------------


async def test_agent_stops_session_when_its_only_camera_url_is_bad(
    broker: Mosquitto,
    tmp_path: Path,
    yao_embedding: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras=FAST)
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        payload = start_payload(
            "slot-bad", yao_embedding, cameras=[{"id": "c1", "rtspUrl": UNREACHABLE_URL}]
        )
        reply = await b.send("session/start", payload)
        assert reply["status"] == 200, reply
        await sink.wait_for("STOPPED", "slot-bad", timeout=15)
        assert agent.sessions is not None and agent.sessions.get("slot-bad") is None
    stopped = next(e for e, _ in sink.events if getattr(e, "status", None) == "STOPPED")
    assert stopped.reason == "ALL_CAMERAS_FAILED"
    assert sink.statuses("slot-bad") == ["STARTED", "STOPPED"]
    assert "ALL_CAMERAS_DEAD slot=slot-bad" in caplog.text
    assert "rtsp://***@127.0.0.1:1/x" in caplog.text  # COMMAND_RECEIVED and the camera
    assert "secret" not in caplog.text
