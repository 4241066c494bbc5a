"""Full-resolution coverage of a frame, so back-row faces (16-35 px in 1080p) are found.

The detector runs on the whole frame shrunk to ``det_long_side`` (1080p -> 640x384, 3x
smaller) at every analysis: cheap (13 ms), but a 24 px face is 8 detector pixels there.
Measured on 1080p classroom frames (19 faces, buffalo_sc, one thread):

* At the usual score threshold (0.5) the shrunk frame finds 0/19 faces of 18 px and 8/19
  of 24 px; at a low threshold (0.1) it still *proposes* 16-19/19 of them, with almost no
  false proposals, at no extra cost.
* Its landmarks for such faces are too coarse to align: genuine match scores of 24 px
  faces fall to 0.07 at worst. Detected at native resolution, the same faces align well
  (18 px: genuine 0.40-0.60, impostors at most 0.31).
* Native resolution costs: the whole 1080p frame 120 ms, a 704x576 tile 22 ms, a
  region of 128x128 around one face 1.1 ms.

So a frame is covered in three passes, merged into one list:

1. **Candidates**: the shrunk frame at ``candidate_threshold``. Large, confident faces are
   used as they are.
2. **Regions**: each small or unsure candidate (and each small track still needing an
   embedding that the shrunk frame lost) is re-detected in a region around it at native
   resolution (tiny faces upscaled), which confirms or rejects it and gives landmarks
   precise enough to align. Settled tracks (recognised, or known strangers) keep their
   coarse box until they are due for a re-check, so a settled room costs little.
3. **Sweep**: native-resolution tiles (overlapping, so a face cut by one tile's edge is
   whole in the next), one tile per analysis while the session still has roster students
   not yet recognised, for faces too small even to be proposed, and only while the budget
   is at least half full (regions come first). After a sweep that found someone new the
   next starts ``sweep_min_interval_s`` later; after one that found nobody new, 4x that,
   doubling up to ``sweep_max_interval_s`` (at once in a room whose faces were all at
   least :data:`TINY_FACE_PX` wide: the shrunk frame proposes those reliably).

Regions and tiles are paid from the agent-wide fine-detection budget
(``[analysis] fine_detect_cores``, :class:`agent.vision.budget.FineBudget`).
This module is light (numpy only); the engine arrives as an argument.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from agent.vision.faces import DETECTOR_STRIDE, DetectedFace, FaceSource, FloatArray, Image
from agent.vision.tracker import FaceTracker, Track, box_areas, intersection_matrix, iou_matrix

if TYPE_CHECKING:  # the engine pulls in ONNX Runtime; it arrives as an argument
    from agent.config import RecognitionConfig
    from agent.vision.engine import FaceEngine

Region = tuple[int, int, int, int]
"""x1, y1, x2, y2 in frame pixels (x2, y2 exclusive)."""

TILE_PX = 704  # the largest tile side: 1080p -> 3 x 2 tiles of 704 x 576 (22 ms each)
TILE_OVERLAP_PX = 96  # wider than any face the sweep is for (bigger ones are candidates)
REGION_FACTOR = 2.5  # a region is this many face widths on a side
REGION_MIN_PX = 64
REGION_FACE_PX = 32.0  # faces smaller than this are upscaled in their region (at most 2x)
EDGE_PX = 2.0  # a face this close to an inner edge of a region or tile is cut by it
MAX_REGIONS = 48  # per analysis: a pathological scene cannot take the whole budget
SWEEP_RESERVE = 0.5  # a sweep tile waits while the budget is below half: regions first
FALLBACK_MIN_PX = 32.0  # the old minimum: coarse landmarks still align faces this wide
TINY_FACE_PX = 20.0  # the shrunk frame proposes 18-19 of 19 faces of 18-28 px (at 0.1)
REJECT_ANALYSES = 8  # a candidate a region check rejected is not re-checked for this long
MERGE_OVERLAP = 0.4  # IoU or containment above which two detections are one face


class Budget(Protocol):
    """What coverage needs of the fine-detection budget (agent.vision.budget.FineBudget)."""

    def available(self, reserve: float = 0.0) -> bool:
        """Whether fine detection may run now, leaving ``reserve`` of the budget."""

    def charge(self, seconds: float) -> None:
        """Account for fine detection that ran."""


def centre_in(bbox: FloatArray, regions: Sequence[Region]) -> bool:
    """Whether the centre of a box lies in one of ``regions``."""
    cx, cy = (float(bbox[0]) + float(bbox[2])) / 2, (float(bbox[1]) + float(bbox[3])) / 2
    return any(r[0] <= cx < r[2] and r[1] <= cy < r[3] for r in regions)


def tile_grid(width: int, height: int, tile_px: int, overlap_px: int) -> list[Region]:
    """Overlapping tiles of at most ``tile_px`` a side covering a ``width`` x ``height`` frame.

    Tiles are equal in size and evenly spread; neighbours overlap by at least
    ``overlap_px``, so a face narrower than that is whole in at least one tile.
    """
    if width <= 0 or height <= 0:
        return []
    step = max(1, tile_px - overlap_px)
    nx = max(1, math.ceil((width - overlap_px) / step))
    ny = max(1, math.ceil((height - overlap_px) / step))
    tw = min(width, math.ceil((width + (nx - 1) * overlap_px) / nx))
    th = min(height, math.ceil((height + (ny - 1) * overlap_px) / ny))
    xs = [round(i * (width - tw) / (nx - 1)) if nx > 1 else 0 for i in range(nx)]
    ys = [round(j * (height - th) / (ny - 1)) if ny > 1 else 0 for j in range(ny)]
    return [(x, y, x + tw, y + th) for y in ys for x in xs]


def region_around(bbox: FloatArray, width: int, height: int) -> Region:
    """A square region centred on a face box, :data:`REGION_FACTOR` face sizes a side,
    shifted inside the frame."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    side = min(
        max(width, 1),
        max(height, 1),
        round(max(REGION_MIN_PX, REGION_FACTOR * max(x2 - x1, y2 - y1))),
    )
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rx = int(min(max(0, round(cx - side / 2)), max(0, width - side)))
    ry = int(min(max(0, round(cy - side / 2)), max(0, height - side)))
    return rx, ry, rx + side, ry + side


