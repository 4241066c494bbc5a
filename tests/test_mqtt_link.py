"""The MQTT link notices a broker that leaves before acknowledging the link's first
publish. A real broker cannot be made to hold a PUBACK back on cue, so this uses a
minimal MQTT 3.1.1 peer that connects, grants the subscription, takes the retained status
and then hangs up without acknowledging it."""

from __future__ import annotations

import asyncio
import contextlib

from agent.config import MqttConfig
from agent.transport.mqtt import IncomingMessage, MqttLink
from tests.waiting import wait_until

CONNACK = bytes([0x20, 0x02, 0x00, 0x00])


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT control packet: (packet type, body)."""
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header >> 4, await reader.readexactly(length)


class HangUpBroker:
    """Accepts one client, answers CONNECT and SUBSCRIBE, hangs up on its first PUBLISH."""

    def __init__(self) -> None:
        self.sessions = 0
        self.hung_up = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, body = await _read_packet(reader)
                if kind == 1:  # CONNECT
                    writer.write(CONNACK)
                elif kind == 8:  # SUBSCRIBE: packet id, then granted QoS 1
                    writer.write(bytes([0x90, 0x03]) + body[:2] + b"\x01")
                elif kind == 3 and self.sessions == 1:  # the status PUBLISH: never acked
                    break
                await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        self.hung_up.set()


async def _ignore(message: IncomingMessage) -> None:
    raise AssertionError(f"no command expected, got {message.topic}")


async def test_broker_leaving_before_the_first_puback_is_noticed_at_once() -> None:
    broker = HangUpBroker()
    async with broker as port:
        cfg = MqttConfig(
            host="127.0.0.1", port=port, protocol="3.1.1", reconnect_min_s=30, reconnect_max_s=30
        )
        link = MqttLink(cfg, "site-1", _ignore, lambda: {"state": "online"})
        task = asyncio.create_task(link.run(), name="link-under-test")
        try:
            await wait_until(lambda: link.connects == 1, 10, "the first connection")
            await asyncio.wait_for(broker.hung_up.wait(), 5)
            # aiomqtt waits 10 s for a PUBACK; the link must not sit inside that wait.
            await wait_until(lambda: not link.connected, 3, "the link noticing the hang-up")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
