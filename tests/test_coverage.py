"""Full-resolution coverage and weighted votes with the real models and real photos:
tiles and their seams, back-row faces on a 1080p frame, and tiny faces that must never
confirm a wrong student."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import AgentConfig, RecognitionConfig
from agent.devkit.classroom import Person, face_box_of, make_classroom_frames
from agent.vision.budget import FineBudget
from agent.vision.coverage import (
    TILE_OVERLAP_PX,
    CameraCoverage,
    Sweep,
    detect_frame,
    detect_in,
    merge,
    tile_grid,
)
from agent.vision.engine import FaceEngine
from agent.vision.evidence import vote_weight
from agent.vision.faces import DetectedFace, FaceSource
from agent.vision.matching import Roster
from agent.vision.recognition import analyse_frame
from agent.vision.tracker import FaceTracker

HD = (1920, 1080)


def tracker_for(cfg: RecognitionConfig, threshold: float = 0.4) -> FaceTracker:
    return FaceTracker.for_config(cfg, threshold)


def embedding(engine: FaceEngine, photo: Path) -> np.ndarray:
    faces = engine.analyze(cv2.imread(str(photo)))
    return max(faces, key=lambda f: f.area).embedding


def test_tiles_cover_the_frame_with_overlap() -> None:
    tiles = tile_grid(*HD, 704, TILE_OVERLAP_PX)
    assert len(tiles) == 6
    covered = np.zeros((HD[1], HD[0]), bool)
    for x1, y1, x2, y2 in tiles:
        assert x2 - x1 <= 704 and y2 - y1 <= 704
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    widths = tiles[0][2] - tiles[0][0]
    assert all(b - a <= widths - TILE_OVERLAP_PX for a, b in itertools.pairwise(xs))
    assert tile_grid(640, 480, 704, TILE_OVERLAP_PX) == [(0, 0, 640, 480)]


def test_a_face_cut_by_a_tile_seam_is_found_once(
    engine: FaceEngine, config: AgentConfig, tmp_path: Path, shared_faces: Path
) -> None:
    tiles = tile_grid(*HD, 704, TILE_OVERLAP_PX)
    seam = tiles[0][2]  # the first tile's right edge, inside the second tile
    photo = shared_faces / "fr_obama_1.jpg"
    # A 60 px face centred on the seam: the first tile sees half of it.
    person = Person("o", photo, 0, 1, (seam, 300), (0, 0), 60, face_box_of(photo, engine))
    plan = make_classroom_frames(tmp_path / "seam", [person], seconds=0.2, fps=5, size=HD)
    image = plan.image(0)
    (truth,) = plan.frames[0]
    threshold = config.recognition.det_threshold
    per_tile = [
        detect_in(engine, image, tile, threshold=threshold, source=FaceSource.TILE)
        for tile in tiles
    ]
    merged = merge([[f for faces in per_tile for f in faces]])
    cx, cy = truth.centre
    hits = [f for f in merged if f.bbox[0] <= cx <= f.bbox[2] and f.bbox[1] <= cy <= f.bbox[3]]
    assert len(hits) == 1, [f.bbox for f in merged]
    # The cut half in the first tile was dropped, not merged away by luck: the first
    # tile reports no face at the seam.
    assert not [f for f in per_tile[0] if f.bbox[2] > seam - 40]


def test_merge_keeps_the_finer_detection() -> None:
    kps = np.zeros((5, 2), np.float32)
    coarse = DetectedFace(np.array([100, 100, 124, 124], np.float32), 0.9, kps)
    fine = DetectedFace(np.array([102, 101, 122, 123], np.float32), 0.7, kps, FaceSource.REGION)
    other = DetectedFace(np.array([300, 100, 324, 124], np.float32), 0.6, kps)
    (first, second) = merge([[fine], [coarse, other]])
    assert first is fine and second is other


@pytest.fixture
def back_row(engine: FaceEngine, tmp_path: Path, shared_faces: Path) -> tuple[np.ndarray, list]:
    """A 1080p frame with six faces of 18-24 px along a back row."""
    photos = [
        "fr_obama_1.jpg",
        "fr_kit_harington_3.jpg",
        "fr_rose_leslie_1.jpg",
        "fr_alex_lacamoire_1.jpg",
        "fr_biden_1.jpg",
        "dlib_tom_cruise_1.jpg",
    ]
    people = [
        Person(
            name,
            shared_faces / name,
            0,
            1,
            (250 + 280 * i, 320),
            (0, 0),
            18 + 6 * (i % 2),
            face_box_of(shared_faces / name, engine),
        )
        for i, name in enumerate(photos)
    ]
    plan = make_classroom_frames(tmp_path / "back", people, seconds=0.2, fps=5, size=HD)
    return plan.image(0), plan.frames[0]


def test_back_row_faces_are_found_only_with_full_resolution_coverage(
    engine: FaceEngine, config: AgentConfig, back_row: tuple[np.ndarray, list]
) -> None:
    image, truth = back_row
    cfg = config.recognition

    def hits(faces: list[DetectedFace]) -> int:
        return sum(
            any(
                f.bbox[0] <= a.centre[0] <= f.bbox[2] and f.bbox[1] <= a.centre[1] <= f.bbox[3]
                for f in faces
            )
            for a in truth
        )

    shrunk = [f for f in engine.detect(image) if f.width >= 32]  # the old defaults
    assert hits(shrunk) == 0
    tracker = tracker_for(cfg)
    found = detect_frame(
        engine, image, tracker, CameraCoverage.for_config(cfg), cfg, budget=None, sweep=False
    )
    assert hits(found.faces) >= 5, found.faces
    assert found.regions >= 5 and found.fine_seconds > 0
    assert all(f.source is FaceSource.REGION for f in found.faces)


def test_small_or_blurred_faces_weigh_less(
    engine: FaceEngine, config: AgentConfig, back_row: tuple[np.ndarray, list]
) -> None:
    image, _ = back_row
    cfg = config.recognition
    found = detect_frame(
        engine,
        image,
        tracker_for(cfg),
        CameraCoverage.for_config(cfg),
        cfg,
        budget=None,
        sweep=False,
    ).faces
    face = min(found, key=lambda f: f.width)  # an 18 px face
    crop = engine.align(image, [face])[0]
    sharp = vote_weight(face, crop, cfg)
    blurred = vote_weight(face, cv2.GaussianBlur(crop, (0, 0), 2.0), cfg)
    assert 0 < blurred < sharp < 0.75  # an 18 px face: no instant confirmation
    wide = DetectedFace(
        np.array([0, 0, 96, 96], np.float32), face.score, face.kps, FaceSource.REGION
    )
    assert vote_weight(wide, crop, cfg) > sharp  # the same crop from a wider face


def test_weak_tiny_matches_never_confirm_a_wrong_student(
    engine: FaceEngine, config: AgentConfig, tmp_path: Path, shared_faces: Path
) -> None:
    """A stranger and a hardly recognisable student at 16-18 px, analysed 25 times with
    the real models: no wrong student is ever confirmed."""
    cfg = config.recognition
    stranger = shared_faces / "dlib_tom_cruise_1.jpg"
    biden = shared_faces / "fr_biden_1.jpg"
    people = [
        Person("tom", stranger, 0, 9, (600, 300), (1.0, 0), 16, face_box_of(stranger, engine)),
        Person("biden", biden, 0, 9, (1300, 300), (-1.0, 0), 18, face_box_of(biden, engine)),
    ]
    plan = make_classroom_frames(tmp_path / "weak", people, seconds=5, fps=5, size=HD)
    names = ["obama", "biden", "kit", "rose"]
    photos = ["fr_obama_2.jpg", "fr_biden_2.jpg", "fr_kit_harington_1.jpeg", "fr_rose_leslie_2.jpg"]
    roster = Roster(names, [embedding(engine, shared_faces / p) for p in photos])
    tracker = tracker_for(cfg)
    coverage = CameraCoverage.for_config(cfg)
    confirmed: set[str] = set()
    examined: set[str] = set()
    for index in range(plan.n_frames):
        result = analyse_frame(
            engine,
            plan.image(index),
            tracker,
            roster,
            cfg,
            cfg.match_threshold,
            coverage=coverage,
            fine=FineBudget(1.0),
            sweep=True,
        )
        confirmed |= {s.student_id for s in result.sightings}
        examined |= {s for s, _ in result.near} | confirmed
        # Whatever the tiny faces came close to, none of it was a confident match.
        assert all(score < cfg.match_threshold + cfg.small_face_margin for _, score in result.near)
    assert confirmed <= {"biden"}
    assert "biden" in examined  # the back-row face was found and matched, not skipped


def test_sweeps_pause_longer_while_they_find_nobody_new() -> None:
    sweep = Sweep(min_interval_s=5.0, max_interval_s=60.0)
    assert sweep.due(0.0)
    pauses = []
    now = 0.0
    for found in (0, 0, 0, 0, 1, 0):
        for index in range(6):  # one tile per analysis; 1080p has six
            assert sweep.next_tile(*HD) == sweep.tiles[index]
            sweep.advance(now, found if index == 2 else 0)
            if index < 5:
                assert sweep.due(now)  # a sweep under way continues
        pauses.append(sweep.next_at - now)
        assert not sweep.due(now)
        now = sweep.next_at
    assert pauses == [20.0, 40.0, 60.0, 60.0, 5.0, 20.0]
    assert sweep.completed == 6


def test_the_full_resolution_budget_is_shared_and_can_be_off() -> None:
    budget = FineBudget(0.25)
    assert budget.available() and budget.available(reserve=0.5)
    budget.charge(0.2)  # most of what may be saved up
    assert budget.available() and not budget.available(reserve=0.5)
    budget.charge(0.5)  # a detection may overdraw; then nothing starts until repaid
    assert not budget.available()
    assert not FineBudget(0.0).available()


def test_a_room_without_tiny_faces_is_swept_rarely() -> None:
    sweep = Sweep(min_interval_s=5.0, max_interval_s=60.0)
    for _ in range(6):
        sweep.next_tile(*HD)
        sweep.advance(100.0, 0, tiny_faces=False)
    assert sweep.next_at == 160.0


def test_with_the_budget_spent_confident_faces_are_used_as_before(
    engine: FaceEngine, config: AgentConfig, tmp_path: Path, shared_faces: Path
) -> None:
    """No full-resolution detection left: a confident 44 px face is still embedded from
    the shrunk frame's landmarks (the behaviour before coverage); an 18 px one waits."""
    cfg = config.recognition
    obama, kit = shared_faces / "fr_obama_1.jpg", shared_faces / "fr_kit_harington_3.jpg"
    people = [
        Person("o", obama, 0, 1, (500, 400), (0, 0), 44, face_box_of(obama, engine)),
        Person("k", kit, 0, 1, (1200, 400), (0, 0), 18, face_box_of(kit, engine)),
    ]
    image = make_classroom_frames(tmp_path / "f", people, seconds=0.2, fps=5, size=HD).image(0)
    roster = Roster(["obama"], [embedding(engine, shared_faces / "fr_obama_2.jpg")])
    result = analyse_frame(
        engine,
        image,
        tracker_for(cfg),
        roster,
        cfg,
        cfg.match_threshold,
        coverage=CameraCoverage.for_config(cfg),
        fine=FineBudget(0.0),
        sweep=True,
    )
    assert (result.regions, result.tiles, result.fine_seconds) == (0, 0, 0.0)
    assert result.embedded == 1
