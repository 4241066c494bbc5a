"""One analysis of one camera frame: detect -> track -> embed what needs it -> match -> vote.

These functions run in an inference thread (``agent.inference.InferencePool``); they touch
only their arguments. A camera's :class:`~agent.tracker.FaceTracker` is used by one
analysis at a time (its camera's analyses never overlap).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2

from agent.camera_view import FaceBox
from agent.config import RecognitionConfig
from agent.faces import DetectedFace, Image
from agent.matching import Roster
from agent.metrics import StageObserver
from agent.scheduler import EmbedBudget, Priority
from agent.tracker import FaceTracker, Track

if TYPE_CHECKING:  # the engine pulls in ONNX Runtime; it arrives as an argument
    from agent.engine import FaceEngine


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
    deferred: int = 0  # faces that needed an embedding but the global cap said later
    sightings: list[Sighting] = field(default_factory=list)
    boxes: tuple[FaceBox, ...] = ()  # every track seen in this analysis
    priority: Priority = Priority.EMPTY  # what the camera needs next (agent.scheduler)


def _box(track: Track) -> FaceBox:
    x1, y1, x2, y2 = (float(v) for v in track.face.bbox)
    student = track.confirmed
    return FaceBox(
        (x1, y1, x2, y2), student, track.best_scores.get(student, 0.0) if student else 0.0
    )


def _embed_order(track: Track) -> tuple[int, int]:
    """Faces with the fewest votes first (a newcomer before a re-check)."""
    return (len(track.votes), -track.since_embed)


def analyse_frame(
    engine: FaceEngine,
    image: Image,
    tracker: FaceTracker,
    roster: Roster,
    cfg: RecognitionConfig,
    threshold: float,
    observe: StageObserver | None = None,
    budget: EmbedBudget | None = None,
) -> AnalysisResult:
    """Detect, track, embed what needs it (within ``budget``), match, and vote.

    ``observe`` gets each stage's duration.
    """
    started = time.perf_counter()
    faces = [f for f in engine.detect(image) if f.bbox[2] - f.bbox[0] >= cfg.min_face_px]
    detected = time.perf_counter()
    tracks = tracker.update(faces)
    todo = sorted((t for t in tracks if tracker.needs_embedding(t)), key=_embed_order)
    wanted = len(todo)
    if budget is not None:
        todo = todo[: budget.take(len(todo))]
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
            track.vote(
                match.student_id if accepted else None,
                match.score,
                cfg.confirm_k,
                cfg.instant_score,
            )
    alive = tracks or tracker.tracks  # faces missed for an analysis or two still count
    if not alive:
        priority = Priority.EMPTY
    elif all(tracker.settled(t) for t in alive):
        priority = Priority.SETTLED
    else:
        priority = Priority.UNRECOGNISED
    result = AnalysisResult(
        faces=len(faces),
        embedded=len(todo),
        deferred=wanted - len(todo),
        boxes=tuple(_box(t) for t in tracks),
        priority=priority,
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
