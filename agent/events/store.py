"""The agent's SQLite state file: sessions to resume, replies to redelivered commands,
students already reported, and (through :mod:`agent.events.outbox`) undelivered events.

One file (``<data_dir>/agent.db``) opened with sqlite-utils, WAL journal and
``synchronous=FULL``: a committed row survives a crash or a power cut (WAL with NORMAL may
lose the last transactions on power loss, which would lose events). The schema is created
and upgraded by numbered migrations recorded in the ``migrations`` table, each in one
transaction with its record, so an interrupted upgrade leaves the previous schema intact.

Threads: SQLite can block (another process holding the write lock, a slow disk), so the
agent never writes on the event loop. Every write goes through :meth:`Store.call`, which
executes a method of this class (or of the outbox) on the sqlite lane's one thread
(:class:`agent.lanes.Lane`) and retries
while the file is locked. Short read-only queries for status use a second, read-only
connection (WAL readers never wait for writers). The synchronous methods remain usable
directly where no event loop runs (the CLI). Only the agent creates or upgrades the file;
the CLI opens an existing one read-only (``mode="ro"``) or to amend it (``mode="rw"``),
never creating one.

Errors: every ``sqlite3`` exception is translated here into a :class:`StoreError`
subclass that says what happened (locked, disk full, corrupt) and carries a code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import sqlite_utils

from agent.backoff import Backoff
from agent.errors import AgentError, ErrorCode
from agent.events.migrations import MIGRATIONS, Migration
from agent.lanes import Lane, LaneClosedError

log = logging.getLogger(__name__)

DB_NAME = "agent.db"
# One attempt waits this long for another connection's lock; Store.call then retries,
# pausing 0.05 s, 0.1 s, ... up to 1 s between attempts (no jitter: one agent, one file).
ATTEMPT_BUSY_TIMEOUT_MS = 1000
_BUSY_RETRY = Backoff(first_s=0.05, cap_s=1.0, jitter=(1.0, 1.0))
READER_BUSY_TIMEOUT_MS = 200

# How a Store opens its file: "create" (the agent: create or upgrade it), "rw" (amend an
# existing file, e.g. `outbox retry`) or "ro" (read an existing file, e.g. `outbox`).
OpenMode = Literal["create", "rw", "ro"]
P = ParamSpec("P")
T = TypeVar("T")


class StoreError(AgentError):
    """The state file cannot be read or written; the message says why."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.STORAGE_ERROR) -> None:
        super().__init__(code, message, status=503)


class StoreMissingError(StoreError):
    """A command that only reads or amends the state file found none (it creates none)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no state file at {path}: the agent has not run with this [storage] data_dir "
            "(or the config points elsewhere); nothing was created"
        )


class StoreBusyError(StoreError):
    """Another connection holds the state file's lock (retried by :meth:`Store.call`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=ErrorCode.STORAGE_BUSY)


class StoreFullError(StoreError):
    """The disk (or the file system's quota) is full: the state file cannot grow."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=ErrorCode.STORAGE_FULL)


class StoreCorruptError(StoreError):
    """The state file is damaged or is not a SQLite database."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=ErrorCode.STORAGE_CORRUPT)


_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED"}
_FULL = {"SQLITE_FULL"}
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def translate(exc: sqlite3.Error, path: Path, action: str) -> StoreError:
    """The typed error for a sqlite3 exception met while doing ``action`` on ``path``."""
    name = (getattr(exc, "sqlite_errorname", None) or "").split("_", 2)
    base = "_".join(name[:2])  # SQLITE_BUSY_SNAPSHOT -> SQLITE_BUSY
    text = f"cannot {action} the state file {path}: {exc}"
    if base in _BUSY:
        return StoreBusyError(f"{text} (another process holds its lock)")
    if base in _FULL:
        return StoreFullError(f"{text}; free disk space")
    if base in _CORRUPT or "malformed" in str(exc):
        return StoreCorruptError(
            f"{text}; the file is damaged: stop the agent, move it aside and start again"
        )
    return StoreError(text)


