"""The agent as a real process: `python -m agent run`, SIGTERM, restart with a session."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import cv2
import pytest

from agent.engine import FaceEngine
from tests.agent_harness import MODELS_DIR, ROOT, backend, start_payload
from tests.brokers import API_KEY, Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "broker")
    server.start()
    yield server
    server.stop()


def _start_agent(tmp_path: Path, broker: Mosquitto) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "AGENT_MQTT__PORT": str(broker.port),
        "AGENT_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "AGENT_MODELS__DIR": str(MODELS_DIR),
        "AGENT_METRICS__PORT": "0",
        # The test cameras do not exist: keep them "reconnecting" for the test's duration.
        "AGENT_CAMERAS__RECONNECT_ATTEMPTS": "100",
        "AGENT_AUTH__API_KEYS": API_KEY,
        "AGENT_CALLBACK__ALLOWED_URLS": '["http://127.0.0.1:9/"]',
        "AGENT_LOGGING__FORMAT": "json",
    }
    log = (tmp_path / "agent.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(ROOT / "config.toml")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    log.close()
    return proc


async def _wait_online(broker: Mosquitto, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.subscribe("attendance/site-1/status", qos=1)
                try:
                    async with asyncio.timeout(0.5):
                        async for message in client.messages:
                            body = json.loads(message.payload)  # type: ignore[arg-type]
                            if body["state"] == "online":
                                return dict(body)
                            break
                except TimeoutError:
                    pass
            await asyncio.sleep(0.1)


def _stop(proc: subprocess.Popen[str], timeout: float = 20) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


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


async def test_killed_agent_leaves_last_will(broker: Mosquitto, tmp_path: Path) -> None:
    proc = _start_agent(tmp_path, broker)
    try:
        await _wait_online(broker)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The broker publishes the will once it notices the dead connection (keepalive 30 s,
    # but a closed socket is noticed at once).
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("attendance/site-1/status", qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                if json.loads(message.payload)["state"] == "offline":  # type: ignore[arg-type]
                    break
