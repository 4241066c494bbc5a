"""``[cameras] max_frame_pixels``: frames over the cap are refused before they are decoded
(real streams: MJPEG over HTTP from a test server, H.264 from the GStreamer RTSP server),
and a resolution change in the middle of a stream keeps working."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.camera.frame_size import jpeg_size
from agent.camera.reader import CameraReader, CameraState
from agent.config import CamerasConfig, load_config
from agent.devkit.brokers import Mosquitto
from tests.agent_harness import RecordingSink, agent_config, backend, running_agent, start_payload
from tests.mjpeg import MjpegServer, jpeg, write_huge_jpeg
from tests.rtsp import RtspServer
from tests.waiting import wait_until

HUGE = 16000
FAST = {
    "open_timeout_s": 2.0,
    "read_timeout_s": 1.0,
    "max_frame_age_s": 1.5,
    "reconnect_attempts": 2,
    "reconnect_interval_s": 0.3,
    "probe_min_s": 0.5,
    "probe_max_s": 1.0,
    "all_dead_grace_s": 0.0,  # the session stops as soon as its only camera is dead
}
Change = tuple[str, CameraState, str]


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_huge_jpeg(tmp_path_factory.mktemp("huge") / "huge.jpg", HUGE)


async def _served(phases: list[tuple[bytes, float]], fps: float = 10.0) -> MjpegServer:
    server = MjpegServer(phases, fps=fps)
    await server.start()
    return server


@pytest.fixture
async def huge_camera(huge_jpeg: bytes) -> AsyncIterator[MjpegServer]:
    """An MJPEG camera sending 16000x16000 frames, five a second."""
    server = await _served([(huge_jpeg, 1.0)], fps=5.0)
    yield server
    await server.stop()


def _cfg(**overrides: Any) -> CamerasConfig:
    return load_config(None).cameras.model_copy(update={**FAST, **overrides})


def _reader(url: str, changes: list[Change], cfg: CamerasConfig) -> CameraReader:
    return CameraReader(
        camera_id="c1",
        name="Room 1",
        url=url,
        cfg=cfg,
        loop=asyncio.get_running_loop(),
        on_state=lambda cid, state, reason: changes.append((cid, state, reason)),
    )


def test_jpeg_header_gives_the_size(huge_jpeg: bytes) -> None:
    assert jpeg_size(huge_jpeg) == (HUGE, HUGE)
    assert jpeg_size(jpeg(320, 240)) == (320, 240)
    assert jpeg_size(b"not a jpeg") is None


async def test_huge_mjpeg_frames_are_refused_and_memory_stays_bounded(
    broker: Mosquitto,
    huge_camera: MjpegServer,
    tmp_path: Path,
    yao_embedding: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras=FAST)
    assert cfg.cameras.max_frame_pixels == 4096 * 2160  # the default: 4K
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        baseline = _rss_mib()
        peak = baseline
        cameras = [{"id": "big", "rtspUrl": huge_camera.url}]
        reply = await b.send(
            "session/start", start_payload("slot-h", yao_embedding, cameras=cameras)
        )
        assert reply["status"] == 200, reply

        def stopped() -> bool:
            nonlocal peak
            peak = max(peak, _rss_mib())
            return "STOPPED" in sink.statuses("slot-h")

        await wait_until(stopped, 20, "the session with only the huge camera stopped")
        assert agent.sessions is not None and agent.sessions.get("slot-h") is None
    assert huge_camera.hits["/camera"] >= 2  # it was read, and retried
    # One decoded 16000x16000 frame is 256 MiB (grey) and 768 MiB in BGR.
    assert peak - baseline < 100, (baseline, peak)
    dead = [e for e, _ in sink.events if getattr(e, "status", None) == "STOPPED"]
    assert dead and dead[0].reason == "ALL_CAMERAS_FAILED"
    assert "CAMERA_DEAD camera=big" in caplog.text
    assert "frame 16000x16000 (256.0 Mpx) is larger than [cameras] max_frame_pixels" in caplog.text


@pytest.mark.slow
async def test_resolution_change_mid_stream_keeps_working_and_over_cap_is_refused() -> None:
    cap = 640 * 480
    server = await _served([(jpeg(320, 240), 1.5), (jpeg(640, 480), 1.5), (jpeg(1280, 720), 1)])
    changes: list[Change] = []
    reader = _reader(server.url, changes, _cfg(max_frame_pixels=cap, reconnect_attempts=1))
    reader.start()
    sizes: list[tuple[int, ...]] = []
    try:

        async def collect() -> bool:
            frame = await reader.next_frame(timeout=2.0)
            if frame is not None:
                sizes.append(frame.image.shape)
            return (480, 640, 3) in sizes

        async with asyncio.timeout(10):
            while not await collect():
                pass
        await wait_until(
            lambda: any("max_frame_pixels" in why for _, _, why in changes), 10, "1280x720 refused"
        )
    finally:
        await reader.stop()
        await server.stop()
    assert sizes[0] == (240, 320, 3), sizes
    assert CameraState.LIVE in [state for _, state, _ in changes]
    refused = next(why for _, _, why in changes if "max_frame_pixels" in why)
    assert refused.startswith("frame 1280x720 (0.9 Mpx) is larger than"), refused


@pytest.fixture
def rtsp_720p() -> Iterator[RtspServer]:
    server = RtspServer(None, fps=10, width=1280, height=720, bitrate_kbps=256)
    server.start()
    yield server
    server.stop()


async def test_h264_stream_over_the_cap_is_refused_when_opened(rtsp_720p: RtspServer) -> None:
    changes: list[Change] = []
    reader = _reader(rtsp_720p.url, changes, _cfg(max_frame_pixels=640 * 480))
    reader.start()
    try:
        await wait_until(lambda: reader.state is CameraState.DEAD, 15, "the camera dead")
    finally:
        await reader.stop()
    assert CameraState.LIVE not in [state for _, state, _ in changes]
    assert reader.counters.frames_decoded == 0
    assert reader.last_error.startswith("frame 1280x720 (0.9 Mpx) is larger than [cameras]")
