"""One handler per command, each in a module named for it, and the table keyed by
:class:`~agent.protocol.CommandName`.

A handler gets a validated command and returns the reply; it talks to the domain
(sessions, models, enrollment) it was built with and raises :class:`AgentError` for
failures. Authentication, validation, idempotency and the "not while starting or
stopping" rule are the command processor's (:mod:`agent.commands.processor`).
"""

from __future__ import annotations

from agent.commands.embedding_generate import EmbeddingGenerateHandler
from agent.commands.processor import CommandHandler
from agent.commands.session_start import SessionStartHandler
from agent.commands.session_stop import SessionStopHandler
from agent.commands.status import StatusHandler
from agent.config import EnrollmentConfig
from agent.protocol import CommandName
from agent.session.manager import SessionManager
from agent.session.space_notice import SpaceNotice
from agent.status.reporter import StatusReporter
from agent.vision.inference import InferencePool, ModelSlot

__all__ = ["build_handlers"]


def build_handlers(
    *,
    sessions: SessionManager,
    models: ModelSlot,
    pool: InferencePool,
    enrollment: EnrollmentConfig,
    status: StatusReporter,
    space_notice: SpaceNotice | None = None,
) -> dict[CommandName, CommandHandler]:
    """The handler of every command, keyed by the protocol's command names (a started
    session ends ``space_notice``'s embedding-space change warning)."""
    return {
        CommandName.SESSION_START: SessionStartHandler(
            sessions, space_notice.session_started if space_notice else None
        ),
        CommandName.SESSION_STOP: SessionStopHandler(sessions),
        CommandName.EMBEDDING_GENERATE: EmbeddingGenerateHandler(models, pool, enrollment),
        CommandName.STATUS: StatusHandler(status),
    }