def detect_in(
    engine: FaceEngine,
    image: Image,
    region: Region,
    *,
    threshold: float,
    source: FaceSource,
    scale: float = 1.0,
) -> list[DetectedFace]:
    """Faces in one region of the frame at ``scale`` x native resolution, in frame pixels.

    A face touching an edge of the region that is not the frame's edge is cut: it is
    dropped here and found whole by the neighbouring tile (or its own region).
    """
    x1, y1, x2, y2 = region
    frame_h, frame_w = image.shape[:2]
    crop = image[y1:y2, x1:x2]
    h, w = crop.shape[:2]
    if h < 8 or w < 8:
        return []
    long_side = max(
        DETECTOR_STRIDE, math.ceil(max(w, h) * scale / DETECTOR_STRIDE) * DETECTOR_STRIDE
    )
    found = engine.detect(crop, long_side=long_side, threshold=threshold)
    shift = np.array([x1, y1, x1, y1], np.float32)
    out: list[DetectedFace] = []
    for face in found:
        bx1, by1, bx2, by2 = (float(v) for v in face.bbox)
        cut = (
            (x1 > 0 and bx1 <= EDGE_PX)
            or (y1 > 0 and by1 <= EDGE_PX)
            or (x2 < frame_w and bx2 >= w - EDGE_PX)
            or (y2 < frame_h and by2 >= h - EDGE_PX)
        )
        if cut:
            continue
        out.append(
            DetectedFace(
                bbox=face.bbox + shift,
                score=face.score,
                kps=face.kps + shift[:2],
                source=source,
            )
        )
    return out


def _overlap(a: DetectedFace, kept: Sequence[DetectedFace]) -> bool:
    """IoU or containment (a cut face inside the whole one) above :data:`MERGE_OVERLAP`."""
    if not kept:
        return False
    boxes = np.array([k.bbox for k in kept], np.float32).reshape(-1, 4)
    box = a.bbox.reshape(1, 4)
    inter = intersection_matrix(box, boxes)[0]
    area, areas = box_areas(box)[0], box_areas(boxes)
    iou = inter / np.maximum(area + areas - inter, 1e-6)
    smaller = np.maximum(np.minimum(areas, area), 1e-6)
    return bool(np.any(iou > MERGE_OVERLAP) or np.any(inter / smaller > 0.7))


def merge(groups: Sequence[Sequence[DetectedFace]]) -> list[DetectedFace]:
    """One detection per face across passes: earlier groups win (finer passes first, as
    their landmarks are more precise), then the higher score."""
    kept: list[DetectedFace] = []
    for group in groups:
        for face in sorted(group, key=lambda f: -f.score):
            if not _overlap(face, kept):
                kept.append(face)
    return kept


