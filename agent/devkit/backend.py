"""The backend's MQTT side: publishes commands to an agent and matches the replies.

With MQTT 5 a request carries a response topic and correlation data, and its API key as a
user property; with MQTT 3.1.1 (no properties) the key goes in the body and the reply comes
on the site's reply topic, matched by ``requestId``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import uuid
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

Reply = dict[str, Any]


class _Key(enum.Enum):
    """Sentinel: a request signed with the backend's own API key."""

    DEFAULT = enum.auto()


def v5_request_properties(
    response_topic: str, correlation: bytes, api_key: str | None
) -> Properties:
    """PUBLISH properties of an MQTT 5 request."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    if api_key is not None:
        props.UserProperty = [("x-api-key", api_key)]
    return props


class Backend:
    """Commands to one site over a connected aiomqtt client; use as an async context
    manager (it subscribes to the reply topics and reads replies while open).

    ``protocol``: "5" or "3.1.1", as the client was connected. MQTT 5 replies come to
    ``reply_prefix/<random>/replies``. Replies that match no request (e.g. to a request
    without an id) go to ``plain_replies``.
    """

    def __init__(
        self,
        client: aiomqtt.Client,
        site: str = "site-1",
        prefix: str = "attendance",
        *,
        api_key: str | None = None,
        protocol: str = "5",
        reply_prefix: str = "backend-test",
    ) -> None:
        self.client = client
        self.base = f"{prefix}/{site}"
        self.api_key = api_key
        self.v5 = protocol == "5"
        self.response_topic = f"{reply_prefix}/{uuid.uuid4().hex}/replies"
        self.plain_replies: asyncio.Queue[Reply] = asyncio.Queue()
        self._by_correlation: dict[bytes, asyncio.Future[Reply]] = {}
        self._by_request_id: dict[str, asyncio.Future[Reply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Backend:
        if self.v5:
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
            body: Reply = json.loads(bytes(message.payload))
            correlation = getattr(message.properties, "CorrelationData", None)
            future = None
            if correlation is not None:
                future = self._by_correlation.pop(correlation, None)
            if future is None and not self.v5 and str(message.topic).endswith("/reply"):
                future = self._by_request_id.pop(str(body.get("requestId")), None)
            if future is not None:
                if not future.done():
                    future.set_result(body)
            elif str(message.topic).endswith("/reply"):
                await self.plain_replies.put(body)

    async def publish_only(
        self,
        command: str,
        payload: dict[str, Any] | bytes,
        *,
        api_key: str | _Key | None = _Key.DEFAULT,
    ) -> asyncio.Future[Reply]:
        """Publish a request without waiting; returns the future of its reply.

        ``api_key``: the backend's key by default; None sends no key at all. ``payload``
        as bytes is published as is (MQTT 5 only: a 3.1.1 reply is matched by its body).
        """
        key = self.api_key if api_key is _Key.DEFAULT else api_key
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        props = None
        if self.v5:
            correlation = uuid.uuid4().bytes
            self._by_correlation[correlation] = future
            props = v5_request_properties(self.response_topic, correlation, key)
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        else:
            if isinstance(payload, bytes):
                raise TypeError("MQTT 3.1.1 requests are matched by their JSON body's requestId")
            request_id = str(payload.get("requestId") or uuid.uuid4().hex)
            self._by_request_id[request_id] = future
            signed = {**payload, "requestId": request_id}
            if key is not None:
                signed["apiKey"] = key  # MQTT 3.1.1 has no user properties
            body = json.dumps(signed).encode()
        await self.client.publish(f"{self.base}/cmd/{command}", body, qos=1, properties=props)
        return future

    async def send(
        self,
        command: str,
        payload: dict[str, Any] | bytes,
        *,
        api_key: str | _Key | None = _Key.DEFAULT,
        timeout: float = 15.0,
    ) -> Reply:
        """Publish a request and wait (at most ``timeout`` seconds) for its reply."""
        future = await self.publish_only(command, payload, api_key=api_key)
        return await self.reply_for_future(future, timeout)

    async def reply_for_future(self, future: asyncio.Future[Reply], timeout: float = 15.0) -> Reply:
        """Wait for the reply of a request sent with ``publish_only``."""
        async with asyncio.timeout(timeout):
            return await future
