"""``session/start``: start recognising a class slot's students."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agent.protocol import Command, Reply, SessionStart
from agent.session.manager import SessionManager
from agent.status.models import wire


class SessionStartHandler:
    """Starts a session through the session manager."""

    def __init__(
        self,
        sessions: SessionManager,
        on_started: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """``on_started`` hears the embedding space of each session started (it ends an
        embedding-space change notice, :mod:`agent.session.space_notice`)."""
        self._sessions = sessions
        self._on_started = on_started

    async def __call__(self, command: Command) -> Reply:
        """Start the session; the reply carries its summary."""
        assert isinstance(command, SessionStart)
        summary = await self._sessions.start(command)
        if self._on_started is not None:
            await self._on_started(summary.embedding_space)
        return Reply.ok("Session started.", wire(summary))