def is_precise(face: DetectedFace, cfg: RecognitionConfig) -> bool:
    """Whether a face's landmarks are good enough to align and embed."""
    if face.source is not FaceSource.COARSE:
        return True
    return face.score >= cfg.det_threshold and face.width >= cfg.refine_below_px


@dataclass
class Sweep:
    """A camera's full-resolution sweep: the next tile, and when the next sweep starts."""

    min_interval_s: float
    max_interval_s: float
    tiles: list[Region] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    cursor: int = 0
    interval_s: float = 0.0
    next_at: float = 0.0  # monotonic; 0: at once
    found: int = 0  # new faces found in the sweep under way
    completed: int = 0

    def due(self, now: float) -> bool:
        """A sweep is under way, or the next one may start."""
        return self.cursor > 0 or now >= self.next_at

    def next_tile(self, width: int, height: int) -> Region:
        """The tile to detect next (the grid follows the frame's size)."""
        if self.size != (width, height):
            self.size = (width, height)
            self.tiles = tile_grid(width, height, TILE_PX, TILE_OVERLAP_PX)
            self.cursor = 0
        return self.tiles[self.cursor]

    def advance(self, now: float, found_new: int, *, tiny_faces: bool = True) -> None:
        """One tile done; at the end of a sweep, choose when the next one starts.

        ``tiny_faces``: the camera has seen faces so small that the shrunk frame barely
        proposes them (under :data:`TINY_FACE_PX`); in a room without them, a sweep that
        found nobody new is followed by the longest pause at once.
        """
        self.cursor += 1
        self.found += found_new
        if self.cursor < len(self.tiles):
            return
        self.completed += 1
        if self.found:
            self.interval_s = self.min_interval_s
        elif not tiny_faces:
            self.interval_s = self.max_interval_s
        else:  # nobody new: the candidates see this room; pause longer each time
            previous = max(self.interval_s, self.min_interval_s * 2)
            self.interval_s = min(self.max_interval_s, previous * 2)
        self.next_at = now + self.interval_s
        self.cursor = 0
        self.found = 0


@dataclass
class CameraCoverage:
    """Per-camera coverage state: the sweep, and candidates recently rejected. Used by one
    analysis at a time (like the camera's tracker)."""

    sweep: Sweep
    rejected: list[tuple[Region, int]] = field(default_factory=list)  # region, until
    analyses: int = 0
    regions: int = 0  # regions re-detected so far
    tiny_faces: bool = False  # a face under TINY_FACE_PX was tracked on this camera

    @classmethod
    def for_config(cls, cfg: RecognitionConfig) -> CameraCoverage:
        """Coverage state with the configured sweep intervals."""
        return cls(Sweep(cfg.sweep_min_interval_s, cfg.sweep_max_interval_s))

    def was_rejected(self, bbox: FloatArray) -> bool:
        """A region check found no face here recently."""
        return centre_in(bbox, [region for region, _ in self.rejected])

    def reject(self, region: Region) -> None:
        """Remember an empty region check for :data:`REJECT_ANALYSES` analyses."""
        self.rejected.append((region, self.analyses + REJECT_ANALYSES))


@dataclass
class Detections:
    """What the detection passes of one analysis found."""

    faces: list[DetectedFace]
    regions: int = 0
    tiles: int = 0
    fine_seconds: float = 0.0
    searched: list[Region] = field(default_factory=list)  # where native resolution looked
    unrefined: set[int] = field(default_factory=set)  # ids of faces embedded unchecked


def _best_track(face: DetectedFace, tracks: Sequence[Track], iou: float) -> Track | None:
    if not tracks:
        return None
    overlap = iou_matrix(
        face.bbox.reshape(1, 4), np.array([t.face.bbox for t in tracks], np.float32)
    )[0]
    best = int(np.argmax(overlap))
    return tracks[best] if overlap[best] >= iou else None


def _region_scale(width: float) -> float:
    return min(2.0, max(1.0, REGION_FACE_PX / max(width, 1.0)))


class _Fine:
    """Runs native-resolution detections while the budget allows, timing each."""

    def __init__(
        self, engine: FaceEngine, image: Image, cfg: RecognitionConfig, budget: Budget | None
    ) -> None:
        self.engine, self.image, self.cfg, self.budget = engine, image, cfg, budget
        self.out = Detections([])

    def allowed(self, reserve: float = 0.0) -> bool:
        return self.budget is None or self.budget.available(reserve)

    def detect(self, region: Region, source: FaceSource, scale: float = 1.0) -> list[DetectedFace]:
        started = time.perf_counter()
        found = detect_in(
            self.engine,
            self.image,
            region,
            threshold=self.cfg.det_threshold,
            source=source,
            scale=scale,
        )
        spent = time.perf_counter() - started
        self.out.fine_seconds += spent
        self.out.searched.append(region)
        if self.budget is not None:
            self.budget.charge(spent)
        return found


