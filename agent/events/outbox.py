"""The durable outbox: every event is committed to SQLite before anything else happens to
it, and leaves the outbox only as delivered (or, on a permanent refusal, as a dead letter).

Rows: ``event_id`` (UUID, also the Idempotency-Key), ``slot_id``, ``seq`` (per-slot
sequence), ``type``, JSON ``body``, ``callback_url``, ``created_at``, ``attempts``,
``next_attempt_at``, ``last_error``, ``status_code``, ``state`` (pending / delivered /
dead). The outbox is bounded: past ``max_pending`` undelivered rows, new events are refused
loudly (log, status, metrics) and the oldest are kept. Delivered rows are pruned after a
retention period.

Every write runs on the store's thread (:meth:`agent.events.store.Store.run`), so a locked or
slow state file delays the caller, never the event loop; a lock held by another process
is waited out (up to ``[storage] busy_wait_s``) instead of dropping the event.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, NoReturn

from agent.errors import AgentError, ErrorCode
from agent.events.callback_urls import CallbackUrls
from agent.events.event import Event
from agent.events.store import Store, StoreBusyError, StoreError, StoreFullError
from agent.status.models import DeadLetter, OutboxStats, PendingEvent

log = logging.getLogger(__name__)


class EventState(StrEnum):
    """Where an event is in its delivery."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class OutboxEvent:
    """One stored event, as the delivery worker needs it."""

    event_id: str
    slot_id: str
    seq: int
    type: str
    body: dict[str, Any]
    callback_url: str
    attempts: int
    next_attempt_at: float
    refused_rounds: int = 0  # rounds the callback refused it (401/403/404): agent.events.delivery


