"""Model hot reload with real files, real models and the real watchdog observer."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import onnx
import pytest

from agent.app import Agent
from agent.devkit.brokers import Mosquitto
from agent.vision.modelpack import MANIFEST_NAME, ModelPack, read_pack, write_manifest
from tests.agent_harness import RecordingSink, agent_config, backend, running_agent
from tests.rtsp import RtspServer
from tests.test_model_pack_tools import perturbed_recognizer, wrong_size_recognizer
from tests.waiting import wait_until

SETTLE = {"settle_s": 0.5}
FAST_CAMERAS = {"open_timeout_s": 1.0, "read_timeout_s": 1.0, "analysis_fps": 5.0}


def copy_pack(src: ModelPack, dest: Path, *, recognizer: Path | None = None) -> Path:
    """A complete pack folder named ``dest.name`` with its own manifest."""
    dest.mkdir(parents=True)
    shutil.copyfile(src.detector_path, dest / src.detector_path.name)
    shutil.copyfile(recognizer or src.recognizer_path, dest / src.recognizer_path.name)
    write_manifest(read_pack(dest), name=dest.name)
    return dest


def slow_copy(src: Path, dest: Path, *, chunk: int = 1 << 20, pause: float = 0.1) -> None:
    """Copy a pack file by file in chunks, the manifest last (as the README asks)."""
    dest.mkdir(parents=True)
    files = sorted(src.iterdir(), key=lambda p: p.name == MANIFEST_NAME)
    for file in files:
        with file.open("rb") as reader, (dest / file.name).open("wb") as writer:
            while block := reader.read(chunk):
                writer.write(block)
                writer.flush()
                time.sleep(pause)


@pytest.fixture
def models_dir(tmp_path: Path, default_pack: ModelPack) -> Path:
    folder = tmp_path / "models"
    copy_pack(default_pack, folder / "pack-a")
    os.utime(folder / "pack-a", (1, 1))  # older than anything a test drops in
    return folder


@pytest.fixture(scope="module")
def other_space(tmp_path_factory: pytest.TempPathFactory, default_pack: ModelPack) -> Path:
    """A recognizer with slightly perturbed weights: same behaviour, another space."""
    return perturbed_recognizer(
        default_pack.recognizer_path, tmp_path_factory.mktemp("r") / "r.onnx"
    )


class GapMeter:
    """Longest time a session's camera went without a finished analysis."""

    def __init__(self, agent: Agent, slot: str) -> None:
        self.agent, self.slot = agent, slot
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    def _analysed(self) -> int:
        assert self.agent.sessions is not None
        session = self.agent.sessions.get(self.slot)
        assert session is not None and session.camera_health is not None
        return int(session.camera_health()[0].frames_analysed)

    async def _run(self) -> None:
        last_count, last_change = self._analysed(), time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            count, now = self._analysed(), time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            self.longest = max(self.longest, now - last_change)

    async def __aenter__(self) -> GapMeter:
        self._task = asyncio.create_task(self._run(), name="gap-meter")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _enroll(b: Any, photo: Path) -> dict[str, Any]:
    reply = await b.send(
        "embedding/generate", {"photo": base64.b64encode(photo.read_bytes()).decode()}
    )
    assert reply["status"] == 200, reply
    return dict(reply["data"])


