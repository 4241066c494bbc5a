"""Model packs that pass the file checks but fail to load: real ONNX files, real ONNX
Runtime, the real watcher (and once the real agent over MQTT).

Each bad pack is a copy of ``models/buffalo_sc`` with one file damaged and a manifest whose
sha256 values match the damaged files, so verification passes and the failure happens
where ONNX Runtime (or the ``onnx`` library) reads the graph.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

from agent.config import AgentConfig
from agent.devkit.brokers import Mosquitto
from agent.errors import ModelNotLoadedError, ModelPackError
from agent.vision.engine import FaceEngine
from agent.vision.inference import InferencePool, ModelSlot
from agent.vision.model_watch import ModelWatcher
from agent.vision.modelpack import (
    MANIFEST_NAME,
    ManifestFile,
    ModelPack,
    PackManifest,
    read_pack,
    sha256_file,
)
from tests.agent_harness import agent_config, backend, running_agent
from tests.waiting import wait_until

DETECTOR = "scrfd_500m_bnkps.onnx"
RECOGNIZER = "w600k_mbf.onnx"
SETTLE_S = 0.3
REASON_LIMIT = 400  # the library's text is cut to ~300 characters, plus our sentence


# Bad packs ------------------------------------------------------------------------------


def write_matching_manifest(folder: Path) -> None:
    """A manifest in the project's format whose hashes match the files as they are."""
    manifest = PackManifest(
        name=folder.name,
        detector=ManifestFile(file=DETECTOR, sha256=sha256_file(folder / DETECTOR)),
        recognizer=ManifestFile(file=RECOGNIZER, sha256=sha256_file(folder / RECOGNIZER)),
        embedding_dim=512,
    )
    text = manifest.model_dump_json(by_alias=True, exclude_none=True, indent=2)
    (folder / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")


def copy_real_pack(default_pack: ModelPack, dest: Path) -> Path:
    """The real buffalo_sc files in ``dest`` (manifest not written yet)."""
    dest.mkdir(parents=True)
    shutil.copyfile(default_pack.detector_path, dest / DETECTOR)
    shutil.copyfile(default_pack.recognizer_path, dest / RECOGNIZER)
    return dest


def garbage_detector(folder: Path) -> None:
    """(a) The detector file replaced by random bytes."""
    (folder / DETECTOR).write_bytes(np.random.default_rng(7).bytes(300_000))


def garbage_weights_detector(folder: Path) -> None:
    """(a') Garbage bytes in place of the detector's largest weight tensor: the protobuf
    still parses (so the pack passes the reader), ONNX Runtime refuses the tensor."""
    model = onnx.load_model(str(folder / DETECTOR))
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    largest.ClearField("float_data")
    largest.raw_data = b"garbage"
    onnx.save_model(model, str(folder / DETECTOR))


def unknown_op_detector(folder: Path) -> None:
    """(b) The detector's first node replaced by an op ONNX Runtime has never heard of."""
    model = onnx.load_model(str(folder / DETECTOR))
    first = model.graph.node[0]
    model.graph.node[0].CopyFrom(
        helper.make_node("FaceMagic", list(first.input), list(first.output), name="magic")
    )
    onnx.save_model(model, str(folder / DETECTOR))


def unknown_domain_detector(folder: Path) -> None:
    """(b') The detector's first node moved to an operator domain nobody registered."""
    model = onnx.load_model(str(folder / DETECTOR))
    first = model.graph.node[0]
    model.graph.node[0].CopyFrom(
        helper.make_node(
            first.op_type,
            list(first.input),
            list(first.output),
            name=first.name,
            domain="com.example.unknown",
        )
    )
    model.opset_import.append(helper.make_opsetid("com.example.unknown", 1))
    onnx.save_model(model, str(folder / DETECTOR))


def truncated_recognizer(folder: Path) -> None:
    """(c) The recognizer cut right after its graph: still a well-formed protobuf with the
    right inputs and outputs, but the opset list that followed the graph is gone."""
    path = folder / RECOGNIZER
    data = path.read_bytes()
    head = onnx.load_model_from_string(data)
    graph_field = head.DESCRIPTOR.fields_by_name["graph"].number
    for descriptor, _ in head.ListFields():
        if descriptor.number > graph_field:
            head.ClearField(descriptor.name)
    prefix = head.SerializeToString()
    assert data.startswith(prefix) and len(prefix) < len(data), "not a prefix: cannot truncate"
    path.write_bytes(data[: len(prefix)])


@dataclass(frozen=True)
class Damage:
    """One way of breaking a pack, and what its failure reason must say."""

    damage: Callable[[Path], None]
    expect: tuple[str, ...]


DAMAGES = {
    "garbage-detector": Damage(garbage_detector, (DETECTOR, "not a readable ONNX file")),
    "garbage-weights-detector": Damage(
        garbage_weights_detector, (DETECTOR, "ONNX Runtime could not load", "raw_data size")
    ),
    "unknown-op-detector": Damage(
        unknown_op_detector, (DETECTOR, "INVALID_GRAPH", "No Op registered for FaceMagic")
    ),
    "unknown-domain-detector": Damage(
        unknown_domain_detector, (DETECTOR, "com.example.unknown", "not a registered")
    ),
    "truncated-recognizer": Damage(truncated_recognizer, (RECOGNIZER, "Missing opset")),
}
# The kinds that get past the pack reader and fail inside ONNX Runtime.
LOAD_FAILURES = [k for k in DAMAGES if k != "garbage-detector"]


def make_pack(default_pack: ModelPack, dest: Path, kind: str | None = None) -> Path:
    """A pack folder ``dest``: the real pack, damaged as ``kind`` says (None: intact)."""
    copy_real_pack(default_pack, dest)
    if kind is not None:
        DAMAGES[kind].damage(dest)
    write_matching_manifest(dest)
    return dest


def drop_in(staging: Path, dest: Path) -> None:
    """Copy a staged pack into the models folder as a technician would, manifest last
    (the folder gets the current time, so it is the newest)."""
    dest.mkdir()
    for file in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST_NAME):
        shutil.copyfile(file, dest / file.name)


