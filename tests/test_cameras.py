"""Cameras and the live recognition loop: real RTSP servers (GStreamer), a synthetic
classroom made from real photos, the real models, a real agent and broker."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.app import Agent
from agent.devkit.brokers import Mosquitto
from agent.devkit.classroom import ClassroomPlan, Person, face_box_of, make_classroom_frames
from agent.status.models import wire
from agent.vision.engine import FaceEngine
from tests.agent_harness import RecordingSink, agent_config, backend, running_agent, start_payload
from tests.rtsp import INSTALL_HINT, RtspServer, gst_rtsp_available
from tests.waiting import wait_until

FPS = 10
SIZE = (640, 480)
FAST_CAMERAS = {
    "open_timeout_s": 1.0,
    "read_timeout_s": 1.0,
    "max_frame_age_s": 1.5,
    "reconnect_attempts": 2,
    "reconnect_interval_s": 0.5,
    "probe_min_s": 0.5,
    "probe_max_s": 1.0,
    "analysis_fps": 5.0,
}


@pytest.fixture(scope="module")
def classroom(
    tmp_path_factory: pytest.TempPathFactory,
    engine: FaceEngine,
    photos: dict[str, Path],
    skimage_photos: dict[str, Path],
) -> ClassroomPlan:
    """6 s loop: Yao Ming (enrolled) from 0.5 s, the astronaut (not enrolled) from 1 s."""
    yao, astronaut = photos["yaoming.jpg"], skimage_photos["astronaut"]
    people = [
        Person("yao", yao, 0.5, 6.0, (180, 250), (12, 0), 120, face_box_of(yao, engine)),
        Person(
            "astronaut",
            astronaut,
            1.0,
            6.0,
            (470, 240),
            (-8, 4),
            120,
            face_box_of(astronaut, engine),
        ),
    ]
    return make_classroom_frames(
        tmp_path_factory.mktemp("room"), people, seconds=6, fps=FPS, size=SIZE
    )


@pytest.fixture(scope="module")
def roster(engine: FaceEngine, photos: dict[str, Path]) -> list[dict[str, Any]]:
    """Yao Ming (in the video) and someone from t1.jpg (never in the video)."""
    (yao,) = engine.analyze(cv2.imread(str(photos["yaoming.jpg"])))
    absent = engine.analyze(cv2.imread(str(photos["t1.jpg"])))[0]
    return [
        {"id": "stu-yao", "code": "Y1", "embeddings": [[float(x) for x in yao.embedding]]},
        {"id": "stu-absent", "code": "A1", "embeddings": [[float(x) for x in absent.embedding]]},
    ]


def _server(classroom: ClassroomPlan) -> RtspServer:
    if not gst_rtsp_available():
        pytest.fail(INSTALL_HINT)
    server = RtspServer(classroom.frames_dir, fps=FPS, width=SIZE[0], height=SIZE[1])
    server.start()
    return server


@pytest.fixture
def cam_a(classroom: ClassroomPlan) -> Iterator[RtspServer]:
    server = _server(classroom)
    yield server
    server.stop()


@pytest.fixture
def cam_b(classroom: ClassroomPlan) -> Iterator[RtspServer]:
    server = _server(classroom)
    yield server
    server.stop()


def _payload(
    slot: str, roster: list[dict[str, Any]], *cams: RtspServer, **extra: Any
) -> dict[str, Any]:
    cameras = [
        {"id": f"cam-{i}", "name": f"Room {i}", "rtspUrl": c.url} for i, c in enumerate(cams)
    ]
    payload = start_payload(slot, [0.0], cameras=cameras, **extra)
    payload["students"] = roster
    return payload


def _recognitions(sink: RecordingSink) -> list[Any]:
    return [e for e, _ in sink.events if e.type == "RECOGNITION"]


def _camera(agent: Agent, slot: str, camera_id: str) -> dict[str, Any]:
    assert agent.sessions is not None
    session = agent.sessions.get(slot)
    assert session is not None and session.cameras  # the runner made its cameras
    return next(wire(c) for c in session.camera_health() if c.id == camera_id)


@pytest.mark.slow
async def test_attendance_reports_enrolled_students_once(
    broker: Mosquitto,
    cam_a: RtspServer,
    tmp_path: Path,
    roster: list[dict[str, Any]],
    classroom: ClassroomPlan,
) -> None:
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras=FAST_CAMERAS, recognition={"face_jpeg": True})
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        reply = await b.send("session/start", _payload("slot-att", roster, cam_a))
        assert reply["status"] == 200, reply
        await wait_until(lambda: _recognitions(sink), timeout=20)
        # The clip loops: Yao Ming comes back and must not be re-reported. Wait until the
        # camera has read a whole loop (and a second more) past the first report.
        read = _camera(agent, "slot-att", "cam-0")["framesRead"]
        await wait_until(
            lambda: (
                _camera(agent, "slot-att", "cam-0")["framesRead"] >= read + classroom.n_frames + FPS
            ),
            20,
            "the clip to loop once",
        )
        health = _camera(agent, "slot-att", "cam-0")
        status = await b.send("status", {})
    events = _recognitions(sink)
    assert [e.student_id for e in events] == ["stu-yao"]
    event = events[0]
    assert event.camera_id == "cam-0" and event.camera_name == "Room 0"
    assert event.student_code == "Y1"
    assert event.confidence > 0.5
    assert event.recognized_at.utcoffset().total_seconds() == 7 * 3600
    assert event.embedding_space.startswith("arcface-")
    crop = cv2.imdecode(np.frombuffer(base64.b64decode(event.face_jpeg or ""), np.uint8), 1)
    assert crop is not None and crop.shape == (112, 112, 3)  # the aligned face
    assert health["state"] == "LIVE" and health["framesAnalysed"] > 20
    cams = status["data"]["sessions"][0]["cameras"]
    assert cams[0]["framesRead"] >= cams[0]["framesAnalysed"] > 0


@pytest.mark.slow
async def test_attendance_survives_agent_restart(
    broker: Mosquitto, cam_a: RtspServer, tmp_path: Path, roster: list[dict[str, Any]]
) -> None:
    cfg = agent_config(tmp_path, broker, cameras=FAST_CAMERAS)
    first = RecordingSink()
    async with running_agent(cfg, first, cameras=True), backend(broker) as b:
        await b.send("session/start", _payload("slot-rs", roster, cam_a))
        await wait_until(lambda: _recognitions(first), timeout=20)
    second = RecordingSink()
    async with running_agent(cfg, second, cameras=True) as agent:
        await wait_until(
            lambda: _camera(agent, "slot-rs", "cam-0")["framesAnalysed"] > 30, timeout=20
        )
    assert second.statuses("slot-rs") == ["RESUMED"]
    assert _recognitions(second) == []


@pytest.mark.slow
async def test_continuous_mode_re_reports(
    broker: Mosquitto, cam_a: RtspServer, tmp_path: Path, roster: list[dict[str, Any]]
) -> None:
    sink = RecordingSink()
    cfg = agent_config(
        tmp_path, broker, cameras=FAST_CAMERAS, recognition={"continuous_interval_s": 1.0}
    )
    async with running_agent(cfg, sink, cameras=True), backend(broker) as b:
        await b.send("session/start", _payload("slot-c", roster, cam_a, mode="CONTINUOUS"))
        await wait_until(lambda: len(_recognitions(sink)) >= 3, timeout=25)
    events = _recognitions(sink)
    assert {e.student_id for e in events} == {"stu-yao"}
    gaps = [(b.recognized_at - a.recognized_at).total_seconds() for a, b in pairwise(events)]
    assert all(g >= 0.9 for g in gaps), gaps


@pytest.mark.slow
async def test_killed_camera_disconnects_and_reconnects(
    broker: Mosquitto,
    cam_a: RtspServer,
    cam_b: RtspServer,
    tmp_path: Path,
    roster: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras=FAST_CAMERAS)
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        await b.send("session/start", _payload("slot-k", roster, cam_a, cam_b))
        await wait_until(lambda: _camera(agent, "slot-k", "cam-1")["state"] == "LIVE", timeout=10)
        cam_b.kill()
        noticed = await wait_until(
            lambda: _camera(agent, "slot-k", "cam-1")["state"] != "LIVE", 5, interval=0.01
        )
        assert noticed < 1.0
        await sink.wait_for("CAMERA_DISCONNECTED", "slot-k", timeout=10)
        assert agent.sessions is not None and agent.sessions.get("slot-k") is not None
        analysed = _camera(agent, "slot-k", "cam-1")["framesAnalysed"]
        cam_b.restart()
        await sink.wait_for("CAMERA_RECONNECTED", "slot-k", timeout=15)
        await wait_until(
            lambda: _camera(agent, "slot-k", "cam-1")["framesAnalysed"] > analysed + 5, 10
        )
        health = _camera(agent, "slot-k", "cam-1")
    disconnected = next(
        e for e, _ in sink.events if getattr(e, "status", None) == "CAMERA_DISCONNECTED"
    )
    assert (disconnected.camera_id, disconnected.camera_name, disconnected.reason) == (
        "cam-1",
        "Room 1",
        "CAMERA_FAILURE",
    )
    assert health["reconnects"] >= 1
    assert (
        caplog.text.count("CAMERA_RECONNECT_ERROR") + caplog.text.count("CAMERA_RECONNECT_TIMEOUT")
        >= 2
    )
    assert "CAMERA_READ_FAIL" in caplog.text and "CAMERA_RECONNECT_OK" in caplog.text


@pytest.mark.slow
async def test_frozen_camera_detected_by_frame_age(
    broker: Mosquitto,
    cam_a: RtspServer,
    cam_b: RtspServer,
    tmp_path: Path,
    roster: list[dict[str, Any]],
) -> None:
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras=FAST_CAMERAS)
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        await b.send("session/start", _payload("slot-f", roster, cam_a, cam_b))
        await wait_until(lambda: _camera(agent, "slot-f", "cam-1")["state"] == "LIVE", timeout=10)
        cam_b.freeze()
        noticed = await wait_until(
            lambda: _camera(agent, "slot-f", "cam-1")["state"] != "LIVE", 10, interval=0.01
        )
        assert noticed <= FAST_CAMERAS["max_frame_age_s"] + 0.5
        await sink.wait_for("CAMERA_DISCONNECTED", "slot-f", timeout=20)
        assert _camera(agent, "slot-f", "cam-0")["state"] == "LIVE"
        cam_b.thaw()


@pytest.mark.slow
async def test_all_cameras_dead_stops_the_session(
    broker: Mosquitto,
    cam_a: RtspServer,
    cam_b: RtspServer,
    tmp_path: Path,
    roster: list[dict[str, Any]],
) -> None:
    sink = RecordingSink()
    # No grace: the stop comes as soon as both are dead (the grace: test_camera_grace.py).
    cfg = agent_config(tmp_path, broker, cameras={**FAST_CAMERAS, "all_dead_grace_s": 0})
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        await b.send("session/start", _payload("slot-d", roster, cam_a, cam_b))
        await wait_until(lambda: _camera(agent, "slot-d", "cam-0")["state"] == "LIVE", timeout=10)
        await wait_until(
            lambda: all(
                _camera(agent, "slot-d", c)["upSeconds"] >= 1.0 for c in ("cam-0", "cam-1")
            ),
            10,
            "both cameras up for a second",
        )
        cam_a.kill()
        cam_b.kill()
        await sink.wait_for("STOPPED", "slot-d", timeout=20)
        assert agent.sessions is not None and agent.sessions.get("slot-d") is None
        status = await b.send("status", {})
    assert status["data"]["sessions"] == []
    stopped = next(e for e, _ in sink.events if getattr(e, "status", None) == "STOPPED")
    assert stopped.reason == "ALL_CAMERAS_FAILED"
    assert stopped.cameras is not None and len(stopped.cameras) == 2
    assert all(0.5 < c.up_seconds <= c.session_seconds for c in stopped.cameras)


async def test_stop_during_reconnect_is_prompt(
    broker: Mosquitto, cam_a: RtspServer, tmp_path: Path, roster: list[dict[str, Any]]
) -> None:
    cfg = agent_config(tmp_path, broker, cameras={**FAST_CAMERAS, "reconnect_attempts": 50})
    async with running_agent(cfg, RecordingSink(), cameras=True) as agent, backend(broker) as b:
        await b.send("session/start", _payload("slot-s", roster, cam_a))
        await wait_until(lambda: _camera(agent, "slot-s", "cam-0")["state"] == "LIVE", timeout=10)
        cam_a.kill()
        await wait_until(lambda: _camera(agent, "slot-s", "cam-0")["state"] == "RECONNECTING", 5)
        started = time.monotonic()
        reply = await b.send("session/stop", {"slotId": "slot-s"})
        took = time.monotonic() - started
    assert reply["status"] == 200
    assert took < FAST_CAMERAS["open_timeout_s"] + 1.0
