"""Fault injection against the agent as a process: a real broker, a real RTSP camera, a
real HTTP backend, the real models, and the state file on a small tmpfs so that its disk
can really fill. In one run the test injects, in turn: the state file locked by another
process for 10 s, a full disk, a corrupt model pack dropped into ``models/``, a backend
that redirects, and a broker restart. Afterwards every event is delivered exactly as the
outbox recorded it, the agent still serves, and status says what happened."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import pytest

from agent.devkit.backend import Backend
from agent.devkit.brokers import Mosquitto
from agent.devkit.callback_receiver import CallbackServer
from agent.events.store import DB_NAME
from agent.vision.engine import FaceEngine
from agent.vision.modelpack import ModelPack
from tests.agent_harness import backend, spawn_agent, start_payload
from tests.rtsp import RtspServer
from tests.test_model_faults import drop_in, make_pack
from tests.test_store_faults import Locker


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs for the agent's data folder (a disk that can really fill)."""
    mount = tmp_path / "data"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (run the tests as root): {done.stderr.decode()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk up to its last byte; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512, 1):  # big blocks, then the last bytes
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@asynccontextmanager
async def connected(broker: Mosquitto) -> AsyncIterator[Backend]:
    async with backend(broker) as b:
        yield b


async def status_of(b: Backend) -> dict[str, Any]:
    reply = await b.send("status", {}, timeout=30)
    assert reply["status"] == 200, reply
    data: dict[str, Any] = reply["data"]
    return data


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.2)


def outbox_rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from events order by slot_id, seq")]
    finally:
        conn.close()


def _start(slot: str, embedding: list[float], url: str, camera: str) -> dict[str, Any]:
    stream = camera if camera != DEAD_CAMERA else f"{DEAD_CAMERA}-{slot}"  # one stream each
    cameras = [{"id": f"cam-{slot}", "rtspUrl": stream}]
    return start_payload(slot, embedding, callbackUrl=url, cameras=cameras)


DEAD_CAMERA = "rtsp://127.0.0.1:1/none"


async def lock_for_10_s(b: Backend, db: Path, cb: str, embedding: list[float]) -> None:
    """Another process holds the state file's lock for 10 s: a start waits for it (not
    failed, not lost) while status keeps answering."""
    locker = Locker(db)
    locker.hold(10)
    try:
        start = _start("slot-b", embedding, cb, DEAD_CAMERA)
        pending = asyncio.create_task(b.send("session/start", start, timeout=60))
        locked_at = time.monotonic()
        await asyncio.sleep(1.5)  # past the first attempt's own 1 s wait for the lock
        asked = time.monotonic()
        during = await status_of(b)
        status_took = time.monotonic() - asked
        assert not pending.done()
        started = await pending
        waited = time.monotonic() - locked_at
    finally:
        locker.release()
    assert started["status"] == 200, started
    assert waited > 5  # it really waited for the lock...
    assert status_took < 3  # ...while the agent kept answering
    assert any(w.startswith("STORAGE_BUSY") for w in during["warnings"]), during


async def disk_full(b: Backend, disk: Path, cb: str, embedding: list[float]) -> None:
    """The disk fills up: a start is refused with the real cause and nothing runs; once
    space is freed the same start succeeds."""
    filler = fill(disk)
    try:
        full = await b.send("session/start", _start("slot-c", embedding, cb, DEAD_CAMERA))
        status = await status_of(b)
    finally:
        filler.unlink()
    assert full["status"] == 503, full
    assert full["code"] in ("STORAGE_FULL", "OUTBOX_FULL"), full
    assert "slot-c" not in [s["slotId"] for s in status["sessions"]]
    assert any("STORAGE_FULL" in w or "OUTBOX_FULL" in w for w in status["warnings"]), status
    again = await b.send("session/start", _start("slot-c", embedding, cb, DEAD_CAMERA))
    assert again["status"] == 200, again


async def corrupt_pack(b: Backend, models: Path, default_pack: ModelPack, staging: Path) -> None:
    """A corrupt model pack is dropped in: refused, the good pack keeps serving."""
    drop_in(make_pack(default_pack, staging, "unknown-op-detector"), models / "zz-broken")

    async def reload_failed() -> bool:
        warnings = (await status_of(b))["warnings"]
        return any(w.startswith("MODEL_RELOAD_FAILED") for w in warnings)

    await until(reload_failed, 60, "MODEL_RELOAD_FAILED in status")