def assert_reason(text: str | None, pack: str, kind: str) -> None:
    """``text`` names the pack and says what the library reported, briefly."""
    assert text is not None
    assert pack in text, text
    for fragment in DAMAGES[kind].expect:
        assert fragment in text, text
    assert "onnxruntime_src" not in text, text  # C++ source locations are noise
    assert len(text) < REASON_LIMIT + len(pack) + 40, text


# Fixtures -------------------------------------------------------------------------------


@pytest.fixture
def pool() -> Iterator[InferencePool]:
    """The agent's inference pool (its threads are stopped afterwards)."""
    workers = InferencePool(2)
    yield workers
    workers.close()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """An empty models folder."""
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def good_old_pack(default_pack: ModelPack, models_dir: Path) -> Path:
    """The intact pack ``pack-a``, older than anything a test adds."""
    folder = make_pack(default_pack, models_dir / "pack-a")
    os.utime(folder, (1, 1))
    return folder


def watcher_for(
    config: AgentConfig, models_dir: Path, pool: InferencePool, *, pack: str = ""
) -> tuple[ModelWatcher, ModelSlot]:
    """A real watcher on ``models_dir`` with the default settings."""
    models = config.models.model_copy(
        update={"dir": models_dir, "pack": pack, "settle_s": SETTLE_S}
    )
    slot = ModelSlot()
    return ModelWatcher(models, config.recognition, slot, pool), slot


# The engine boundary --------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOAD_FAILURES)
def test_engine_raises_model_pack_error(
    tmp_path: Path, default_pack: ModelPack, config: AgentConfig, kind: str
) -> None:
    pack = read_pack(make_pack(default_pack, tmp_path / "bad", kind))  # verification passes
    with pytest.raises(ModelPackError) as caught:
        FaceEngine(pack, config.models, config.recognition)
    assert caught.value.pack == "bad"
    assert_reason(caught.value.message, "bad", kind)
    cause = caught.value.__cause__
    assert cause is not None and type(cause).__module__.startswith("onnxruntime"), repr(cause)


# Reloads while a good pack serves -------------------------------------------------------


