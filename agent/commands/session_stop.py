"""``session/stop``: end a class slot's session."""

from __future__ import annotations

from agent.protocol import Command, Reply, SessionStop
from agent.session.manager import SessionManager
from agent.status.models import wire


class SessionStopHandler:
    """Stops a session through the session manager."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions

    async def __call__(self, command: Command) -> Reply:
        """Stop the session; the reply carries its last summary."""
        assert isinstance(command, SessionStop)
        return Reply.ok("Session stopped.", wire(await self._sessions.stop(command.slot_id)))
