"""A session's end in the state file: its saved row is deleted and its STOPPED event
stored together, so that a crash (kill -9, power cut) between the two can never leave the
row gone and the event unsent.

With the agent's outbox (an :class:`agent.events.event.FinalEventSink`) both happen in one SQLite
transaction: after a crash the file holds either the row and no STOPPED (the session
resumes at the next start and ends again) or no row and the STOPPED event, never neither.
With another sink (tests' recording sink), the row is deleted first, then the event
handed over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent.errors import AgentError, ErrorCode
from agent.events.event import EventSink, FinalEventSink, emit_or_log
from agent.events.store import Store, StoreError
from agent.protocol import SessionStatusEvent

log = logging.getLogger(__name__)

ROW_NOT_DELETED = "its saved row could not be deleted"

# Builds the STOPPED event given what went wrong in the state file (None: nothing).
EventBuilder = Callable[[str | None], SessionStatusEvent]


async def forget_row(store: Store, slot_id: str) -> bool:
    """Delete a session's row and its reported students; False (logged) if the state file
    refused."""
    try:
        await store.call(store.delete_session, slot_id)
    except StoreError as exc:
        log.error(
            "SESSION_ROW_NOT_DELETED slot=%s code=%s message=%s", slot_id, exc.code, exc.message
        )
        return False
    return True


async def forget_and_report(
    store: Store, sink: EventSink, slot_id: str, callback_url: str, build: EventBuilder
) -> str | None:
    """Delete the slot's saved session and store its STOPPED event (from ``build``); returns
    what went wrong in the state file, or None when both happened."""
    if not isinstance(sink, FinalEventSink):
        problem = None if await forget_row(store, slot_id) else ROW_NOT_DELETED
        await emit_or_log(sink, build(problem), callback_url)
        return problem
    event = build(None)
    try:
        await sink.emit_final(event, callback_url, slot_id)
    except AgentError as exc:
        if exc.code is ErrorCode.OUTBOX_FULL:
            # Refused before the transaction (the outbox is at its limit): the event is
            # lost as any event is then (logged by the outbox); the stop still takes effect.
            log.error(
                "EVENT_LOST slot=%s type=%s status=STOPPED code=%s event=%s",
                slot_id,
                event.type,
                exc.code,
                event.event_id,
            )
            return None if await forget_row(store, slot_id) else ROW_NOT_DELETED
        # The transaction rolled back: the row stays, so the session resumes later and
        # ends then; deleting it alone now would lose its STOPPED for good.
        log.error(
            "SESSION_END_NOT_STORED slot=%s code=%s message=%s (its row is kept: it resumes "
            "at the next agent start or model change, and ends then)",
            slot_id,
            exc.code,
            exc.message,
        )
        return f"its end could not be stored ({exc.code})"
    return None


async def wind_down(task: asyncio.Task[None] | None, slot_id: str) -> str | None:
    """Cancel a session's work (unless it is the caller); returns why it did not wind down
    cleanly (a camera that would not release...), or None."""
    if task is None or task is asyncio.current_task():
        return None
    task.cancel()
    (result,) = await asyncio.gather(task, return_exceptions=True)
    if not isinstance(result, Exception):
        return None
    log.error("STOP_SESSION_FAILED slot=%s error=%r", slot_id, result)
    return f"its work did not wind down cleanly ({str(result) or type(result).__name__})"
