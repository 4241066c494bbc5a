"""One running camera of a session: its reader, its tracker and scheduler entry, what it
has seen, and the analysis loop that turns its frames into sightings.

The :class:`~agent.session.runner.RecognitionRunner` makes one :class:`CameraWork` per
camera of a session and puts them on the session (``ActiveSession.cameras``), where
status, the STOPPED event's up-times and the technician's page read their typed state.
The loop waits for the camera's next turn from the agent-wide
:class:`~agent.session.scheduler.AnalysisScheduler`, takes the newest frame and runs the
analysis in the inference pool; the session's :class:`Analysis` holds what every camera
of it shares.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.camera.counters import Frame
from agent.camera.reader import CameraReader
from agent.camera.view import CameraView
from agent.config import RecognitionConfig
from agent.protocol import CameraUptime
from agent.session.attendance import AttendanceReporter, Seen
from agent.session.placement import FaceWidthCounts
from agent.session.scheduler import AnalysisScheduler, ScheduledCamera
from agent.status.metrics import Metrics
from agent.status.models import CameraCoverageStatus, CameraHealth, CameraState
from agent.vision.coverage import CameraCoverage
from agent.vision.inference import InferencePool, ModelSlot
from agent.vision.recognition import AnalysisResult
from agent.vision.tracker import FaceTracker

if TYPE_CHECKING:  # the session module keeps its cameras' work: typing only, no cycle
    from agent.session.manager import ActiveSession

log = logging.getLogger("agent.session.runner")  # the analysis loop's log lines, as before

AnalyseFn = Callable[..., AnalysisResult]
"""The analysis run in the inference pool (:func:`agent.vision.recognition.analyse_frame`)."""

DEFAULT_MPX_S = 1920 * 1080 * 15 / 1e6  # a camera's decoding cost until its size is known
DEAD_POLL_S = 1.0


@dataclass(frozen=True)
class Analysis:
    """What the analysis loops of one session's cameras share."""

    session: ActiveSession
    cfg: RecognitionConfig
    max_frame_age_s: float
    scheduler: AnalysisScheduler
    models: ModelSlot
    pool: InferencePool
    analyse: AnalyseFn
    attendance: AttendanceReporter
    metrics: Metrics | None = None


