"""The agent as a real process: `python -m agent run`, SIGTERM, restart with a session."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiomqtt
import cv2
import pytest

from agent.devkit.brokers import Mosquitto
from agent.vision.engine import FaceEngine
from tests.agent_harness import API_KEY, backend, spawn_agent, start_payload


def _start_agent(tmp_path: Path, broker: Mosquitto) -> subprocess.Popen[bytes]:
    return spawn_agent(tmp_path, broker, "http://127.0.0.1:9/", AGENT_LOGGING__FORMAT="json")


async def _wait_online(broker: Mosquitto, timeout: float = 30) -> dict[str, Any]:
    """The agent's status once it says online (retained, or published while we listen)."""
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("attendance/site-1/status", qos=1)
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                body = json.loads(message.payload)  # type: ignore[arg-type]
                if body["state"] == "online":
                    return dict(body)
    raise AssertionError("the agent never said it was online")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.slow
async def test_sigterm_stops_cleanly_and_session_resumes(
    broker: Mosquitto, tmp_path: Path, engine: FaceEngine, photos: dict[str, Path]
) -> None:
    (face,) = engine.analyze(cv2.imread(str(photos["yaoming.jpg"])))
    embedding = [float(x) for x in face.embedding]
    proc = _start_agent(tmp_path, broker)
    try:
        online = await _wait_online(broker)
        assert online["modelPack"] == "buffalo_sc"
        async with backend(broker) as b:
            payload = start_payload(
                "slot-proc", embedding, cameras=[{"id": "c", "rtspUrl": "rtsp://127.0.0.1:1/c"}]
            )
            reply = await b.send("session/start", payload)
            assert reply["status"] == 200, reply
        started = time.monotonic()
        assert _stop(proc) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "agent.log").read_text()
    assert "AGENT_STOPPED" in log
    assert API_KEY not in log
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("attendance/site-1/status", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert json.loads(message.payload)["state"] == "offline"  # type: ignore[arg-type]
                break

    proc = _start_agent(tmp_path, broker)
    try:
        online = await _wait_online(broker)
        assert online["activeSessions"] == ["slot-proc"]
        async with backend(broker) as b:
            status = await b.send("status", {})
        assert [s["slotId"] for s in status["data"]["sessions"]] == ["slot-proc"]
        assert _stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "SESSION_RESUMED" in (tmp_path / "agent.log").read_text()


@pytest.mark.slow
async def test_killed_agent_leaves_last_will(broker: Mosquitto, tmp_path: Path) -> None:
    proc = _start_agent(tmp_path, broker)
    try:
        await _wait_online(broker)
        proc.kill()
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Killed, it could not say goodbye itself: an offline status now is the broker's
    # publication of its last will, retained for whoever subscribes later.
    assert returncode == -signal.SIGKILL
    assert "AGENT_STOPPED" not in (tmp_path / "agent.log").read_text()
    # The broker publishes the will once it notices the dead connection (keepalive 30 s,
    # but a closed socket is noticed at once).
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("attendance/site-1/status", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                will = json.loads(message.payload)  # type: ignore[arg-type]
                if will["state"] == "offline":
                    break
    assert will["siteId"] == "site-1" and will["clientId"]
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("attendance/site-1/status", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.retain
                assert json.loads(message.payload) == will  # type: ignore[arg-type]
                break


@pytest.mark.slow
async def test_second_agent_on_the_same_data_dir_exits_2_and_the_first_serves_on(
    broker: Mosquitto, tmp_path: Path
) -> None:
    first = _start_agent(tmp_path, broker)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second: subprocess.Popen[bytes] | None = None
    try:
        await _wait_online(broker)
        second = spawn_agent(
            second_dir,
            broker,
            "http://127.0.0.1:9/",
            AGENT_STORAGE__DATA_DIR=str(tmp_path / "data"),  # the first one's
        )
        code = await asyncio.to_thread(second.wait, 15)
        log = (second_dir / "agent.log").read_text()
        assert code == 2, log[-3000:]
        assert f"PID {first.pid}" in log
        assert "AGENT_ALREADY_RUNNING" in log
        assert (tmp_path / "data" / "agent.lock").read_text().strip() == str(first.pid)
        assert first.poll() is None
        async with backend(broker) as b:
            reply = await b.send("status", {})
        assert reply["status"] == 200
        assert _stop(first) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
async def test_a_wrong_or_missing_key_gets_its_401_on_the_response_topic(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # The spawned agent permits backend-test/# for unauthenticated replies (spawn_agent).
    proc = _start_agent(tmp_path, broker)
    try:
        await _wait_online(broker)
        async with backend(broker) as b:
            wrong = await b.send("status", {"requestId": "wrong-key-1"}, api_key="not-the-key")
            missing = await b.send("status", {"requestId": "no-key-1"}, api_key=None)
        assert _stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Backend resolves a v5 request only from a reply carrying its correlation data, which
    # the agent sends on the request's response topic alone.
    assert (wrong["status"], wrong["code"], wrong["requestId"]) == (
        401,
        "UNAUTHORIZED",
        "wrong-key-1",
    )
    assert (missing["status"], missing["requestId"]) == (401, "no-key-1")
