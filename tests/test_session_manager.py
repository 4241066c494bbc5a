"""SessionManager on its own: a real state file, the real engine, a fake runner at the
session seam and a recording event sink (no broker, no cameras)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import CallbackConfig, CamerasConfig, RecognitionConfig, RuntimeConfig
from agent.errors import AgentError, ErrorCode
from agent.events.event import EventFactory
from agent.events.store import Store
from agent.protocol import SessionStart, StatusReason
from agent.session.history import SessionHistory
from agent.session.manager import ActiveSession, SessionManager
from agent.vision.engine import FaceEngine
from agent.vision.inference import ModelSlot
from tests.agent_harness import RecordingSink, start_payload
from tests.waiting import wait_until

CAMERAS = [
    {"id": "cam-1", "name": "Room 1", "url": "rtsp://127.0.0.1:1/room1"},
    {"id": "cam-2", "name": "Room 2", "url": "rtsp://127.0.0.1:1/room2"},
]


class FakeRunner:
    """At the session seam: holds a session until it is cancelled, or until the test ends
    it with a reason (as the camera pipeline does when every camera failed)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self._outcomes: dict[str, asyncio.Future[StatusReason | None]] = {}

    async def run(self, session: ActiveSession) -> StatusReason | None:
        """Wait for the test's outcome for this slot."""
        outcome = self._outcome(session.slot_id)
        self.started.append(session.slot_id)
        try:
            return await outcome
        except asyncio.CancelledError:
            self.cancelled.append(session.slot_id)
            raise
        finally:
            self._outcomes.pop(session.slot_id, None)

    def _outcome(self, slot_id: str) -> asyncio.Future[StatusReason | None]:
        if slot_id not in self._outcomes:
            self._outcomes[slot_id] = asyncio.get_running_loop().create_future()
        return self._outcomes[slot_id]

    def end(self, slot_id: str, reason: StatusReason | None) -> None:
        """Make the slot's run return ``reason``."""
        self._outcome(slot_id).set_result(reason)

    def crash(self, slot_id: str) -> None:
        """Make the slot's run raise."""
        self._outcome(slot_id).set_exception(RuntimeError("camera thread died"))


class Rig:
    """A manager with its real store and model slot, fake runner and recording sink; more
    managers on the same store stand for the agent after a restart."""

    def __init__(self, data_dir: Path, engine: FaceEngine) -> None:
        self.store = Store(data_dir)
        self.models = ModelSlot()
        self.models.activate(engine)
        self.sink = RecordingSink()
        self.runner = FakeRunner()
        self.stopped: list[str] = []
        self.managers: list[SessionManager] = []

    def manager(
        self, *, allow_shared: bool = True, history: SessionHistory | None = None, **limits: Any
    ) -> SessionManager:
        mgr = SessionManager(
            store=self.store,
            models=self.models,
            sink=self.sink,
            events=EventFactory("site-1", "UTC"),
            cameras=CamerasConfig(registry=CAMERAS, allow_shared=allow_shared),
            callback=CallbackConfig(allowed_urls=("http://127.0.0.1:9/",)),
            recognition=RecognitionConfig(),
            runner=self.runner,
            limits=RuntimeConfig(**limits),
            on_stopped=self.stopped.append,
            history=history,
        )
        self.managers.append(mgr)
        return mgr

    async def rows(self) -> list[str]:
        """Slots with a persisted session row."""
        return [row["slot_id"] for row in await self.store.call(self.store.sessions)]

    def events(self, slot_id: str) -> list[tuple[str, str | None]]:
        """(status, reason) of the slot's SESSION_STATUS events, in order."""
        return [
            (str(e.status), None if e.reason is None else str(e.reason))
            for e, _ in self.sink.events
            if e.type == "SESSION_STATUS" and e.slot_id == slot_id
        ]


@pytest.fixture
async def rig(tmp_path: Path, engine: FaceEngine) -> AsyncIterator[Rig]:
    r = Rig(tmp_path / "data", engine)
    yield r
    for mgr in r.managers:
        await mgr.shutdown()
    r.store.close()


def command(slot: str, embedding: list[float], **extra: Any) -> SessionStart:
    return SessionStart.model_validate(start_payload(slot, embedding, **extra))


async def refused(call: Callable[[], Any]) -> AgentError:
    """The AgentError a command is refused with."""
    with pytest.raises(AgentError) as caught:
        await call()
    return caught.value


async def test_start_reports_started_saves_the_row_and_runs(
    rig: Rig, yao_embedding: list[float]
) -> None:
    mgr = rig.manager()
    await mgr.start(command("slot-1", yao_embedding))
    assert rig.events("slot-1") == [("STARTED", None)]
    assert await rig.rows() == ["slot-1"]
    session = mgr.get("slot-1")
    assert session is not None and [s.slot_id for s in mgr.sessions] == ["slot-1"]
    assert len(session.roster) == 1 and [c.id for c in session.camera_plan] == ["cam-1"]
    assert session.camera_plan[0].url == "rtsp://127.0.0.1:1/room1"  # from the registry
    await wait_until(lambda: rig.runner.started == ["slot-1"], 5, "the runner to start")