@dataclass
class _Plan:
    """What the candidates say about this analysis: faces usable as they are, coarse
    boxes that keep settled tracks alive, and where to look again at native resolution
    (with the candidate when there is one)."""

    solid: list[DetectedFace] = field(default_factory=list)
    coasting: list[DetectedFace] = field(default_factory=list)
    todo: list[tuple[FloatArray, DetectedFace | None]] = field(default_factory=list)


def _plan(
    candidates: list[DetectedFace],
    tracker: FaceTracker,
    coverage: CameraCoverage,
    cfg: RecognitionConfig,
) -> _Plan:
    plan = _Plan()
    explained: set[int] = set()
    for cand in candidates:
        track = _best_track(cand, tracker.tracks, tracker.iou)
        if track is not None:
            explained.add(track.track_id)
        if is_precise(cand, cfg):
            plan.solid.append(cand)
        elif track is not None and not tracker.needs_embedding(track, ahead=1):
            plan.coasting.append(cand)  # settled: the coarse box keeps its track alive
        elif not coverage.was_rejected(cand.bbox):
            plan.todo.append((cand.bbox, cand))
    for track in tracker.tracks:  # small faces the shrunk frame lost this time
        if (
            track.track_id not in explained
            and track.face.width < cfg.refine_below_px
            and tracker.needs_embedding(track, ahead=1)
        ):
            plan.todo.append((track.face.bbox, None))
    return plan


def detect_frame(
    engine: FaceEngine,
    image: Image,
    tracker: FaceTracker,
    coverage: CameraCoverage,
    cfg: RecognitionConfig,
    *,
    budget: Budget | None,
    sweep: bool,
    max_regions: int = MAX_REGIONS,
    clock: Callable[[], float] = time.monotonic,
) -> Detections:
    """Run the three passes (candidates, regions, sweep tile) and merge them.

    ``max_regions`` caps the regions checked for faces that need an embedding (there is
    no point confirming more faces than can be embedded this analysis). Confident
    candidates of at least :data:`FALLBACK_MIN_PX` that could not be checked (budget
    spent) are used as they are, as before full-resolution coverage existed
    (``Detections.unrefined``).
    """
    coverage.analyses += 1
    coverage.rejected = [(r, u) for r, u in coverage.rejected if u > coverage.analyses]
    height, width = image.shape[:2]
    fine = _Fine(engine, image, cfg, budget)
    candidates = engine.detect(image, threshold=min(cfg.candidate_threshold, cfg.det_threshold))
    plan = _plan(candidates, tracker, coverage, cfg)
    regions: list[DetectedFace] = []
    unchecked: list[DetectedFace] = []
    for index, (bbox, cand) in enumerate(plan.todo):
        if index >= min(MAX_REGIONS, max_regions) or not fine.allowed():
            if cand is not None and cand.score >= cfg.det_threshold:
                unchecked.append(cand)
            continue
        region = region_around(bbox, width, height)
        found = fine.detect(region, FaceSource.REGION, _region_scale(float(bbox[2] - bbox[0])))
        fine.out.regions += 1
        if not found:
            coverage.reject(region)
        regions += found
    tile_faces: list[DetectedFace] = []
    if sweep and coverage.sweep.due(clock()) and fine.allowed(SWEEP_RESERVE):
        tile_faces = fine.detect(coverage.sweep.next_tile(width, height), FaceSource.TILE)
        fine.out.tiles = 1
    fallback = [f for f in unchecked if f.width >= FALLBACK_MIN_PX]
    merged = merge([regions, tile_faces, plan.solid, fallback, plan.coasting])
    fine.out.faces = [f for f in merged if f.width >= cfg.min_face_px]
    fine.out.unrefined = {id(f) for f in fallback}
    coverage.regions += fine.out.regions
    return fine.out


def looked_for(track: Track, detections: Detections, cfg: RecognitionConfig) -> bool:
    """Whether this analysis could have seen the track's face: a missed face counts as
    missed only where the detector looked at a scale able to see it."""
    return track.face.width >= cfg.refine_below_px or centre_in(
        track.face.bbox, detections.searched
    )
