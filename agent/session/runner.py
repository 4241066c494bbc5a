"""The live recognition of a session: its cameras, their analysis loops, and their events.

Per camera: a reader thread (``agent.camera.reader``) and one analysis task. The task waits for
its camera's next turn from the agent-wide :class:`~agent.session.scheduler.AnalysisScheduler`
(which shares the box among all cameras by priority), takes the newest frame, and runs
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
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.camera.reader import CameraReader
from agent.camera.view import CameraView
from agent.config import AnalysisConfig, CamerasConfig, RecognitionConfig
from agent.events.event import EventFactory, EventSink, emit_or_log
from agent.events.store import Store, StoreError
from agent.protocol import CameraUptime, SessionMode, SessionStatus, StatusReason
from agent.session.attendance import AttendanceReporter, Seen
from agent.session.camera_watch import CameraWatch
from agent.session.manager import ActiveSession
from agent.session.placement import FaceWidthCounts
from agent.session.scheduler import AnalysisScheduler, ScheduledCamera
from agent.status.metrics import Metrics
from agent.status.models import CameraCoverageStatus, CameraHealth, CameraState
from agent.vision.coverage import CameraCoverage
from agent.vision.inference import InferencePool, ModelSlot
from agent.vision.recognition import AnalysisResult, analyse_frame
from agent.vision.tracker import FaceTracker

log = logging.getLogger(__name__)

AnalyseFn = Callable[..., AnalysisResult]
"""The analysis run in the inference pool (:func:`agent.vision.recognition.analyse_frame`)."""

DEFAULT_MPX_S = 1920 * 1080 * 15 / 1e6  # a camera's decoding cost until its size is known
DEAD_POLL_S = 1.0
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
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[tuple[str, CameraState, str]] = asyncio.Queue()
        readers = [
            self.reader_type(
                camera_id=cam.id,
                name=cam.name,
                url=cam.url,
                cfg=self.cameras_cfg,
                loop=loop,
                on_state=lambda cid, state, reason: changes.put_nowait((cid, state, reason)),
                observe=self.metrics.observe_stage if self.metrics else None,
            )
            for cam in session.cameras
        ]
        work = {
            r.camera_id: _CameraWork(CameraCoverage.for_config(self.cfg), FaceWidthCounts())
            for r in readers
        }
        session.camera_health = lambda: [_health(r, work[r.camera_id]) for r in readers]
        session.uptimes = lambda: self._uptimes(session, readers)
        views: dict[str, CameraView] = {}
        session.camera_view = views.get
        reported = (
            set()
            if session.command.mode is SessionMode.CONTINUOUS
            else await self.store.run(self.store.recognized, session.slot_id)
        )
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
        scheduled: list[ScheduledCamera] = []
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(self._save_presence(session), name=f"presence-{session.slot_id}")
        ]
        try:
            for reader in readers:
                camera = self.scheduler.register(
                    f"{session.slot_id}/{reader.camera_id}", reader, DEFAULT_MPX_S
                )
                scheduled.append(camera)
                work[reader.camera_id].scheduled = camera
                reader.start()
                tasks.append(
                    asyncio.create_task(
                        self._analyse(
                            session,
                            reader,
                            camera,
                            attendance,
                            views,
                            work[reader.camera_id],
                        ),
                        name=f"analyse-{session.slot_id}-{reader.camera_id}",
                    )
                )
            watch = CameraWatch(
                session.slot_id,
                readers,
                self.cameras_cfg.all_dead_grace_s,
                lambda status, reason, reader, message: self._status(
                    session, status, reason, reader, message
                ),
            )
            session.waiting_for_cameras = watch.seconds_left
            return await watch.run(changes)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for camera in scheduled:
                self.scheduler.unregister(camera)
            await asyncio.gather(*(r.stop() for r in readers))

    def _uptimes(self, session: ActiveSession, readers: list[CameraReader]) -> list[CameraUptime]:
        total = max(0.0, time.time() - session.started_at.timestamp())
        return [
            CameraUptime(
                camera_id=r.camera_id,
                camera_name=r.name,
                up_seconds=round(min(r.up_seconds(), total), 1),
                session_seconds=round(total, 1),
            )
            for r in readers
        ]

    async def _status(
        self,
        session: ActiveSession,
        status: SessionStatus,
        reason: StatusReason,
        reader: CameraReader,
        message: str,
    ) -> None:
        event = self.events.status(
            session.slot_id,
            status,
            reason,
            camera_id=reader.camera_id,
            camera_name=reader.name,
            message=message or None,
        )
        await emit_or_log(self.sink, event, session.command.callback_url)

    async def _analyse(
        self,
        session: ActiveSession,
        reader: CameraReader,
        camera: ScheduledCamera,
        attendance: AttendanceReporter,
        views: dict[str, CameraView],
        work: _CameraWork,
    ) -> None:
        """The analysis loop of one camera: wait for its turn, analyse the newest frame."""
        cfg = self.cfg
        scheduler = self.scheduler
        tracker = FaceTracker(
            iou=cfg.track_iou,
            max_missed=cfg.track_max_missed,
            n=cfg.confirm_n,
            reembed_every=cfg.reembed_every,
            recheck_every=cfg.recheck_every,
            stranger_below=session.threshold - cfg.stranger_margin,
        )
        limit = self.cameras_cfg.max_frame_age_s
        while True:
            if reader.state is CameraState.DEAD:
                await asyncio.sleep(DEAD_POLL_S)
                continue
            await asyncio.sleep(max(0.0, scheduler.next_due(camera) - time.monotonic()))
            age = reader.frame_age() or 0.0
            # Wait no longer than the moment the newest frame becomes too old.
            frame = await reader.next_frame(timeout=max(0.05, limit - age))
            if frame is None:
                age = reader.frame_age() or limit
                if age >= limit:
                    reader.mark_stalled()
                continue
            fps = reader.frame_rate()
            if fps:
                height, width = frame.image.shape[:2]
                scheduler.set_cost(camera, width * height * fps / 1e6)
            engine = self.models.for_space(session.embedding_space)
            if engine is None:
                await asyncio.sleep(scheduler.interval(camera))  # no usable model: skip
                continue
            try:
                async with scheduler.turn(camera):
                    result = await self.pool.run(
                        self.analyse,
                        engine,
                        frame.image,
                        tracker,
                        session.roster,
                        cfg,
                        session.threshold,
                        self.metrics.observe_stage if self.metrics else None,
                        scheduler.embeds,
                        coverage=work.coverage,
                        fine=scheduler.fine,
                        sweep=session.presence.missing() > 0,
                    )
            except Exception:
                reader.record_analysis(ok=False)
                log.exception(
                    "FRAME_PROCESSING_ERROR slot=%s camera=%s", session.slot_id, reader.camera_id
                )
                continue
            reader.record_analysis(ok=True)
            scheduler.settle(camera, result.priority)
            camera.record_fine(result.fine_seconds)
            self._record(session, reader.camera_id, frame.wall, result, work)
            views[reader.camera_id] = CameraView(
                reader.camera_id, frame.image, frame.wall, result.boxes
            )
            seen = Seen(reader.camera_id, reader.name, frame.wall, frame.image)
            for sighting in result.sightings:
                await attendance.sighted(seen, engine, sighting)

    def _record(
        self,
        session: ActiveSession,
        camera_id: str,
        wall: float,
        result: AnalysisResult,
        work: _CameraWork,
    ) -> None:
        """What an analysis adds to presence evidence, face-width counts and metrics."""
        work.widths.add(result.new_widths, result.confirmed_widths)
        for student_id, score in result.near:
            session.presence.near(student_id, camera_id, score)
        for sighting in result.sightings:
            session.presence.seen(sighting.student_id, wall, sighting.score)
        if self.metrics is not None:
            self.metrics.faces.labels("detected").inc(result.faces)
            self.metrics.faces.labels("embedded").inc(result.embedded)
            self.metrics.faces.labels("deferred").inc(result.deferred)

    async def _save_presence(self, session: ActiveSession) -> None:
        """Keep the session's presence evidence in the state file while it changes."""
        while True:
            await asyncio.sleep(PRESENCE_SAVE_S)
            if not session.presence.changed:
                continue
            try:
                await self.store.run(
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


@dataclass
class _CameraWork:
    """What one camera's analysis loop keeps besides its reader and tracker."""

    coverage: CameraCoverage
    widths: FaceWidthCounts
    scheduled: ScheduledCamera | None = None  # once registered with the scheduler


def _health(reader: CameraReader, work: _CameraWork) -> CameraHealth:
    """The reader's health with the camera's coverage and face widths."""
    scheduled = work.scheduled
    status = CameraCoverageStatus(
        fine_detect_cores=round(scheduled.fine_cores, 4) if scheduled is not None else 0.0,
        sweeps=work.coverage.sweep.completed,
        regions=work.coverage.regions,
        face_widths=work.widths.status(),
        placement_hint=work.widths.hint(),
    )
    return reader.describe().model_copy(update={"coverage": status})
