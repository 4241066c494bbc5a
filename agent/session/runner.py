"""The live recognition of a session: its cameras, their analysis loops, and their events.

Per camera: a :class:`~agent.session.camera_work.CameraWork` with a reader thread
(``agent.camera.reader``) and one analysis task, kept on the session
(``ActiveSession.cameras``) for status. The task waits for its camera's next turn
from the agent-wide :class:`~agent.session.scheduler.AnalysisScheduler` (which shares
the box among all cameras by priority), takes the newest frame, and runs
:func:`~agent.vision.recognition.analyse_frame` in the inference pool. A student is recognised
when one tracked face matched them in k of its last n analyses; the
:class:`~agent.session.attendance.AttendanceReporter` turns that into one RECOGNITION event.
Camera failures become CAMERA_DISCONNECTED / CAMERA_RECONNECTED events, and the session
ends (ALL_CAMERAS_FAILED) when every camera stays down past the grace
(:mod:`agent.session.camera_watch`).
"""

from __future__ import annotations

import asyncio
import logging

from agent.camera.reader import CameraReader
from agent.config import AnalysisConfig, CamerasConfig, RecognitionConfig
from agent.events.event import EventFactory, EventSink, emit_or_log
from agent.events.store import Store, StoreError
from agent.protocol import SessionMode, SessionStatus, StatusReason
from agent.session.attendance import AttendanceReporter
from agent.session.camera_watch import CameraWatch
from agent.session.camera_work import AnalyseFn, Analysis, CameraWork
from agent.session.manager import ActiveSession
from agent.session.scheduler import AnalysisScheduler
from agent.status.metrics import Metrics
from agent.status.models import CameraState
from agent.vision.inference import InferencePool, ModelSlot
from agent.vision.recognition import analyse_frame

log = logging.getLogger(__name__)

PRESENCE_SAVE_S = 5.0  # presence evidence is saved this often while it changes


class RecognitionRunner:
    """The :class:`~agent.session.manager.SessionRunner` that reads cameras and recognises faces."""

    def __init__(
        self,
        *,
        cameras: CamerasConfig,
        recognition: RecognitionConfig,
        models: ModelSlot,
        pool: InferencePool,
        sink: EventSink,
        events: EventFactory,
        store: Store,
        metrics: Metrics | None = None,
        scheduler: AnalysisScheduler | None = None,
        reader_type: type[CameraReader] = CameraReader,
        analyse: AnalyseFn = analyse_frame,
    ) -> None:
        """``reader_type`` and ``analyse`` are seams for measuring (a benchmark passes
        recording versions); the agent uses the defaults."""
        self.metrics = metrics
        self.cameras_cfg = cameras
        self.cfg = recognition
        self.models = models
        self.pool = pool
        self.sink = sink
        self.events = events
        self.store = store
        self.scheduler = scheduler or AnalysisScheduler(AnalysisConfig(), cameras, pool.workers)
        self.reader_type = reader_type
        self.analyse = analyse

    async def run(self, session: ActiveSession) -> StatusReason | None:
        """Run the session's cameras until cancelled, or until all of them are dead."""
        changes: asyncio.Queue[tuple[str, CameraState, str]] = asyncio.Queue()
        works = self._camera_work(session, changes)
        session.cameras = works
        reported = (
            set()
            if session.command.mode is SessionMode.CONTINUOUS
            else await self.store.call(self.store.recognized, session.slot_id)
        )
        analysis = self._analysis(session, reported)
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(self._save_presence(session), name=f"presence-{session.slot_id}")
        ]
        try:
            for work in works:
                work.start(self.scheduler, f"{session.slot_id}/{work.camera_id}")
                tasks.append(
                    asyncio.create_task(
                        work.run(analysis), name=f"analyse-{session.slot_id}-{work.camera_id}"
                    )
                )
            watch = CameraWatch(
                session.slot_id,
                works,
                self.cameras_cfg.all_dead_grace_s,
                lambda status, reason, work, message: self._status(
                    session, status, reason, work, message
                ),
            )
            session.camera_watch = watch
            return await watch.run(changes)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for work in works:
                if work.scheduled is not None:
                    self.scheduler.unregister(work.scheduled)
            await asyncio.gather(*(work.reader.stop() for work in works))

    def _camera_work(
        self, session: ActiveSession, changes: asyncio.Queue[tuple[str, CameraState, str]]
    ) -> list[CameraWork]:
        """One :class:`CameraWork` per camera of the session, its reader not started yet;
        the readers' state changes go to ``changes``."""
        loop = asyncio.get_running_loop()
        return [
            CameraWork.create(
                self.reader_type(
                    camera_id=cam.id,
                    name=cam.name,
                    url=cam.url,
                    cfg=self.cameras_cfg,
                    loop=loop,
                    on_state=lambda cid, state, reason: changes.put_nowait((cid, state, reason)),
                    observe=self.metrics.observe_stage if self.metrics else None,
                ),
                self.cfg,
                session.threshold,
            )
            for cam in session.camera_plan
        ]

    def _analysis(self, session: ActiveSession, reported: set[str]) -> Analysis:
        """What the session's analysis loops share."""
        attendance = AttendanceReporter(
            session,
            cfg=self.cfg,
            sink=self.sink,
            events=self.events,
            store=self.store,
            pool=self.pool,
            metrics=self.metrics,
            already_reported=reported,
        )
        return Analysis(
            session=session,
            cfg=self.cfg,
            max_frame_age_s=self.cameras_cfg.max_frame_age_s,
            scheduler=self.scheduler,
            models=self.models,
            pool=self.pool,
            analyse=self.analyse,
            attendance=attendance,
            metrics=self.metrics,
        )

    async def _status(
        self,
        session: ActiveSession,
        status: SessionStatus,
        reason: StatusReason,
        work: CameraWork,
        message: str,
    ) -> None:
        event = self.events.status(
            session.slot_id,
            status,
            reason,
            camera_id=work.camera_id,
            camera_name=work.reader.name,
            message=message or None,
        )
        await emit_or_log(self.sink, event, session.command.callback_url)

    async def _save_presence(self, session: ActiveSession) -> None:
        """Keep the session's presence evidence in the state file while it changes."""
        while True:
            await asyncio.sleep(PRESENCE_SAVE_S)
            if not session.presence.changed:
                continue
            try:
                await self.store.call(
                    self.store.save_presence, session.slot_id, session.presence.to_json()
                )
            except StoreError as exc:
                log.error(
                    "PRESENCE_NOT_SAVED slot=%s code=%s message=%s",
                    session.slot_id,
                    exc.code,
                    exc.message,
                )
                continue
            session.presence.changed = False
