"""The state file under real faults: interrupted migrations, another process holding the
lock, a full disk, a damaged file. Real SQLite files, real processes."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from agent.errors import ErrorCode
from agent.events.event import EventFactory
from agent.events.migrations import MIGRATIONS
from agent.events.outbox import Outbox, OutboxFullError
from agent.events.store import (
    DB_NAME,
    Store,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    translate,
)
from agent.protocol import SessionStatus
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _event(slot: str = "slot-1") -> object:
    return EventFactory("site-1", "UTC").status(slot, SessionStatus.STARTED)


class Locker:
    """Another process holding the state file's write lock (as a backup tool would)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    def hold(self, seconds: float) -> None:
        code = textwrap.dedent(
            f"""
            import sqlite3, sys, time
            c = sqlite3.connect({str(self.path)!r}, isolation_level=None)
            c.execute("BEGIN EXCLUSIVE")
            print("LOCKED", flush=True)
            time.sleep({seconds})
            c.execute("ROLLBACK")
            """
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "LOCKED"

    def release(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


@pytest.fixture
def locker(tmp_path: Path) -> Iterator[Locker]:
    lock = Locker(tmp_path / "data" / DB_NAME)
    yield lock
    lock.release()


def test_migration_killed_midway_does_not_block_later_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A process applies the first migration, then dies (SIGKILL) inside the second one,
    # after its first statement.
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from agent.events.store import Store
        from agent.events.migrations import MIGRATIONS
        def dying(db):
            db.table("events").create({{"event_id": str}}, pk="event_id")
            os.kill(os.getpid(), signal.SIGKILL)
        Store(Path({str(data)!r}), [MIGRATIONS[0], ("002_outbox", dying)])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == -9
    store = Store(data)  # the real migrations: must apply cleanly now
    try:
        names = {r["name"] for r in store.query("select name from migrations")}
        assert names == {name for name, _ in MIGRATIONS}
        columns = {r["name"] for r in store.query("pragma table_info(events)")}
        assert {"slot_id", "seq", "state"} <= columns  # the real table, not the partial one
    finally:
        store.close()


def test_a_failing_migration_rolls_back_whole(tmp_path: Path) -> None:
    def broken(db: sqlite_utils.Database) -> None:
        db.table("half").create({"x": int})
        raise RuntimeError("bug in migration")

    with pytest.raises(RuntimeError):
        Store(tmp_path / "d", [MIGRATIONS[0], ("002_broken", broken)])
    check = sqlite3.connect(tmp_path / "d" / DB_NAME)
    tables = {r[0] for r in check.execute("select name from sqlite_master where type='table'")}
    applied = {r[0] for r in check.execute("select name from migrations")}
    check.close()
    assert "half" not in tables
    assert applied == {"001_sessions"}


@pytest.mark.slow
async def test_locked_file_delays_the_event_never_the_loop(tmp_path: Path, locker: Locker) -> None:
    store = Store(tmp_path / "data", busy_wait_s=30)
    outbox = Outbox(store, max_pending=100)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    add: asyncio.Task[object] | None = None
    try:
        locker.hold(30)
        add = asyncio.create_task(outbox.add(_event(), "http://127.0.0.1/cb"))  # type: ignore[arg-type]
        # Past the first attempt's own 1 s wait for the lock, then retrying for a while.
        await wait_until(
            lambda: add.done() or (store.busy_for or 0.0) > 1.5, 15, "a long wait for the lock"
        )
        assert not add.done()  # waiting for the lock, not failed, not dropped
        assert store.busy_for is not None and store.busy_for > 1
        locker.release()
        stored = await asyncio.wait_for(add, 10)
    finally:
        locker.release()
        tick.cancel()
        await asyncio.gather(tick, *([add] if add else []), return_exceptions=True)
        store.close()
    assert stored.seq == 1  # type: ignore[attr-defined]
    assert max(gaps) < 0.5, f"event loop stalled {max(gaps):.2f} s"
    assert outbox.refused == 0


@pytest.mark.slow
async def test_lock_held_past_the_wait_reports_the_real_cause(
    tmp_path: Path, locker: Locker
) -> None:
    store = Store(tmp_path / "data", busy_wait_s=1)
    outbox = Outbox(store, max_pending=100)
    try:
        locker.hold(30)
        with pytest.raises(StoreBusyError) as caught:
            await outbox.add(_event(), "http://127.0.0.1/cb")  # type: ignore[arg-type]
        locker.release()
        assert caught.value.code is ErrorCode.STORAGE_BUSY
        assert "lock" in caught.value.message
        assert "free disk space" not in (outbox.full_reason or "")
        assert outbox.refused == 1
        await outbox.add(_event(), "http://127.0.0.1/cb")  # type: ignore[arg-type]
        assert outbox.full_reason is None
    finally:
        store.close()


async def test_full_disk_is_named_as_such(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    outbox = Outbox(store, max_pending=100)
    try:
        pages = store.query("pragma page_count")[0]["page_count"]
        store.db.execute(f"pragma max_page_count = {pages}")
        with pytest.raises(OutboxFullError, match="free disk space"):
            for _ in range(200):
                await outbox.add(_event(), "http://127.0.0.1/cb")  # type: ignore[arg-type]
    finally:
        store.close()


def test_damaged_file_is_a_typed_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / DB_NAME).write_bytes(b"this is not a database" * 500)
    with pytest.raises(StoreCorruptError) as caught:
        Store(data)
    assert caught.value.code is ErrorCode.STORAGE_CORRUPT
    assert "move it aside" in caught.value.message


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        ("busy", StoreBusyError),
        ("full", StoreFullError),
        ("corrupt", StoreCorruptError),
        ("other", StoreError),
    ],
)
def test_translate_classifies_real_sqlite_errors(
    tmp_path: Path, make: str, expected: type[StoreError]
) -> None:
    exc = _real_error(tmp_path, make)
    error = translate(exc, tmp_path / "x.db", "write")
    assert type(error) is expected
    assert str(tmp_path / "x.db") in error.message


def _real_error(tmp_path: Path, kind: str) -> sqlite3.Error:
    path = tmp_path / f"{kind}.db"
    try:
        if kind == "busy":
            a = sqlite3.connect(path, isolation_level=None)
            a.execute("create table t(x)")
            a.execute("BEGIN EXCLUSIVE")
            b = sqlite3.connect(path, timeout=0)
            b.execute("insert into t values (1)")
        elif kind == "full":
            c = sqlite3.connect(path)
            c.execute("create table t(x)")
            c.execute("pragma max_page_count = 2")
            c.executemany("insert into t values (?)", [("x" * 1000,)] * 100)
        elif kind == "corrupt":
            path.write_bytes(b"garbage" * 1000)
            sqlite3.connect(path).execute("select * from sqlite_master")
        else:
            sqlite3.connect(path).execute("select * from missing_table")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError(f"no sqlite error for {kind}")
