"""TLS and broker credentials: the agent connects with a CA file and a password file."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from agent.devkit.backend import Backend
from agent.devkit.brokers import Mosquitto
from tests.agent_harness import API_KEY, agent_config, running_agent
from tests.waiting import wait_until


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    pki = tmp_path / "pki"
    pki.mkdir()
    _run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=edge-test-ca",
        cwd=pki,
    )
    _run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=pki,
    )
    (pki / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _run(
        "openssl",
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        cwd=pki,
    )
    _run("mosquitto_passwd", "-c", "-b", "passwd", "edge-agent", "s3cret-broker-pw", cwd=pki)
    for path in [pki, *pki.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    broker = Mosquitto(
        tmp_path / "broker",
        listener_lines=[
            "allow_anonymous false",
            f"password_file {pki / 'passwd'}",
            f"cafile {pki / 'ca.pem'}",
            f"certfile {pki / 'server.pem'}",
            f"keyfile {pki / 'server.key'}",
        ],
    )
    broker.start()
    yield broker
    broker.stop()


async def test_agent_over_tls_with_password_file(
    tls_broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = tmp_path / "pki"
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-broker-pw\n")
    cfg = agent_config(
        tmp_path / "agent",
        tls_broker,
        mqtt={
            "tls": True,
            "ca_file": pki / "ca.pem",
            "username": "edge-agent",
            "password_file": secret,
        },
    )
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    async with running_agent(cfg) as agent:
        assert agent.link is not None and agent.link.connected
        async with (
            aiomqtt.Client(
                "127.0.0.1",
                tls_broker.port,
                username="edge-agent",
                password="s3cret-broker-pw",
                tls_context=context,
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client,
            Backend(client, api_key=API_KEY) as b,
        ):
            reply = await b.send("status", {})
    assert reply["status"] == 200
    assert "s3cret-broker-pw" not in caplog.text


async def test_wrong_password_keeps_retrying_and_says_so(
    tls_broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.app import Agent

    pki = tmp_path / "pki"
    cfg = agent_config(
        tmp_path / "agent",
        tls_broker,
        mqtt={
            "tls": True,
            "ca_file": pki / "ca.pem",
            "username": "edge-agent",
            "password": "wrong-password",
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
        },
    )
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    # Refused, then refused again on the retry (reconnect_max_s is 1 s).
    await wait_until(
        lambda: caplog.text.count("MQTT_CONNECT_FAILED") >= 2, 15, "two refused connections"
    )
    assert agent.link is not None and not agent.link.connected
    stop.set()
    async with asyncio.timeout(15):
        await task
    assert caplog.text.count("MQTT_CONNECT_FAILED") >= 2
    assert "wrong-password" not in caplog.text
    assert API_KEY not in caplog.text