async def test_a_second_start_for_a_running_slot_is_refused(
    rig: Rig, yao_embedding: list[float]
) -> None:
    mgr = rig.manager()
    await mgr.start(command("slot-1", yao_embedding))
    error = await refused(lambda: mgr.start(command("slot-1", yao_embedding)))
    assert (error.code, error.status) == (ErrorCode.SESSION_ALREADY_EXISTS, 409)
    assert rig.events("slot-1") == [("STARTED", None)]
    assert await rig.rows() == ["slot-1"]


async def test_stop_cancels_the_work_reports_stopped_and_forgets_the_row(
    rig: Rig, yao_embedding: list[float]
) -> None:
    mgr = rig.manager()
    await mgr.start(command("slot-1", yao_embedding))
    await wait_until(lambda: rig.runner.started, 5, "the runner to start")
    await mgr.stop("slot-1")
    assert rig.events("slot-1") == [("STARTED", None), ("STOPPED", "REQUESTED")]
    assert rig.runner.cancelled == ["slot-1"]
    assert await rig.rows() == []
    assert mgr.get("slot-1") is None and rig.stopped == ["slot-1"]
    await mgr.start(command("slot-1", yao_embedding))  # the slot is free again
    assert await rig.rows() == ["slot-1"]


async def test_stopping_an_unknown_slot_is_not_found(rig: Rig) -> None:
    error = await refused(lambda: rig.manager().stop("slot-nobody"))
    assert (error.code, error.status) == (ErrorCode.SESSION_NOT_FOUND, 404)
    assert rig.sink.events == []


@pytest.mark.parametrize(
    ("ending", "reason"),
    [
        (
            lambda runner: runner.end("slot-1", StatusReason.ALL_CAMERAS_FAILED),
            "ALL_CAMERAS_FAILED",
        ),
        (lambda runner: runner.crash("slot-1"), "STOP_FAILED"),
    ],
    ids=["runner-gives-a-reason", "runner-crashes"],
)
async def test_a_runner_that_ends_ends_the_session_with_its_reason(
    rig: Rig,
    yao_embedding: list[float],
    ending: Callable[[FakeRunner], None],
    reason: str,
) -> None:
    mgr = rig.manager()
    await mgr.start(command("slot-1", yao_embedding))
    await wait_until(lambda: rig.runner.started, 5, "the runner to start")
    ending(rig.runner)
    await rig.sink.wait_for("STOPPED", "slot-1", timeout=5)
    assert rig.events("slot-1") == [("STARTED", None), ("STOPPED", reason)]
    assert mgr.get("slot-1") is None
    assert await rig.rows() == []


async def test_a_session_stops_itself_at_its_end_time(rig: Rig, yao_embedding: list[float]) -> None:
    mgr = rig.manager()
    end = datetime.now(UTC) + timedelta(seconds=1)
    await mgr.start(command("slot-1", yao_embedding, endTime=end.isoformat()))
    await rig.sink.wait_for("STOPPED", "slot-1", timeout=10)
    assert datetime.now(UTC) >= end
    assert rig.events("slot-1") == [("STARTED", None), ("STOPPED", "SESSION_ENDED")]
    assert await rig.rows() == []


async def test_an_end_time_in_the_past_is_refused(rig: Rig, yao_embedding: list[float]) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    error = await refused(lambda: rig.manager().start(command("s", yao_embedding, endTime=past)))
    assert (error.code, error.status) == (ErrorCode.VALIDATION_ERROR, 422)
    assert await rig.rows() == []


async def test_a_restarted_agent_resumes_the_saved_sessions(
    rig: Rig, yao_embedding: list[float]
) -> None:
    before = rig.manager()
    await before.start(command("slot-1", yao_embedding, threshold=0.5))
    started_at = before.sessions[0].started_at
    await wait_until(lambda: rig.runner.started == ["slot-1"], 5, "the runner to start")
    await before.shutdown()  # the agent stops: rows stay, no STOPPED event
    assert before.sessions == [] and await rig.rows() == ["slot-1"]
    assert rig.runner.cancelled == ["slot-1"]
    assert rig.events("slot-1") == [("STARTED", None)]

    after = rig.manager()
    await after.resume_all()
    assert rig.events("slot-1") == [("STARTED", None), ("RESUMED", "AGENT_RESTARTED")]
    session = after.get("slot-1")
    assert session is not None and session.threshold == 0.5
    assert abs((session.started_at - started_at).total_seconds()) < 5  # not a new start
    await wait_until(lambda: rig.runner.started == ["slot-1"] * 2, 5, "the runner to resume")
    await after.resume_all()  # already running: not resumed twice
    assert rig.events("slot-1")[-1] == ("RESUMED", "AGENT_RESTARTED")
    assert len(rig.events("slot-1")) == 2


