"""A real Mosquitto broker for tests, and a small request/reply client on aiomqtt."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

API_KEY = "test-key-0123456789"


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str:
    """Path of the mosquitto executable (installed by scripts/system-deps.sh)."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("mosquitto is not installed: run `make system-deps`")
    return found


class Mosquitto:
    """A broker process on 127.0.0.1 that tests can stop and restart on the same port."""

    def __init__(
        self, workdir: Path, *, persistence: bool = True, listener_lines: list[str] | None = None
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.persistence = persistence
        self.listener_lines = listener_lines or ["allow_anonymous true"]
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        # Run as root, mosquitto drops to its own user: it must be able to write here.
        os.chmod(workdir, 0o777)

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            *self.listener_lines,
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            # Run as root, mosquitto would drop to its own user, which cannot read the
            # test's private temp folders.
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its persistence file; SIGKILL does not)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


def v5_request_properties(
    response_topic: str, correlation: bytes, api_key: str | None
) -> Properties:
    """PUBLISH properties of a v5 request."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    if api_key is not None:
        props.UserProperty = [("x-api-key", api_key)]
    return props


class Backend:
    """The backend's side: publishes commands and collects replies (an aiomqtt client)."""

    def __init__(
        self, client: aiomqtt.Client, site: str = "site-1", prefix: str = "attendance"
    ) -> None:
        self.client = client
        self.base = f"{prefix}/{site}"
        self.response_topic = f"backend-test/{uuid.uuid4().hex}/replies"
        self._waiters: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self.plain_replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Backend:
        await self.client.subscribe(self.response_topic, qos=1)
        await self.client.subscribe(f"{self.base}/reply", qos=1)
        self._reader = asyncio.create_task(self._read(), name="backend-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        async for message in self.client.messages:
            body = json.loads(message.payload)  # type: ignore[arg-type]
            correlation = getattr(message.properties, "CorrelationData", None)
            if correlation is not None and correlation in self._waiters:
                self._waiters.pop(correlation).set_result(body)
            elif str(message.topic).endswith("/reply"):
                await self.plain_replies.put(body)

    async def send(
        self,
        command: str,
        payload: dict[str, Any] | bytes,
        *,
        api_key: str | None = API_KEY,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Publish a v5 request and wait for its reply."""
        correlation = uuid.uuid4().bytes
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[correlation] = future
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(
            f"{self.base}/cmd/{command}",
            body,
            qos=1,
            properties=v5_request_properties(self.response_topic, correlation, api_key),
        )
        async with asyncio.timeout(timeout):
            return await future

    async def publish_only(
        self, command: str, payload: dict[str, Any], *, api_key: str = API_KEY
    ) -> asyncio.Future[dict[str, Any]]:
        """Publish a v5 request without waiting; returns the future of its reply."""
        correlation = uuid.uuid4().bytes
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[correlation] = future
        await self.client.publish(
            f"{self.base}/cmd/{command}",
            json.dumps(payload).encode(),
            qos=1,
            properties=v5_request_properties(self.response_topic, correlation, api_key),
        )
        return future

    async def reply_for_future(
        self, future: asyncio.Future[dict[str, Any]], timeout: float = 15.0
    ) -> dict[str, Any]:
        """Wait for the reply of a request sent with ``publish_only``."""
        async with asyncio.timeout(timeout):
            return await future