class OutboxFullError(AgentError):
    """The outbox holds its maximum of undelivered events (or the disk is full)."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.OUTBOX_FULL, reason, status=503)


def _row_event(row: dict[str, Any]) -> OutboxEvent:
    return OutboxEvent(
        event_id=row["event_id"],
        slot_id=row["slot_id"],
        seq=row["seq"],
        type=row["type"],
        body=json.loads(row["body"]),
        callback_url=row["callback_url"],
        attempts=row["attempts"] or 0,
        next_attempt_at=row["next_attempt_at"] or 0.0,
        refused_rounds=row.get("refused_rounds") or 0,
    )


class Outbox:
    """The ``events`` table of the state file. Async methods are for the event loop;
    ``stats`` reads on the read-only connection and may be called anywhere."""

    def __init__(self, store: Store, *, max_pending: int) -> None:
        self.store = store
        self.max_pending = max_pending
        self.refused = 0  # events refused since start (outbox or disk full)
        self.full_reason: str | None = None
        # Counted once, then kept in step by the store thread (its only writer): a
        # count(*) per event would cost ~5 ms at 100,000 rows (bench/outbox_throughput.py).
        self._undelivered = self._count_undelivered()
        # Callback URLs are stored without their tokens; the full ones live here only.
        self.urls = CallbackUrls()
        self._adding: list[str] = []  # slots whose add is in flight (their URL is needed)

    async def add(
        self, event: Event, callback_url: str, *, forget_session: str | None = None
    ) -> OutboxEvent:
        """Commit one event; returns it with its sequence number. With ``forget_session``
        the slot's saved session row is deleted in the same transaction (its STOPPED
        event: a crash in between must not leave the row gone and the event unsent).

        Raises :class:`OutboxFullError` when the outbox is at its limit or the disk is
        full, and the store's typed error when the file stays locked or is damaged; the
        event is then not stored, and that is logged with the real cause and counted.
        """
        pending = self._undelivered
        if pending >= self.max_pending:
            self._refuse(
                event, f"outbox holds {pending} undelivered events (limit {self.max_pending})"
            )
        body = event.model_dump(mode="json", by_alias=True, exclude_none=True)
        try:
            url = self.urls.stored(event.slot_id, callback_url)  # no token at rest
            self._adding.append(event.slot_id)
            try:
                stored = await self.store.call(self._insert, event, body, url, forget_session)
            finally:
                self._adding.remove(event.slot_id)
        except StoreFullError as exc:
            self._refuse(event, f"the state file cannot grow ({exc.message})")
        except StoreBusyError as exc:
            self._refuse(event, f"the state file stayed locked ({exc.message})", exc)
        except StoreError as exc:
            self._refuse(event, exc.message, exc)
        if self.full_reason is not None:
            log.warning("OUTBOX_ACCEPTING_AGAIN")
            self.full_reason = None
        return replace(stored, callback_url=callback_url)

    def _insert(
        self,
        event: Event,
        body: dict[str, Any],
        callback_url: str,
        forget_session: str | None = None,
    ) -> OutboxEvent:
        now = time.time()
        with self.store.write("store an event in") as db:
            if forget_session is not None:
                self.store.delete_session_rows(forget_session)
            row = db.execute(
                "insert into slot_sequences (slot_id, last_seq) values (?, 1) "
                "on conflict(slot_id) do update set last_seq = last_seq + 1 "
                "returning last_seq",
                [event.slot_id],
            ).fetchone()
            seq = int(row[0])
            db.execute(
                "insert into events (event_id, slot_id, seq, type, body, callback_url, "
                "created_at, attempts, next_attempt_at, state) values (?,?,?,?,?,?,?,0,?,?)",
                [
                    event.event_id,
                    event.slot_id,
                    seq,
                    event.type,
                    json.dumps(body),
                    callback_url,
                    now,
                    now,
                    EventState.PENDING.value,
                ],
            )
        if forget_session is not None:
            self.store.checkpoint()  # the session's roster leaves the WAL too
        self._undelivered += 1
        return OutboxEvent(
            event.event_id, event.slot_id, seq, event.type, body, callback_url, 0, now
        )

    def _refuse(self, event: Event, reason: str, cause: StoreError | None = None) -> NoReturn:
        self.refused += 1
        self.full_reason = reason
        log.error(
            "OUTBOX_REFUSED event=%s slot=%s type=%s refused_total=%d code=%s reason=%s",
            event.event_id,
            event.slot_id,
            event.type,
            self.refused,
            cause.code if cause else ErrorCode.OUTBOX_FULL,
            reason,
        )
        if cause is not None:
            raise cause
        raise OutboxFullError(f"Event not stored: {reason}.")

    def count_undelivered(self) -> int:
        """Pending plus dead rows (what counts against the limit)."""
        return self._undelivered

    def _count_undelivered(self) -> int:
        rows = self.store.query(
            "select count(*) as n from events where state in (?, ?)",
            [EventState.PENDING.value, EventState.DEAD.value],
        )
        return int(rows[0]["n"])

    async def next_for_slot(self, slot_id: str) -> OutboxEvent | None:
        """The slot's oldest pending event (delivery is in order per slot)."""
        return await self.store.call(self._next_for_slot, slot_id)

    def _next_for_slot(self, slot_id: str) -> OutboxEvent | None:
        rows = self.store.query(
            "select * from events where slot_id = ? and state = ? order by seq limit 1",
            [slot_id, EventState.PENDING.value],
        )
        if not rows:
            return None
        event = _row_event(rows[0])
        return replace(event, callback_url=self.urls.full(event.slot_id, event.callback_url))

    async def pending_slots(self) -> list[str]:
        """Slots with pending events, the one with the oldest event first.

        Reads one row per slot (its first pending event, by index) instead of every
        pending row: 0.06 ms instead of ~160 ms at 100,000 pending rows (measured).
        """
        rows = await self.store.call(
            self.store.query,
            "select slot_id, (select created_at from events e where e.state = ? and "
            "e.slot_id = s.slot_id order by e.seq limit 1) as oldest from slot_sequences s "
            "where oldest is not null order by oldest",
            [EventState.PENDING.value],
        )
        return [str(r["slot_id"]) for r in rows]

    async def expedite(self, url_prefix: str) -> list[str]:
        """Make pending events for callback URLs under ``url_prefix`` due now (their
        backend just answered); returns the slots concerned."""
        return await self.store.call(self._expedite, url_prefix)

    def _expedite(self, url_prefix: str) -> list[str]:
        now = time.time()
        with self.store.write("expedite events in") as db:
            rows = db.execute(
                "update events set next_attempt_at = ? where state = ? and next_attempt_at > ? "
                "and substr(callback_url, 1, ?) = ? returning slot_id",
                [now, EventState.PENDING.value, now, len(url_prefix), url_prefix],
            ).fetchall()
        return sorted({str(r[0]) for r in rows})

    async def mark_delivered(self, event: OutboxEvent, status_code: int, attempts: int) -> None:
        """Record a 2xx; the body loses any face crop (kept only until delivered)."""
        await self.store.call(self._mark_delivered, event, status_code, attempts)

    def _mark_delivered(self, event: OutboxEvent, status_code: int, attempts: int) -> None:
        body = dict(event.body)
        body.pop("faceJpeg", None)
        with self.store.write("record a delivery in") as db:
            cursor = db.execute(
                "update events set state = ?, status_code = ?, attempts = ?, delivered_at = ?, "
                "last_error = null, body = ? where event_id = ? and state = ?",
                [
                    EventState.DELIVERED.value,
                    status_code,
                    attempts,
                    time.time(),
                    json.dumps(body),
                    event.event_id,
                    EventState.PENDING.value,
                ],
            )
        if cursor.rowcount:
            self._undelivered = max(0, self._undelivered - 1)

    async def mark_retry(
        self,
        event: OutboxEvent,
        attempts: int,
        next_at: float,
        error: str,
        status_code: int | None,
        refused_rounds: int = 0,
    ) -> None:
        """Record a failed round; the event stays pending until ``next_at``.
        ``refused_rounds``: the rounds the callback has refused it so far."""
        await self.store.call(
            self._mark_retry, event, attempts, next_at, error, status_code, refused_rounds
        )

    def _mark_retry(
        self,
        event: OutboxEvent,
        attempts: int,
        next_at: float,
        error: str,
        status_code: int | None,
        refused_rounds: int,
    ) -> None:
        with self.store.write("record a failed delivery in") as db:
            db.execute(
                "update events set attempts = ?, next_attempt_at = ?, last_error = ?, "
                "status_code = ?, refused_rounds = ? where event_id = ?",
                [attempts, next_at, error[:500], status_code, refused_rounds, event.event_id],
            )

    async def mark_dead(
        self, event: OutboxEvent, attempts: int, error: str, status_code: int | None
    ) -> None:
        """Record a permanent refusal (a dead letter, kept until re-queued)."""
        await self.store.call(self._mark_dead, event, attempts, error, status_code)

    def _mark_dead(
        self, event: OutboxEvent, attempts: int, error: str, status_code: int | None
    ) -> None:
        with self.store.write("record a dead letter in") as db:
            db.execute(
                "update events set state = ?, attempts = ?, last_error = ?, status_code = ? "
                "where event_id = ?",
                [EventState.DEAD.value, attempts, error[:500], status_code, event.event_id],
            )

    def retry_dead(self) -> int:
        """Re-queue every dead letter; returns how many (also used by the CLI, with no
        event loop: call it through ``store.run`` from the loop)."""
        with self.store.write("re-queue dead letters in") as db:
            # The CLI may amend a file the agent has not upgraded yet (no migration 011).
            if "refused_rounds" in db.table("events").columns_dict:
                db.execute(
                    "update events set refused_rounds = 0 where state = ?",
                    [EventState.DEAD.value],
                )
            cursor = db.execute(
                "update events set state = ?, next_attempt_at = ?, attempts = 0 where state = ?",
                [EventState.PENDING.value, time.time(), EventState.DEAD.value],
            )
        return int(cursor.rowcount)

    def prune_delivered(self, retention_s: float) -> int:
        """Delete delivered rows older than ``retention_s``; returns how many (call it
        through ``store.run`` from the loop)."""
        with self.store.write("prune delivered events in") as db:
            cursor = db.execute(
                "delete from events where state = ? and delivered_at < ?",
                [EventState.DELIVERED.value, time.time() - retention_s],
            )
        return int(cursor.rowcount)

    def purge_dead_crops(self, retention_s: float) -> int:
        """Drop the face crop (``faceJpeg``) of dead letters created more than
        ``retention_s`` ago; returns how many (call it through ``store.run``). The event
        stays a dead letter (``outbox retry`` still re-sends it, without the crop)."""
        with self.store.write("purge face crops of dead letters in") as db:
            cursor = db.execute(
                "update events set body = json_remove(body, '$.faceJpeg') where state = ? "
                "and created_at < ? and json_extract(body, '$.faceJpeg') is not null",
                [EventState.DEAD.value, time.time() - retention_s],
            )
        if cursor.rowcount:
            self.store.checkpoint()
        return int(cursor.rowcount)

    def forget_delivered_urls(self) -> None:
        """Forget the full callback URLs of slots with no undelivered event (read-only
        connection, no await: an ``add`` cannot slip in between)."""
        rows = self.store.read(
            "select distinct slot_id from events where state != ?", ["delivered"]
        )
        self.urls.keep_only({str(r["slot_id"]) for r in rows} | set(self._adding))

    def dead_letters(self, limit: int = 20) -> list[dict[str, Any]]:
        """The oldest dead letters (read-only connection)."""
        return self.store.read(
            "select event_id as eventId, slot_id as slotId, type, created_at as createdAt, "
            "attempts, status_code as statusCode, last_error as lastError "
            "from events where state = ? order by created_at limit ?",
            [EventState.DEAD.value, limit],
        )

    def describe(self) -> OutboxStats:
        """Counts per state, the oldest pending event, and recent dead letters.

        Reads on the read-only connection (never blocked by a writer); if the file cannot
        be read, the counts are missing and ``error`` says why.
        """
        counts = {s.value: 0 for s in EventState}
        now = time.time()
        try:
            for row in self.store.read("select state, count(*) as n from events group by state"):
                counts[str(row["state"])] = int(row["n"])
            oldest = self.store.read(
                "select event_id as eventId, slot_id as slotId, type, created_at as createdAt, "
                "attempts, last_error as lastError from events "
                "where state = ? order by created_at limit 1",
                [EventState.PENDING.value],
            )
            dead = self.dead_letters()
            error = None
        except StoreError as exc:
            oldest, dead, error = [], [], exc.message
        return OutboxStats(
            counts=counts,
            oldest_pending=(
                PendingEvent.model_validate(
                    {**oldest[0], "ageSeconds": round(now - oldest[0]["createdAt"], 1)}
                )
                if oldest
                else None
            ),
            dead_letters=[DeadLetter.model_validate(row) for row in dead],
            max_pending=self.max_pending,
            refused_since_start=self.refused,
            full=self.full_reason,
            error=error,
        )
