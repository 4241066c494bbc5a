"""How a session's stop ends up in the state file and at the backend: a stop that goes
wrong is reported STOP_FAILED, and the session's row and its STOPPED event are forgotten
and stored in one transaction (real state file, real outbox, real HTTP callback)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import CallbackConfig, CamerasConfig, RecognitionConfig
from agent.devkit.callback_receiver import CallbackServer
from agent.errors import AgentError, ErrorCode
from agent.events.delivery import Delivery
from agent.events.event import EventFactory
from agent.events.outbox import Outbox
from agent.events.sink import OutboxSink
from agent.events.store import Store
from agent.protocol import CameraUptime, SessionStart, StatusReason
from agent.session.manager import ActiveSession, SessionManager
from agent.vision.engine import FaceEngine
from agent.vision.inference import ModelSlot
from tests.agent_harness import start_payload

FAST = {"timeout_s": 0.5, "first_retry_s": 0.05, "retry_max_s": 0.3}


class Runner:
    """At the session seam: reports one camera's up-time, runs until cancelled, and (when
    ``stuck``) raises while being cancelled, as a camera that would not release does."""

    def __init__(self, *, stuck: bool) -> None:
        self.stuck = stuck

    async def run(self, session: ActiveSession) -> StatusReason | None:
        """Hold the session until cancelled."""
        session.uptimes = lambda: [
            CameraUptime(camera_id="cam-1", camera_name="Room 1", up_seconds=3, session_seconds=4)
        ]
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.stuck:
                raise RuntimeError("camera would not release") from None
            raise
        return None


class Site:
    """A session manager on a real state file whose events go through the real outbox and
    delivery to a real callback server."""

    def __init__(self, data_dir: Path, engine: FaceEngine, server: CallbackServer) -> None:
        self.store = Store(data_dir)
        self.outbox = Outbox(self.store, max_pending=1000)
        self.server = server
        cfg = CallbackConfig(allowed_urls=(server.url("/"),), **FAST)  # type: ignore[arg-type]
        self.callback = cfg
        self.delivery = Delivery(self.outbox, cfg, api_key="cb-key")
        self.models = ModelSlot()
        self.models.activate(engine)
        self.managers: list[SessionManager] = []

    def manager(self, runner: Runner) -> SessionManager:
        mgr = SessionManager(
            store=self.store,
            models=self.models,
            sink=OutboxSink(self.outbox, self.delivery),
            events=EventFactory("site-1", "UTC"),
            cameras=CamerasConfig(),
            callback=self.callback,
            recognition=RecognitionConfig(),
            runner=runner,
        )
        self.managers.append(mgr)
        return mgr

    def command(self, slot: str, embedding: list[float]) -> SessionStart:
        cameras = [{"id": "cam-1", "name": "Room 1", "rtspUrl": "rtsp://127.0.0.1:1/room1"}]
        payload = start_payload(slot, embedding, callbackUrl=self.server.url(), cameras=cameras)
        return SessionStart.model_validate(payload)

    def file_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a query on the state file, read by a connection of its own."""
        with sqlite3.connect(self.store.path) as conn:
            return list(conn.execute(sql))

    def stopped_events(self, slot: str) -> list[dict[str, Any]]:
        bodies = [json.loads(b) for (b,) in self.file_rows("select body from events")]
        return [b for b in bodies if b["slotId"] == slot and b.get("status") == "STOPPED"]

    def session_rows(self) -> list[str]:
        return [slot for (slot,) in self.file_rows("select slot_id from sessions")]


@pytest.fixture
async def site(tmp_path: Path, engine: FaceEngine, server: CallbackServer) -> AsyncIterator[Site]:
    s = Site(tmp_path / "data", engine, server)
    await s.delivery.start()
    yield s
    for mgr in s.managers:
        await mgr.shutdown()
    await s.delivery.close()
    s.store.close()


async def test_a_session_that_does_not_wind_down_is_reported_stop_failed(
    site: Site, server: CallbackServer, yao_embedding: list[float]
) -> None:
    mgr = site.manager(Runner(stuck=True))
    await mgr.start(site.command("slot-f", yao_embedding))
    await asyncio.sleep(0.05)  # the runner is running
    with pytest.raises(AgentError) as caught:
        await mgr.stop("slot-f")
    assert caught.value.code is ErrorCode.STOP_SESSION_FAILED
    await server.wait_delivered(2)
    started, stopped = [r.body for r in server.delivered()]
    assert started["status"] == "STARTED"
    assert (stopped["status"], stopped["reason"]) == ("STOPPED", "STOP_FAILED")
    # The reason the session was being stopped for, and what went wrong, stay visible.
    assert "REQUESTED" in stopped["message"]
    assert "camera would not release" in stopped["message"]
    assert [p["studentId"] for p in stopped["presence"]] == ["stu-1"]
    assert stopped["cameras"] == [
        {"cameraId": "cam-1", "cameraName": "Room 1", "upSeconds": 3.0, "sessionSeconds": 4.0}
    ]
    assert site.session_rows() == []


async def test_a_clean_stop_is_reported_with_its_reason(
    site: Site, server: CallbackServer, yao_embedding: list[float]
) -> None:
    mgr = site.manager(Runner(stuck=False))
    await mgr.start(site.command("slot-c", yao_embedding))
    await asyncio.sleep(0.05)
    await mgr.stop("slot-c")
    await server.wait_delivered(2)
    stopped = server.delivered()[1].body
    assert (stopped["reason"], stopped.get("message")) == ("REQUESTED", None)
    assert stopped["cameras"][0]["cameraId"] == "cam-1" and stopped["presence"]
    assert site.session_rows() == []


async def test_the_row_and_the_stopped_event_go_together_or_not_at_all(
    site: Site, server: CallbackServer, yao_embedding: list[float]
) -> None:
    mgr = site.manager(Runner(stuck=False))
    await mgr.start(site.command("slot-a", yao_embedding))
    await server.wait_delivered(1)
    # The file refuses the STOPPED event after the session's row was deleted in the same
    # transaction: what a crash between the two statements would leave behind.
    with sqlite3.connect(site.store.path) as conn:
        conn.execute(
            "create trigger fail_stopped before insert on events "
            "when json_extract(new.body, '$.status') = 'STOPPED' "
            "begin select raise(abort, 'simulated crash after the row was deleted'); end"
        )
    with pytest.raises(AgentError) as caught:
        await mgr.stop("slot-a")
    assert caught.value.code is ErrorCode.STOP_SESSION_FAILED
    # Neither happened: the row is still there (the session resumes), no STOPPED stored.
    assert site.session_rows() == ["slot-a"]
    assert site.stopped_events("slot-a") == []
    with sqlite3.connect(site.store.path) as conn:
        conn.execute("drop trigger fail_stopped")
    # The next resume brings the session back; its stop then stores both at once.
    again = site.manager(Runner(stuck=False))
    await again.resume_all()
    assert again.get("slot-a") is not None
    await again.stop("slot-a")
    assert site.session_rows() == []
    (stopped,) = site.stopped_events("slot-a")
    assert stopped["reason"] == "REQUESTED"
    await server.wait_delivered(3)
    assert [r.body["status"] for r in server.delivered()] == ["STARTED", "RESUMED", "STOPPED"]
