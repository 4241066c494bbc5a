"""kill -9 of the real agent process the moment a stopped session's row leaves the state
file: its STOPPED event must already be committed (one transaction), and is delivered by
the restarted agent, which does not resume the session."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.devkit.brokers import Mosquitto
from agent.devkit.callback_receiver import CallbackServer
from tests.agent_harness import backend, spawn_agent, start_payload, wait_answering


def _spawn(tmp_path: Path, broker: Mosquitto, server: CallbackServer) -> subprocess.Popen[bytes]:
    return spawn_agent(
        tmp_path,
        broker,
        server.url("/"),
        AGENT_CALLBACK__FIRST_RETRY_S="0.05",
        AGENT_CALLBACK__RETRY_MAX_S="0.3",
    )


# Run in a process of its own (no GIL shared with the test's event loop): it takes the
# state file's write lock over and over, giving it back at once while the slot's session
# row is there, so right after the transaction that deleted the row it holds the lock when
# it looks, and SIGKILLs the agent before any later transaction of the agent's can commit.
WATCHER = """
import os, signal, sqlite3, sys, time
db, slot, pid, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
conn = sqlite3.connect(db, isolation_level=None, timeout=0)
deadline = time.monotonic() + timeout
print("watching", flush=True)
while time.monotonic() < deadline:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        continue  # the agent is writing
    try:
        if not conn.execute("select 1 from sessions where slot_id = ?", [slot]).fetchone():
            os.kill(pid, signal.SIGKILL)
            print("killed", flush=True)
            sys.exit(0)
    finally:
        conn.execute("ROLLBACK")
sys.exit(1)
"""


def _watch(db: Path, slot: str, pid: int, timeout: float) -> subprocess.Popen[str]:
    """Start the watcher; returns once it is looking."""
    args = [sys.executable, "-c", WATCHER, str(db), slot, str(pid), str(timeout)]
    watcher = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert watcher.stdout is not None and watcher.stdout.readline() == "watching\n"
    return watcher


def _state(db: Path, slot: str) -> tuple[list[str], list[dict[str, Any]]]:
    with sqlite3.connect(db) as conn:
        rows = [
            r[0] for r in conn.execute("select slot_id from sessions where slot_id = ?", [slot])
        ]
        bodies = [json.loads(r[0]) for r in conn.execute("select body from events")]
    stopped = [b for b in bodies if b["slotId"] == slot and b.get("status") == "STOPPED"]
    return rows, stopped


@pytest.mark.slow
async def test_sigkill_as_the_row_leaves_keeps_the_stopped_event(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float]
) -> None:
    db = tmp_path / "data" / "agent.db"
    cameras = [{"id": "c1", "rtspUrl": "rtsp://127.0.0.1:1/c1"}]
    payload = start_payload("slot-k", yao_embedding, callbackUrl=server.url(), cameras=cameras)
    proc = _spawn(tmp_path, broker, server)
    try:
        await wait_answering(broker, proc)
        async with backend(broker) as b:
            assert (await b.send("session/start", payload))["status"] == 200
            await server.wait_delivered(1)
            watcher = await asyncio.to_thread(_watch, db, "slot-k", proc.pid, 20)
            await b.publish_only("session/stop", {"slotId": "slot-k"})
            await asyncio.to_thread(watcher.communicate, timeout=30)  # closes its pipe
            assert watcher.returncode == 0, "the session's row never left the state file"
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows, stopped = _state(db, "slot-k")
    # Never neither: with the row gone, the STOPPED event was committed with it.
    assert rows == [] and len(stopped) == 1, (rows, stopped)
    assert stopped[0]["reason"] == "REQUESTED" and stopped[0]["presence"]
    proc = _spawn(tmp_path, broker, server)
    try:
        await server.wait_delivered(2, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert [r.body["status"] for r in server.delivered()] == ["STARTED", "STOPPED"]