@pytest.mark.slow
async def test_slow_copy_then_swap_with_running_session(
    broker: Mosquitto,
    tmp_path: Path,
    models_dir: Path,
    default_pack: ModelPack,
    other_space: Path,
    yao_camera: RtspServer,
    photos: dict[str, Path],
) -> None:
    staging = copy_pack(default_pack, tmp_path / "staging" / "pack-b", recognizer=other_space)
    sink = RecordingSink()
    cfg = agent_config(
        tmp_path / "agent",
        broker,
        models={"dir": models_dir, **SETTLE},
        cameras=FAST_CAMERAS,
        recognition={"continuous_interval_s": 1.0},
    )
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        old = await _enroll(b, photos["yaoming.jpg"])
        old_space = old["embeddingSpace"]
        start = {
            "slotId": "slot-hot",
            "mode": "CONTINUOUS",
            "callbackUrl": "http://127.0.0.1:9/cb",
            "cameras": [{"id": "cam", "rtspUrl": yao_camera.url}],
            "students": [
                {"id": "stu-yao", "embeddings": [old["embedding"]], "embeddingSpace": old_space}
            ],
        }
        assert (await b.send("session/start", start))["status"] == 200
        await wait_until(lambda: any(e.type == "RECOGNITION" for e, _ in sink.events), 20)
        async with GapMeter(agent, "slot-hot") as gaps:
            copier = asyncio.create_task(
                asyncio.to_thread(slow_copy, staging, models_dir / "pack-b")
            )
            while not copier.done():
                assert agent.models.engine is not None
                assert agent.models.engine.embedding_space == old_space, "loaded before complete"
                await asyncio.sleep(0.05)
            await copier
            copied_at = time.monotonic()
            await wait_until(
                lambda: (
                    agent.models.engine is not None
                    and agent.models.engine.embedding_space != old_space
                ),
                10,
            )
            swap_seconds = time.monotonic() - copied_at
            recognitions_before = sum(e.type == "RECOGNITION" for e, _ in sink.events)
            await wait_until(
                lambda: (
                    sum(e.type == "RECOGNITION" for e, _ in sink.events) >= recognitions_before + 2
                ),
                15,
            )
        status = await b.send("status", {})
        new = await _enroll(b, photos["yaoming.jpg"])
        mismatch = await b.send("session/start", start | {"slotId": "slot-new"})
        assert (await b.send("session/stop", {"slotId": "slot-hot"}))["status"] == 200
        # The old recognizer is unloaded with the last session that needed it.
        assert agent.models.describe().kept_spaces == []
    assert swap_seconds < 5
    assert gaps.longest < 1.5, f"analyses stalled for {gaps.longest:.2f} s during the swap"
    assert status["data"]["model"]["pack"] == "pack-b"
    assert status["data"]["model"]["embeddingSpace"] == new["embeddingSpace"] != old_space
    assert old_space in status["data"]["model"]["keptSpaces"]
    # The swap neither restarted nor stopped the running session (the test stopped it).
    assert sink.statuses("slot-hot") == ["STARTED", "STOPPED"]
    assert [getattr(e, "reason", None) for e, _ in sink.events if e.type != "RECOGNITION"] == [
        None,
        "REQUESTED",
    ]
    latest = [e for e, _ in sink.events if e.type == "RECOGNITION"][-1]
    assert latest.embedding_space == old_space  # the running session kept its recognizer
    assert (mismatch["status"], mismatch["code"]) == (409, "EMBEDDING_MODEL_MISMATCH")
    assert new["embeddingSpace"] in mismatch["message"]
    print(f"swap {swap_seconds:.2f} s after the copy; longest analysis gap {gaps.longest:.2f} s")


def _truncated(pack: Path) -> None:
    rec = pack / "w600k_mbf.onnx"
    rec.write_bytes(rec.read_bytes()[:2_000_000])
    (pack / MANIFEST_NAME).unlink()


def _random_bytes(pack: Path) -> None:
    (pack / "scrfd_500m_bnkps.onnx").write_bytes(os.urandom(300_000))
    (pack / MANIFEST_NAME).unlink()


