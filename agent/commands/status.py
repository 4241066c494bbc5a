"""``status``: the agent's state (answered even while the agent starts or stops)."""

from __future__ import annotations

from agent.protocol import Command, Reply
from agent.status.models import wire
from agent.status.reporter import StatusReporter


class StatusHandler:
    """Replies with the status report."""

    def __init__(self, status: StatusReporter) -> None:
        self._status = status

    async def __call__(self, command: Command) -> Reply:
        """The status report as the reply's data."""
        return Reply.ok("Agent status.", wire(self._status.status()))
