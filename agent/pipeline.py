"""The live recognition loop of a session: its cameras, their analysis, and its events.

Per camera: a reader thread (``agent.camera``) and one analysis task that asks for the
newest frame at ``analysis_fps`` and runs detect -> track -> embed (only new or uncertain
faces) -> match in the inference pool. A student is recognised when one tracked face
matched them in k of its last n analyses. Camera failures become CAMERA_DISCONNECTED /
CAMERA_RECONNECTED events, and the session ends (ALL_CAMERAS_FAILED) when every camera
is dead.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field

import cv2

from agent.camera import CameraReader, CameraState, Frame
from agent.camera_view import CameraView, FaceBox
from agent.config import CamerasConfig, RecognitionConfig
from agent.engine import DetectedFace, FaceEngine, Image
from agent.events import EventFactory, EventSink, emit_or_log
from agent.inference import InferencePool, ModelSlot
from agent.matching import Roster
from agent.metrics import Metrics, StageObserver
from agent.protocol import (
    CameraUptime,
    RecognitionEvent,
    SessionMode,
    SessionStatus,
    StatusReason,
)
from agent.sessions import ActiveSession
from agent.store import Store, StoreError
from agent.tracker import FaceTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sighting:
    """A confirmed student seen in one analysis."""

    student_id: str
    score: float
    face: DetectedFace


@dataclass
class AnalysisResult:
    """What one analysis of one frame found."""

    faces: int = 0
    embedded: int = 0
    sightings: list[Sighting] = field(default_factory=list)
    boxes: tuple[FaceBox, ...] = ()  # every track seen in this analysis


def analyse_frame(
    engine: FaceEngine,
    image: Image,
    tracker: FaceTracker,
    roster: Roster,
    cfg: RecognitionConfig,
    threshold: float,
    observe: StageObserver | None = None,
) -> AnalysisResult:
    """Detect, track, embed what needs it, match, and vote (runs in an inference thread).

    ``tracker`` belongs to one camera, whose analyses run one at a time. ``observe`` gets
    each stage's duration.
    """
    started = time.perf_counter()
    faces = [f for f in engine.detect(image) if f.bbox[2] - f.bbox[0] >= cfg.min_face_px]
    detected = time.perf_counter()
    tracks = tracker.update(faces)
    todo = [t for t in tracks if tracker.needs_embedding(t)]
    if observe is not None:
        observe("detect", detected - started)
    if todo:
        crops = engine.align(image, [t.face for t in todo])
        embedded = time.perf_counter()
        embeddings = engine.embed(crops)
        matched = time.perf_counter()
        matches = roster.match(embeddings)
        if observe is not None:
            observe("embed", matched - embedded)
            observe("match", time.perf_counter() - matched)
        for track, match in zip(todo, matches, strict=True):
            accepted = match.accepted(threshold, cfg.match_margin)
            track.vote(match.student_id if accepted else None, match.score, cfg.confirm_k)
    result = AnalysisResult(
        faces=len(faces),
        embedded=len(todo),
        boxes=tuple(
            FaceBox(
                bbox=(
                    float(t.face.bbox[0]),
                    float(t.face.bbox[1]),
                    float(t.face.bbox[2]),
                    float(t.face.bbox[3]),
                ),
                student_id=t.confirmed,
                score=t.best_scores.get(t.confirmed, 0.0) if t.confirmed else 0.0,
            )
            for t in tracks
        ),
    )
    for track in tracks:
        if track.confirmed is not None:
            result.sightings.append(
                Sighting(track.confirmed, track.best_scores[track.confirmed], track.face)
            )
    return result


def face_jpeg(engine: FaceEngine, image: Image, face: DetectedFace) -> str | None:
    """The aligned 112x112 face as a base64 JPEG (runs in an inference thread, and only for
    an event that is about to be sent)."""
    ok, buf = cv2.imencode(".jpg", engine.align(image, [face])[0], [cv2.IMWRITE_JPEG_QUALITY, 80])
    return base64.b64encode(buf.tobytes()).decode() if ok else None


class RecognitionRunner:
    """The :class:`~agent.sessions.SessionRunner` that reads cameras and recognises faces."""

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
    ) -> None:
        self.metrics = metrics
        self.cameras_cfg = cameras
        self.cfg = recognition
        self.models = models
        self.pool = pool
        self.sink = sink
        self.events = events
        self.store = store

    async def run(self, session: ActiveSession) -> StatusReason | None:
        """Run the session's cameras until cancelled, or until all of them are dead."""
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[tuple[str, CameraState, str]] = asyncio.Queue()
        readers = [
            CameraReader(
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
        session.camera_health = lambda: [r.describe() for r in readers]
        session.uptimes = lambda: self._uptimes(session, readers)
        views: dict[str, CameraView] = {}
        session.camera_view = views.get
        reported = (
            set()
            if session.command.mode is SessionMode.CONTINUOUS
            else await self.store.run(self.store.recognized, session.slot_id)
        )
        last_report: dict[str, float] = {}
        tasks: list[asyncio.Task[None]] = []
        try:
            for reader in readers:
                reader.start()
                tasks.append(
                    asyncio.create_task(
                        self._analyse(session, reader, reported, last_report, views),
                        name=f"analyse-{session.slot_id}-{reader.camera_id}",
                    )
                )
            disconnected: set[str] = set()
            while True:
                camera_id, state, reason = await changes.get()
                reader = next(r for r in readers if r.camera_id == camera_id)
                if state is CameraState.DEAD:
                    if all(r.state is CameraState.DEAD for r in readers):
                        log.error("ALL_CAMERAS_DEAD slot=%s", session.slot_id)
                        return StatusReason.ALL_CAMERAS_FAILED
                    disconnected.add(camera_id)
                    await self._status(
                        session,
                        SessionStatus.CAMERA_DISCONNECTED,
                        StatusReason.CAMERA_FAILURE,
                        reader,
                        reason,
                    )
                elif state is CameraState.LIVE and camera_id in disconnected:
                    disconnected.discard(camera_id)
                    await self._status(
                        session,
                        SessionStatus.CAMERA_RECONNECTED,
                        StatusReason.CAMERA_RECOVERED,
                        reader,
                        "",
                    )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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
        reported: set[str],
        last_report: dict[str, float],
        views: dict[str, CameraView],
    ) -> None:
        cfg = self.cfg
        busy_interval = 1.0 / self.cameras_cfg.analysis_fps
        idle_interval = 1.0 / min(self.cameras_cfg.idle_analysis_fps, self.cameras_cfg.analysis_fps)
        interval = busy_interval
        tracker = FaceTracker(
            iou=cfg.track_iou,
            max_missed=cfg.track_max_missed,
            n=cfg.confirm_n,
            reembed_every=cfg.reembed_every,
        )
        while True:
            started = time.monotonic()
            if reader.state is CameraState.DEAD:
                await asyncio.sleep(interval)
                continue
            limit = self.cameras_cfg.max_frame_age_s
            age = reader.frame_age() or 0.0
            # Wait no longer than the moment the newest frame becomes too old.
            frame = await reader.next_frame(timeout=max(0.05, limit - age))
            if frame is None:
                age = reader.frame_age() or limit
                if age >= limit:
                    reader.mark_stalled()
                continue
            engine = self.models.for_space(session.embedding_space)
            if engine is None:
                await asyncio.sleep(interval)  # no usable model right now: skip frames
                continue
            try:
                result = await self.pool.run(
                    analyse_frame,
                    engine,
                    frame.image,
                    tracker,
                    session.roster,
                    cfg,
                    session.threshold,
                    self.metrics.observe_stage if self.metrics else None,
                )
            except Exception:
                reader.stats.frames_invalid += 1
                log.exception(
                    "FRAME_PROCESSING_ERROR slot=%s camera=%s", session.slot_id, reader.camera_id
                )
                continue
            reader.stats.frames_analysed += 1
            views[reader.camera_id] = CameraView(
                reader.camera_id, frame.image, frame.wall, result.boxes
            )
            if self.metrics is not None:
                self.metrics.faces.labels("detected").inc(result.faces)
                self.metrics.faces.labels("embedded").inc(result.embedded)
            for sighting in result.sightings:
                await self._maybe_report(
                    session, reader, engine, frame, sighting, reported, last_report
                )
            # Adapt the rate: full speed while faces are in view (or still tracked), the
            # idle rate on an empty room. A slow analysis simply delays the next one (the
            # frame is always the newest), so a loaded box sheds analyses, not freshness.
            interval = busy_interval if result.faces or tracker.tracks else idle_interval
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _maybe_report(
        self,
        session: ActiveSession,
        reader: CameraReader,
        engine: FaceEngine,
        frame: Frame,
        sighting: Sighting,
        reported: set[str],
        last_report: dict[str, float],
    ) -> None:
        student_id = sighting.student_id
        attendance = session.command.mode is SessionMode.ATTENDANCE
        if attendance:
            if student_id in reported:
                return
            # Claim the student before the first await: another camera of the session
            # seeing them meanwhile must not report them a second time.
            reported.add(student_id)
        else:
            last = last_report.get(student_id)
            if last is not None and time.monotonic() - last < self.cfg.continuous_interval_s:
                return
            last_report[student_id] = time.monotonic()
        sent = False
        try:
            sent = await self._report(session, reader, engine, frame, sighting)
        finally:
            if not sent:  # not stored: let a later sighting try again
                if attendance:
                    reported.discard(student_id)
                else:
                    last_report.pop(student_id, None)

    async def _report(
        self,
        session: ActiveSession,
        reader: CameraReader,
        engine: FaceEngine,
        frame: Frame,
        sighting: Sighting,
    ) -> bool:
        """Build, store and log one RECOGNITION event; False if it could not be stored."""
        student_id = sighting.student_id
        student = next(s for s in session.command.students if s.id == student_id)
        crop = (
            await self.pool.run(face_jpeg, engine, frame.image, sighting.face)
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
            camera_id=reader.camera_id,
            camera_name=reader.name,
            recognized_at=self.events.at(frame.wall),
            embedding_space=session.embedding_space,
            face_jpeg=crop,
        )
        if not await emit_or_log(self.sink, event, session.command.callback_url):
            return False
        if session.command.mode is SessionMode.ATTENDANCE:
            try:
                await self.store.run(self.store.mark_recognized, session.slot_id, student_id)
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
            reader.camera_id,
            sighting.score,
        )
        return True
