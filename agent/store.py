"""The agent's SQLite state file: sessions to resume, replies to redelivered commands.

One file (``<data_dir>/agent.db``) opened with sqlite-utils, WAL journal and
``synchronous=FULL``: a committed row survives a crash or a power cut (WAL with NORMAL may
lose the last transactions on power loss, which would lose events). The schema is created
and upgraded by numbered migrations recorded in the ``migrations`` table.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

DB_NAME = "agent.db"

Migration = Callable[[sqlite_utils.Database], None]


def _m001_sessions(db: sqlite_utils.Database) -> None:
    db.table("sessions").create(
        {"slot_id": str, "command": str, "started_at": float, "end_time": float},
        pk="slot_id",
        not_null={"command", "started_at"},
    )
    db.table("replies").create(
        {"request_id": str, "command": str, "reply": str, "created_at": float},
        pk="request_id",
        not_null={"reply", "created_at"},
    )
    db.table("replies").create_index(["created_at"])


def _m002_outbox(db: sqlite_utils.Database) -> None:
    db.table("events").create(
        {
            "event_id": str,
            "slot_id": str,
            "seq": int,
            "type": str,
            "body": str,
            "callback_url": str,
            "created_at": float,
            "attempts": int,
            "next_attempt_at": float,
            "last_error": str,
            "status_code": int,
            "state": str,
            "delivered_at": float,
        },
        pk="event_id",
        not_null={"slot_id", "seq", "type", "body", "callback_url", "created_at", "state"},
        defaults={"attempts": 0, "state": "pending"},
    )
    db.table("events").create_index(["state", "slot_id", "seq"])
    db.table("events").create_index(["slot_id", "seq"], unique=True)
    db.table("slot_sequences").create({"slot_id": str, "last_seq": int}, pk="slot_id")


def _m003_recognized(db: sqlite_utils.Database) -> None:
    db.table("recognized").create(
        {"slot_id": str, "student_id": str, "recognized_at": float},
        pk=("slot_id", "student_id"),
    )


MIGRATIONS: list[tuple[str, Migration]] = [
    ("001_sessions", _m001_sessions),
    ("002_outbox", _m002_outbox),
    ("003_recognized", _m003_recognized),
]
"""Applied in order, each once; append new ones, never edit applied ones."""


class StoreError(Exception):
    """The state file cannot be opened or written (disk full, permissions, corruption)."""


class Store:
    """Thin typed access to the state file. Not thread-safe: use from the event loop."""

    def __init__(self, data_dir: Path, migrations: list[tuple[str, Migration]] | None = None):
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self.path = data_dir / DB_NAME
            conn = sqlite3.connect(self.path, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._migrate(migrations if migrations is not None else MIGRATIONS)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open state file in {data_dir}: {exc}") from exc

    def _migrate(self, migrations: list[tuple[str, Migration]]) -> None:
        table = self.db.table("migrations")
        if not table.exists():
            self.db.table("migrations").create({"name": str, "applied_at": float}, pk="name")
        done = {row["name"] for row in self.db.table("migrations").rows}
        for name, migration in migrations:
            if name in done:
                continue
            with self.db.conn:
                migration(self.db)
                self.db.table("migrations").insert({"name": name, "applied_at": time.time()})

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self.db.conn.close()

    # Sessions ------------------------------------------------------------------------

    def save_session(self, slot_id: str, command: dict[str, Any], end_time: float | None) -> None:
        """Persist a started session with everything needed to resume it."""
        self._write(
            lambda: self.db.table("sessions").insert(
                {
                    "slot_id": slot_id,
                    "command": json.dumps(command),
                    "started_at": time.time(),
                    "end_time": end_time,
                },
                replace=True,
            )
        )

    def delete_session(self, slot_id: str) -> None:
        """Forget a session (it stopped)."""
        self._write(lambda: self.db.table("sessions").delete_where("slot_id = ?", [slot_id]))

    def sessions(self) -> list[dict[str, Any]]:
        """Persisted sessions, oldest first, with the command decoded."""
        rows = self.db.table("sessions").rows_where(order_by="started_at")
        return [{**row, "command": json.loads(row["command"])} for row in rows]

    # Students already reported (ATTENDANCE mode survives restarts) --------------------

    def mark_recognized(self, slot_id: str, student_id: str) -> bool:
        """Record a reported student; False if the slot had already reported them."""
        try:
            with self.db.conn:
                cursor = self.db.execute(
                    "insert or ignore into recognized (slot_id, student_id, recognized_at) "
                    "values (?, ?, ?)",
                    [slot_id, student_id, time.time()],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the state file {self.path}: {exc}") from exc
        return bool(cursor.rowcount)

    def recognized(self, slot_id: str) -> set[str]:
        """Students already reported for a slot."""
        rows = self.db.execute("select student_id from recognized where slot_id = ?", [slot_id])
        return {str(r[0]) for r in rows}

    def clear_recognized(self, slot_id: str) -> None:
        """Forget a slot's reported students (its session ended)."""
        self._write(lambda: self.db.table("recognized").delete_where("slot_id = ?", [slot_id]))

    # Replies (idempotency) -----------------------------------------------------------

    def save_reply(self, request_id: str, command: str, reply: dict[str, Any]) -> None:
        """Remember the reply sent for a request id."""
        self._write(
            lambda: self.db.table("replies").insert(
                {
                    "request_id": request_id,
                    "command": command,
                    "reply": json.dumps(reply),
                    "created_at": time.time(),
                },
                replace=True,
            )
        )

    def find_reply(self, request_id: str, max_age_s: float) -> dict[str, Any] | None:
        """The reply already sent for this request id, if recent enough."""
        rows = list(
            self.db.table("replies").rows_where(
                "request_id = ? and created_at >= ?", [request_id, time.time() - max_age_s]
            )
        )
        return json.loads(rows[0]["reply"]) if rows else None

    def prune_replies(self, max_age_s: float) -> int:
        """Drop remembered replies older than ``max_age_s``; returns how many."""
        with self.db.conn:
            cursor = self.db.execute(
                "delete from replies where created_at < ?", [time.time() - max_age_s]
            )
        return int(cursor.rowcount)

    def _write(self, action: Callable[[], object]) -> None:
        try:
            with self.db.conn:
                action()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the state file {self.path}: {exc}") from exc
