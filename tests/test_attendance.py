"""The attendance reporter on its own: sightings become RECOGNITION events once per
student across cameras (ATTENDANCE), or at most every continuous_interval_s (CONTINUOUS);
a student whose event could not be stored is tried again; reported students are recorded
in the real state file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import load_config
from agent.errors import AgentError, ErrorCode
from agent.events.event import Event, EventFactory
from agent.events.store import Store
from agent.protocol import SessionStart
from agent.session.attendance import AttendanceReporter, Seen
from agent.session.limits import SessionCamera
from agent.session.manager import ActiveSession
from agent.vision.faces import DetectedFace
from agent.vision.inference import InferencePool
from agent.vision.matching import Roster
from agent.vision.recognition import Sighting
from tests.agent_harness import RecordingSink, start_payload

IMAGE = np.zeros((120, 160, 3), np.uint8)
FACE = DetectedFace(np.array([10, 10, 60, 60], np.float32), 0.9, np.zeros((5, 2), np.float32))


class FullSink(RecordingSink):
    """A sink whose first ``failures`` events cannot be stored (outbox full)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def emit(self, event: Event, callback_url: str) -> None:
        if self.failures:
            self.failures -= 1
            raise AgentError(ErrorCode.OUTBOX_FULL, "outbox full", status=503)
        await super().emit(event, callback_url)


def _session(mode: str) -> ActiveSession:
    payload: dict[str, Any] = start_payload("slot-a", [1.0] * 512, mode=mode)
    payload["students"].append({"id": "stu-2", "code": "S002", "embeddings": [[0.5] * 512]})
    command = SessionStart.model_validate(payload)
    return ActiveSession(
        command=command,
        roster=Roster.validated([(s.id, s.embeddings) for s in command.students], 512),
        camera_plan=[SessionCamera("cam-1", "Room 1", "rtsp://127.0.0.1:1/a")],
        embedding_space="arcface-x",
        threshold=0.4,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    state = Store(tmp_path)
    yield state
    state.close()


def _reporter(
    session: ActiveSession, sink: RecordingSink, store: Store, pool: InferencePool, **cfg: Any
) -> AttendanceReporter:
    recognition = load_config(None).recognition.model_copy(update=cfg)
    return AttendanceReporter(
        session,
        cfg=recognition,
        sink=sink,
        events=EventFactory("site-1", "UTC"),
        store=store,
        pool=pool,
        metrics=None,
        already_reported=set(),
    )


async def see(
    reporter: AttendanceReporter, camera_id: str, wall: float, sighting: Sighting
) -> None:
    """A sighting on a camera (no engine needed: face crops are off)."""
    engine: Any = None
    await reporter.sighted(Seen(camera_id, f"Room {camera_id}", wall, IMAGE), engine, sighting)


def _recognitions(sink: RecordingSink) -> list[tuple[str, str]]:
    return [
        (e.student_id, e.camera_id)  # type: ignore[union-attr]
        for e, _ in sink.events
        if e.type == "RECOGNITION"
    ]


async def test_one_event_per_student_across_cameras(store: Store) -> None:
    sink = RecordingSink()
    pool = InferencePool(1)
    try:
        reporter = _reporter(_session("ATTENDANCE"), sink, store, pool)
        sighting = Sighting("stu-1", 0.8, FACE)
        # Two cameras see the student at the same moment, then again later.
        await asyncio.gather(
            see(reporter, "cam-1", 1.0, sighting),
            see(reporter, "cam-2", 1.0, sighting),
        )
        await see(reporter, "cam-1", 2.0, sighting)
        await see(reporter, "cam-1", 2.0, Sighting("stu-2", 0.7, FACE))
    finally:
        pool.close()
    assert _recognitions(sink) == [("stu-1", "cam-1"), ("stu-2", "cam-1")]
    event = sink.events[0][0]
    assert event.confidence == 0.8 and event.student_code == "S001"  # type: ignore[union-attr]
    assert await store.call(store.recognized, "slot-a") == {"stu-1", "stu-2"}


async def test_a_lost_event_is_tried_again_at_the_next_sighting(store: Store) -> None:
    sink = FullSink(failures=1)
    pool = InferencePool(1)
    try:
        reporter = _reporter(_session("ATTENDANCE"), sink, store, pool)
        sighting = Sighting("stu-1", 0.8, FACE)
        await see(reporter, "cam-1", 1.0, sighting)
        assert _recognitions(sink) == []
        assert await store.call(store.recognized, "slot-a") == set()
        await see(reporter, "cam-1", 2.0, sighting)
    finally:
        pool.close()
    assert _recognitions(sink) == [("stu-1", "cam-1")]


async def test_continuous_mode_reports_again_after_the_interval(store: Store) -> None:
    sink = RecordingSink()
    pool = InferencePool(1)
    try:
        reporter = _reporter(_session("CONTINUOUS"), sink, store, pool, continuous_interval_s=1.0)
        sighting = Sighting("stu-1", 0.8, FACE)
        await see(reporter, "cam-1", 1.0, sighting)
        await see(reporter, "cam-1", 1.1, sighting)
        assert len(_recognitions(sink)) == 1
        await asyncio.sleep(1.05)  # the interval itself is what is tested
        await see(reporter, "cam-1", 2.2, sighting)
    finally:
        pool.close()
    assert len(_recognitions(sink)) == 2
    assert await store.call(store.recognized, "slot-a") == set()  # not an attendance