@dataclass
class CameraWork:
    """One running camera of a session and what its analysis keeps."""

    reader: CameraReader
    tracker: FaceTracker
    coverage: CameraCoverage
    widths: FaceWidthCounts = field(default_factory=FaceWidthCounts)
    scheduled: ScheduledCamera | None = None  # once registered with the scheduler
    view: CameraView | None = None  # the last analysed frame and its faces
    disconnected: bool = False  # reported CAMERA_DISCONNECTED, not yet back

    @classmethod
    def create(cls, reader: CameraReader, cfg: RecognitionConfig, threshold: float) -> CameraWork:
        """The work of ``reader``'s camera in a session matching at ``threshold``."""
        tracker = FaceTracker.for_config(cfg, threshold)
        return cls(reader, tracker, CameraCoverage.for_config(cfg))

    @property
    def camera_id(self) -> str:
        """The camera's id."""
        return self.reader.camera_id

    def start(self, scheduler: AnalysisScheduler, key: str) -> None:
        """Register with the scheduler (as ``key``) and start the reader thread."""
        self.scheduled = scheduler.register(key, self.reader, DEFAULT_MPX_S)
        self.reader.start()

    def describe(self) -> CameraHealth:
        """The reader's health with the camera's coverage and face widths."""
        scheduled = self.scheduled
        status = CameraCoverageStatus(
            fine_detect_cores=round(scheduled.fine_cores, 4) if scheduled is not None else 0.0,
            sweeps=self.coverage.sweep.completed,
            regions=self.coverage.regions,
            face_widths=self.widths.status(),
            placement_hint=self.widths.hint(),
        )
        return self.reader.describe().model_copy(update={"coverage": status})

    def uptime(self, session_seconds: float) -> CameraUptime:
        """How long the camera was live out of the session's ``session_seconds``."""
        return CameraUptime(
            camera_id=self.reader.camera_id,
            camera_name=self.reader.name,
            up_seconds=round(min(self.reader.up_seconds(), session_seconds), 1),
            session_seconds=round(session_seconds, 1),
        )

    async def run(self, analysis: Analysis) -> None:
        """The analysis loop (after :meth:`start`): wait for the camera's turn, analyse the
        newest frame, until cancelled."""
        camera = self.scheduled
        if camera is None:
            raise RuntimeError("CameraWork.run before start")
        reader, scheduler = self.reader, analysis.scheduler
        while True:
            if reader.state is CameraState.DEAD:
                await asyncio.sleep(DEAD_POLL_S)
                continue
            await asyncio.sleep(max(0.0, scheduler.next_due(camera) - time.monotonic()))
            frame = await self._next_frame(analysis.max_frame_age_s)
            if frame is None:
                continue
            fps = reader.frame_rate()
            if fps:
                height, width = frame.image.shape[:2]
                scheduler.set_cost(camera, width * height * fps / 1e6)
            await self._analyse(analysis, camera, frame)

    async def _next_frame(self, limit: float) -> Frame | None:
        """The camera's next frame; None (the stream marked stalled when that is why) if
        none comes before the newest frame is ``limit`` seconds old."""
        reader = self.reader
        age = reader.frame_age() or 0.0
        # Wait no longer than the moment the newest frame becomes too old.
        frame = await reader.next_frame(timeout=max(0.05, limit - age))
        if frame is None and (reader.frame_age() or limit) >= limit:
            reader.mark_stalled()
        return frame

    async def _analyse(self, analysis: Analysis, camera: ScheduledCamera, frame: Frame) -> None:
        """Analyse one frame in the pool and report what it found."""
        session, scheduler, reader = analysis.session, analysis.scheduler, self.reader
        engine = analysis.models.for_space(session.embedding_space)
        if engine is None:
            await asyncio.sleep(scheduler.interval(camera))  # no usable model: skip
            return
        try:
            async with scheduler.turn(camera):
                result = await analysis.pool.call(
                    analysis.analyse,
                    engine,
                    frame.image,
                    self.tracker,
                    session.roster,
                    analysis.cfg,
                    session.threshold,
                    analysis.metrics.observe_stage if analysis.metrics else None,
                    scheduler.embeds,
                    coverage=self.coverage,
                    fine=scheduler.fine,
                    sweep=session.presence.missing() > 0,
                )
        except Exception:
            reader.record_analysis(ok=False)
            log.exception(
                "FRAME_PROCESSING_ERROR slot=%s camera=%s", session.slot_id, reader.camera_id
            )
            return
        reader.record_analysis(ok=True)
        scheduler.settle(camera, result.priority)
        camera.record_fine(result.fine_seconds)
        self._record(analysis, frame.wall, result)
        self.view = CameraView(reader.camera_id, frame.image, frame.wall, result.boxes)
        seen = Seen(reader.camera_id, reader.name, frame.wall, frame.image)
        for sighting in result.sightings:
            await analysis.attendance.sighted(seen, engine, sighting)

    def _record(self, analysis: Analysis, wall: float, result: AnalysisResult) -> None:
        """What an analysis adds to presence evidence, face-width counts and metrics."""
        session, metrics = analysis.session, analysis.metrics
        self.widths.add(result.new_widths, result.confirmed_widths)
        for student_id, score in result.near:
            session.presence.near(student_id, self.camera_id, score)
        for sighting in result.sightings:
            session.presence.seen(sighting.student_id, wall, sighting.score)
        if metrics is not None:
            metrics.faces.labels("detected").inc(result.faces)
            metrics.faces.labels("embedded").inc(result.embedded)
            metrics.faces.labels("deferred").inc(result.deferred)
