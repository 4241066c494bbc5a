"""MQTT without TLS or a login, off loopback: ``check-config`` warns (a real config file,
the real command line), and a running agent connected to a real broker on this machine's
network address reports ``MQTT_INSECURE`` in its status ``warnings`` and on the status
page; a login (or a broker on loopback) removes the warning."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.devkit.brokers import Mosquitto
from agent.devkit.ports import free_port
from tests.agent_harness import agent_config, running_agent

ROOT = Path(__file__).resolve().parent.parent


def _network_address() -> str:
    """This machine's address on its network (not loopback), as a broker host."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    return address


def _check_config(tmp_path: Path, mqtt: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.write_text(f"[mqtt]\n{mqtt}\n")
    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("mqtt", "warned"),
    [
        ('host = "10.1.2.3"', True),
        ('host = "broker.school.example"', True),
        ('host = "10.1.2.3"\nusername = "edge-agent"', False),
        ('host = "127.0.0.1"', False),
        ('host = "localhost"', False),
    ],
)
def test_check_config_warns_about_plain_mqtt_off_loopback(
    tmp_path: Path, mqtt: str, warned: bool
) -> None:
    result = _check_config(tmp_path, mqtt)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "MQTT_INSECURE" in line]
    if warned:
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Warning: mqtt: MQTT_INSECURE:")
        assert "neither TLS nor a login" in lines[0]
    else:
        assert lines == [], result.stderr


@pytest.fixture
def lan_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, str, int]]:
    """A real broker that also listens on this machine's network address."""
    host, port = _network_address(), free_port()
    broker = Mosquitto(
        tmp_path / "lan-broker", listener_lines=["allow_anonymous true", f"listener {port} {host}"]
    )
    broker.start()
    yield broker, host, port
    broker.stop()


async def _get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        assert response.status == 200, url
        return json.loads(await response.text())


@pytest.mark.parametrize("login", [None, "edge-agent"])
async def test_status_and_page_warn_while_connected_without_tls_or_login(
    tmp_path: Path, lan_broker: tuple[Mosquitto, str, int], login: str | None
) -> None:
    broker, host, port = lan_broker
    mqtt: dict[str, Any] = {"host": host, "port": port}
    if login:
        mqtt |= {"username": login, "password": "not-checked-by-this-broker"}
    cfg = agent_config(tmp_path / "data", broker, mqtt=mqtt)
    async with running_agent(cfg) as agent:
        assert agent.http is not None and agent.link is not None and agent.link.connected
        base = f"http://127.0.0.1:{agent.http.port}"
        status, page = await asyncio.gather(
            _get_json(f"{base}/status"), _get_json(f"{base}/ui/api/state")
        )
    found = [w for w in status["warnings"] if w.startswith("MQTT_INSECURE: ")]
    shown = [w for w in page["warnings"] if w.startswith("MQTT_INSECURE: ")]
    if login:
        assert found == [] and shown == []
    else:
        assert len(found) == 1 and f"{host}:{port}" in found[0]
        assert shown == found
