"""``session/start``: start recognising a class slot's students."""

from __future__ import annotations

from agent.protocol import Command, SessionStart
from agent.reply import Reply
from agent.sessions import SessionManager
from agent.status_models import wire


class SessionStartHandler:
    """Starts a session through the session manager."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    async def __call__(self, command: Command) -> Reply:
        """Start the session; the reply carries its summary."""
        assert isinstance(command, SessionStart)
        return Reply.ok("Session started.", wire(await self._sessions.start(command)))
