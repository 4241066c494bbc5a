"""A light IoU tracker: follows faces across analyses so each is embedded once (or when its
match is still uncertain), and so k-of-n confirmation counts the same face."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agent.vision.faces import DetectedFace, FloatArray

if TYPE_CHECKING:  # typing only: the tracker reads a few numbers of it
    from agent.config import RecognitionConfig


def intersection_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """Intersection area of every box in ``a`` (N x 4) with every box in ``b`` (M x 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter: FloatArray = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter


def box_areas(boxes: FloatArray) -> FloatArray:
    """Area of every box (N x 4)."""
    areas: FloatArray = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return areas


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of every box in ``a`` (N x 4) with every box in ``b`` (M x 4)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    inter = intersection_matrix(a, b)
    union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
    result: FloatArray = (inter / np.maximum(union, 1e-6)).astype(np.float32)
    return result


MIN_WEIGHT = 0.125  # the least a vote can weigh (agent.vision.evidence); sizes the vote history


@dataclass
class Track:
    """One face followed across analyses."""

    track_id: int
    face: DetectedFace
    votes: deque[str | None]
    best_scores: dict[str, float] = field(default_factory=dict)
    best_any: float = -1.0  # best match score seen, accepted or not
    missed: int = 0
    since_embed: int = 0
    confirmed: str | None = None  # student id once k of the last n votes agree
    weights: deque[float] = field(default_factory=deque)  # one per vote (agent.vision.evidence)
    n: int = 0  # the window, in full-weight votes (0: the votes deque's length)

    def _window(self) -> list[tuple[str | None, float]]:
        """The latest votes whose weights add up to at most n (at least the last one)."""
        limit = self.n or (self.votes.maxlen or len(self.votes))
        weights = (
            list(self.weights) if len(self.weights) == len(self.votes) else [1.0] * len(self.votes)
        )
        out: list[tuple[str | None, float]] = []
        total = 0.0
        for vote, weight in zip(reversed(self.votes), reversed(weights), strict=True):
            if out and total + weight > limit + 1e-9:
                break
            out.append((vote, weight))
            total += weight
        return out

    def weight_for(self, student_id: str) -> float:
        """The weight of the student's votes within the window."""
        return sum(w for v, w in self._window() if v == student_id)

    def vote(
        self,
        student_id: str | None,
        score: float,
        k: int,
        instant: float = 2.0,
        *,
        weight: float = 1.0,
        instant_weight: float = 0.0,
    ) -> str | None:
        """Record one match result; returns the student id when newly confirmed.

        Confirmed when the student's votes among the latest (whose weights add up to at
        most n) weigh at least k, or at once for one match of at least ``instant`` (far
        above any score two different people reach) from a face of at least
        ``instant_weight``. With every weight 1 this is k of the last n votes; a vote from
        a small or blurred face weighs less, so it takes more of them (agent.vision.evidence).
        """
        weight = min(1.0, max(MIN_WEIGHT, weight))
        self.votes.append(student_id)
        self.weights.append(weight)
        self.since_embed = 0
        self.best_any = max(self.best_any, score)
        if student_id is not None:
            self.best_scores[student_id] = max(score, self.best_scores.get(student_id, -1.0))
        if student_id is not None and (
            self.weight_for(student_id) >= k - 1e-9
            or (score >= instant and weight >= instant_weight)
        ):
            newly = self.confirmed != student_id
            self.confirmed = student_id
            return student_id if newly else None
        if self.confirmed is not None and self.weight_for(self.confirmed) == 0:
            self.confirmed = None  # the face no longer matches: it was a tracker swap
        return None


class FaceTracker:
    """Greedy IoU association of this analysis's faces with the previous tracks."""

    def __init__(
        self,
        *,
        iou: float,
        max_missed: int,
        n: int,
        reembed_every: int,
        recheck_every: int | None = None,
        stranger_below: float = 1.0,
    ) -> None:
        self.iou = iou
        self.recheck_every = reembed_every if recheck_every is None else recheck_every
        self.stranger_below = stranger_below
        self.max_missed = max_missed
        self.n = n
        self.reembed_every = reembed_every
        self.tracks: list[Track] = []
        self.next_id = 1  # the id the next new track gets

    @classmethod
    def for_config(cls, cfg: RecognitionConfig, threshold: float) -> FaceTracker:
        """The tracker of a camera in a session matching at ``threshold``: faces closer to
        every student than ``threshold - stranger_margin`` settle as strangers."""
        return cls(
            iou=cfg.track_iou,
            max_missed=cfg.track_max_missed,
            n=cfg.confirm_n,
            reembed_every=cfg.reembed_every,
            recheck_every=cfg.recheck_every,
            stranger_below=threshold - cfg.stranger_margin,
        )

    def update(
        self, faces: list[DetectedFace], looked: Callable[[Track], bool] | None = None
    ) -> list[Track]:
        """Associate faces with tracks (new tracks for the rest); returns the live tracks
        that have a face in this analysis.

        A track without a face counts as missed only if ``looked(track)`` says this
        analysis could have seen it (a back-row face is found only where the detector
        looked at full resolution: agent.vision.coverage); default: everywhere.
        """
        boxes = np.array([f.bbox for f in faces], np.float32).reshape(-1, 4)
        previous = np.array([t.face.bbox for t in self.tracks], np.float32).reshape(-1, 4)
        overlap = iou_matrix(previous, boxes)
        matched_tracks: set[int] = set()
        matched_faces: dict[int, Track] = {}
        for flat in np.argsort(-overlap, axis=None):
            ti, fi = divmod(int(flat), max(1, overlap.shape[1]))
            if overlap.size == 0 or overlap[ti, fi] < self.iou:
                break
            if ti in matched_tracks or fi in matched_faces:
                continue
            matched_tracks.add(ti)
            matched_faces[fi] = self.tracks[ti]
        seen: list[Track] = []
        for fi, face in enumerate(faces):
            track = matched_faces.get(fi)
            if track is None:
                track = Track(
                    self.next_id,
                    face,
                    deque(maxlen=self.n * round(1 / MIN_WEIGHT)),
                    weights=deque(maxlen=self.n * round(1 / MIN_WEIGHT)),
                    n=self.n,
                )
                self.next_id += 1
                self.tracks.append(track)
            else:
                track.face = face
                track.missed = 0
                track.since_embed += 1
            seen.append(track)
        seen_ids = {t.track_id for t in seen}
        for track in self.tracks:
            if track.track_id not in seen_ids and (looked is None or looked(track)):
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return seen

    def settled(self, track: Track) -> bool:
        """Recognised as a student, or a stranger (a visitor, a teacher): n analyses in a
        row matching nobody, and never close (every score below ``stranger_below``). A
        face that came close (a small or blurred student) is not settled: it keeps being
        embedded until it is recognised."""
        recent = list(track.votes)[-self.n :]
        unknown = (
            len(recent) >= self.n
            and all(v is None for v in recent)
            and track.best_any < self.stranger_below
        )
        return track.confirmed is not None or unknown

    def needs_embedding(self, track: Track, ahead: int = 0) -> bool:
        """New and still-uncertain tracks every analysis; settled ones now and then
        (``ahead``: in that many analyses from now).

        Embedding settled tracks every time cost 71 % of a camera's recognizer work in the
        benchmark. A stranger's track is re-checked every ``reembed_every`` analyses, so a
        student who turns to the camera late is still found; a recognised one every
        ``recheck_every`` analyses, in case the tracker swapped two faces.
        """
        if not self.settled(track):
            return True
        every = self.recheck_every if track.confirmed is not None else self.reembed_every
        return track.since_embed + ahead >= every
