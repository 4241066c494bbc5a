"""The command plane against hostile senders: huge or deeply nested payloads without a
key, chosen reply topics, forged log lines, secrets in logs, floods (real Mosquitto, real
agent)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest

from agent.devkit.backend import v5_request_properties
from agent.devkit.brokers import Mosquitto
from tests.agent_harness import API_KEY, agent_config, backend, running_agent, start_payload


class LoopWatch:
    """Measures the longest stall of the event loop while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.worst = max(self.worst, now - last)
            last = now

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_huge_payload_without_key_is_refused_unparsed(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # 15 MiB of small numbers: json.loads would build ~8 million objects (+400 MiB).
    body = b'{"requestId": "big", "junk": [' + b"1," * (15 * 2**19) + b"1]}"
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        async with LoopWatch() as watch:
            started = time.monotonic()
            reply = await b.send("status", body, api_key="wrong-key", timeout=30)
            took = time.monotonic() - started
    assert (reply["status"], reply["code"]) == (401, "UNAUTHORIZED")
    assert reply["requestId"] is None  # nothing was parsed, not even the request id
    assert watch.worst < 0.5, f"event loop stalled {watch.worst:.2f} s"
    assert took < 10


async def test_deep_nesting_gets_a_422_not_a_crash(broker: Mosquitto, tmp_path: Path) -> None:
    deep = b'{"requestId": "deep", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("status", deep, timeout=30)
        after = await b.send("status", {"requestId": "after"})
    assert (reply["status"], reply["code"]) == (422, "VALIDATION_ERROR")
    assert "nested too deeply" in reply["message"]
    assert after["status"] == 200  # the agent serves on


async def test_key_must_be_the_top_level_api_key(broker: Mosquitto, tmp_path: Path) -> None:
    # The valid key hidden in a nested field passes the byte scan, not the real check.
    nested = {"requestId": "n", "students": [{"apiKey": API_KEY}]}
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        hidden = await b.send("status", nested, api_key=None)
        in_field = await b.send("status", {"requestId": "f", "apiKey": API_KEY}, api_key=None)
    assert hidden["status"] == 401
    assert in_field["status"] == 200


async def test_unauthenticated_sender_cannot_choose_the_reply_topic(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = agent_config(tmp_path, broker, mqtt={"unauthenticated_reply_topics": []})
    async with running_agent(cfg), backend(broker) as b:
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as spy:
            await spy.subscribe("victim/#", qos=1)
            await b.client.publish(
                f"{b.base}/cmd/status",
                json.dumps({"requestId": "anon"}).encode(),
                qos=1,
                properties=v5_request_properties("victim/inbox", uuid.uuid4().bytes, "bad"),
            )
            site_reply = await asyncio.wait_for(b.plain_replies.get(), 10)
            # An authenticated request may use any response topic.
            await b.client.publish(
                f"{b.base}/cmd/status",
                json.dumps({"requestId": "auth"}).encode(),
                qos=1,
                properties=v5_request_properties("victim/inbox", uuid.uuid4().bytes, API_KEY),
            )
            async with asyncio.timeout(10):
                message = await anext(aiter(spy.messages))
    # Not on the sender's topic, but matchable on the site's: its requestId is echoed.
    assert (site_reply["status"], site_reply["requestId"]) == (401, "anon")
    assert json.loads(message.payload)["requestId"] == "auth"  # type: ignore[arg-type]


async def test_request_id_cannot_forge_log_lines(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    forged = "x\n2026-12-03 ERROR agent.app AGENT_CRASHED forged"
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("status", {"requestId": forged})
    assert (reply["status"], reply["code"]) == (422, "VALIDATION_ERROR")
    assert reply["data"]["errors"][0]["path"] == "requestId"
    for record in caplog.records:
        assert "\n" not in record.getMessage(), record.getMessage()


async def test_urls_are_redacted_in_logs_and_status(
    broker: Mosquitto,
    tmp_path: Path,
    yao_embedding: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    cfg = agent_config(tmp_path, broker)
    payload = start_payload(
        "slot-s",
        yao_embedding,
        callbackUrl="http://127.0.0.1:9/callback?token=s3cr3t-token",
        cameras=[{"id": "c1", "rtspUrl": "rtsp://admin:hunter2pass@127.0.0.1:1/stream"}],
    )
    async with running_agent(cfg), backend(broker) as b:
        started = await b.send("session/start", payload)
        status = await b.send("status", {})
        await b.send("session/stop", {"slotId": "slot-s"})
    assert started["status"] == 200
    shown = json.dumps(status) + json.dumps(started) + caplog.text
    assert "hunter2pass" not in shown
    assert "s3cr3t-token" not in shown
    assert "rtsp://***@127.0.0.1:1/stream" in caplog.text


@pytest.mark.slow
async def test_a_flood_is_bounded_and_the_agent_serves_on(
    broker: Mosquitto, tmp_path: Path, photos: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    photo = base64.b64encode(photos["yaoming.jpg"].read_bytes()).decode()
    cfg = agent_config(tmp_path, broker, mqtt={"max_queued_commands": 4})
    async with running_agent(cfg), backend(broker) as b:
        futures = [
            await b.publish_only("embedding/generate", {"requestId": f"f{i}", "photo": photo})
            for i in range(80)
        ]
        done, pending = await asyncio.wait(futures, timeout=60)
        for future in pending:
            future.cancel()
        after = await b.send("status", {"requestId": "after-flood"}, timeout=30)
    answered = [f.result() for f in done]
    assert after["status"] == 200
    assert all(r["status"] == 200 for r in answered)
    assert len(answered) < 80  # the excess was discarded, not queued without bound
    assert "queue is full" in caplog.text.lower()