class Store:
    """Typed access to the state file.

    On the event loop, call methods through :meth:`call` (``await store.call(store.x,
    ...)``); they then execute on the store's lane. :meth:`read` runs a short query on the
    read-only connection from any thread. Given no ``lane`` (tests, the CLI), the store
    makes its own.
    """

    def __init__(
        self,
        data_dir: Path,
        migrations: list[tuple[str, Migration]] | None = None,
        *,
        busy_wait_s: float = 300.0,
        mode: OpenMode = "create",
        lane: Lane | None = None,
    ) -> None:
        self.path = data_dir / DB_NAME
        self.busy_wait_s = busy_wait_s
        self._reader: sqlite3.Connection | None = None
        self._reader_uri = f"file:{self.path}?mode=ro"
        try:
            self.db = sqlite_utils.Database(self._connect(data_dir, mode))
            self.db.execute(f"PRAGMA busy_timeout={ATTEMPT_BUSY_TIMEOUT_MS}")
            if mode == "create":
                self.db.execute("PRAGMA journal_mode=WAL")
            if mode != "ro":
                self.db.execute("PRAGMA synchronous=FULL")
                # Deleted rows (a session's roster: names, embeddings; face crops) are
                # overwritten with zeros, not left in free pages (see delete_session).
                self.db.execute("PRAGMA secure_delete=ON")
            if mode == "create":
                self._migrate(migrations if migrations is not None else MIGRATIONS)
            self._reader = sqlite3.connect(self._reader_uri, uri=True, check_same_thread=False)
            self._reader.execute(f"PRAGMA busy_timeout={READER_BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise translate(exc, self.path, "open") from exc
        except OSError as exc:
            raise StoreError(f"cannot open the state file in {data_dir}: {exc}") from exc
        # Queued writes still run when the lane closes (finish_queued): none is lost.
        self.lane = lane if lane is not None else Lane("sqlite", 1, finish_queued=True)
        self._busy_since: float | None = None  # first lock met by calls still waiting
        self._waiting = 0  # calls waiting for the lock now
        self.last_error: tuple[float, StoreError] | None = None  # (when, what), for status

    def _connect(self, data_dir: Path, mode: OpenMode) -> sqlite3.Connection:
        """The writer connection. Only "create" may create the file (and its folder)."""
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), so a
        # migration's DDL is inside its transaction too (the legacy mode commits DDL).
        if mode == "create":
            data_dir.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if not self.path.is_file():
            raise StoreMissingError(self.path)
        uri = f"{self.path.resolve().as_uri()}?mode={mode}"
        if mode == "ro" and not self.path.with_name(DB_NAME + "-wal").exists():
            # No WAL: no agent has the file open, and it is fully checkpointed. Reading it
            # as immutable creates no -wal/-shm beside it (files that, made by root, would
            # stop the agent's user from opening the state file).
            uri += "&immutable=1"
            self._reader_uri = uri
        return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)

    # Transactions and threads --------------------------------------------------------

    @contextlib.contextmanager
    def write(self, action: str = "write") -> Iterator[sqlite_utils.Database]:
        """One write transaction (``BEGIN IMMEDIATE``: take the write lock first, so a
        read-then-write never deadlocks with another writer); sqlite3 errors translated."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate(exc, self.path, action) from exc
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as exc:
            if self.db.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, self.path, action) from exc
            raise

    def query(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows (as dicts) of a read on the writer connection: store thread only."""
        return self._rows(self.db.conn, sql, params)

    def read(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows (as dicts) of a short query on the read-only connection: event loop only
        (WAL readers never wait for a writer, so this does not block the loop)."""
        if self._reader is None:
            raise StoreError(f"the state file {self.path} is closed")
        return self._rows(self._reader, sql, params)

    def _rows(
        self, conn: sqlite3.Connection, sql: str, params: list[Any] | tuple[Any, ...]
    ) -> list[dict[str, Any]]:
        try:
            cursor = conn.execute(sql, params)
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise translate(exc, self.path, "read") from exc

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the store's lane; while the file is locked by another process,
        retry for up to ``busy_wait_s`` (then the :class:`StoreBusyError` is raised).

        A caller cancelled while ``fn`` runs does not stop it: the transaction completes
        or rolls back on the store's thread, never half-done.
        """
        deadline: float | None = None  # set (and this call counted) once it meets the lock
        retries = _BUSY_RETRY.retries()
        try:
            while True:
                try:
                    return await self.lane.call(fn, *args, **kwargs)
                except LaneClosedError as exc:
                    raise StoreError(f"the state file {self.path} is closed") from exc
                except StoreBusyError as exc:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.busy_wait_s
                        self._lock_met(now)
                    if now >= deadline:
                        self.last_error = (time.time(), exc)
                        log.error(
                            "STATE_STORE_BUSY_GAVE_UP path=%s after %.0fs",
                            self.path,
                            self.busy_wait_s,
                        )
                        raise
                    await asyncio.sleep(min(retries.next(), deadline - now))
                except StoreError as exc:
                    self.last_error = (time.time(), exc)
                    raise
        finally:
            if deadline is not None:
                self._lock_left()

    def _lock_met(self, now: float) -> None:
        """A call met another process's lock: count it; the first one says so."""
        self._waiting += 1
        if self._busy_since is None:
            self._busy_since = now
            log.warning(
                "STATE_STORE_BUSY path=%s waiting up to %.0fs for the lock",
                self.path,
                self.busy_wait_s,
            )

    def _lock_left(self) -> None:
        """A call that met the lock is done (either way); the last one says so."""
        self._waiting -= 1
        if self._waiting == 0 and self._busy_since is not None:
            log.warning(
                "STATE_STORE_AVAILABLE path=%s locked_for=%.1fs",
                self.path,
                time.monotonic() - self._busy_since,
            )
            self._busy_since = None

    @property
    def busy_for(self) -> float | None:
        """Seconds the state file has been locked by another process (None: not locked)."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    def _migrate(self, migrations: list[tuple[str, Migration]]) -> None:
        with self.write("create"):
            if not self.db.table("migrations").exists():
                self.db.table("migrations").create({"name": str, "applied_at": float}, pk="name")
        done = {row["name"] for row in self.query("select name from migrations")}
        for name, migration in migrations:
            if name in done:
                continue
            # The migration and its record commit together or not at all: an interrupted
            # upgrade (crash, kill, error) leaves the previous schema for the next start.
            with self.write(f"migrate ({name})"):
                migration(self.db)
                self.db.execute(
                    "insert into migrations (name, applied_at) values (?, ?)", [name, time.time()]
                )
            log.info("STATE_STORE_MIGRATED migration=%s", name)

    def close(self) -> None:
        """Finish queued work, close the store's lane (the agent's sqlite lane is closed
        last of all, here or just before), close both connections (checkpoints the WAL)."""
        self.lane.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.db.conn.close()

    # Sessions ------------------------------------------------------------------------

    def save_session(self, slot_id: str, command: dict[str, Any], end_time: float | None) -> None:
        """Persist a started session with everything needed to resume it."""
        with self.write("save a session in"):
            self.db.execute(
                "insert or replace into sessions (slot_id, command, started_at, end_time) "
                "values (?, ?, ?, ?)",
                [slot_id, json.dumps(command), time.time(), end_time],
            )

    def delete_session(self, slot_id: str) -> None:
        """Forget a session (it stopped), and the students it reported."""
        with self.write("delete a session from"):
            self.delete_session_rows(slot_id)
        self.checkpoint()

    def delete_session_rows(self, slot_id: str) -> None:
        """:meth:`delete_session` inside a transaction the caller holds (the outbox commits
        a session's STOPPED event in the same one: a crash keeps both or neither)."""
        self.db.execute("delete from sessions where slot_id = ?", [slot_id])
        self.db.execute("delete from recognized where slot_id = ?", [slot_id])
        self.db.execute("delete from presence where slot_id = ?", [slot_id])

    def checkpoint(self) -> None:
        """After a delete of personal data (store thread): the WAL still holds the old pages
        (a roster, a face crop); copy the new ones into the file, where secure_delete
        zeroed the rows, and truncate the WAL. Best effort (busy with a reader in the way)."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def sessions(self) -> list[dict[str, Any]]:
        """Persisted sessions, oldest first, with the command decoded (None when the
        stored command is not readable JSON)."""
        rows = self.query(
            "select slot_id, command, started_at, end_time from sessions order by started_at"
        )
        for row in rows:
            try:
                row["command"] = json.loads(row["command"])
            except ValueError:
                row["command"] = None
        return rows

    # Students already reported (ATTENDANCE mode survives restarts) --------------------

    def record_recognition(
        self, slot_id: str, student_id: str, book: dict[str, Any], *, once: bool
    ) -> bool:
        """Save the presence evidence of a student's RECOGNITION and, with ``once``
        (ATTENDANCE mode), record the student as reported, in one transaction. Returns
        False when ``once`` and the slot had reported the student already."""
        with self.write("record a recognition in"):
            newly = True
            if once:
                cursor = self.db.execute(
                    "insert or ignore into recognized (slot_id, student_id, recognized_at) "
                    "values (?, ?, ?)",
                    [slot_id, student_id, time.time()],
                )
                newly = bool(cursor.rowcount)
            self.db.execute(
                "insert or replace into presence (slot_id, book, saved_at) values (?, ?, ?)",
                [slot_id, json.dumps(book), time.time()],
            )
        return newly

    def recognized(self, slot_id: str) -> set[str]:
        """Students already reported for a slot."""
        rows = self.query("select student_id from recognized where slot_id = ?", [slot_id])
        return {str(r["student_id"]) for r in rows}

    def clear_recognized(self, slot_id: str) -> None:
        """Forget a slot's reported students (its session ended)."""
        with self.write("clear recognitions in"):
            self.db.execute("delete from recognized where slot_id = ?", [slot_id])

    # Presence evidence (agent.session.presence) ----------------------------------------------

    def save_presence(self, slot_id: str, book: dict[str, Any]) -> None:
        """Persist a session's presence evidence (replacing the previous copy)."""
        with self.write("save presence in"):
            self.db.execute(
                "insert or replace into presence (slot_id, book, saved_at) values (?, ?, ?)",
                [slot_id, json.dumps(book), time.time()],
            )

    def presence(self, slot_id: str) -> dict[str, Any] | None:
        """A session's saved presence evidence, or None (none saved, or unreadable)."""
        rows = self.query("select book from presence where slot_id = ?", [slot_id])
        if not rows:
            return None
        try:
            book = json.loads(rows[0]["book"])
        except ValueError:
            return None
        return book if isinstance(book, dict) else None

    # Replies (idempotency) -----------------------------------------------------------

    def save_reply(self, request_id: str, command: str, reply: dict[str, Any]) -> None:
        """Remember the reply sent for a request id."""
        with self.write("save a reply in"):
            self.db.execute(
                "insert or replace into replies (request_id, command, reply, created_at) "
                "values (?, ?, ?, ?)",
                [request_id, command, json.dumps(reply), time.time()],
            )

    def find_reply(self, request_id: str, max_age_s: float) -> dict[str, Any] | None:
        """The reply already sent for this request id, if recent enough."""
        rows = self.query(
            "select reply from replies where request_id = ? and created_at >= ?",
            [request_id, time.time() - max_age_s],
        )
        if not rows:
            return None
        try:
            found = json.loads(rows[0]["reply"])
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def prune_replies(self, max_age_s: float) -> int:
        """Drop remembered replies older than ``max_age_s``; returns how many."""
        with self.write("prune replies in"):
            cursor = self.db.execute(
                "delete from replies where created_at < ?", [time.time() - max_age_s]
            )
        return int(cursor.rowcount)
