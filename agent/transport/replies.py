"""Reply routing: where a command's reply is published.

To the request's MQTT v5 response topic (with its correlation data) when it gave one and
may be answered there, else to the site's reply topic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from paho.mqtt.client import topic_matches_sub

from agent.errors import ErrorCode
from agent.protocol import Reply
from agent.redaction import log_safe
from agent.transport.mqtt import IncomingMessage, MqttLink

log = logging.getLogger(__name__)


def may_reply_to(topic: str, reply: Reply, unauthenticated_topics: Sequence[str]) -> bool:
    """Whether a reply may go to the request's MQTT v5 response topic. An
    unauthenticated sender must not make the agent publish wherever it likes (a
    reflection amplifier on the site's broker): its 401 goes to the site's reply topic
    unless the topic matches ``[mqtt] unauthenticated_reply_topics``."""
    if not topic or len(topic) > 1024 or any(c in topic for c in "+#\x00"):
        log.warning("REPLY_TOPIC_INVALID topic=%s", log_safe(topic))
        return False
    if reply.code is not ErrorCode.UNAUTHORIZED:
        return True
    allowed = any(topic_matches_sub(f, topic) for f in unauthenticated_topics)
    if not allowed:
        log.warning("REPLY_TOPIC_REFUSED topic=%s reason=unauthenticated", log_safe(topic))
    return allowed


class ReplyRouter:
    """Publishes replies on the link: response topic if allowed, else the reply topic."""

    def __init__(self, link: MqttLink, unauthenticated_topics: Sequence[str]) -> None:
        self._link = link
        self._unauthenticated_topics = tuple(unauthenticated_topics)

    async def send(self, message: IncomingMessage, reply: Reply) -> None:
        """Publish one reply to a command message."""
        body = reply.to_json_dict()
        topic = message.response_topic
        if topic and may_reply_to(topic, reply, self._unauthenticated_topics):
            await self._link.publish(topic, body, correlation_data=message.correlation_data)
        else:
            await self._link.publish(self._link.reply_topic, body)