@pytest.mark.parametrize("kind", LOAD_FAILURES)
async def test_bad_pack_rejected_while_good_pack_serves(
    default_pack: ModelPack,
    config: AgentConfig,
    models_dir: Path,
    pool: InferencePool,
    kind: str,
) -> None:
    good_old_pack(default_pack, models_dir)
    watcher, slot = watcher_for(config, models_dir, pool)
    assert await watcher.reload()
    serving = slot.require()
    make_pack(default_pack, models_dir / "pack-b", kind)

    assert await watcher.reload() is False

    assert slot.require() is serving and serving.pack.name == "pack-a"
    assert slot.reload_error is not None and slot.reload_error.startswith("pack-b: ")
    assert_reason(slot.reload_error, "pack-b", kind)
    assert watcher.failures == 1
    assert watcher.describe().last_error == slot.reload_error


async def test_unexpected_error_in_build_is_a_failed_reload(
    default_pack: ModelPack,
    config: AgentConfig,
    models_dir: Path,
    pool: InferencePool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class SurprisingWatcher(ModelWatcher):
        """Its build of pack-b fails with an error no layer below translates."""

        def _build(self, pack: ModelPack) -> FaceEngine:
            if pack.name == "pack-b":
                raise KeyError("a library surprise")
            return super()._build(pack)

    good_old_pack(default_pack, models_dir)
    models = config.models.model_copy(update={"dir": models_dir, "settle_s": SETTLE_S})
    slot = ModelSlot()
    watcher = SurprisingWatcher(models, config.recognition, slot, pool)
    assert await watcher.reload()
    make_pack(default_pack, models_dir / "pack-b")

    with caplog.at_level(logging.ERROR, logger="agent.vision.model_watch"):
        assert await watcher.reload() is False

    assert slot.require().pack.name == "pack-a"
    assert slot.reload_error is not None
    assert "pack-b" in slot.reload_error and "KeyError" in slot.reload_error
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert logged and "pack-b" in logged[0].getMessage()  # with its traceback


async def test_watcher_survives_bad_pack_and_loads_a_later_valid_one(
    tmp_path: Path,
    default_pack: ModelPack,
    config: AgentConfig,
    models_dir: Path,
    pool: InferencePool,
) -> None:
    good_old_pack(default_pack, models_dir)
    bad = make_pack(default_pack, tmp_path / "staging" / "pack-b", "unknown-op-detector")
    valid = make_pack(default_pack, tmp_path / "staging" / "pack-c")
    watcher, slot = watcher_for(config, models_dir, pool)
    assert await watcher.reload()
    task = asyncio.create_task(watcher.run(), name="model-watcher")
    try:
        await asyncio.sleep(0.1)  # the observer is watching
        drop_in(bad, models_dir / "pack-b")
        await wait_until(lambda: watcher.failures >= 1 or task.done(), 20)
        await asyncio.sleep(SETTLE_S * 2)  # a crashed watcher would show by now
        assert not task.done(), task
        assert slot.require().pack.name == "pack-a"
        assert_reason(slot.reload_error, "pack-b", "unknown-op-detector")

        drop_in(valid, models_dir / "pack-c")
        await wait_until(
            lambda: task.done() or (slot.engine is not None and slot.engine.pack.name == "pack-c"),
            20,
        )
        assert not task.done(), task
        assert slot.require().pack.name == "pack-c"
        assert slot.reload_error is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()  # cancellation is not swallowed


# Start-up -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DAMAGES))
async def test_start_falls_back_to_older_good_pack(
    default_pack: ModelPack,
    config: AgentConfig,
    models_dir: Path,
    pool: InferencePool,
    kind: str,
) -> None:
    good_old_pack(default_pack, models_dir)
    make_pack(default_pack, models_dir / "pack-b", kind)  # the newest folder

    watcher, slot = watcher_for(config, models_dir, pool)
    assert await watcher.reload() is True

    assert slot.require().pack.name == "pack-a"
    assert_reason(slot.reload_error, "pack-b", kind)
    assert slot.describe().reload_error == slot.reload_error
    assert watcher.failures == 1


async def test_fallback_skips_every_bad_pack_and_a_fixed_pack_is_loaded_later(
    default_pack: ModelPack,
    config: AgentConfig,
    models_dir: Path,
    pool: InferencePool,
) -> None:
    good_old_pack(default_pack, models_dir)
    middle = make_pack(default_pack, models_dir / "pack-b", "truncated-recognizer")
    os.utime(middle, (2, 2))
    newest = make_pack(default_pack, models_dir / "pack-c", "unknown-domain-detector")
    watcher, slot = watcher_for(config, models_dir, pool)

    assert await watcher.reload() is True
    assert slot.require().pack.name == "pack-a"
    assert_reason(slot.reload_error, "pack-c", "unknown-domain-detector")

    # The technician fixes the newest pack in place: it is evaluated again.
    shutil.copyfile(default_pack.detector_path, newest / DETECTOR)
    write_matching_manifest(newest)
    assert await watcher.reload() is True
    assert slot.require().pack.name == "pack-c"
    assert slot.reload_error is None


@pytest.mark.parametrize("kind", ["unknown-op-detector", "truncated-recognizer"])
async def test_start_with_only_bad_packs_runs_without_model(
    default_pack: ModelPack,
    config: AgentConfig,
    models_dir: Path,
    pool: InferencePool,
    kind: str,
) -> None:
    make_pack(default_pack, models_dir / "pack-b", kind)
    watcher, slot = watcher_for(config, models_dir, pool)

    assert await watcher.reload() is False

    assert slot.engine is None
    with pytest.raises(ModelNotLoadedError) as caught:
        slot.require()
    assert (caught.value.status, caught.value.code) == (503, "MODEL_NOT_LOADED")
    assert_reason(slot.reason, "pack-b", kind)
    assert_reason(slot.reload_error, "pack-b", kind)


async def test_configured_bad_pack_does_not_fall_back(
    default_pack: ModelPack,
    config: AgentConfig,
    models_dir: Path,
    pool: InferencePool,
) -> None:
    good = good_old_pack(default_pack, models_dir)
    make_pack(default_pack, models_dir / "pack-b", "unknown-op-detector")
    os.utime(good, None)  # the good pack is even the newest: the setting still wins
    watcher, slot = watcher_for(config, models_dir, pool, pack="pack-b")

    assert await watcher.reload() is False

    assert slot.engine is None
    with pytest.raises(ModelNotLoadedError, match="pack-b"):
        slot.require()
    assert_reason(slot.reload_error, "pack-b", "unknown-op-detector")


# The real agent -------------------------------------------------------------------------


async def test_agent_serves_older_pack_when_newest_is_bad(
    broker: Mosquitto,
    tmp_path: Path,
    default_pack: ModelPack,
    models_dir: Path,
    photos: dict[str, Path],
) -> None:
    good_old_pack(default_pack, models_dir)
    make_pack(default_pack, models_dir / "pack-b", "unknown-op-detector")
    cfg = agent_config(tmp_path / "agent", broker, models={"dir": models_dir})
    photo = {"photo": base64.b64encode(photos["yaoming.jpg"].read_bytes()).decode()}
    async with running_agent(cfg) as agent, backend(broker) as b:
        status = await b.send("status", {})
        generated = await b.send("embedding/generate", photo)
    assert agent.models.engine is not None
    assert status["status"] == 200, status
    model: dict[str, Any] = status["data"]["model"]
    assert (model["loaded"], model["pack"]) == (True, "pack-a")
    assert_reason(model["reloadError"], "pack-b", "unknown-op-detector")
    assert model["reloads"]["failures"] >= 1
    assert any(w.startswith("MODEL_RELOAD_FAILED: pack-b") for w in status["data"]["warnings"])
    assert generated["status"] == 200, generated
    assert generated["data"]["embeddingSpace"] == default_pack.embedding_space


async def test_agent_with_only_a_bad_pack_answers_model_not_loaded(
    broker: Mosquitto,
    tmp_path: Path,
    default_pack: ModelPack,
    models_dir: Path,
    photos: dict[str, Path],
) -> None:
    make_pack(default_pack, models_dir / "pack-b", "truncated-recognizer")
    cfg = agent_config(tmp_path / "agent", broker, models={"dir": models_dir})
    photo = {"photo": base64.b64encode(photos["yaoming.jpg"].read_bytes()).decode()}
    async with running_agent(cfg), backend(broker) as b:
        status = await b.send("status", {})
        generated = await b.send("embedding/generate", photo)
    assert status["status"] == 200, status
    assert status["data"]["model"]["loaded"] is False
    assert_reason(status["data"]["model"]["reason"], "pack-b", "truncated-recognizer")
    assert (generated["status"], generated["code"]) == (503, "MODEL_NOT_LOADED")
    assert "pack-b" in generated["message"]