def check_outbox_against_backend(
    db: Path, server: CallbackServer, elsewhere: CallbackServer
) -> None:
    """Every event delivered exactly as the outbox recorded it; only the redirected
    session's events are dead letters; nothing pending; nothing went elsewhere."""
    rows = outbox_rows(db)
    assert rows and all(r["state"] in ("delivered", "dead") for r in rows)
    delivered = {r["event_id"]: r for r in rows if r["state"] == "delivered"}
    dead = [r for r in rows if r["state"] == "dead"]
    assert dead and all("/redir/" in r["callback_url"] for r in dead)
    assert all(r["status_code"] == 307 for r in dead)
    received = {r.body["eventId"]: r for r in server.received if r.answered == 200}
    assert set(received) == set(delivered)
    for event_id, row in delivered.items():
        body = dict(received[event_id].body)
        body.pop("faceJpeg", None)
        assert body == json.loads(row["body"]), event_id
        assert int(received[event_id].headers["X-Event-Sequence"]) == row["seq"]
    assert elsewhere.received == []
    statuses = [
        (r["slot_id"], json.loads(r["body"]).get("status"))
        for r in rows
        if r["type"] == "SESSION_STATUS"
    ]
    for slot in ("slot-a", "slot-b", "slot-c", "slot-d"):
        mine = [s for sl, s in statuses if sl == slot]
        assert mine[0] == "STARTED" and mine[-1] == "STOPPED", (slot, mine)
    assert sum(1 for r in rows if r["type"] == "RECOGNITION") == 1  # ATTENDANCE: once


@pytest.mark.slow
async def test_faults_lose_nothing(
    tmp_path: Path,
    broker: Mosquitto,
    server: CallbackServer,
    yao_camera: RtspServer,
    small_disk: Path,
    default_pack: ModelPack,
    engine: FaceEngine,
    photos: dict[str, Path],
) -> None:
    (face,) = engine.analyze(cv2.imread(str(photos["yaoming.jpg"])))
    embedding = [float(x) for x in face.embedding]
    models = tmp_path / "models"
    shutil.copytree(default_pack.path, models / default_pack.path.name)
    elsewhere = CallbackServer()
    await elsewhere.start()
    server.mode = {"/redir": 307, "": "ok"}
    server.location = elsewhere.url("/stolen")
    cb = server.url("/cb")
    proc = spawn_agent(
        tmp_path,
        broker,
        server.url("/"),
        AGENT_STORAGE__DATA_DIR=str(small_disk),
        AGENT_MODELS__DIR=str(models),
        AGENT_MODELS__SETTLE_S="0.5",
        AGENT_CALLBACK__TIMEOUT_S="2",
        AGENT_CALLBACK__FIRST_RETRY_S="0.1",
        AGENT_CALLBACK__RETRY_MAX_S="1",
        AGENT_CALLBACK__AUTOSTOP_FAILURES="0",
        AGENT_CALLBACK__AUTOSTOP_SECONDS="0",
        AGENT_CAMERAS__ALLOW_SHARED="false",
    )
    db = small_disk / DB_NAME
    try:
        async with connected(broker) as b:
            await until(lambda: _answers(b), 60, "agent online")
            reply = await b.send("session/start", _start("slot-a", embedding, cb, yao_camera.url))
            assert reply["status"] == 200, reply
            await until(lambda: _got(server, "RECOGNITION"), 60, "a recognition delivered")
            await lock_for_10_s(b, db, cb, embedding)
            await disk_full(b, small_disk, cb, embedding)
            await corrupt_pack(b, models, default_pack, tmp_path / "staging")
            # A backend that redirects: its events become dead letters, nothing follows.
            redirect = _start("slot-d", embedding, server.url("/redir/cb"), DEAD_CAMERA)
            assert (await b.send("session/start", redirect))["status"] == 200
        # The broker restarts (the agent's persistent session brings it back).
        broker.stop()
        await asyncio.sleep(1.0)
        broker.start()
        async with connected(broker) as b:
            await until(lambda: _answers(b), 60, "agent reconnected")
            for slot in ("slot-a", "slot-b", "slot-c", "slot-d"):
                stopped = await b.send("session/stop", {"slotId": slot})
                assert stopped["status"] == 200, (slot, stopped)

            async def settled() -> bool:
                return bool((await status_of(b))["outbox"]["counts"]["pending"] == 0)

            await until(settled, 60, "outbox settled")
            final = await status_of(b)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await elsewhere.stop()

    log = (tmp_path / "agent.log").read_text()
    assert "AGENT_FATAL" not in log  # nothing was beyond repair
    assert "STATE_STORE_BUSY" in log and "STATE_STORE_AVAILABLE" in log
    # Status told the story.
    warnings = "\n".join(final["warnings"])
    assert "MODEL_RELOAD_FAILED: zz-broken" in warnings
    assert "CALLBACK_DEAD_LETTERS" in warnings
    assert final["model"]["pack"] == default_pack.path.name
    assert final["mqtt"]["connects"] >= 2
    check_outbox_against_backend(db, server, elsewhere)


async def _answers(b: Backend) -> bool:
    try:
        reply = await b.send("status", {}, timeout=2)
    except TimeoutError:
        return False
    return bool(reply["status"] == 200)


async def _got(server: CallbackServer, kind: str) -> bool:
    return any(r.body.get("type") == kind and r.answered == 200 for r in server.received)
