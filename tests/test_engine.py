"""The engine on real models and real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from agent.config import AgentConfig
from agent.vision.engine import FaceEngine, detector_input_size
from agent.vision.matching import Roster
from agent.vision.modelpack import ModelPack
from agent.vision.onnx_sessions import rewrite_prelu_as_max


@pytest.mark.parametrize(
    ("size", "long_side", "expected"),
    [
        ((1280, 720), 640, (640, 384)),
        ((1920, 1080), 640, (640, 384)),
        ((640, 640), 640, (640, 640)),
        ((480, 640), 640, (480, 640)),
        ((4000, 100), 640, (640, 32)),
    ],
)
def test_detector_input_keeps_aspect(
    size: tuple[int, int], long_side: int, expected: tuple[int, int]
) -> None:
    assert detector_input_size(*size, long_side) == expected


def test_t1_has_six_faces(engine: FaceEngine, photos: dict[str, Path]) -> None:
    faces = engine.analyze(cv2.imread(str(photos["t1.jpg"])))
    assert len(faces) == 6
    for face in faces:
        assert face.embedding.shape == (512,)
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.kps.shape == (5, 2)


def test_players_has_22_faces(engine: FaceEngine, photos: dict[str, Path]) -> None:
    assert len(engine.detect(cv2.imread(str(photos["players.jpg"])))) == 22


def test_yao_ming_found_in_team_photo_and_nobody_else(
    engine: FaceEngine, photos: dict[str, Path]
) -> None:
    portrait = engine.analyze(cv2.imread(str(photos["yaoming.jpg"])))
    assert len(portrait) == 1
    team = engine.analyze(cv2.imread(str(photos["players.jpg"])))
    roster = Roster(["yao"], [portrait[0].embedding[None, :]])
    matches = roster.match(np.stack([f.embedding for f in team]))
    cfg = engine.recognition
    accepted = [m for m in matches if m.accepted(cfg.match_threshold, cfg.match_margin)]
    assert len(accepted) == 1
    assert accepted[0].score > 0.55
    others = sorted(m.score for m in matches)[:-1]
    assert max(others) < 0.25


def test_batch_embedding_equals_one_by_one(engine: FaceEngine, photos: dict[str, Path]) -> None:
    image = cv2.imread(str(photos["t1.jpg"]))
    crops = engine.align(image, engine.detect(image))
    batch = engine.embed(crops)
    single = np.concatenate([engine.embed([c]) for c in crops])
    np.testing.assert_allclose(batch, single, atol=1e-4)


def test_prelu_rewrite_is_exact(
    default_pack: ModelPack, config: AgentConfig, photos: dict[str, Path]
) -> None:
    model = onnx.load_model(str(default_pack.recognizer_path))
    assert rewrite_prelu_as_max(model) > 0
    assert not any(n.op_type == "PRelu" for n in model.graph.node)
    plain = FaceEngine(
        default_pack, config.models.model_copy(update={"optimize_prelu": False}), config.recognition
    )
    fast = FaceEngine(default_pack, config.models, config.recognition)
    image = cv2.imread(str(photos["t1.jpg"]))
    crops = plain.align(image, plain.detect(image))
    np.testing.assert_allclose(plain.embed(crops), fast.embed(crops), atol=1e-5)


def test_prelu_with_slope_above_one_is_left_alone() -> None:
    from onnx import TensorProto, helper

    slope = helper.make_tensor("a", TensorProto.FLOAT, [1], [1.5])
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "a"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [slope],
    )
    model = helper.make_model(graph)
    assert rewrite_prelu_as_max(model) == 0
    assert [n.op_type for n in model.graph.node] == ["PRelu"]


def test_empty_frame_has_no_faces(engine: FaceEngine) -> None:
    assert engine.analyze(np.zeros((720, 1280, 3), np.uint8)) == []
