"""The state file's everyday behaviour on real SQLite files: migrations, session rows,
the reply cache, reported students, and which thread does the work. (Faults: see
test_store_faults.py.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from agent.events.migrations import MIGRATIONS
from agent.events.store import Store, StoreError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(tmp_path / "data")
    yield st
    st.close()


def applied(path: Path) -> list[str]:
    """Names of the migrations recorded in a closed state file, in order applied."""
    db = sqlite_utils.Database(path)
    try:
        return [row["name"] for row in db.query("select name from migrations order by rowid")]
    finally:
        db.conn.close()


def test_a_new_file_records_every_migration_once(tmp_path: Path) -> None:
    Store(tmp_path / "data").close()
    names = [name for name, _ in MIGRATIONS]
    assert applied(tmp_path / "data" / "agent.db") == names
    Store(tmp_path / "data").close()  # reopening applies nothing again
    assert applied(tmp_path / "data" / "agent.db") == names


def test_a_new_migration_is_applied_on_the_next_open(tmp_path: Path) -> None:
    Store(tmp_path / "data").close()
    calls: list[str] = []

    def add_notes(db: sqlite_utils.Database) -> None:
        calls.append("ran")
        db.table("notes").create({"id": int, "text": str}, pk="id")

    extended = [*MIGRATIONS, ("900_notes", add_notes)]
    Store(tmp_path / "data", extended).close()
    Store(tmp_path / "data", extended).close()
    assert calls == ["ran"]
    assert applied(tmp_path / "data" / "agent.db")[-1] == "900_notes"
    db = sqlite_utils.Database(tmp_path / "data" / "agent.db")
    try:
        assert db.table("notes").exists()
    finally:
        db.conn.close()


def test_a_failing_migration_is_not_recorded_and_leaves_nothing_behind(tmp_path: Path) -> None:
    Store(tmp_path / "data").close()

    def half_done(db: sqlite_utils.Database) -> None:
        db.table("half").create({"id": int}, pk="id")
        db.execute("create table sessions (x)")  # exists: sqlite3 raises

    with pytest.raises(StoreError):
        Store(tmp_path / "data", [*MIGRATIONS, ("901_half", half_done)])
    assert "901_half" not in applied(tmp_path / "data" / "agent.db")
    db = sqlite_utils.Database(tmp_path / "data" / "agent.db")
    try:
        assert not db.table("half").exists()
    finally:
        db.conn.close()


def test_session_rows_are_saved_listed_replaced_and_deleted(store: Store) -> None:
    store.save_session("slot-a", {"slotId": "slot-a", "mode": "ATTENDANCE"}, None)
    store.save_session("slot-b", {"slotId": "slot-b"}, 1_900_000_000.0)
    rows = store.sessions()
    assert [r["slot_id"] for r in rows] == ["slot-a", "slot-b"]  # oldest first
    assert rows[0]["command"] == {"slotId": "slot-a", "mode": "ATTENDANCE"}
    assert (rows[0]["end_time"], rows[1]["end_time"]) == (None, 1_900_000_000.0)
    assert rows[0]["started_at"] <= rows[1]["started_at"]

    store.save_session("slot-a", {"slotId": "slot-a", "mode": "ALL"}, None)
    assert [r["command"] for r in store.sessions() if r["slot_id"] == "slot-a"] == [
        {"slotId": "slot-a", "mode": "ALL"}
    ]
    store.delete_session("slot-a")
    assert [r["slot_id"] for r in store.sessions()] == ["slot-b"]
    store.delete_session("slot-unknown")  # nothing to forget: no error
    assert len(store.sessions()) == 1


def test_session_rows_survive_reopening(tmp_path: Path) -> None:
    first = Store(tmp_path / "data")
    first.save_session("slot-a", {"slotId": "slot-a"}, None)
    first.close()
    second = Store(tmp_path / "data")
    try:
        assert [r["slot_id"] for r in second.sessions()] == ["slot-a"]
    finally:
        second.close()


def test_an_unreadable_session_command_reads_as_none(store: Store) -> None:
    store.save_session("slot-a", {"slotId": "slot-a"}, None)
    with store.write() as db:
        db.execute("update sessions set command = 'not json' where slot_id = 'slot-a'")
    (row,) = store.sessions()
    assert row["command"] is None


def test_replies_are_remembered_for_their_request_id(store: Store) -> None:
    assert store.find_reply("req-1", max_age_s=60) is None
    store.save_reply("req-1", "status", {"requestId": "req-1", "status": 200})
    assert store.find_reply("req-1", max_age_s=60) == {"requestId": "req-1", "status": 200}
    assert store.find_reply("req-2", max_age_s=60) is None
    # Too old for the caller's window: not a redelivery any more.
    assert store.find_reply("req-1", max_age_s=-1) is None
    store.save_reply("req-1", "status", {"requestId": "req-1", "status": 500})
    assert store.find_reply("req-1", max_age_s=60) == {"requestId": "req-1", "status": 500}


def test_pruning_drops_only_replies_older_than_the_age(store: Store) -> None:
    for request_id in ("req-1", "req-2"):
        store.save_reply(request_id, "status", {"requestId": request_id})
    assert store.prune_replies(max_age_s=3600) == 0
    assert store.find_reply("req-1", max_age_s=3600) is not None
    assert store.prune_replies(max_age_s=-1) == 2  # everything is older than "the future"
    assert store.find_reply("req-1", max_age_s=3600) is None


def mark(store: Store, slot_id: str, student_id: str) -> bool:
    """Record a RECOGNITION as ATTENDANCE mode does (with an empty presence book)."""
    return store.record_recognition(slot_id, student_id, {}, once=True)


def test_a_student_is_marked_recognized_once_per_slot(store: Store) -> None:
    assert mark(store, "slot-a", "stu-1") is True
    assert mark(store, "slot-a", "stu-1") is False
    assert mark(store, "slot-a", "stu-2") is True
    assert mark(store, "slot-b", "stu-1") is True  # another slot, its own marks
    assert store.recognized("slot-a") == {"stu-1", "stu-2"}
    store.clear_recognized("slot-a")
    assert store.recognized("slot-a") == set()
    assert store.recognized("slot-b") == {"stu-1"}


def test_deleting_a_session_forgets_its_reported_students(store: Store) -> None:
    store.save_session("slot-a", {"slotId": "slot-a"}, None)
    mark(store, "slot-a", "stu-1")
    mark(store, "slot-b", "stu-1")
    store.delete_session("slot-a")
    assert store.recognized("slot-a") == set()
    assert store.recognized("slot-b") == {"stu-1"}


async def test_run_executes_on_the_store_thread_not_the_loop(store: Store) -> None:
    loop_thread = threading.current_thread()
    seen: list[threading.Thread] = []

    def record(slot_id: str) -> set[str]:
        seen.append(threading.current_thread())
        return store.recognized(slot_id)

    await store.call(mark, store, "slot-a", "stu-1")
    assert await store.call(record, "slot-a") == {"stu-1"}
    assert await store.call(record, slot_id="slot-a") == {"stu-1"}
    assert len(seen) == 2 and seen[0] is seen[1]  # one thread, always the same
    assert seen[0] is not loop_thread
    assert seen[0].name.startswith("lane-sqlite")


async def test_run_passes_the_store_error_through(store: Store) -> None:
    def fails() -> None:
        with store.write("test") as db:
            db.execute("insert into no_such_table values (1)")

    with pytest.raises(StoreError) as caught:
        await store.call(fails)
    assert store.last_error is not None and store.last_error[1] is caught.value


async def test_calls_run_one_at_a_time_in_order(store: Store) -> None:
    results = await asyncio.gather(
        *(store.call(mark, store, "slot-a", f"stu-{i}") for i in range(20)),
        store.call(mark, store, "slot-a", "stu-0"),
    )
    assert results == [True] * 20 + [False]
    assert len(store.recognized("slot-a")) == 20


async def test_read_uses_the_read_only_connection_from_the_loop(store: Store) -> None:
    await store.call(store.save_session, "slot-a", {"slotId": "slot-a"}, None)
    assert store.read("select slot_id from sessions") == [{"slot_id": "slot-a"}]
    with pytest.raises(StoreError):
        store.read("delete from sessions")  # the reader cannot write


async def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    st = Store(tmp_path / "data")
    st.close()
    with pytest.raises(StoreError):
        await st.call(st.sessions)
    with pytest.raises(StoreError):
        st.read("select 1")
