"""Turning sightings into RECOGNITION events: once per student in ATTENDANCE mode, at most
every ``continuous_interval_s`` in CONTINUOUS mode, across all cameras of a session.

A student is claimed before the first await, so two cameras seeing them at once report
them once; the claim is released if the event could not be stored, so a later sighting
tries again. In ATTENDANCE mode the student is also recorded in the state file, so an
agent restart does not report them a second time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.config import RecognitionConfig
from agent.events.event import EventFactory, EventSink, emit_or_log
from agent.events.store import Store, StoreError
from agent.protocol import RecognitionEvent, SessionMode
from agent.session.manager import ActiveSession
from agent.status.metrics import Metrics
from agent.vision.faces import Image
from agent.vision.inference import InferencePool
from agent.vision.recognition import Sighting, face_jpeg

if TYPE_CHECKING:  # the engine pulls in ONNX Runtime; it arrives as an argument
    from agent.vision.engine import FaceEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seen:
    """Where and when a sighting was made: the camera and the analysed frame."""

    camera_id: str
    camera_name: str
    wall: float  # time.time() when the frame was read
    image: Image


class AttendanceReporter:
    """The RECOGNITION events of one running session."""

    def __init__(
        self,
        session: ActiveSession,
        *,
        cfg: RecognitionConfig,
        sink: EventSink,
        events: EventFactory,
        store: Store,
        pool: InferencePool,
        metrics: Metrics | None,
        already_reported: set[str],
    ) -> None:
        self.session = session
        self.cfg = cfg
        self.sink = sink
        self.events = events
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self._reported = already_reported
        self._last_report: dict[str, float] = {}

    async def sighted(self, seen: Seen, engine: FaceEngine, sighting: Sighting) -> None:
        """Report a sighting unless its student was reported already (or too recently)."""
        student_id = sighting.student_id
        attendance = self.session.command.mode is SessionMode.ATTENDANCE
        if attendance:
            if student_id in self._reported:
                return
            # Claim the student before the first await: another camera of the session
            # seeing them meanwhile must not report them a second time.
            self._reported.add(student_id)
        else:
            last = self._last_report.get(student_id)
            if last is not None and time.monotonic() - last < self.cfg.continuous_interval_s:
                return
            self._last_report[student_id] = time.monotonic()
        sent = False
        try:
            sent = await self._report(seen, engine, sighting)
        finally:
            if not sent:  # not stored: let a later sighting try again
                if attendance:
                    self._reported.discard(student_id)
                else:
                    self._last_report.pop(student_id, None)

    async def _report(self, seen: Seen, engine: FaceEngine, sighting: Sighting) -> bool:
        """Build, store and log one RECOGNITION event; False if it could not be stored."""
        session = self.session
        student_id = sighting.student_id
        student = next(s for s in session.command.students if s.id == student_id)
        crop = (
            await self.pool.call(face_jpeg, engine, seen.image, sighting.face)
            if self.cfg.face_jpeg
            else None
        )
        event = RecognitionEvent(
            event_id=self.events.new_id(),
            slot_id=session.slot_id,
            site_id=self.events.site_id,
            mode=session.command.mode,
            student_id=student_id,
            student_code=student.code,
            confidence=round(min(1.0, max(-1.0, sighting.score)), 4),
            camera_id=seen.camera_id,
            camera_name=seen.camera_name,
            recognized_at=self.events.at(seen.wall),
            embedding_space=session.embedding_space,
            face_jpeg=crop,
        )
        if not await emit_or_log(self.sink, event, session.command.callback_url):
            return False
        session.presence.recognised(student_id, seen.wall, seen.camera_id, sighting.score)
        try:
            await self.store.call(
                self.store.record_recognition,
                session.slot_id,
                student_id,
                session.presence.to_json(),
                once=session.command.mode is SessionMode.ATTENDANCE,
            )
            session.presence.changed = False
        except StoreError as exc:
            # The event is stored; only a restart could report the student again.
            log.error(
                "RECOGNIZED_NOT_SAVED slot=%s student=%s code=%s message=%s",
                session.slot_id,
                student_id,
                exc.code,
                exc.message,
            )
        if self.metrics is not None:
            self.metrics.recognitions.labels(session.command.mode.value).inc()
        log.info(
            "STUDENT_RECOGNIZED slot=%s student=%s camera=%s confidence=%.3f",
            session.slot_id,
            student_id,
            seen.camera_id,
            sighting.score,
        )
        return True
