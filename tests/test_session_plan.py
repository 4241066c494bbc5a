"""plan_session on its own: a pure function of the command, the configuration and the
model, so every refusal is checked without a store, a loop or a camera."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, CamerasConfig
from agent.errors import AgentError, ErrorCode, ModelNotLoadedError
from agent.protocol import SessionStart
from agent.session.limits import SessionCamera
from agent.session.plan import PlanSections, plan_session
from agent.vision.engine import FaceEngine
from tests.agent_harness import start_payload

DIM = 4
CALLBACK = "http://127.0.0.1/callback"  # under the default [callback] allowed_urls
VECTOR = [1.0, 0.0, 0.0, 0.0]


@dataclass(frozen=True)
class FakeModel:
    """The two facts a plan reads of the model in service."""

    embedding_space: str = "space-a"
    embedding_dim: int = DIM


def _command(**extra: Any) -> SessionStart:
    extra.setdefault("cameras", [{"id": "c1", "rtspUrl": "rtsp://10.0.0.5/live"}])
    extra.setdefault("callbackUrl", CALLBACK)
    return SessionStart.model_validate(start_payload("slot-1", VECTOR, **extra))


def _refusal(command: SessionStart, config: Any, model: Any = FakeModel()) -> AgentError:
    with pytest.raises(AgentError) as caught:
        plan_session(command, config, model)
    return caught.value


def test_a_valid_command_is_planned(config: AgentConfig) -> None:
    plan = plan_session(_command(threshold=0.5), config, FakeModel())
    assert plan.slot_id == "slot-1"
    assert plan.cameras == (SessionCamera("c1", "c1", "rtsp://10.0.0.5/live"),)
    assert plan.roster.student_ids == ["stu-1"] and plan.roster.dim == DIM
    assert (plan.embedding_space, plan.threshold) == ("space-a", 0.5)
    assert plan.student_ids == ["stu-1"]


def test_the_threshold_defaults_to_the_configured_one(config: AgentConfig) -> None:
    plan = plan_session(_command(), config, FakeModel())
    assert plan.threshold == config.recognition.match_threshold


def test_the_plan_is_frozen(config: AgentConfig) -> None:
    plan = plan_session(_command(), config, FakeModel())
    with pytest.raises(AttributeError):
        plan.threshold = 0.1  # type: ignore[misc]


def test_a_callback_outside_the_allowlist_is_refused(config: AgentConfig) -> None:
    error = _refusal(_command(callbackUrl="http://evil.example/cb"), config)
    assert error.code == ErrorCode.CALLBACK_URL_NOT_ALLOWED
    assert error.details["errors"][0]["path"] == "callbackUrl"
    assert "[callback] allowed_urls" in error.message


def test_the_callback_is_refused_before_the_model_is_asked_for(config: AgentConfig) -> None:
    def no_model() -> FakeModel:
        raise ModelNotLoadedError("no pack yet")

    error = _refusal(_command(callbackUrl="http://evil.example/cb"), config, no_model)
    assert error.code == ErrorCode.CALLBACK_URL_NOT_ALLOWED
    assert _refusal(_command(), config, no_model).code == ErrorCode.MODEL_NOT_LOADED


def test_unknown_registry_cameras_are_refused_together(config: AgentConfig) -> None:
    error = _refusal(_command(cameras=[{"id": "nope-1"}, {"id": "nope-2"}]), config)
    assert (error.code, error.status) == (ErrorCode.CAMERA_NOT_FOUND, 404)
    assert error.details == {"cameraIds": ["nope-1", "nope-2"]}


def test_an_inline_camera_outside_the_allowlist_is_refused(config: AgentConfig) -> None:
    error = _refusal(_command(cameras=[{"id": "c1", "rtspUrl": "rtsp://203.0.113.9/x"}]), config)
    assert error.code == ErrorCode.CAMERA_URL_NOT_ALLOWED


def test_registry_cameras_carry_the_credentials_read_at_load(
    config: AgentConfig, tmp_path: Path
) -> None:
    secret = tmp_path / "cam.cred"
    secret.write_text("admin:p@ss\n", encoding="utf-8")
    cameras = CamerasConfig.model_validate(
        {
            "registry": [
                {"id": "r1", "name": "Hall", "url": "rtsp://10.0.0.7/s", "credentials_file": secret}
            ]
        }
    )
    sections = PlanSections(config.callback, cameras, config.recognition)
    secret.unlink()  # planning reads no file: the value was read with the config
    plan = plan_session(_command(cameras=[{"id": "r1"}]), sections, FakeModel())
    assert plan.cameras == (SessionCamera("r1", "Hall", "rtsp://admin:p%40ss@10.0.0.7/s"),)


def test_embeddings_of_another_space_are_refused(config: AgentConfig) -> None:
    students = [{"id": "s1", "embeddings": [VECTOR], "embeddingSpace": "space-b"}]
    error = _refusal(_command(students=students), config)
    assert (error.code, error.status) == (ErrorCode.EMBEDDING_MODEL_MISMATCH, 409)
    assert error.details == {"expected": "space-a", "received": ["space-b"]}


def test_embeddings_of_the_wrong_size_are_refused(config: AgentConfig) -> None:
    students = [{"id": "s1", "embeddings": [[1.0, 0.0]]}]
    assert _refusal(_command(students=students), config).code == ErrorCode.INVALID_EMBEDDING


def test_the_real_engine_is_a_plan_model(
    config: AgentConfig, engine: FaceEngine, yao_embedding: list[float]
) -> None:
    command = SessionStart.model_validate(
        start_payload(
            "slot-1",
            yao_embedding,
            callbackUrl=CALLBACK,
            cameras=[{"id": "c", "rtspUrl": "rtsp://10.0.0.5/"}],
        )
    )
    plan = plan_session(command, config, engine)
    assert plan.embedding_space == engine.embedding_space
    assert plan.roster.dim == engine.embedding_dim
