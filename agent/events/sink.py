"""The agent's event sink: an event is committed to the outbox, then its slot's delivery
worker is woken. Stored before it is sent, so no event is lost to a crash or an outage."""

from __future__ import annotations

from typing import Protocol

from agent.events.event import Event
from agent.events.outbox import Outbox

__all__ = ["OutboxSink"]


class Notified(Protocol):
    """Whoever sends what the outbox holds (:class:`agent.events.delivery.Delivery`)."""

    def notify(self, slot_id: str) -> None:
        """A new event was committed for ``slot_id``."""


class OutboxSink:
    """The production event sink: commit to the outbox, then wake the slot's worker."""

    def __init__(self, outbox: Outbox, delivery: Notified) -> None:
        self.outbox = outbox
        self.delivery = delivery

    async def emit(self, event: Event, callback_url: str) -> None:
        """Store the event durably (raises OutboxFullError when it cannot) and schedule it."""
        await self.outbox.add(event, callback_url)
        self.delivery.notify(event.slot_id)

    async def emit_final(self, event: Event, callback_url: str, slot_id: str) -> None:
        """Store a session's STOPPED event and delete its saved row in one transaction
        (raises like :meth:`emit`, and then neither happened), and schedule the event."""
        await self.outbox.add(event, callback_url, forget_session=slot_id)
        self.delivery.notify(event.slot_id)
