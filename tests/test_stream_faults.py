"""Streams that send data but no usable video, served by a real GStreamer RTSP server and
read by the real agent (MQTT session/start, real camera pipeline):

- an H.264 stream that never sends a keyframe: every packet used to count as a fresh
  frame, so the camera stayed LIVE for ever with zero analyses;
- a camera whose video stops while its audio goes on: one PyAV read skipped audio
  packets for ever (FFmpeg's read timeout restarts with each), so the reader never
  reconnected and stopping it left its thread, socket and decoder behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.devkit.brokers import Mosquitto
from agent.status.models import wire
from tests.agent_harness import RecordingSink, agent_config, backend, running_agent, start_payload
from tests.rtsp import RtspServer
from tests.waiting import wait_until

CAMERAS = {
    "open_timeout_s": 2.0,
    "read_timeout_s": 1.0,
    "max_frame_age_s": 1.5,
    "reconnect_attempts": 2,
    "reconnect_interval_s": 0.3,
    "probe_min_s": 0.5,
    "probe_max_s": 1.0,
    "idle_analysis_fps": 4.0,  # as often as analysis_fps, the most the config allows
}


def _serve(**faults: Any) -> Iterator[RtspServer]:
    server = RtspServer(None, fps=10, width=320, height=240, bitrate_kbps=256, **faults)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def healthy() -> Iterator[RtspServer]:
    """A normal camera: the session keeps running and shows what LIVE looks like."""
    yield from _serve()


@pytest.fixture
def keyless() -> Iterator[RtspServer]:
    """An H.264 camera whose every keyframe is dropped: packets flow, nothing decodes."""
    yield from _serve(no_keyframes=True)


@pytest.fixture
def video_dies() -> Iterator[RtspServer]:
    """A camera with audio whose video stops 2 s after the stream starts."""
    yield from _serve(audio=True, video_stops_after=2.0)


def _camera(agent: Agent, slot: str, camera_id: str) -> dict[str, Any]:
    assert agent.sessions is not None
    session = agent.sessions.get(slot)
    assert session is not None and session.cameras  # the runner made its cameras
    return next(wire(c) for c in session.camera_health() if c.id == camera_id)


def _payload(slot: str, embedding: list[float], **cams: RtspServer) -> dict[str, Any]:
    cameras = [{"id": cid, "name": cid, "rtspUrl": cam.url} for cid, cam in cams.items()]
    return start_payload(slot, embedding, cameras=cameras)


def _disconnected(sink: RecordingSink, camera_id: str) -> Any:
    return next(
        (
            e
            for e, _ in sink.events
            if getattr(e, "status", None) == "CAMERA_DISCONNECTED" and e.camera_id == camera_id
        ),
        None,
    )


def _camera_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("camera-")]


@pytest.mark.slow
async def test_stream_without_keyframes_is_never_live_and_dies_with_the_reason(
    broker: Mosquitto,
    healthy: RtspServer,
    keyless: RtspServer,
    tmp_path: Path,
    yao_embedding: list[float],
) -> None:
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras=CAMERAS)
    seen: set[str] = set()
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        reply = await b.send(
            "session/start", _payload("slot-k", yao_embedding, ok=healthy, k=keyless)
        )
        assert reply["status"] == 200, reply

        def keyless_dead() -> bool:
            seen.add(_camera(agent, "slot-k", "k")["state"])
            return _disconnected(sink, "k") is not None

        took = await wait_until(keyless_dead, 20, "the keyless camera reported disconnected")
        bad = _camera(agent, "slot-k", "k")
        good = _camera(agent, "slot-k", "ok")
    # The healthy camera shows that LIVE and analyses are seen when they happen.
    assert good["state"] == "LIVE" and good["framesAnalysed"] > 0, good
    assert "LIVE" not in seen, seen
    assert bad["state"] == "DEAD", bad
    assert bad["framesRead"] > 10 and bad["framesAnalysed"] == 0, bad
    assert "no keyframe" in bad["lastError"], bad
    event = _disconnected(sink, "k")
    assert "no keyframe" in (event.message or ""), event
    # Two attempts, each given max_frame_age_s to show a keyframe, and the pause between.
    assert took < 2 * (CAMERAS["open_timeout_s"] + CAMERAS["max_frame_age_s"]) + 2.0


@pytest.mark.slow
async def test_video_stopping_while_audio_goes_on_reconnects_then_dies(
    broker: Mosquitto,
    healthy: RtspServer,
    video_dies: RtspServer,
    tmp_path: Path,
    yao_embedding: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras=CAMERAS)
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        await b.send("session/start", _payload("slot-a", yao_embedding, ok=healthy, a=video_dies))
        await wait_until(lambda: _camera(agent, "slot-a", "a")["state"] == "LIVE", 10, "LIVE")
        live_at = time.monotonic()
        await wait_until(lambda: _disconnected(sink, "a") is not None, 20, "camera a dead")
        dead_after = time.monotonic() - live_at
        bad = _camera(agent, "slot-a", "a")
    assert bad["state"] == "DEAD", bad
    assert bad["lastError"].startswith("open failed"), bad  # the latest attempt's reason
    # The reader itself gave up on the audio-only stream (it used to block in one read).
    assert "CAMERA_READ_FAIL camera=a reason=no video" in caplog.text
    assert "CAMERA_RECONNECT_ERROR camera=a" in caplog.text
    # Video for 2 s, then max_frame_age_s, then two reopen attempts of max_frame_age_s.
    limit = 2.0 + 3 * (CAMERAS["max_frame_age_s"] + CAMERAS["open_timeout_s"]) + 2.0
    assert dead_after < limit, dead_after


@pytest.mark.slow
async def test_stopping_a_camera_that_sends_only_audio_leaves_no_thread(
    broker: Mosquitto,
    video_dies: RtspServer,
    tmp_path: Path,
    yao_embedding: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    cfg = agent_config(tmp_path, broker, cameras={**CAMERAS, "reconnect_attempts": 50})
    async with running_agent(cfg, RecordingSink(), cameras=True) as agent, backend(broker) as b:
        await b.send("session/start", _payload("slot-s", yao_embedding, a=video_dies))
        await wait_until(lambda: _camera(agent, "slot-s", "a")["state"] == "LIVE", 10, "LIVE")
        await wait_until(
            lambda: _camera(agent, "slot-s", "a")["state"] == "RECONNECTING", 10, "video gone"
        )
        assert _camera_threads() == ["camera-a"]
        started = time.monotonic()
        reply = await b.send("session/stop", {"slotId": "slot-s"})
        took = time.monotonic() - started
        assert reply["status"] == 200, reply
        assert _camera_threads() == []
    assert took < CAMERAS["open_timeout_s"] + 1.0, took
    assert "CAMERA_THREAD_STUCK" not in caplog.text
