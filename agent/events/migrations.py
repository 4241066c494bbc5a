"""The state file's schema: numbered migrations, applied in order, each once, each in one
transaction with its record (:meth:`agent.events.store.Store` applies them)."""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

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


def _m004_presence(db: sqlite_utils.Database) -> None:
    db.table("presence").create(
        {"slot_id": str, "book": str, "saved_at": float}, pk="slot_id", not_null={"book"}
    )


def _m005_ended_sessions(db: sqlite_utils.Database) -> None:
    # Read and written by agent.session.history: the sessions status lists as ended.
    db.table("ended_sessions").create(
        {
            "id": int,
            "slot_id": str,
            "reason": str,
            "started_at": str,
            "ended_at": str,
            "recognised": int,
            "students": int,
        },
        pk="id",
        not_null={"slot_id", "reason", "started_at", "ended_at"},
    )


def _m006_agent_facts(db: sqlite_utils.Database) -> None:
    db.table("agent_facts").create(
        {"key": str, "value": str}, pk="key"
    )  # agent.session.space_notice


def _m010_pack_sightings(db: sqlite_utils.Database) -> None:  # see agent.vision.pack_order
    db.table("pack_sightings").create(
        {"name": str, "fingerprint": str, "first_seen": float}, pk="name"
    )


def _m011_refused_rounds(db: sqlite_utils.Database) -> None:
    # Rounds in which the callback refused an event (401/403/404): agent.events.delivery
    db.execute("alter table events add column refused_rounds integer not null default 0")


MIGRATIONS: list[tuple[str, Migration]] = [
    ("001_sessions", _m001_sessions),
    ("002_outbox", _m002_outbox),
    ("003_recognized", _m003_recognized),
    ("004_presence", _m004_presence),
    ("005_ended_sessions", _m005_ended_sessions),
    ("006_agent_facts", _m006_agent_facts),
    ("010_pack_sightings", _m010_pack_sightings),
    ("011_refused_rounds", _m011_refused_rounds),
]
"""Applied in order, each once; append new ones, never edit applied ones."""
