"""Extended checks on ../shared/faces: reference reproduction and identification."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.vision.engine import Face, FaceEngine
from agent.vision.matching import Roster


def _largest(engine: FaceEngine, path: Path) -> Face:
    faces = engine.analyze(cv2.imread(str(path), cv2.IMREAD_COLOR))
    assert faces, f"no face in {path.name}"
    return max(faces, key=lambda f: f.area)


def test_reproduces_reference_embeddings(engine: FaceEngine, shared_faces: Path) -> None:
    ref = np.load(shared_faces / "embeddings_buffalo_sc.npz")
    cosines = {}
    for name, expected in zip(ref["files"], ref["emb"], strict=True):
        cosines[str(name)] = float(_largest(engine, shared_faces / str(name)).embedding @ expected)
    assert len(cosines) == 33
    low = {k: round(v, 4) for k, v in cosines.items() if v <= 0.99}
    assert not low, f"embeddings differ from the reference pipeline: {low}"


def test_identifies_every_single_face_photo(engine: FaceEngine, shared_faces: Path) -> None:
    with (shared_faces / "manifest.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["n_faces_expected"] == "1"]
    embeddings = {r["file"]: _largest(engine, shared_faces / r["file"]).embedding for r in rows}
    identity = {r["file"]: r["identity"] for r in rows}
    cfg = engine.recognition
    wrong = []
    for probe in rows:
        # Leave the probe out; every other photo enrolls its identity.
        gallery: dict[str, list[np.ndarray]] = {}
        for other in rows:
            if other["file"] != probe["file"]:
                gallery.setdefault(other["identity"], []).append(embeddings[other["file"]])
        roster = Roster(list(gallery), [np.stack(v) for v in gallery.values()])
        (match,) = roster.match(embeddings[probe["file"]][None, :])
        known = probe["identity"] in gallery
        got = match.student_id if match.accepted(cfg.match_threshold, cfg.match_margin) else None
        if got != (probe["identity"] if known else None):
            wrong.append((probe["file"], identity[probe["file"]], got, round(match.score, 3)))
    assert not wrong, f"misidentified: {wrong}"


@pytest.mark.parametrize("kind", ["single", "multi", "none"])
def test_face_counts_match_manifest(engine: FaceEngine, shared_faces: Path, kind: str) -> None:
    with (shared_faces / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        expected = int(row["n_faces_expected"])
        if {"single": expected == 1, "multi": expected > 1, "none": expected == 0}[kind]:
            found = len(
                engine.detect(cv2.imread(str(shared_faces / row["file"]), cv2.IMREAD_COLOR))
            )
            if row["file"] == "noface_dlib_dogs.jpg":
                continue  # known SCRFD-500MF false positive (README of the photo set)
            assert found >= expected if kind == "multi" else found == expected, row["file"]