def _hash_mismatch(pack: Path) -> None:
    manifest = json.loads((pack / MANIFEST_NAME).read_text())
    manifest["recognizer"]["sha256"] = "0" * 64
    (pack / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("truncated", _truncated, "exactly one recognizer"),
        ("random-bytes", _random_bytes, "not a readable ONNX file"),
        ("hash-mismatch", _hash_mismatch, "sha256 of w600k_mbf.onnx"),
        ("wrong-output", None, "512"),
    ],
)
async def test_broken_pack_is_rejected_and_old_keeps_serving(
    broker: Mosquitto,
    tmp_path: Path,
    models_dir: Path,
    default_pack: ModelPack,
    yao_camera: RtspServer,
    photos: dict[str, Path],
    name: str,
    damage: Any,
    reason: str,
) -> None:
    cfg = agent_config(
        tmp_path / "agent", broker, models={"dir": models_dir, **SETTLE}, cameras=FAST_CAMERAS
    )
    staging = tmp_path / "staging" / f"bad-{name}"
    if damage is None:
        staging.mkdir(parents=True)
        shutil.copyfile(default_pack.detector_path, staging / "det.onnx")
        wrong_size_recognizer(staging / "rec.onnx", 128)
        (staging / MANIFEST_NAME).write_text(
            json.dumps(
                {
                    "name": "bad",
                    "detector": {"file": "det.onnx"},
                    "recognizer": {"file": "rec.onnx"},
                    "embeddingDim": 512,
                }
            )
        )
    else:
        copy_pack(default_pack, staging)
        damage(staging)
    sink = RecordingSink()
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        old = await _enroll(b, photos["yaoming.jpg"])
        start = {
            "slotId": "slot-b",
            "callbackUrl": "http://127.0.0.1:9/cb",
            "cameras": [{"id": "cam", "rtspUrl": yao_camera.url}],
            "students": [{"id": "stu-yao", "embeddings": [old["embedding"]]}],
        }
        assert (await b.send("session/start", start))["status"] == 200
        assert agent.watcher is not None
        await wait_until(
            lambda: (
                agent.sessions is not None
                and agent.sessions.get("slot-b") is not None
                and agent.sessions.get("slot-b").camera_health()[0].frames_analysed > 3
            ),
            15,
        )  # type: ignore[union-attr]
        async with GapMeter(agent, "slot-b") as gaps:
            shutil.copytree(staging, models_dir / staging.name)
            await wait_until(lambda: agent.watcher is not None and agent.watcher.failures >= 1, 15)
            await asyncio.sleep(0.5)
        status = await b.send("status", {})
    assert agent.models.engine is not None and agent.models.engine.pack.name == "pack-a"
    assert reason in (agent.models.reload_error or ""), agent.models.reload_error
    assert any("MODEL_RELOAD_FAILED" in w for w in status["data"]["warnings"])
    assert status["data"]["model"]["reloads"]["failures"] >= 1
    assert gaps.longest < 1.5


async def test_empty_models_dir_then_pack_arrives(
    broker: Mosquitto, tmp_path: Path, default_pack: ModelPack, photos: dict[str, Path]
) -> None:
    empty = tmp_path / "models"
    cfg = agent_config(tmp_path / "agent", broker, models={"dir": empty, **SETTLE})
    async with running_agent(cfg) as agent, backend(broker) as b:
        photo = {"photo": base64.b64encode(photos["yaoming.jpg"].read_bytes()).decode()}
        before = await b.send("embedding/generate", photo)
        assert (before["status"], before["code"]) == (503, "MODEL_NOT_LOADED")
        copy_pack(default_pack, tmp_path / "staging" / "late")
        shutil.copytree(tmp_path / "staging" / "late", empty / "late")
        await wait_until(lambda: agent.models.engine is not None, 15)
        after = await b.send("embedding/generate", photo)
    assert after["status"] == 200
    assert agent.models.engine is not None and agent.models.engine.pack.name == "late"


async def test_detector_only_change_reaches_running_sessions(
    broker: Mosquitto,
    tmp_path: Path,
    models_dir: Path,
    default_pack: ModelPack,
) -> None:
    staging = tmp_path / "staging" / "pack-d"
    staging.mkdir(parents=True)
    detector = onnx.load_model(str(default_pack.detector_path))
    detector.doc_string = "re-exported detector"  # same weights, another file
    onnx.save_model(detector, str(staging / "det.onnx"))
    shutil.copyfile(default_pack.recognizer_path, staging / "rec.onnx")
    cfg = agent_config(tmp_path / "agent", broker, models={"dir": models_dir, **SETTLE})
    async with running_agent(cfg) as agent:
        assert agent.models.engine is not None
        space = agent.models.engine.embedding_space
        shutil.copytree(staging, models_dir / "pack-d")
        await wait_until(
            lambda: agent.models.engine is not None and agent.models.engine.pack.name == "pack-d",
            15,
        )
        assert agent.models.for_space(space) is agent.models.engine
        assert agent.models.describe().kept_spaces == []
