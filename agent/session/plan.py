"""Planning a session: what a start (or resume) command asks for, checked against the
site's configuration and the model in service, as a plain value.

:func:`plan_session` is pure (no I/O, no clock, no awaits): every refusal it raises is the
same typed :class:`~agent.errors.AgentError` a command gets, and what it returns is all
:class:`~agent.session.manager.SessionManager` needs to build and launch the session.
The manager keeps what depends on the agent's state: running sessions and limits, the
saved row, resume and auto-stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.allowlist import CallbackUrlError, check_callback_url
from agent.config import CallbackConfig, CamerasConfig, RecognitionConfig
from agent.errors import AgentError, ErrorCode
from agent.protocol import SessionStart
from agent.session.limits import SessionCamera, resolve_cameras
from agent.vision.matching import Roster

__all__ = ["EmbeddingModel", "PlanConfig", "PlanSections", "SessionPlan", "plan_session"]


class PlanConfig(Protocol):
    """The configuration sections a plan reads (an :class:`~agent.config.AgentConfig`
    has them, and so has :class:`PlanSections`)."""

    @property
    def callback(self) -> CallbackConfig:
        """Where callbacks may go."""

    @property
    def cameras(self) -> CamerasConfig:
        """The camera registry and the inline-URL allowlist."""

    @property
    def recognition(self) -> RecognitionConfig:
        """The default match threshold."""


@dataclass(frozen=True)
class PlanSections:
    """The three sections of :class:`PlanConfig`, for a caller that holds them apart."""

    callback: CallbackConfig
    cameras: CamerasConfig
    recognition: RecognitionConfig


class EmbeddingModel(Protocol):
    """What a plan needs of the model in service (a :class:`~agent.vision.engine.FaceEngine`)."""

    @property
    def embedding_space(self) -> str:
        """The space its embeddings live in."""

    @property
    def embedding_dim(self) -> int:
        """The length of its embeddings."""


@dataclass(frozen=True)
class SessionPlan:
    """A start command checked and resolved: everything needed to build the session."""

    command: SessionStart
    cameras: tuple[SessionCamera, ...]
    roster: Roster
    embedding_space: str
    threshold: float

    @property
    def slot_id(self) -> str:
        """The class slot the session serves."""
        return self.command.slot_id

    @property
    def student_ids(self) -> list[str]:
        """The roster's students in command order (the presence book's rows)."""
        return [s.id for s in self.command.students]


def plan_session(
    command: SessionStart,
    config: PlanConfig,
    engine: EmbeddingModel | Callable[[], EmbeddingModel],
) -> SessionPlan:
    """Check ``command`` against ``config`` and the model, and resolve what it names.

    Refusals, in this order: CALLBACK_URL_NOT_ALLOWED, then the cameras' (CAMERA_NOT_FOUND,
    CAMERA_URL_NOT_ALLOWED), then the model's, EMBEDDING_MODEL_MISMATCH and the roster's
    (INVALID_EMBEDDING...). ``engine`` may be a function returning the model (such as
    ``ModelSlot.require``, which raises MODEL_NOT_LOADED): it is called only after the
    callback and cameras passed, so those refusals read the same with or without a model.
    """
    _check_callback(command, config.callback)
    cameras = resolve_cameras(command, config.cameras)
    model = engine() if callable(engine) else engine
    space = model.embedding_space
    _check_space(command, space)
    roster = Roster.validated([(s.id, s.embeddings) for s in command.students], model.embedding_dim)
    threshold = (
        command.threshold if command.threshold is not None else config.recognition.match_threshold
    )
    return SessionPlan(
        command=command,
        cameras=tuple(cameras),
        roster=roster,
        embedding_space=space,
        threshold=threshold,
    )


def _check_callback(command: SessionStart, callback: CallbackConfig) -> None:
    """Biometric results go only where the site allows (checked again at each delivery)."""
    try:
        check_callback_url(command.callback_url, callback.allowed_urls)
    except CallbackUrlError as exc:
        raise AgentError(
            ErrorCode.CALLBACK_URL_NOT_ALLOWED,
            f"callbackUrl {exc}; use a URL under one of [callback] allowed_urls.",
            details={"errors": [{"path": "callbackUrl", "problem": str(exc)}]},
        ) from exc


def _check_space(command: SessionStart, space: str) -> None:
    """Embeddings of another model cannot be compared with this one's: refuse them."""
    wrong = sorted(
        {s.embedding_space for s in command.students if s.embedding_space not in (None, space)}
    )
    if wrong:
        raise AgentError(
            ErrorCode.EMBEDDING_MODEL_MISMATCH,
            f"Embeddings are from space {', '.join(map(str, wrong))}; this agent expects "
            f"{space}. Regenerate them with embedding/generate.",
            status=409,
            details={"expected": space, "received": wrong},
        )
