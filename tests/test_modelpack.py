"""Model packs on real files: manifests, hashes, shapes, selection, provider reporting."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import ModelPackError
from agent.vision.engine import FaceEngine
from agent.vision.modelpack import (
    MANIFEST_NAME,
    ModelPack,
    embedding_space_id,
    read_pack,
    select_pack,
    write_manifest,
)
from agent.vision.onnx_sessions import ProviderReport
from tests.test_model_pack_tools import wrong_size_recognizer


def _copy_pack(src: ModelPack, dest: Path, *, manifest: bool = True) -> Path:
    dest.mkdir(parents=True)
    shutil.copyfile(src.detector_path, dest / src.detector_path.name)
    shutil.copyfile(src.recognizer_path, dest / src.recognizer_path.name)
    if manifest:
        shutil.copyfile(src.path / MANIFEST_NAME, dest / MANIFEST_NAME)
    return dest


def test_default_pack_is_verified(default_pack: ModelPack) -> None:
    assert default_pack.name == "buffalo_sc"
    assert default_pack.embedding_dim == 512
    assert default_pack.embedding_space == embedding_space_id(default_pack.recognizer_sha256)
    assert default_pack.embedding_space == "arcface-9cc6e4a75f0e2bf0"
    assert not default_pack.manifest_computed


def test_pack_without_manifest_gets_one_computed(default_pack: ModelPack, tmp_path: Path) -> None:
    folder = _copy_pack(default_pack, tmp_path / "nomanifest", manifest=False)
    pack = read_pack(folder)
    assert pack.manifest_computed
    assert pack.embedding_space == default_pack.embedding_space
    write_manifest(pack)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    assert data["recognizer"]["sha256"] == default_pack.recognizer_sha256
    assert not read_pack(folder).manifest_computed


def test_hash_mismatch_is_rejected(default_pack: ModelPack, tmp_path: Path) -> None:
    folder = _copy_pack(default_pack, tmp_path / "p")
    with (folder / default_pack.detector_path.name).open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelPackError, match="sha256 of scrfd_500m_bnkps.onnx"):
        read_pack(folder)


def test_truncated_onnx_is_rejected(default_pack: ModelPack, tmp_path: Path) -> None:
    folder = _copy_pack(default_pack, tmp_path / "p", manifest=False)
    rec = folder / default_pack.recognizer_path.name
    rec.write_bytes(rec.read_bytes()[:1_000_000])
    with pytest.raises(ModelPackError, match="exactly one recognizer"):
        read_pack(folder)


def test_random_bytes_onnx_is_rejected(default_pack: ModelPack, tmp_path: Path) -> None:
    folder = _copy_pack(default_pack, tmp_path / "p", manifest=False)
    (folder / default_pack.detector_path.name).write_bytes(os.urandom(50_000))
    with pytest.raises(ModelPackError, match="not a readable ONNX file"):
        read_pack(folder)


def test_manifest_naming_a_missing_file(default_pack: ModelPack, tmp_path: Path) -> None:
    folder = _copy_pack(default_pack, tmp_path / "p")
    (folder / default_pack.recognizer_path.name).unlink()
    with pytest.raises(ModelPackError, match="recognizer file 'w600k_mbf.onnx' is missing"):
        read_pack(folder)


def test_invalid_manifest_json(default_pack: ModelPack, tmp_path: Path) -> None:
    folder = _copy_pack(default_pack, tmp_path / "p")
    (folder / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelPackError, match="manifest.json is invalid"):
        read_pack(folder)


def test_recognizer_with_wrong_output_size(default_pack: ModelPack, tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copyfile(default_pack.detector_path, folder / "det.onnx")
    wrong_size_recognizer(folder / "rec.onnx", 8)
    manifest = {
        "name": "p",
        "detector": {"file": "det.onnx"},
        "recognizer": {"file": "rec.onnx"},
        "embeddingDim": 512,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackError, match="embeddingDim 512, recognizer outputs 8"):
        read_pack(folder)


def test_two_detectors_and_no_recognizer(default_pack: ModelPack, tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copyfile(default_pack.detector_path, folder / "a.onnx")
    shutil.copyfile(default_pack.detector_path, folder / "b.onnx")
    with pytest.raises(ModelPackError, match="exactly one detector ONNX file, found 2"):
        read_pack(folder)


def test_select_pack_rules(default_pack: ModelPack, tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match="no model pack folder"):
        select_pack(tmp_path, "")
    _copy_pack(default_pack, tmp_path / "old")
    broken = _copy_pack(default_pack, tmp_path / "new")
    (broken / default_pack.recognizer_path.name).write_bytes(b"broken")
    os.utime(tmp_path / "old", (1, 1))
    # The newest folder is broken: the newest *valid* one is chosen.
    assert select_pack(tmp_path, "").path.name == "old"
    with pytest.raises(ModelPackError):
        select_pack(tmp_path, "new")
    with pytest.raises(ModelPackError, match="does not exist"):
        select_pack(tmp_path, "missing")


def test_engine_reports_providers(engine: FaceEngine) -> None:
    assert engine.providers["recognizer"].active[0] == "CPUExecutionProvider"
    assert engine.provider_warnings() == []
    assert engine.describe().embedding_space == engine.embedding_space


def test_degraded_provider_is_a_warning() -> None:
    report = ProviderReport(
        requested=("CUDAExecutionProvider", "CPUExecutionProvider"),
        active=("CPUExecutionProvider",),
    )
    assert report.degraded
    assert report.warning() == "requested CUDAExecutionProvider, running on CPUExecutionProvider"


def test_unavailable_provider_falls_back_and_warns(
    default_pack: ModelPack, config: AgentConfig, caplog: pytest.LogCaptureFixture
) -> None:
    models = config.models.model_copy(update={"providers": ("CUDAExecutionProvider",)})
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: nothing falls back")
    engine = FaceEngine(default_pack, models, config.recognition)
    assert engine.provider_warnings() == [
        "detector: requested CUDAExecutionProvider, running on CPUExecutionProvider",
        "recognizer: requested CUDAExecutionProvider, running on CPUExecutionProvider",
    ]
    assert "ONNX_PROVIDER_UNAVAILABLE" in caplog.text
