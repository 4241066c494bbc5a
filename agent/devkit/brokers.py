"""MQTT brokers on a free local port: a Mosquitto process (MQTT 5, can be stopped and
restarted on the same port) and an in-process amqtt broker (MQTT 3.1.1 only), for machines
without Mosquitto and for testing the agent's protocol fallback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agent.devkit.ports import free_port
from agent.errors import AgentError, ErrorCode


class BrokerError(AgentError):
    """A broker is not installed, or did not start (demo and tests only)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL_ERROR, message, status=500)


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    return found


def mosquitto_binary() -> str:
    """Path of the mosquitto executable; BrokerError when it is not installed."""
    found = find_mosquitto()
    if found is None:
        raise BrokerError("mosquitto is not installed: run `make system-deps`")
    return found


class Mosquitto:
    """A broker process on 127.0.0.1 that can be stopped and restarted on the same port.

    ``workdir`` holds its configuration, log (``mosquitto.log``) and persistence file;
    ``listener_lines`` replace the default ``allow_anonymous true`` (e.g. a password file).
    """

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

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections (blocking)."""
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
            # Run as root, mosquitto would drop to its own user, which cannot read
            # private temp folders.
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        log_path = self.workdir / "mosquitto.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited: {log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise BrokerError(f"mosquitto did not accept connections within {timeout:g} s")

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


@asynccontextmanager
async def amqtt_broker(port: int | None = None) -> AsyncIterator[int]:
    """An in-process amqtt broker (MQTT 3.1.1 only, anonymous) on ``port`` (a free one by
    default), listening while the context is open; yields its port. BrokerError when amqtt
    is not installed (it is a development dependency)."""
    try:
        from amqtt.broker import Broker
    except ImportError as exc:
        raise BrokerError("amqtt is not installed (pip install amqtt)") from exc

    port = port if port is not None else free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield port
    finally:
        await broker.shutdown()