async def test_a_saved_session_whose_end_time_passed_is_not_resumed(
    rig: Rig, yao_embedding: list[float]
) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    row = command("slot-1", yao_embedding, endTime=past)
    await rig.store.call(
        rig.store.save_session,
        "slot-1",
        row.model_dump(mode="json", by_alias=True),
        datetime.fromisoformat(past).timestamp(),
    )
    history = await SessionHistory.loaded(rig.store)
    mgr = rig.manager(history=history)
    await mgr.resume_all()
    assert mgr.sessions == []
    assert rig.events("slot-1") == [("STOPPED", "SESSION_ENDED")]
    assert await rig.rows() == []
    (ended,) = history.recent()  # listed among the ended sessions, like any stop
    assert (ended.slot_id, ended.reason, ended.students) == ("slot-1", "SESSION_ENDED", 1)


async def test_without_a_model_sessions_wait_for_one_to_resume(
    rig: Rig, yao_embedding: list[float], engine: FaceEngine
) -> None:
    before = rig.manager()
    await before.start(command("slot-1", yao_embedding))
    await before.shutdown()
    rig.models.clear("model pack missing")
    after = rig.manager()
    await after.resume_all()
    assert after.sessions == [] and await rig.rows() == ["slot-1"]
    error = await refused(lambda: after.start(command("slot-2", yao_embedding)))
    assert (error.code, error.status) == (ErrorCode.MODEL_NOT_LOADED, 503)
    rig.models.activate(engine)
    await after.resume_all()
    assert [s.slot_id for s in after.sessions] == ["slot-1"]


async def test_max_sessions_limits_concurrent_sessions(
    rig: Rig, yao_embedding: list[float]
) -> None:
    mgr = rig.manager(max_sessions=1)
    await mgr.start(command("slot-1", yao_embedding))
    error = await refused(lambda: mgr.start(command("slot-2", yao_embedding)))
    assert (error.code, error.status) == (ErrorCode.LIMIT_EXCEEDED, 409)
    assert await rig.rows() == ["slot-1"]
    await mgr.stop("slot-1")
    await mgr.start(command("slot-2", yao_embedding))


async def test_max_cameras_counts_the_cameras_of_every_session(
    rig: Rig, yao_embedding: list[float]
) -> None:
    mgr = rig.manager(max_cameras=2)
    await mgr.start(command("slot-1", yao_embedding))
    both = [{"id": "cam-1"}, {"id": "cam-2"}]
    error = await refused(lambda: mgr.start(command("slot-2", yao_embedding, cameras=both)))
    assert (error.code, error.status) == (ErrorCode.LIMIT_EXCEEDED, 409)
    await mgr.start(command("slot-2", yao_embedding, cameras=[{"id": "cam-2"}]))


async def test_a_camera_is_not_shared_between_sessions_unless_allowed(
    rig: Rig, yao_embedding: list[float]
) -> None:
    mgr = rig.manager(allow_shared=False)
    await mgr.start(command("slot-1", yao_embedding))
    error = await refused(lambda: mgr.start(command("slot-2", yao_embedding)))
    assert (error.code, error.status) == (ErrorCode.CAMERA_IN_USE, 409)
    # The same stream given by URL, with credentials, is the same camera.
    by_url = [{"id": "other", "rtspUrl": "rtsp://user:pw@127.0.0.1:1/room1"}]
    error = await refused(lambda: mgr.start(command("slot-2", yao_embedding, cameras=by_url)))
    assert error.code == ErrorCode.CAMERA_IN_USE
    await mgr.start(command("slot-2", yao_embedding, cameras=[{"id": "cam-2"}]))


@pytest.mark.parametrize(
    ("extra", "code", "status"),
    [
        ({"cameras": [{"id": "cam-9"}]}, ErrorCode.CAMERA_NOT_FOUND, 404),
        ({"callbackUrl": "http://192.0.2.1/hook"}, ErrorCode.CALLBACK_URL_NOT_ALLOWED, 400),
    ],
    ids=["unknown-camera", "callback-not-allowed"],
)
async def test_a_start_the_site_cannot_serve_is_refused_and_not_saved(
    rig: Rig, yao_embedding: list[float], extra: dict[str, Any], code: ErrorCode, status: int
) -> None:
    error = await refused(lambda: rig.manager().start(command("slot-1", yao_embedding, **extra)))
    assert (error.code, error.status) == (code, status)
    assert await rig.rows() == [] and rig.sink.events == []


async def test_embeddings_from_another_model_are_refused(
    rig: Rig, yao_embedding: list[float]
) -> None:
    payload = start_payload("slot-1", yao_embedding)
    payload["students"][0]["embeddingSpace"] = "arcface-0000000000000000"
    error = await refused(lambda: rig.manager().start(SessionStart.model_validate(payload)))
    assert (error.code, error.status) == (ErrorCode.EMBEDDING_MODEL_MISMATCH, 409)
