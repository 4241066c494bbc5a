"""MQTT 5 -> 3.1.1 fallback against a real broker that refuses MQTT 5 (amqtt)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from agent.devkit.brokers import Mosquitto
from agent.devkit.ports import free_port
from tests.agent_harness import API_KEY, agent_config, running_agent


class Amqtt(Mosquitto):
    """Only what the harness reads of a broker: its port (amqtt runs as a subprocess)."""

    def __init__(self) -> None:
        self.port = free_port()


@pytest.fixture
def v311_broker() -> Iterator[Amqtt]:
    broker = Amqtt()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.amqtt_broker_main", str(broker.port)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", line
        yield broker
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
async def test_agent_falls_back_to_311(
    v311_broker: Amqtt, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    async with running_agent(agent_config(tmp_path, v311_broker)) as agent:
        assert agent.link is not None and agent.link.protocol == "3.1.1"
        async with aiomqtt.Client(
            "127.0.0.1", v311_broker.port, protocol=aiomqtt.ProtocolVersion.V311
        ) as client:
            await client.subscribe("attendance/site-1/reply", qos=1)
            await client.publish(
                "attendance/site-1/cmd/status",
                json.dumps({"requestId": "old-broker", "apiKey": API_KEY}).encode(),
                qos=1,
            )
            async with asyncio.timeout(10):
                async for message in client.messages:
                    reply = json.loads(message.payload)  # type: ignore[arg-type]
                    break
    assert (reply["requestId"], reply["status"]) == ("old-broker", 200)
    assert reply["data"]["mqtt"]["protocol"] == "3.1.1"
    assert "MQTT_PROTOCOL_FALLBACK" in caplog.text
