"""The MQTT link: one persistent connection to the broker, kept alive by one loop.

aiomqtt drives paho-mqtt from the event loop (no network thread). This module owns the
transport only: connecting (MQTT 5, falling back to 3.1.1), the persistent session
(``clean_start=False`` with a session expiry, QoS 1 subscriptions), the retained
availability message and its last will, reconnecting with jittered capped backoff, and
publishing. What a message means is the command processor's business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.backoff import Backoff
from agent.config import MqttConfig
from agent.status.models import OfflineMessage, wire

log = logging.getLogger(__name__)

# CONNACK codes meaning "this broker does not speak the protocol version you asked for".
_UNSUPPORTED_PROTOCOL = {1, 132}
MAX_CONCURRENT_HANDLERS = 8


@dataclass(frozen=True)
class IncomingMessage:
    """A message received on a command topic, with the MQTT 5 request properties."""

    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    user_properties: dict[str, str]


Handler = Callable[[IncomingMessage], Awaitable[None]]


def _properties_of(message: aiomqtt.Message) -> tuple[str | None, bytes | None, dict[str, str]]:
    props = message.properties
    if props is None:
        return None, None, {}
    response_topic = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    users = {str(k).lower(): str(v) for k, v in getattr(props, "UserProperty", None) or []}
    return response_topic, correlation, users


class MqttLink:
    """Keeps the agent connected and subscribed; hands each command message to a handler."""

    def __init__(
        self,
        cfg: MqttConfig,
        site_id: str,
        handler: Handler | None = None,
        online_payload: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.site_id = site_id
        self.base = f"{cfg.topic_prefix}/{site_id}"
        self.command_filter = f"{self.base}/cmd/#"
        self.status_topic = f"{self.base}/status"
        self.reply_topic = f"{self.base}/reply"
        self.client_id = cfg.effective_client_id(site_id)
        self._handler = handler
        self._online_payload = online_payload
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._protocol = (
            aiomqtt.ProtocolVersion.V311
            if cfg.protocol == "3.1.1"
            else (aiomqtt.ProtocolVersion.V5)
        )
        self._handlers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_HANDLERS)
        self.connects = 0

    def attach(self, handler: Handler, online_payload: Callable[[], dict[str, Any]]) -> None:
        """Give the link what it serves: the command handler and the 'online' payload.

        For the parts built after the link because they need it (the agent's command
        processor replies through it; its status report describes it). Before :meth:`run`.
        """
        self._handler = handler
        self._online_payload = online_payload

    @property
    def connected(self) -> bool:
        """Whether a connection is up right now."""
        return self._connected.is_set()

    @property
    def protocol(self) -> str:
        """The protocol version in use (or to be tried next)."""
        return "5" if self._protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1"

    def _offline_payload(self) -> bytes:
        message = OfflineMessage(site_id=self.site_id, client_id=self.client_id)
        return json.dumps(wire(message)).encode()

    def _make_client(self) -> aiomqtt.Client:
        cfg = self.cfg
        v5 = self._protocol == aiomqtt.ProtocolVersion.V5
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = cfg.session_expiry_s
        # Both resolved when the config was loaded: nothing is read from disk here.
        tls_context = cfg.tls_context()
        password = cfg.password_value()
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=self.client_id,
            username=cfg.username,
            password=password,
            protocol=self._protocol,
            clean_session=None if v5 else False,
            # Never start clean: commands queued while the agent was away (even across a
            # restart) must be delivered. 3.1.1 expresses this with clean_session=False.
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=cfg.keepalive_s,
            timeout=10,
            will=aiomqtt.Will(self.status_topic, self._offline_payload(), qos=1, retain=True),
            tls_context=tls_context,
            # Bounded: a flood of commands is discarded (and logged) past this many waiting,
            # instead of growing the agent's memory without limit.
            max_queued_incoming_messages=cfg.max_queued_commands,
            logger=logging.getLogger("agent.transport.mqtt.client"),
            # Replies are small: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms each.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def run(self) -> None:
        """Connect, serve, and reconnect until cancelled. Never returns normally.

        With ``protocol = "auto"``, a failed first connection alternates between MQTT 5 and
        3.1.1 (some 3.1.1-only brokers refuse MQTT 5, others never answer it); the version
        that connects is kept from then on.
        """
        if self._handler is None or self._online_payload is None:
            raise RuntimeError("MqttLink.run() before attach(): no command handler")
        retries = Backoff(
            first_s=self.cfg.reconnect_min_s, cap_s=self.cfg.reconnect_max_s
        ).retries()
        settled = self.cfg.protocol != "auto"
        while True:
            connects_before = self.connects
            try:
                async with self._make_client() as client:
                    settled = True
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                refused_v5 = isinstance(exc, MqttConnectError) and (
                    _rc_value(exc.rc) in _UNSUPPORTED_PROTOCOL
                )
                if self.connected:
                    log.warning("MQTT_DISCONNECTED error=%s", exc)
                else:
                    log.warning(
                        "MQTT_CONNECT_FAILED host=%s port=%d protocol=%s error=%s",
                        self.cfg.host,
                        self.cfg.port,
                        self.protocol,
                        exc,
                    )
                if not settled and self.connects == connects_before:
                    self._protocol = (
                        aiomqtt.ProtocolVersion.V311
                        if self._protocol == aiomqtt.ProtocolVersion.V5
                        else aiomqtt.ProtocolVersion.V5
                    )
                    log.warning("MQTT_PROTOCOL_FALLBACK next attempt with MQTT %s", self.protocol)
                    if refused_v5:
                        continue  # the broker answered: no reason to wait
            finally:
                self._client = None
                self._connected.clear()
            if self.connects > connects_before:
                retries.reset()  # it was up: start the backoff over
            sleep = retries.next()
            log.info("MQTT_RECONNECT in=%.1fs", sleep)
            await asyncio.sleep(sleep)

    async def _serve(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.command_filter, qos=1)
        self._client = client
        self._connected.set()
        self.connects += 1
        log.info(
            "MQTT_CONNECTED host=%s port=%d protocol=%s client_id=%s",
            self.cfg.host,
            self.cfg.port,
            self.protocol,
            self.client_id,
        )
        # Announced beside the message loop, not before it: a QoS 1 publish waits up to
        # 10 s for its PUBACK, and only the message loop notices the broker going away.
        announce = asyncio.create_task(self.publish_status(), name="mqtt-announce")
        try:
            async for message in client.messages:
                await self._slots.acquire()
                task = asyncio.create_task(self._handle(message), name=f"mqtt-cmd-{message.mid}")
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
        finally:
            announce.cancel()
            await asyncio.gather(announce, return_exceptions=True)

    async def _handle(self, message: aiomqtt.Message) -> None:
        try:
            response_topic, correlation, users = _properties_of(message)
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else (str(message.payload).encode())
            )
            assert self._handler is not None, "attach() before run()"
            await self._handler(
                IncomingMessage(str(message.topic), payload, response_topic, correlation, users)
            )
        except Exception:
            # The command processor answers every command itself; this is a last resort
            # so one bad message never takes the link down.
            log.exception("MQTT_HANDLER_FAILED topic=%s", message.topic)
        finally:
            self._slots.release()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a connection; returns whether one is up."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def publish(
        self,
        topic: str,
        payload: dict[str, Any] | bytes,
        *,
        retain: bool = False,
        correlation_data: bytes | None = None,
        wait_s: float = 30.0,
    ) -> bool:
        """Publish with QoS 1, waiting up to ``wait_s`` for a connection. Returns success."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if not await self.wait_connected(wait_s):
            log.warning("MQTT_PUBLISH_DROPPED topic=%s reason=not-connected", topic)
            return False
        client = self._client
        if client is None:
            return False
        properties = None
        if correlation_data is not None and self._protocol == aiomqtt.ProtocolVersion.V5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation_data
        try:
            await client.publish(topic, body, qos=1, retain=retain, properties=properties)
        except aiomqtt.MqttError as exc:
            log.warning("MQTT_PUBLISH_FAILED topic=%s error=%s", topic, exc)
            return False
        return True

    async def publish_status(self) -> None:
        """Publish the retained 'online' availability message (with current state)."""
        assert self._online_payload is not None, "attach() before run()"
        await self.publish(self.status_topic, self._online_payload(), retain=True, wait_s=0.1)

    async def drain_handlers(self, timeout: float) -> None:
        """Wait for running command handlers to finish (shutdown), then cancel the rest."""
        pending = set(self._handlers)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)

    async def close(self) -> None:
        """Publish 'offline' (retained) while still connected; the link task is then cancelled."""
        if self.connected:
            await self.publish(self.status_topic, self._offline_payload(), retain=True, wait_s=1)


def _rc_value(rc: object) -> int | None:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None
