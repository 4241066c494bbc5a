"""Ended sessions: the last few, kept in the state file, so that status can say what ended,
when and why after the fact (and after a restart), not just "No session is running".

:class:`SessionHistory` keeps the newest :data:`RECENT` in memory for the status report
(which is built on the event loop and must not wait for the state file) and writes each
one to the ``ended_sessions`` table (migration ``005_ended_sessions``), pruned to the same
number. A session that ended by itself (anything but REQUESTED or SESSION_ENDED) within
the last :data:`WARN_FOR_S` is a warning.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING

from agent.events.store import Store, StoreError
from agent.protocol import StatusReason
from agent.redaction import log_safe
from agent.status.models import EndedSession

if TYPE_CHECKING:  # agent.session.manager imports this module
    from agent.session.manager import ActiveSession

log = logging.getLogger(__name__)

RECENT = 20
WARN_FOR_S = 3600.0
EXPECTED = frozenset({StatusReason.REQUESTED.value, StatusReason.SESSION_ENDED.value})

REASON_WORDS = {
    "REQUESTED": "stopped by the backend",
    "SESSION_ENDED": "reached its end time",
    "ALL_CAMERAS_FAILED": "every camera stayed down past the grace",
    "BACKEND_UNRESPONSIVE": "the backend stopped answering callbacks",
    "BACKEND_REJECTED": "the backend refused its events",
    "AGENT_RESTARTED": "could not resume after an agent restart",
    "STOP_FAILED": "did not stop cleanly",
}
"""The STOPPED reasons in plain words (status warnings and the status page)."""


def reason_words(reason: str) -> str:
    """A STOPPED reason in plain words (the code itself when unknown)."""
    return REASON_WORDS.get(reason, reason)


class SessionHistory:
    """The last :data:`RECENT` ended sessions, newest first; loop side only."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._recent: deque[EndedSession] = deque(maxlen=RECENT)

    @classmethod
    async def loaded(cls, store: Store) -> SessionHistory:
        """A history with the kept sessions read from the state file."""
        history = cls(store)
        await history.load()
        return history

    async def load(self) -> None:
        """Read the kept sessions from the state file (at start)."""
        rows = await self._store.call(
            self._store.query,
            "select slot_id, reason, started_at, ended_at, recognised, students "
            "from ended_sessions order by id desc limit ?",
            [RECENT],
        )
        self._recent.clear()
        self._recent.extend(
            EndedSession(
                slot_id=r["slot_id"],
                reason=r["reason"],
                started_at=r["started_at"],
                ended_at=r["ended_at"],
                recognised=r["recognised"] or 0,
                students=r["students"] or 0,
            )
            for r in rows
        )

    def recent(self) -> list[EndedSession]:
        """The ended sessions, newest first."""
        return list(self._recent)

    async def ended(self, session: ActiveSession, reason: StatusReason, at: datetime) -> None:
        """Keep a session that just stopped (its STOPPED event is stored)."""
        await self.record(
            session.slot_id,
            reason,
            session.started_at,
            at,
            recognised=session.presence.counts().present,
            students=len(session.roster),
        )

    async def record(
        self,
        slot_id: str,
        reason: StatusReason,
        started_at: datetime,
        ended_at: datetime,
        *,
        recognised: int,
        students: int,
    ) -> None:
        """Keep one ended session (in memory at once; in the state file unless it refuses,
        which is logged: the STOPPED event itself is already stored)."""
        ended = EndedSession(
            slot_id=slot_id,
            reason=reason.value,
            started_at=started_at.isoformat(),
            ended_at=ended_at.isoformat(),
            recognised=recognised,
            students=students,
        )
        self._recent.appendleft(ended)
        try:
            await self._store.call(self._insert, ended)
        except StoreError as exc:
            log.error(
                "SESSION_HISTORY_NOT_SAVED slot=%s code=%s message=%s",
                log_safe(slot_id),
                exc.code,
                exc.message,
            )

    def _insert(self, ended: EndedSession) -> None:
        """Store thread: add the row and keep only the newest :data:`RECENT`."""
        with self._store.write("record an ended session in") as db:
            db.execute(
                "insert into ended_sessions "
                "(slot_id, reason, started_at, ended_at, recognised, students) "
                "values (?, ?, ?, ?, ?, ?)",
                [
                    ended.slot_id,
                    ended.reason,
                    ended.started_at,
                    ended.ended_at,
                    ended.recognised,
                    ended.students,
                ],
            )
            db.execute(
                "delete from ended_sessions where id not in "
                "(select id from ended_sessions order by id desc limit ?)",
                [RECENT],
            )

    def warnings(self, now: float | None = None) -> list[str]:
        """A warning for each session that ended by itself less than an hour ago."""
        now = time.time() if now is None else now
        found = []
        for ended in self._recent:
            if ended.reason in EXPECTED:
                continue
            age = now - datetime.fromisoformat(ended.ended_at).timestamp()
            if age < WARN_FOR_S:
                found.append(
                    f"SESSION_ENDED_BY_ITSELF: slot {ended.slot_id} stopped {age / 60:.0f} min "
                    f"ago ({ended.reason}: {reason_words(ended.reason)})"
                )
        return found
