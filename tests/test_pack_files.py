"""Pack files on real ONNX files: the engine loads exactly the bytes that were hashed (a
file swapped after verification is refused, not loaded unchecked), and a manifest cannot
name a file outside its pack folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnx
import pytest

from agent.config import AgentConfig
from agent.errors import ModelPackError
from agent.vision.engine import FaceEngine
from agent.vision.modelpack import MANIFEST_NAME, ModelPack, read_pack


def _copy_pack(src: ModelPack, dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copyfile(src.detector_path, dest / src.detector_path.name)
    shutil.copyfile(src.recognizer_path, dest / src.recognizer_path.name)
    shutil.copyfile(src.path / MANIFEST_NAME, dest / MANIFEST_NAME)
    return dest


def _other_recognizer(src: Path, dest: Path) -> None:
    """A valid recognizer with other bytes (same graph, another doc string)."""
    model = onnx.load_model(str(src))
    model.doc_string = "another build of the same recognizer"
    onnx.save_model(model, str(dest))


def test_a_file_swapped_after_verification_is_refused(
    default_pack: ModelPack, config: AgentConfig, tmp_path: Path
) -> None:
    folder = _copy_pack(default_pack, tmp_path / "p")
    pack = read_pack(folder)
    # Between the hash and the load, the recognizer is replaced by a loadable file.
    swapped = tmp_path / "swapped.onnx"
    _other_recognizer(default_pack.recognizer_path, swapped)
    os.replace(swapped, pack.recognizer_path)
    with pytest.raises(ModelPackError, match="changed after it was verified") as caught:
        FaceEngine(pack, config.models, config.recognition)
    assert caught.value.pack == "buffalo_sc"
    # The unswapped pack loads and works from the same kind of in-memory bytes.
    shutil.copyfile(default_pack.recognizer_path, pack.recognizer_path)
    engine = FaceEngine(pack, config.models, config.recognition)
    assert engine.embedding_space == default_pack.embedding_space


@pytest.mark.parametrize("outside", ["../rec.onnx", "ABSOLUTE", "link.onnx"])
def test_manifest_names_outside_the_pack_are_refused(
    default_pack: ModelPack, tmp_path: Path, outside: str
) -> None:
    folder = _copy_pack(default_pack, tmp_path / "p")
    # A real, matching recognizer sits outside the folder: only the name is wrong.
    escaped = tmp_path / "rec.onnx"
    shutil.copyfile(default_pack.recognizer_path, escaped)
    (folder / default_pack.recognizer_path.name).unlink()
    if outside == "ABSOLUTE":
        outside = str(escaped)
    elif outside == "link.onnx":
        (folder / "link.onnx").symlink_to(escaped)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["recognizer"]["file"] = outside
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackError, match="is outside the pack folder"):
        read_pack(folder)
