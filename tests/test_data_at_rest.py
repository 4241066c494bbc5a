"""Secrets and biometric data at rest, read from the real state file's bytes: a session's
inline camera password and callback token never reach ``agent.db`` or its WAL (while the
session runs, and after), the deleted session's names and embeddings are gone from both
(``secure_delete`` and a WAL checkpoint), a session resumed after a restart is resumed
without those credentials (and says so), and dead letters lose their face crops after
``[callback] dead_letter_crop_retention_s``."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.devkit.brokers import Mosquitto
from agent.devkit.callback_receiver import CallbackServer
from agent.events.housekeeping import housekeeping
from agent.events.outbox import Outbox
from agent.events.store import DB_NAME, Store
from agent.protocol import RecognitionEvent, SessionMode
from tests.agent_harness import agent_config, backend, running_agent, start_payload
from tests.waiting import wait_until

PASSWORD = "Pa55-Camera-9zQ"
TOKEN = "T0ken-Qx81-secret"
NAME = "Zelda Quintavalle-Ruiz"
# A 512-d embedding whose values print as distinctive decimals in JSON.
EMBEDDING = [round(0.0001234567 + i * 1e-7, 10) for i in range(512)]
MARKERS = [repr(v) for v in EMBEDDING[100:105]]


def _state_bytes(data_dir: Path) -> bytes:
    """The state file and its WAL, as they are on disk now."""
    return b"".join(
        (data_dir / name).read_bytes()
        for name in (DB_NAME, DB_NAME + "-wal")
        if (data_dir / name).exists()
    )


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackServer]:
    server = CallbackServer()
    await server.start()
    yield server
    await server.stop()


def _config(tmp_path: Path, broker: Mosquitto, receiver: CallbackServer) -> AgentConfig:
    return agent_config(tmp_path / "data", broker, callback={"allowed_urls": [receiver.url("/")]})


def _payload(receiver: CallbackServer) -> dict[str, Any]:
    return start_payload(
        "slot-private",
        EMBEDDING,
        callbackUrl=f"{receiver.url('/cb')}?token={TOKEN}",
        cameras=[{"id": "door", "rtspUrl": f"rtsp://admin:{PASSWORD}@127.0.0.1:1/room"}],
        students=[{"id": "stu-1", "name": NAME, "embeddings": [EMBEDDING]}],
    )


def _statuses(receiver: CallbackServer) -> list[tuple[str, str]]:
    return [(r.body.get("status", ""), r.query) for r in receiver.delivered("/cb")]


async def test_credentials_never_at_rest_and_roster_gone_after_stop(
    broker: Mosquitto, tmp_path: Path, receiver: CallbackServer
) -> None:
    cfg = _config(tmp_path, broker, receiver)
    data = cfg.storage.data_dir
    async with running_agent(cfg, outbox=True) as _, backend(broker) as b:
        reply = await b.send("session/start", _payload(receiver))
        assert reply["status"] == 200, reply
        await receiver.wait_delivered(1, path_prefix="/cb")
        # The backend got its token: the full URL is used, from memory.
        assert _statuses(receiver) == [("STARTED", f"token={TOKEN}")]
        running = _state_bytes(data)
        assert PASSWORD.encode() not in running
        assert TOKEN.encode() not in running
        # The roster is kept while the session runs (resuming needs it).
        assert NAME.encode() in running and MARKERS[0].encode() in running
        reply = await b.send("session/stop", {"slotId": "slot-private"})
        assert reply["status"] == 200, reply
        await receiver.wait_delivered(2, path_prefix="/cb")
        assert _statuses(receiver)[1] == ("STOPPED", f"token={TOKEN}")
        stopped = _state_bytes(data)
    after = _state_bytes(data)
    for snapshot in (stopped, after):
        assert PASSWORD.encode() not in snapshot
        assert TOKEN.encode() not in snapshot
        assert NAME.encode() not in snapshot
        assert not [m for m in MARKERS if m.encode() in snapshot]


async def test_a_session_resumed_after_a_restart_has_no_credentials_and_says_so(
    broker: Mosquitto,
    tmp_path: Path,
    receiver: CallbackServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = _config(tmp_path, broker, receiver)
    async with running_agent(cfg, outbox=True), backend(broker) as b:
        assert (await b.send("session/start", _payload(receiver)))["status"] == 200
        await receiver.wait_delivered(1, path_prefix="/cb")
    # A new agent process has no memory of the credentials.
    caplog.set_level(logging.WARNING, logger="agent.session.at_rest")
    async with running_agent(cfg, outbox=True), backend(broker) as b:
        await receiver.wait_delivered(2, path_prefix="/cb")
        status, query = _statuses(receiver)[1]
        assert status == "RESUMED" and TOKEN not in query
        assert "SESSION_RESUMED_WITHOUT_CREDENTIALS slot=slot-private cameras=door" in caplog.text
        assert PASSWORD not in caplog.text and TOKEN not in caplog.text
        assert (await b.send("session/stop", {"slotId": "slot-private"}))["status"] == 200
    assert PASSWORD.encode() not in _state_bytes(cfg.storage.data_dir)


async def test_dead_letters_lose_their_face_crop_after_the_retention(tmp_path: Path) -> None:
    crop = base64.b64encode(b"\xff\xd8\xff\xe0 a face crop that must not stay \xff\xd9" * 4)
    store = Store(tmp_path)
    outbox = Outbox(store, max_pending=100)
    event = RecognitionEvent(
        event_id="0b5f1c1e-1111-4222-8333-444455556666",
        slot_id="slot-1",
        site_id="site-1",
        mode=SessionMode.ATTENDANCE,
        student_id="stu-1",
        confidence=0.9,
        camera_id="cam-1",
        recognized_at=datetime.now(UTC),
        embedding_space="arcface-x",
        face_jpeg=crop.decode(),
    )
    stored = await outbox.add(event, "http://127.0.0.1:9/cb")
    await outbox.mark_dead(stored, 1, "403 Forbidden", 403)
    assert crop in _state_bytes(tmp_path)
    task = asyncio.create_task(
        housekeeping(
            store,
            outbox,
            reply_cache_s=3600,
            delivered_retention_s=3600,
            dead_letter_crop_retention_s=1.0,
        )
    )
    try:
        # Kept for the retention, then purged (housekeeping checks every half of it).
        await asyncio.sleep(0.3)
        assert crop in _state_bytes(tmp_path)
        await wait_until(lambda: crop not in _state_bytes(tmp_path), 5, "the crop purged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert outbox.describe().counts["dead"] == 1  # still a dead letter, with its reason
    assert outbox.dead_letters()[0]["lastError"] == "403 Forbidden"
    store.close()
    assert crop not in _state_bytes(tmp_path)
