"""The MQTT control plane through a real Mosquitto broker and a real agent."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from agent.devkit.backend import v5_request_properties
from agent.devkit.brokers import Mosquitto
from tests.agent_harness import (
    API_KEY,
    RecordingSink,
    agent_config,
    backend,
    running_agent,
    start_payload,
)
from tests.waiting import wait_until


async def test_status_over_v5_response_topic(broker: Mosquitto, tmp_path: Path) -> None:
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("status", {"requestId": "r-status"})
    assert reply["status"] == 200 and reply["code"] is None
    assert reply["requestId"] == "r-status"
    data = reply["data"]
    assert data["model"]["loaded"] is True
    assert data["model"]["embeddingSpace"].startswith("arcface-")
    assert data["mqtt"]["connected"] is True and data["mqtt"]["protocol"] == "5"
    assert data["sessions"] == []


async def test_v311_client_gets_reply_on_reply_topic(broker: Mosquitto, tmp_path: Path) -> None:
    async with running_agent(agent_config(tmp_path, broker)):
        async with backend(broker, protocol=aiomqtt.ProtocolVersion.V311) as b:
            await b.client.publish(
                "attendance/site-1/cmd/status",
                json.dumps({"requestId": "old-client", "apiKey": API_KEY}).encode(),
                qos=1,
            )
            async with asyncio.timeout(10):
                reply = await b.plain_replies.get()
    assert (reply["requestId"], reply["status"]) == ("old-client", 200)


async def test_agent_speaking_v311(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, broker, mqtt={"protocol": "3.1.1"})
    async with running_agent(cfg) as agent, backend(broker) as b:
        assert agent.link is not None and agent.link.protocol == "3.1.1"
        # 3.1.1 carries no user properties or response topic: key in the payload, reply on
        # the site's reply topic.
        await b.client.publish(
            "attendance/site-1/cmd/status",
            json.dumps({"requestId": "r311", "apiKey": API_KEY}).encode(),
            qos=1,
        )
        async with asyncio.timeout(10):
            reply = await b.plain_replies.get()
    assert (reply["requestId"], reply["status"]) == ("r311", 200)
    assert reply["data"]["mqtt"]["protocol"] == "3.1.1"


@pytest.mark.parametrize("key", [None, "wrong-key", ""])
async def test_401_and_command_not_executed(
    broker: Mosquitto,
    tmp_path: Path,
    yao_embedding: list[float],
    key: str | None,
) -> None:
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("session/start", start_payload("slot-a", yao_embedding), api_key=key)
        assert (reply["status"], reply["code"]) == (401, "UNAUTHORIZED")
        assert "wrong-key" not in json.dumps(reply)
        status = await b.send("status", {})
        assert status["data"]["sessions"] == []


@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_401_comes_back_on_the_response_topic_with_the_request_id(
    broker: Mosquitto, tmp_path: Path, key: str | None
) -> None:
    # agent_config permits backend-test/# as a response topic for unauthenticated requests.
    topic = f"backend-test/{uuid.uuid4().hex}/replies"
    correlation = uuid.uuid4().bytes
    async with (
        running_agent(agent_config(tmp_path, broker)),
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        await client.subscribe(topic, qos=1)
        await client.subscribe("attendance/site-1/reply", qos=1)
        await client.publish(
            "attendance/site-1/cmd/status",
            json.dumps({"requestId": "bad-key-7"}).encode(),
            qos=1,
            properties=v5_request_properties(topic, correlation, key),
        )
        async with asyncio.timeout(10):
            message = await anext(aiter(client.messages))
    assert str(message.topic) == topic
    assert getattr(message.properties, "CorrelationData", None) == correlation
    body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
    assert (body["status"], body["code"], body["requestId"]) == (401, "UNAUTHORIZED", "bad-key-7")


async def test_api_key_in_payload_field(broker: Mosquitto, tmp_path: Path) -> None:
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("status", {"apiKey": API_KEY}, api_key=None)
    assert reply["status"] == 200


async def test_session_lifecycle_and_errors(
    broker: Mosquitto,
    tmp_path: Path,
    yao_embedding: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = RecordingSink()
    async with running_agent(agent_config(tmp_path, broker), sink), backend(broker) as b:
        started = await b.send("session/start", start_payload("slot-a", yao_embedding))
        assert started["status"] == 200, started
        assert started["data"]["slotId"] == "slot-a"
        assert started["data"]["cameras"] == [{"id": "cam-1", "name": "Room 1"}]
        assert started["data"]["students"] == 1
        again = await b.send("session/start", start_payload("slot-a", yao_embedding))
        assert (again["status"], again["code"]) == (409, "SESSION_ALREADY_EXISTS")
        status = await b.send("status", {})
        assert [s["slotId"] for s in status["data"]["sessions"]] == ["slot-a"]
        stopped = await b.send("session/stop", {"slotId": "slot-a"})
        assert stopped["status"] == 200
        gone = await b.send("session/stop", {"slotId": "slot-a"})
        assert (gone["status"], gone["code"]) == (404, "SESSION_NOT_FOUND")
    assert sink.statuses("slot-a") == ["STARTED", "STOPPED"]
    stop_event = sink.events[-1][0]
    assert getattr(stop_event, "reason", None) == "REQUESTED"
    assert sink.events[0][1] == "http://127.0.0.1:9/callback"
    # No secrets, names or embeddings in the logs.
    assert API_KEY not in caplog.text
    assert "Yao Ming" not in caplog.text
    assert f"{yao_embedding[0]:.6f}"[:8] not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda p: p | {"cameras": [{"id": "cam-404"}]}, 404, "CAMERA_NOT_FOUND"),
        (lambda p: p | {"callbackUrl": "http://evil.example/cb"}, 400, "CALLBACK_URL_NOT_ALLOWED"),
        (
            lambda p: p | {"callbackUrl": "http://127.0.0.1.evil.example:9/cb"},
            400,
            "CALLBACK_URL_NOT_ALLOWED",
        ),
        (
            lambda p: p | {"students": [{"id": "s", "embeddings": [[0.1] * 128]}]},
            400,
            "INVALID_EMBEDDING",
        ),
        (
            lambda p: p | {"students": [{"id": "s", "embeddings": [[float("nan")] * 512]}]},
            400,
            "INVALID_EMBEDDING",
        ),
        (
            lambda p: (
                p
                | {
                    "students": [
                        {"id": "s", "embeddings": [[0.1] * 512], "embeddingSpace": "arcface-0000"}
                    ]
                }
            ),
            409,
            "EMBEDDING_MODEL_MISMATCH",
        ),
        (
            lambda p: p | {"endTime": (datetime.now(UTC) - timedelta(hours=1)).isoformat()},
            422,
            "VALIDATION_ERROR",
        ),
    ],
)
async def test_session_start_rejections(
    broker: Mosquitto,
    tmp_path: Path,
    yao_embedding: list[float],
    mutate: Any,
    status: int,
    code: str,
) -> None:
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("session/start", mutate(start_payload("slot-x", yao_embedding)))
        assert (reply["status"], reply["code"]) == (status, code), reply
        if code == "EMBEDDING_MODEL_MISMATCH":
            assert reply["data"]["expected"].startswith("arcface-")
            assert reply["data"]["expected"] in reply["message"]
        listing = await b.send("status", {})
        assert listing["data"]["sessions"] == []


async def test_camera_with_own_url_needs_no_registry(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    payload = start_payload(
        "slot-u", yao_embedding, cameras=[{"id": "x", "rtspUrl": "rtsp://127.0.0.1:1/x"}]
    )
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("session/start", payload)
        assert reply["status"] == 200, reply


async def test_unknown_command(broker: Mosquitto, tmp_path: Path) -> None:
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("session/pause", {"requestId": "u1"})
    assert (reply["status"], reply["code"], reply["requestId"]) == (404, "UNKNOWN_COMMAND", "u1")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("payload", "paths"),
    [
        (b"{not json", ["(payload)"]),
        (b"[1, 2, 3]", ["(payload)"]),
        (b"\xff\xfe\x00", ["(payload)"]),
        ({"requestId": "v1"}, ["slotId", "callbackUrl", "cameras", "students"]),
        (
            {
                "slotId": 5.5,
                "callbackUrl": "ftp://x",
                "cameras": "cam",
                "students": [],
                "mode": "SOMETIMES",
            },
            ["slotId", "callbackUrl", "cameras", "students", "mode"],
        ),
        (
            {
                "slotId": "a",
                "callbackUrl": "http://127.0.0.1:9/c",
                "cameras": [{"id": "c"}],
                "students": [{"id": "s", "embeddings": "many"}],
                "surprise": True,
            },
            ["students.0.embeddings", "surprise"],
        ),
    ],
)
async def test_422_lists_every_field(
    broker: Mosquitto, tmp_path: Path, payload: dict[str, Any] | bytes, paths: list[str]
) -> None:
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("session/start", payload)
    assert (reply["status"], reply["code"]) == (422, "VALIDATION_ERROR")
    reported = [e["path"] for e in reply["data"]["errors"]]
    for path in paths:
        assert any(r == path or r.startswith(path + ".") for r in reported), (path, reported)


async def test_422_payload_too_large(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, broker, mqtt={"max_payload_bytes": 2048})
    async with running_agent(cfg), backend(broker) as b:
        reply = await b.send("status", {"requestId": "big", "pad": "x" * 5000})
    assert (reply["status"], reply["code"]) == (422, "VALIDATION_ERROR")
    assert "limit is 2048" in reply["message"]


async def test_redelivered_request_id_is_not_executed_twice(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    sink = RecordingSink()
    payload = start_payload("slot-r", yao_embedding, requestId="req-42")
    async with running_agent(agent_config(tmp_path, broker), sink), backend(broker) as b:
        first, second = await asyncio.gather(
            b.send("session/start", payload), b.send("session/start", payload)
        )
        third = await b.send("session/start", payload)
        other = await b.send("session/start", payload | {"requestId": "req-43"})
    assert first == second == third
    assert first["status"] == 200
    assert (other["status"], other["code"]) == (409, "SESSION_ALREADY_EXISTS")
    assert sink.statuses("slot-r") == ["STARTED"]


async def test_embedding_generate(
    broker: Mosquitto, tmp_path: Path, photos: dict[str, Path], yao_embedding: list[float]
) -> None:
    photo = base64.b64encode(photos["yaoming.jpg"].read_bytes()).decode()
    team = base64.b64encode(photos["players.jpg"].read_bytes()).decode()
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        ok = await b.send("embedding/generate", {"submissionId": "sub-9", "photo": photo})
        missing = await b.send("embedding/generate", {"submissionId": "sub-9"})
        garbage = await b.send("embedding/generate", {"photo": "!!!not base64!!!"})
        text = await b.send("embedding/generate", {"photo": base64.b64encode(b"hello").decode()})
        many = await b.send("embedding/generate", {"photo": team})
    assert ok["status"] == 200
    assert ok["data"]["submissionId"] == "sub-9"
    assert np.dot(ok["data"]["embedding"], yao_embedding) > 0.99
    assert (missing["status"], missing["code"]) == (400, "PHOTO_FILE_REQUIRED")
    assert garbage["code"] == "INVALID_FILE_FORMAT"
    assert text["code"] == "INVALID_FILE_FORMAT"
    assert many["code"] == "MULTIPLE_FACES_DETECTED"


async def test_no_model_answers_503(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float], photos: dict[str, Path]
) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    cfg = agent_config(tmp_path, broker, models={"dir": empty})
    async with running_agent(cfg), backend(broker) as b:
        status = await b.send("status", {})
        start = await b.send("session/start", start_payload("slot-m", yao_embedding))
        photo = base64.b64encode(photos["yaoming.jpg"].read_bytes()).decode()
        embed = await b.send("embedding/generate", {"photo": photo})
    assert status["data"]["model"]["loaded"] is False
    assert any("MODEL_NOT_LOADED" in w for w in status["data"]["warnings"])
    assert (start["status"], start["code"]) == (503, "MODEL_NOT_LOADED")
    assert (embed["status"], embed["code"]) == (503, "MODEL_NOT_LOADED")


async def test_session_stops_itself_at_end_time(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    sink = RecordingSink()
    end = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    async with running_agent(agent_config(tmp_path, broker), sink), backend(broker) as b:
        reply = await b.send("session/start", start_payload("slot-e", yao_embedding, endTime=end))
        assert reply["status"] == 200
        await sink.wait_for("STOPPED", "slot-e", timeout=10)
        status = await b.send("status", {})
    assert status["data"]["sessions"] == []
    assert getattr(sink.events[-1][0], "reason", None) == "SESSION_ENDED"


async def test_agent_restart_resumes_sessions(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    cfg = agent_config(tmp_path, broker)
    first = RecordingSink()
    async with running_agent(cfg, first), backend(broker) as b:
        assert (await b.send("session/start", start_payload("slot-p", yao_embedding)))[
            "status"
        ] == 200
    assert first.statuses() == ["STARTED"]  # a shutdown is not a stop
    second = RecordingSink()
    async with running_agent(cfg, second), backend(broker) as b:
        status = await b.send("status", {})
        assert [s["slotId"] for s in status["data"]["sessions"]] == ["slot-p"]
        assert second.statuses("slot-p") == ["RESUMED"]
        again = await b.send("session/start", start_payload("slot-p", yao_embedding))
        assert again["code"] == "SESSION_ALREADY_EXISTS"


async def test_command_sent_while_agent_offline_is_executed(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = agent_config(tmp_path, broker)
    async with running_agent(cfg):
        pass  # the broker now holds the agent's persistent session
    async with backend(broker) as b:
        pending = await b.publish_only("status", {"requestId": "while-offline"})
        # Nobody can answer yet: a short window in which the reply must NOT come (a wait
        # for an absence, not a synchronisation).
        done, _ = await asyncio.wait({pending}, timeout=0.3)
        assert not done
        async with running_agent(cfg):
            reply = await b.reply_for_future(pending)
    assert (reply["requestId"], reply["status"]) == ("while-offline", 200)


async def test_broker_restart_reconnects_and_resubscribes(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path / "volatile", persistence=False)
    server.start()
    try:
        async with running_agent(agent_config(tmp_path, server)) as agent:
            link = agent.link
            assert link is not None
            server.stop()
            await wait_until(lambda: not link.connected, 10, "the agent noticing the broker left")
            server.start()
            await wait_until(lambda: link.connected, 15, "the agent reconnecting")
            assert link.connects == 2
            async with backend(server) as b:
                reply = await b.send("status", {})
            assert reply["status"] == 200
    finally:
        server.stop()


async def test_retained_status_online_then_offline(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    async def retained(until: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        """The retained status, or (``until``) the first status published that matches."""
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("attendance/site-1/status", qos=1)
            async with asyncio.timeout(5):
                async for message in client.messages:
                    status = dict(json.loads(message.payload))  # type: ignore[arg-type]
                    if until(status):
                        return status
        raise AssertionError("no matching status")

    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        online = await retained()
        await b.send("session/start", start_payload("slot-s", yao_embedding))
        with_session = await retained(lambda s: bool(s.get("activeSessions")))
    offline = await retained()
    assert online["state"] == "online" and online["modelPack"] == "buffalo_sc"
    assert with_session["activeSessions"] == ["slot-s"]
    assert offline["state"] == "offline"


class _RunnerThatFailsToStop:
    """A session runner whose work raises while it is being cancelled (a seam fake)."""

    async def run(self, session: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("camera would not release") from None


async def test_failure_during_stop_is_500_and_session_is_gone(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker)
    async with (
        running_agent(cfg, sink, runner=_RunnerThatFailsToStop()) as agent,
        backend(broker) as b,
    ):
        assert (await b.send("session/start", start_payload("slot-f", yao_embedding)))[
            "status"
        ] == 200
        reply = await b.send("session/stop", {"slotId": "slot-f"})
        assert (reply["status"], reply["code"]) == (500, "STOP_SESSION_FAILED")
        assert agent.sessions is not None and agent.sessions.get("slot-f") is None
        again = await b.send("session/stop", {"slotId": "slot-f"})
    assert again["code"] == "SESSION_NOT_FOUND"
    assert sink.statuses("slot-f") == ["STARTED", "STOPPED"]


@pytest.mark.slow
async def test_command_published_while_broker_restarts_is_executed(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path / "persistent-broker")
    server.start()
    try:
        cfg = agent_config(tmp_path, server, mqtt={"reconnect_min_s": 3.0, "reconnect_max_s": 3.0})
        async with running_agent(cfg) as agent:
            assert agent.link is not None
            link = agent.link
            server.stop()  # SIGTERM: the broker saves the agent's session and subscription
            await wait_until(lambda: not link.connected, 5, "the agent noticing the broker left")
            server.start()
            async with backend(server) as b:
                pending = await b.publish_only("status", {"requestId": "during-outage"})
                assert not agent.link.connected  # queued by the broker for the agent
                reply = await b.reply_for_future(pending, timeout=20)
            assert agent.link.connects == 2
    finally:
        server.stop()
    assert (reply["requestId"], reply["status"]) == ("during-outage", 200)
