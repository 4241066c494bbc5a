"""Decoding only what is analysed, on a real RTSP camera (GStreamer, H.264, one keyframe a
second): a reader in KEYFRAMES mode decodes only the keyframes it was asked for, switching
to FULL and back yields clean frames (the real detector still finds the face), and the
agent's scheduler puts cameras in KEYFRAMES mode when the decode budget is spent and still
recognises the student."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.camera.reader import CameraReader, CameraState
from agent.camera.video_source import DecodeMode
from agent.config import load_config
from agent.devkit.brokers import Mosquitto
from agent.vision.engine import FaceEngine
from tests.agent_harness import RecordingSink, agent_config, backend, running_agent, start_payload
from tests.rtsp import RtspServer
from tests.waiting import wait_until


def _reader(url: str, decoder: str = "auto") -> CameraReader:
    cfg = load_config(None).cameras.model_copy(update={"decoder": decoder})
    return CameraReader(
        camera_id="c1",
        name="Room 1",
        url=url,
        cfg=cfg,
        loop=asyncio.get_running_loop(),
        on_state=lambda cid, state, reason: None,
    )


async def _frames_for(reader: CameraReader, seconds: float) -> list[object]:
    """Ask for frames back to back for ``seconds`` (as an analysis loop would)."""
    frames = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = await reader.next_frame(timeout=max(0.05, deadline - time.monotonic()))
        if frame is not None:
            frames.append(frame)
    return frames


@pytest.mark.slow
async def test_keyframes_mode_decodes_only_wanted_keyframes(
    yao_camera: RtspServer, engine: FaceEngine
) -> None:
    reader = _reader(yao_camera.url)
    reader.decode_mode = DecodeMode.KEYFRAMES
    reader.start()
    try:
        await wait_until(lambda: reader.state is CameraState.LIVE, 10, "the camera is live")
        assert reader.decoder == "pyav"
        # Nobody asks: packets arrive, nothing is decoded.
        read0, decoded0 = reader.counters.frames_read, reader.counters.frames_decoded
        await asyncio.sleep(1.5)
        assert reader.counters.frames_read - read0 >= 10  # 10 fps stream
        assert reader.counters.frames_decoded == decoded0
        # Asking all the time: one frame per keyframe (one a second), never more.
        read0, decoded0 = reader.counters.frames_read, reader.counters.frames_decoded
        frames = await _frames_for(reader, 3.2)
        read = reader.counters.frames_read - read0
        decoded = reader.counters.frames_decoded - decoded0
        assert read >= 25
        assert 2 <= len(frames) <= 4 and decoded == len(frames)
        assert all(f.image.shape == (480, 640, 3) for f in frames)  # type: ignore[attr-defined]
        # To FULL: every frame is decoded again, and the first frames are clean (the
        # decoder waits for a keyframe instead of decoding P-frames without references).
        reader.decode_mode = DecodeMode.FULL
        decoded0 = reader.counters.frames_decoded
        frames = await _frames_for(reader, 2.5)
        assert reader.counters.frames_decoded - decoded0 >= 12
        assert len(frames) >= 8
        assert len(engine.detect(frames[0].image)) == 1  # type: ignore[attr-defined]
        # And back: the keyframes are clean too.
        reader.decode_mode = DecodeMode.KEYFRAMES
        frames = await _frames_for(reader, 2.2)
        assert 1 <= len(frames) <= 3
        assert all(len(engine.detect(f.image)) == 1 for f in frames)  # type: ignore[attr-defined]
        health = reader.describe()
        assert health.decode_mode == "KEYFRAMES" and health.decoder == "pyav"
        assert health.frames_decoded is not None and health.frames_decoded < health.frames_read
    finally:
        await reader.stop()


async def test_opencv_decoder_always_decodes_everything(yao_camera: RtspServer) -> None:
    reader = _reader(yao_camera.url, decoder="opencv")
    reader.decode_mode = DecodeMode.KEYFRAMES  # has no effect on OpenCV
    reader.start()
    try:
        await wait_until(lambda: reader.state is CameraState.LIVE, 10, "the camera is live")
        frames = await _frames_for(reader, 1.5)
        assert reader.decoder == "opencv" and not reader.can_skip_frames
        assert reader.effective_decode_mode is DecodeMode.FULL
        assert len(frames) >= 8
    finally:
        await reader.stop()


@pytest.mark.slow
@pytest.mark.parametrize(("budget", "mode"), [(40.0, "FULL"), (0.0, "KEYFRAMES")])
async def test_agent_recognises_in_either_decode_mode(
    broker: Mosquitto,
    tmp_path: Path,
    yao_camera: RtspServer,
    yao_embedding: list[float],
    budget: float,
    mode: str,
) -> None:
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, analysis={"full_decode_mpx_s": budget})
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        cameras = [{"id": "c", "rtspUrl": yao_camera.url}]
        payload = start_payload("slot-dm", yao_embedding, cameras=cameras)
        reply = await b.send("session/start", payload)
        assert reply["status"] == 200, reply
        await wait_until(
            lambda: any(getattr(e, "type", "") == "RECOGNITION" for e, _ in sink.events),
            20,
            "Yao Ming recognised",
        )
        session = agent.sessions.get("slot-dm") if agent.sessions else None
        assert session is not None and session.cameras  # the runner made its cameras
        camera_health = session.camera_health
        await wait_until(lambda: camera_health()[0].frames_read >= 30, 10, "3 s of the stream read")
        (health,) = camera_health()
        assert health.decode_mode == mode and health.decoder == "pyav"
        assert health.analysis_rate is not None and health.analysis_rate > 0
        if mode == "KEYFRAMES":  # one keyframe a second: far fewer frames decoded than read
            assert health.frames_decoded < health.frames_read / 3
        assert agent.reporter is not None
        load = agent.reporter.status().analysis
        assert load is not None and load.cameras == 1
        assert load.full_decode_cameras == (1 if mode == "FULL" else 0)
