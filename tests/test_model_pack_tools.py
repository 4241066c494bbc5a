"""Tools that make model files for the reload tests (and a check that they do)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.vision.modelpack import ModelPack, embedding_space_id, sha256_file


def perturbed_recognizer(src: Path, dest: Path, scale: float = 1e-3, seed: int = 0) -> Path:
    """The recognizer with small noise added to its largest weight tensor (another sha256,
    so another embedding space, nearly the same embeddings)."""
    model = onnx.load_model(str(src))
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(largest).astype(np.float32)
    noise = np.random.default_rng(seed).normal(0.0, float(weights.std()) * scale, weights.shape)
    largest.CopyFrom(numpy_helper.from_array((weights + noise).astype(np.float32), largest.name))
    onnx.save_model(model, str(dest))
    return dest


def wrong_size_recognizer(dest: Path, out_dim: int) -> Path:
    """A real ONNX graph with a recognizer's input and an ``out_dim`` output."""
    weight = helper.make_tensor(
        "w",
        TensorProto.FLOAT,
        [3 * 112 * 112, out_dim],
        np.full(3 * 112 * 112 * out_dim, 1e-3, np.float32).tolist(),
    )
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input.1"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["emb"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", out_dim])],
        [weight],
    )
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(dest)
    )
    return dest


def test_perturbed_recognizer_is_another_space(default_pack: ModelPack, tmp_path: Path) -> None:
    out = perturbed_recognizer(default_pack.recognizer_path, tmp_path / "r.onnx")
    assert embedding_space_id(sha256_file(out)) != default_pack.embedding_space
