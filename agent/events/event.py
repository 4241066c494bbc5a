"""Events the agent produces for the backend, and the sink they are handed to.

Sessions and cameras build :class:`SessionStatusEvent` and :class:`RecognitionEvent`
objects and hand them to an :class:`EventSink`; the durable outbox
(:class:`agent.events.sink.OutboxSink`) is the one the agent uses.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from agent.errors import AgentError
from agent.protocol import (
    CameraUptime,
    PresenceEntry,
    RecognitionEvent,
    SessionStatus,
    SessionStatusEvent,
    StatusReason,
)

log = logging.getLogger(__name__)

Event = SessionStatusEvent | RecognitionEvent


class EventSink(Protocol):
    """Receives every event of a session, in order, with where it must be delivered."""

    async def emit(self, event: Event, callback_url: str) -> None:
        """Accept one event; returns once it is safely recorded."""


@runtime_checkable
class FinalEventSink(EventSink, Protocol):
    """A sink that can store a session's last event in the same transaction as the deletion
    of the session's saved row (the durable outbox; see :mod:`agent.session.end`)."""

    async def emit_final(self, event: Event, callback_url: str, slot_id: str) -> None:
        """Store ``event`` and delete ``slot_id``'s saved session, both or neither."""


async def emit_or_log(sink: EventSink, event: Event, callback_url: str) -> bool:
    """Hand an event to the sink; if it cannot be stored (outbox or disk full), log the
    loss with the event's identity and return False instead of raising."""
    try:
        await sink.emit(event, callback_url)
    except AgentError as exc:
        what = (
            f"student={event.student_id}"
            if isinstance(event, RecognitionEvent)
            else f"status={event.status}"
        )
        log.error(
            "EVENT_LOST slot=%s type=%s %s code=%s event=%s",
            event.slot_id,
            event.type,
            what,
            exc.code,
            event.event_id,
        )
        return False
    return True


class EventFactory:
    """Builds events with fresh ids and timestamps in the site's time zone."""

    def __init__(self, site_id: str, timezone: str) -> None:
        self.site_id = site_id
        self.zone = ZoneInfo(timezone)

    def now(self) -> datetime:
        """Current time in the site's zone (ISO 8601 with offset on the wire)."""
        return datetime.now(self.zone)

    def at(self, timestamp: float) -> datetime:
        """A Unix timestamp in the site's zone."""
        return datetime.fromtimestamp(timestamp, self.zone)

    @staticmethod
    def new_id() -> str:
        """A fresh event id (UUID 4)."""
        return str(uuid.uuid4())

    def status(
        self,
        slot_id: str,
        status: SessionStatus,
        reason: StatusReason | None = None,
        *,
        camera_id: str | None = None,
        camera_name: str | None = None,
        cameras: list[CameraUptime] | None = None,
        presence: list[PresenceEntry] | None = None,
        message: str | None = None,
    ) -> SessionStatusEvent:
        """A SESSION_STATUS event."""
        return SessionStatusEvent(
            event_id=self.new_id(),
            slot_id=slot_id,
            site_id=self.site_id,
            status=status,
            reason=reason,
            camera_id=camera_id,
            camera_name=camera_name,
            cameras=cameras,
            presence=presence,
            message=message,
            occurred_at=self.now(),
        )
