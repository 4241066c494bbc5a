"""Running a real agent in the test's event loop against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from agent.app import Agent, AgentState
from agent.config import AgentConfig
from agent.devkit.backend import Backend
from agent.devkit.brokers import Mosquitto
from agent.events.event import Event
from agent.protocol import StatusReason
from agent.session.manager import ActiveSession, SessionRunner
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
CALLBACK = "http://127.0.0.1:9/callback"
API_KEY = "test-key-0123456789"  # the key of the test backend (agent_config, spawn_agent)


class HoldRunner:
    """Test runner at the session seam: holds the session's state without cameras."""

    async def run(self, session: ActiveSession) -> StatusReason | None:
        """Wait until the session is stopped."""
        await asyncio.Event().wait()
        return None


class RecordingSink:
    """Test sink at the event seam: keeps every event with its callback URL."""

    def __init__(self) -> None:
        self.events: list[tuple[Event, str]] = []
        self.changed = asyncio.Event()

    async def emit(self, event: Event, callback_url: str) -> None:
        self.events.append((event, callback_url))
        self.changed.set()

    def statuses(self, slot_id: str | None = None) -> list[str]:
        """Status names of SESSION_STATUS events (optionally for one slot), in order."""
        return [
            str(getattr(e, "status", ""))
            for e, _ in self.events
            if e.type == "SESSION_STATUS" and (slot_id is None or e.slot_id == slot_id)
        ]

    async def wait_for(self, status: str, slot_id: str, timeout: float = 15.0) -> None:
        """Wait until a SESSION_STATUS with this status arrives for the slot."""
        async with asyncio.timeout(timeout):
            while status not in self.statuses(slot_id):
                self.changed.clear()
                await self.changed.wait()


async def scrape_metrics(agent: Agent) -> str:
    """The agent's Prometheus page, fetched over its local HTTP endpoint."""
    assert agent.http is not None
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{agent.http.port}/metrics") as response,
    ):
        return await response.text()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def agent_config(data_dir: Path, broker: Mosquitto, **sections: dict[str, Any]) -> AgentConfig:
    """Config for an in-test agent: the test broker, a temp data dir, the real models."""
    base: dict[str, Any] = {
        "mqtt": {
            "port": broker.port,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            # The test backend's response topics; the default (none) is tested itself.
            "unauthenticated_reply_topics": ["backend-test/#"],
        },
        "storage": {"data_dir": data_dir},
        "metrics": {"port": 0},
        "auth": {"api_keys": API_KEY},
        "models": {"dir": MODELS_DIR},
        "callback": {"allowed_urls": ["http://127.0.0.1:9/"]},
        "cameras": {
            # Most tests start several sessions on the one test camera; the refusal of a
            # shared camera (the default) is tested with allow_shared = false.
            "allow_shared": True,
            "registry": [{"id": "cam-1", "name": "Room 1", "url": "rtsp://127.0.0.1:1/room1"}],
        },
    }
    return AgentConfig(**_merge(base, sections))


@contextlib.asynccontextmanager
async def running_agent(
    cfg: AgentConfig,
    sink: RecordingSink | None = None,
    *,
    outbox: bool = False,
    cameras: bool = False,
    runner: SessionRunner | None = None,
) -> AsyncIterator[Agent]:
    """Start an agent, wait until it is connected, and stop it cleanly afterwards.

    Events go to ``sink`` (a new RecordingSink by default), or with ``outbox=True`` to the
    agent's real outbox and callback delivery. Sessions hold their state without reading
    cameras unless ``cameras=True`` (the real camera pipeline).
    """
    agent = Agent(
        cfg,
        sink=None if outbox else (sink or RecordingSink()),
        runner=runner or (None if cameras else HoldRunner()),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent-under-test")
    try:

        def up() -> bool:
            if task.done():
                task.result()  # it failed to start: raise its error
            return bool(agent.state is AgentState.RUNNING and agent.link and agent.link.connected)

        await wait_until(up, 30, "the agent to run and connect")
        yield agent
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
    assert agent.state is AgentState.STOPPED


@contextlib.asynccontextmanager
async def backend(
    broker: Mosquitto,
    *,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5,
    site: str = "site-1",
) -> AsyncIterator[Backend]:
    """A connected backend client."""
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=protocol, socket_options=nodelay
    ) as client:
        async with Backend(client, site=site, api_key=API_KEY) as b:
            yield b


def start_payload(slot: str, embedding: list[float], **extra: Any) -> dict[str, Any]:
    """A valid session/start payload with one student."""
    payload: dict[str, Any] = {
        "slotId": slot,
        "mode": "ATTENDANCE",
        "callbackUrl": CALLBACK,
        "cameras": [{"id": "cam-1"}],
        "students": [
            {"id": "stu-1", "code": "S001", "name": "Yao Ming", "embeddings": [embedding]}
        ],
    }
    payload.update(extra)
    return payload


def spawn_agent(
    tmp_path: Path, broker: Mosquitto, callback_prefix: str, **env: str
) -> subprocess.Popen[bytes]:
    """`python -m agent run` as a real process (log in ``tmp_path/agent.log``), configured
    by environment variables as systemd would; ``env`` adds or overrides settings."""
    settings = {
        **os.environ,
        "AGENT_MQTT__PORT": str(broker.port),
        "AGENT_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "AGENT_MODELS__DIR": str(MODELS_DIR),
        "AGENT_METRICS__PORT": "0",
        # The test cameras do not exist: keep them "reconnecting" for the test's duration.
        "AGENT_CAMERAS__RECONNECT_ATTEMPTS": "100",
        "AGENT_CAMERAS__ALLOW_SHARED": "true",
        "AGENT_MQTT__UNAUTHENTICATED_REPLY_TOPICS": json.dumps(["backend-test/#"]),
        "AGENT_AUTH__API_KEYS": API_KEY,
        "AGENT_CALLBACK__ALLOWED_URLS": json.dumps([callback_prefix]),
        **env,
    }
    with (tmp_path / "agent.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(ROOT / "config.toml")],
            cwd=ROOT,
            env=settings,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def wait_answering(broker: Mosquitto, proc: subprocess.Popen[bytes]) -> None:
    """Wait (up to 30 s) until the agent process ``proc`` answers a status command over
    ``broker``; fails at once if the process exits."""
    async with backend(broker) as b, asyncio.timeout(30):
        while True:
            assert proc.poll() is None, "agent exited"
            try:
                if (await b.send("status", {}, timeout=1))["status"] == 200:
                    return
            except TimeoutError:
                pass
