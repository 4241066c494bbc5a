"""Session guards: limits on sessions and cameras, one reader per camera, no revival of a
stopped session, one ATTENDANCE event per student across cameras (real agent, real
broker; a real RTSP camera where frames matter)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.devkit.brokers import Mosquitto
from agent.protocol import StatusReason
from agent.session.manager import ActiveSession
from tests.agent_harness import RecordingSink, agent_config, backend, running_agent, start_payload
from tests.rtsp import RtspServer
from tests.waiting import wait_until


def _cams(*names: str) -> list[dict[str, str]]:
    return [{"id": n, "rtspUrl": f"rtsp://127.0.0.1:1/{n}"} for n in names]


async def test_session_and_camera_limits(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    cfg = agent_config(tmp_path, broker, runtime={"max_sessions": 2, "max_cameras": 3})
    async with running_agent(cfg), backend(broker) as b:
        one = await b.send(
            "session/start", start_payload("s1", yao_embedding, cameras=_cams("a", "b"))
        )
        too_many_cams = await b.send(
            "session/start", start_payload("s2", yao_embedding, cameras=_cams("c", "d"))
        )
        two = await b.send("session/start", start_payload("s2", yao_embedding, cameras=_cams("c")))
        third = await b.send(
            "session/start", start_payload("s3", yao_embedding, cameras=_cams("e"))
        )
    assert one["status"] == two["status"] == 200
    assert (too_many_cams["status"], too_many_cams["code"]) == (409, "LIMIT_EXCEEDED")
    assert too_many_cams["data"]["limit"] == "max_cameras"
    assert (third["status"], third["code"]) == (409, "LIMIT_EXCEEDED")
    assert third["data"]["limit"] == "max_sessions"


async def test_a_camera_is_read_by_one_session_unless_shared(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    same = [{"id": "x", "rtspUrl": "rtsp://user:pw@127.0.0.1:1/room"}]
    other_creds = [{"id": "y", "rtspUrl": "rtsp://other:pw@127.0.0.1:1/room"}]
    for shared, expected in ((False, 409), (True, 200)):
        cfg = agent_config(tmp_path / str(shared), broker, cameras={"allow_shared": shared})
        async with running_agent(cfg), backend(broker) as b:
            first = await b.send("session/start", start_payload("s1", yao_embedding, cameras=same))
            second = await b.send(
                "session/start", start_payload("s2", yao_embedding, cameras=other_creds)
            )
        assert first["status"] == 200
        assert second["status"] == expected, second
        if not shared:
            assert second["code"] == "CAMERA_IN_USE" and second["data"]["cameraIds"] == ["y"]
            assert "pw" not in second["message"]


class SlowStopRunner:
    """A session's work that takes a second to wind down (a camera slow to release)."""

    async def run(self, session: ActiveSession) -> StatusReason | None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.sleep(1.0))
            raise
        return None


async def test_a_model_swap_during_a_slow_stop_does_not_revive_the_session(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker)
    async with running_agent(cfg, sink, runner=SlowStopRunner()) as agent, backend(broker) as b:
        assert (await b.send("session/start", start_payload("s1", yao_embedding)))["status"] == 200
        sessions, store = agent.sessions, agent.outbox
        assert sessions is not None and store is not None
        stopping = asyncio.create_task(b.send("session/stop", {"slotId": "s1"}))
        # The stop is under way (the session is no longer running), its work still winding
        # down (SlowStopRunner takes a second).
        await wait_until(lambda: sessions.get("s1") is None, 10, "the stop to begin")
        assert not stopping.done()
        engine = agent.models.engine
        assert engine is not None
        await agent._on_swap(engine)  # what a model swap does: resume persisted sessions
        assert (await stopping)["status"] == 200
        await asyncio.sleep(0.2)
        rows = await store.store.call(store.store.sessions)
        running = [s.slot_id for s in sessions.sessions]
    assert running == []
    assert rows == []
    assert sink.statuses("s1") == ["STARTED", "STOPPED"]


@pytest.mark.slow
async def test_one_attendance_event_per_student_across_cameras(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float], yao_camera: RtspServer
) -> None:
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, recognition={"face_jpeg": True})
    cameras = [{"id": f"cam-{i}", "rtspUrl": yao_camera.url} for i in range(3)]
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        reply = await b.send("session/start", start_payload("s1", yao_embedding, cameras=cameras))
        assert reply["status"] == 200
        await wait_until(
            lambda: any(e.type == "RECOGNITION" for e, _ in sink.events), 30, "a recognition"
        )

        def analysed() -> list[int]:
            assert agent.sessions is not None
            session = agent.sessions.get("s1")
            assert session is not None and session.camera_health is not None
            return [c.frames_analysed for c in session.camera_health()]

        # Every camera has seen Yao by now: each analysed him several more times.
        first = analysed()
        await wait_until(
            lambda: all(n >= f + 4 for n, f in zip(analysed(), first, strict=True)),
            30,
            "four more analyses on every camera",
        )
        await b.send("session/stop", {"slotId": "s1"})
    recognitions = [e for e, _ in sink.events if e.type == "RECOGNITION"]
    assert len(recognitions) == 1, [getattr(e, "camera_id", "") for e in recognitions]
