"""Callback delivery inside a real agent: auto-stop, dead letters via the CLI, SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.devkit.brokers import Mosquitto
from agent.devkit.callback_receiver import CallbackServer, Received
from tests.agent_harness import (
    agent_config,
    backend,
    running_agent,
    spawn_agent,
    start_payload,
    wait_answering,
)
from tests.cli import run_cli
from tests.waiting import wait_until

FAST_CALLBACK = {"timeout_s": 0.5, "first_retry_s": 0.05, "retry_max_s": 0.3}


def _cfg(tmp_path: Path, broker: Mosquitto, server: CallbackServer, **callback: Any) -> Any:
    return agent_config(
        tmp_path / "agent",
        broker,
        callback={
            "allowed_urls": [server.url("/")],
            "api_key": "cb-secret",
            **FAST_CALLBACK,
            **callback,
        },
    )


def _start(
    slot: str, yao_embedding: list[float], server: CallbackServer, path: str = "/cb"
) -> dict[str, Any]:
    cameras = [{"id": "c1", "rtspUrl": "rtsp://127.0.0.1:1/c1"}]
    return start_payload(slot, yao_embedding, callbackUrl=server.url(path), cameras=cameras)


async def test_events_reach_the_callback(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float]
) -> None:
    async with (
        running_agent(_cfg(tmp_path, broker, server), outbox=True) as agent,
        backend(broker) as b,
    ):
        assert (await b.send("session/start", _start("slot-1", yao_embedding, server)))[
            "status"
        ] == 200
        assert (await b.send("session/stop", {"slotId": "slot-1"}))["status"] == 200
        await server.wait_delivered(2)
        outbox = agent.outbox
        assert outbox is not None
        await wait_until(lambda: outbox.describe().counts["pending"] == 0, what="outbox drained")
        status = await b.send("status", {})
    statuses = [r.body["status"] for r in server.delivered()]
    assert statuses == ["STARTED", "STOPPED"]
    assert all(r.headers["X-API-Key"] == "cb-secret" for r in server.received)
    assert status["data"]["outbox"]["counts"]["pending"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["failures", "seconds"])
async def test_autostop_on_unresponsive_backend(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float], rule: str
) -> None:
    limits = (
        # 3 failed rounds of 3 POSTs each: a failure is a round, not a POST.
        {"autostop_failures": 3, "attempts_per_round": 3, "autostop_seconds": 0}
        if rule == "failures"
        else {"autostop_failures": 0, "autostop_seconds": 1.5}
    )
    cfg = _cfg(tmp_path, broker, server, **limits)
    alive_at_request: list[bool] = []
    server.mode = {"": 500}
    async with running_agent(cfg, outbox=True) as agent, backend(broker) as b:
        assert agent.sessions is not None
        server.on_request = lambda r: alive_at_request.append(
            agent.sessions.get("slot-u") is not None
        )  # type: ignore[union-attr]
        started = time.monotonic()
        assert (await b.send("session/start", _start("slot-u", yao_embedding, server)))[
            "status"
        ] == 200
        await wait_until(
            lambda: agent.sessions.get("slot-u") is None,  # type: ignore[union-attr]
            15,
            "the session to stop itself",
            interval=0.01,
        )
        stopped_after = time.monotonic() - started
        failures_seen = len(server.received)
        server.on_request = None
        server.mode = {"": "ok"}
        await server.wait_delivered(2, timeout=10)
    if rule == "failures":
        assert failures_seen == 9, failures_seen
        assert all(alive_at_request[:9])  # not before the third round's last POST
    else:
        assert 1.5 <= stopped_after < 5
    bodies = [r.body for r in server.delivered()]
    assert [b["status"] for b in bodies] == ["STARTED", "STOPPED"]
    assert bodies[1]["reason"] == "BACKEND_UNRESPONSIVE"


async def test_two_sessions_one_dead_callback(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float]
) -> None:
    server.mode = {"/dead": 500, "/good": "ok"}
    cfg = _cfg(tmp_path, broker, server, autostop_failures=0, autostop_seconds=0)
    async with running_agent(cfg, outbox=True), backend(broker) as b:
        await b.send("session/start", _start("slot-dead", yao_embedding, server, "/dead"))
        for i in range(3):
            slot = f"slot-good-{i}"
            assert (await b.send("session/start", _start(slot, yao_embedding, server, "/good")))[
                "status"
            ] == 200
            await b.send("session/stop", {"slotId": slot})
        await server.wait_delivered(6, path_prefix="/good", timeout=10)
    assert not server.delivered("/dead")
    assert len(server.received) > 6


def _outbox_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_STORAGE__DATA_DIR": str(data_dir)}
    return run_cli("outbox", *args, env=env, timeout=60)


@pytest.mark.slow
async def test_dead_letter_visible_and_requeued_by_cli(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float]
) -> None:
    server.mode = {"": 400}
    cfg = _cfg(tmp_path, broker, server)
    async with running_agent(cfg, outbox=True) as agent, backend(broker) as b:
        await b.send("session/start", _start("slot-400", yao_embedding, server))
        assert agent.outbox is not None
        outbox = agent.outbox
        await wait_until(lambda: outbox.describe().counts["dead"] == 1, 10, "a dead letter")
        shown = await asyncio.to_thread(_outbox_cli, cfg.storage.data_dir)
        assert shown.returncode == 0, shown.stderr
        stats = json.loads(shown.stdout)
        assert stats["counts"]["dead"] == 1
        assert stats["deadLetters"][0]["statusCode"] == 400
        server.mode = {"": "ok"}
        retried = await asyncio.to_thread(_outbox_cli, cfg.storage.data_dir, "retry")
        assert "Re-queued 1 dead letter" in retried.stdout
        await server.wait_delivered(1, timeout=15)  # the agent's scanner picks it up


def _spawn_agent(
    tmp_path: Path, broker: Mosquitto, server: CallbackServer
) -> subprocess.Popen[bytes]:
    return spawn_agent(
        tmp_path,
        broker,
        server.url("/"),
        AGENT_CALLBACK__TIMEOUT_S="5",
        AGENT_CALLBACK__FIRST_RETRY_S="0.05",
        AGENT_CALLBACK__RETRY_MAX_S="0.3",
        AGENT_CALLBACK__AUTOSTOP_FAILURES="0",
        AGENT_CALLBACK__AUTOSTOP_SECONDS="0",
    )


def _stored_ids(data_dir: Path) -> set[str]:
    with sqlite3.connect(data_dir / "agent.db") as conn:
        return {row[0] for row in conn.execute("select event_id from events")}


@pytest.mark.slow
async def test_sigkill_loses_nothing(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float]
) -> None:
    server.mode = {"": "hang"}
    server.hang_s = 30
    proc = _spawn_agent(tmp_path, broker, server)
    try:
        await wait_answering(broker, proc)
        async with backend(broker) as b:
            for i in range(4):
                assert (await b.send("session/start", _start(f"slot-k{i}", yao_embedding, server)))[
                    "status"
                ] == 200
            await b.send("session/stop", {"slotId": "slot-k0"})
        # Deliveries are in flight (the backend hangs) when the agent is killed.
        await wait_until(lambda: len(server.received) >= 4, 10, "four deliveries in flight")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stored = _stored_ids(tmp_path / "data")
    assert len(stored) == 5  # 4 STARTED + 1 STOPPED, all committed before the kill
    await server.stop()
    server.mode = {"": "ok"}
    server.received.clear()
    await server.start()
    proc = _spawn_agent(tmp_path, broker, server)
    try:
        await server.wait_delivered(len(stored) + 3, timeout=30)  # + 3 RESUMED events
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    delivered = set(server.delivered_ids())
    assert stored <= delivered, f"lost: {stored - delivered}"
    by_slot: dict[str, list[Received]] = {}
    for r in server.delivered():
        by_slot.setdefault(r.body["slotId"], []).append(r)
    for slot, received in by_slot.items():
        seqs = [int(r.headers["X-Event-Sequence"]) for r in received]
        assert seqs == sorted(seqs), (slot, seqs)
