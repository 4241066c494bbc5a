"""An embedding-space change is announced: a real model pack with another recognizer
dropped into the models folder swaps in, and status, the retained online message, the
status page and the log say that new sessions need new embeddings, across a restart,
until a session starts in the new space."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.app import Agent
from agent.devkit.brokers import Mosquitto
from agent.status.view import page_state
from agent.vision.modelpack import ModelPack
from tests.agent_harness import agent_config, backend, running_agent
from tests.test_model_reload import SETTLE, _enroll, copy_pack, models_dir, other_space
from tests.waiting import wait_until

__all__ = ["models_dir", "other_space"]  # fixtures used here


def _changed(warnings: list[str]) -> list[str]:
    return [w for w in warnings if w.startswith("EMBEDDING_SPACE_CHANGED")]


async def _online_warnings(broker: Mosquitto, expected: list[str]) -> list[str]:
    """The space-change warnings of the online message (retained, then republished),
    once they are ``expected``, or the last seen after 10 s."""
    seen: list[str] = ["(no online message)"]
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("attendance/site-1/status", qos=1)
        try:
            async with asyncio.timeout(10):
                async for message in client.messages:
                    body = json.loads(message.payload)  # type: ignore[arg-type]
                    if body["state"] == "online":
                        seen = _changed(body["warnings"])
                        if seen == expected:
                            break
        except TimeoutError:
            pass
    return seen


def _start(slot: str, embedding: list[float], space: str) -> dict[str, Any]:
    return {
        "slotId": slot,
        "mode": "ATTENDANCE",
        "callbackUrl": "http://127.0.0.1:9/cb",
        "cameras": [{"id": "cam-1"}],
        "students": [{"id": "stu-1", "embeddings": [embedding], "embeddingSpace": space}],
    }


def _space(agent: Agent) -> str | None:
    return agent.models.engine.embedding_space if agent.models.engine else None


async def test_space_change_is_announced_until_a_session_starts_in_it(
    broker: Mosquitto,
    tmp_path: Path,
    models_dir: Path,
    default_pack: ModelPack,
    other_space: Path,
    photos: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    staging = copy_pack(default_pack, tmp_path / "staging" / "pack-b", recognizer=other_space)
    cfg = agent_config(tmp_path / "agent", broker, models={"dir": models_dir, **SETTLE})
    async with running_agent(cfg) as agent, backend(broker) as b:
        old = await _enroll(b, photos["yaoming.jpg"])
        old_space = old["embeddingSpace"]
        assert _changed((await b.send("status", {}))["data"]["warnings"]) == []  # first pack
        shutil.copytree(staging, models_dir / "pack-b")
        await wait_until(lambda: _space(agent) not in (None, old_space), 15, "the swap")
        new_space = _space(agent)
        status = (await b.send("status", {}))["data"]
        (warning,) = _changed(status["warnings"])
        assert old_space in warning and str(new_space) in warning
        assert "new sessions need embeddings" in warning and "embedding/generate" in warning
        assert agent.reporter is not None
        assert _changed(page_state(agent.reporter.status())["warnings"]) == [warning]
        assert await _online_warnings(broker, [warning]) == [warning]
    assert caplog.text.count("EMBEDDING_SPACE_CHANGED") == 1  # logged once, at the change

    # A restart keeps the notice; sessions with the old embeddings are refused, as it says.
    async with running_agent(cfg) as agent, backend(broker) as b:
        assert _space(agent) == new_space
        assert _changed((await b.send("status", {}))["data"]["warnings"]) == [warning]
        refused = await b.send("session/start", _start("slot-old", old["embedding"], old_space))
        assert (refused["status"], refused["code"]) == (409, "EMBEDDING_MODEL_MISMATCH")
        assert _changed((await b.send("status", {}))["data"]["warnings"]) == [warning]
        new = await _enroll(b, photos["yaoming.jpg"])
        assert new["embeddingSpace"] == new_space
        started = await b.send("session/start", _start("slot-new", new["embedding"], new_space))
        assert started["status"] == 200, started
        assert _changed((await b.send("status", {}))["data"]["warnings"]) == []
        assert await _online_warnings(broker, []) == []  # republished on the change
        await b.send("session/stop", {"slotId": "slot-new"})
    assert "EMBEDDING_SPACE_ADOPTED" in caplog.text
    # Adopted: a restart brings no warning back.
    async with running_agent(cfg), backend(broker) as b:
        assert _changed((await b.send("status", {}))["data"]["warnings"]) == []
