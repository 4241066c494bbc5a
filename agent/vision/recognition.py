"""One analysis of one camera frame: detect (three passes) -> track -> embed what needs it
-> match -> vote, each vote weighted by face quality.

These functions run in an inference thread (``agent.vision.inference.InferencePool``); they touch
only their arguments. A camera's :class:`~agent.vision.tracker.FaceTracker` is used by one
analysis at a time (its camera's analyses never overlap).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2

from agent.camera.view import FaceBox
from agent.config import RecognitionConfig
from agent.status.metrics import StageObserver
from agent.vision.budget import EmbedBudget, Priority
from agent.vision.coverage import (
    MAX_REGIONS,
    TINY_FACE_PX,
    Budget,
    CameraCoverage,
    detect_frame,
    is_precise,
    looked_for,
)
from agent.vision.evidence import INSTANT_MIN_WEIGHT, vote_threshold, vote_weight
from agent.vision.faces import DetectedFace, FaceSource, Image
from agent.vision.matching import Roster
from agent.vision.tracker import FaceTracker, Track

if TYPE_CHECKING:  # the engine pulls in ONNX Runtime; it arrives as an argument
    from agent.vision.engine import FaceEngine


REGION_SLACK = 2  # regions checked beyond the faces the embedding cap allows now


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
    priority: Priority = Priority.EMPTY  # what the camera needs next (agent.vision.budget)
    near: list[tuple[str, float]] = field(default_factory=list)  # close, unconfirmed matches
    new_widths: list[float] = field(default_factory=list)  # faces first seen (px)
    confirmed_widths: list[float] = field(default_factory=list)  # faces newly recognised
    fine_seconds: float = 0.0  # full-resolution detection time (agent.vision.coverage)
    regions: int = 0
    tiles: int = 0


def _box(track: Track) -> FaceBox:
    x1, y1, x2, y2 = (float(v) for v in track.face.bbox)
    student = track.confirmed
    return FaceBox(
        (x1, y1, x2, y2), student, track.best_scores.get(student, 0.0) if student else 0.0
    )


def _embed_order(track: Track) -> tuple[int, int]:
    """Faces with the fewest votes first (a newcomer before a re-check)."""
    return (len(track.votes), -track.since_embed)


def _vote(
    engine: FaceEngine,
    image: Image,
    todo: list[Track],
    roster: Roster,
    cfg: RecognitionConfig,
    threshold: float,
    result: AnalysisResult,
    observe: StageObserver | None,
) -> None:
    """Embed, match and vote for the tracks in ``todo``, each vote weighted by its face's
    quality (agent.vision.evidence)."""
    crops = engine.align(image, [t.face for t in todo])
    embedded = time.perf_counter()
    embeddings = engine.embed(crops)
    matched = time.perf_counter()
    matches = roster.match(embeddings)
    if observe is not None:
        observe("embed", matched - embedded)
        observe("match", time.perf_counter() - matched)
    for track, match, crop in zip(todo, matches, crops, strict=True):
        weight = vote_weight(track.face, crop, cfg)
        bar = vote_threshold(threshold, weight, cfg)
        accepted = match.accepted(bar, cfg.match_margin)
        newly = track.vote(
            match.student_id if accepted else None,
            match.score,
            cfg.confirm_k,
            cfg.instant_score,
            weight=weight,
            instant_weight=INSTANT_MIN_WEIGHT,
        )
        if newly is not None:
            result.confirmed_widths.append(track.face.width)
        elif track.confirmed != match.student_id and match.score >= threshold - cfg.stranger_margin:
            result.near.append((match.student_id, match.score))


def analyse_frame(
    engine: FaceEngine,
    image: Image,
    tracker: FaceTracker,
    roster: Roster,
    cfg: RecognitionConfig,
    threshold: float,
    observe: StageObserver | None = None,
    budget: EmbedBudget | None = None,
    *,
    coverage: CameraCoverage | None = None,
    fine: Budget | None = None,
    sweep: bool = False,
) -> AnalysisResult:
    """Detect (agent.vision.coverage), track, embed what needs it (within ``budget``), match,
    and vote.

    ``fine`` is the full-resolution detection budget (None: unlimited); ``sweep`` asks for
    a sweep tile when one is due (the session still misses roster students).
    ``observe`` gets each stage's duration.
    """
    started = time.perf_counter()
    coverage = coverage or CameraCoverage.for_config(cfg)
    found = detect_frame(
        engine,
        image,
        tracker,
        coverage,
        cfg,
        budget=fine,
        sweep=sweep,
        max_regions=MAX_REGIONS if budget is None else budget.available() + REGION_SLACK,
    )
    detected = time.perf_counter()
    first_new = tracker.next_id
    tracks = tracker.update(found.faces, lambda t: looked_for(t, found, cfg))
    fresh = [t for t in tracks if t.track_id >= first_new]
    coverage.tiny_faces |= any(t.face.width < TINY_FACE_PX for t in fresh)
    if found.tiles:
        coverage.sweep.advance(
            time.monotonic(),
            sum(1 for t in fresh if t.face.source is FaceSource.TILE),
            tiny_faces=coverage.tiny_faces,
        )
    todo = sorted(
        (
            t
            for t in tracks
            if tracker.needs_embedding(t)
            and (is_precise(t.face, cfg) or id(t.face) in found.unrefined)
        ),
        key=_embed_order,
    )
    wanted = len(todo)
    if budget is not None:
        todo = todo[: budget.take(len(todo))]
    if observe is not None:
        observe("detect", detected - started)
    result = AnalysisResult(
        faces=len(found.faces),
        embedded=len(todo),
        deferred=wanted - len(todo),
        new_widths=[t.face.width for t in fresh],
        fine_seconds=found.fine_seconds,
        regions=found.regions,
        tiles=found.tiles,
    )
    if todo:
        _vote(engine, image, todo, roster, cfg, threshold, result, observe)
    _summarise(result, tracks, tracker)
    return result


def _summarise(result: AnalysisResult, tracks: list[Track], tracker: FaceTracker) -> None:
    """What the camera needs next, its boxes, and the confirmed students in view."""
    alive = tracks or tracker.tracks  # faces missed for an analysis or two still count
    if not alive:
        result.priority = Priority.EMPTY
    elif all(tracker.settled(t) for t in alive):
        result.priority = Priority.SETTLED
    else:
        result.priority = Priority.UNRECOGNISED
    result.boxes = tuple(_box(t) for t in tracks)
    for track in tracks:
        if track.confirmed is not None:
            result.sightings.append(
                Sighting(track.confirmed, track.best_scores[track.confirmed], track.face)
            )


def face_jpeg(engine: FaceEngine, image: Image, face: DetectedFace) -> str | None:
    """The aligned 112x112 face as a base64 JPEG (runs in an inference thread, and only for
    an event that is about to be sent)."""
    ok, buf = cv2.imencode(".jpg", engine.align(image, [face])[0], [cv2.IMWRITE_JPEG_QUALITY, 80])
    return base64.b64encode(buf.tobytes()).decode() if ok else None
