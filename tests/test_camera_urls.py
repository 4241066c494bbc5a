"""Inline camera URLs (session/start ``rtspUrl``) are allowed only inside ``[cameras]
allowed_networks`` or under ``allowed_urls``; registry cameras always (real agent, real
broker, real MQTT session/start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig
from agent.devkit.brokers import Mosquitto
from tests.agent_harness import agent_config, backend, running_agent, start_payload

PUBLIC = "rtsp://203.0.113.5:554/stream"  # TEST-NET-3: outside every default network


def _start(slot: str, embedding: list[float], *cameras: dict[str, str]) -> dict[str, Any]:
    return start_payload(slot, embedding, cameras=list(cameras))


async def test_inline_camera_urls_outside_the_allowed_networks_are_refused(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    cameras = {
        "registry": [
            {"id": "cam-1", "name": "Room 1", "url": "rtsp://127.0.0.1:1/room1"},
            # The site's own configuration may name any host.
            {"id": "far", "name": "Annex", "url": "rtsp://198.51.100.7:554/annex"},
        ],
        "allowed_urls": ["rtsp://cameras.school.lan:8554/live"],
    }
    cfg = agent_config(tmp_path, broker, cameras=cameras)
    refused = {
        "public": PUBLIC,
        "creds": "rtsp://admin:secret@203.0.113.5/stream",
        "hostname": "http://cams.example.com/mjpeg",
        "mapped": "rtsp://[::ffff:8.8.8.8]:554/x",
        "sibling": "rtsp://cameras.school.lan:8554/livex",
        "port": "rtsp://cameras.school.lan:554/live/room",
        "badport": "rtsp://127.0.0.1:99999/x",  # not a URL a camera can have
    }
    allowed = {
        "private": "rtsp://192.168.1.20:554/stream",
        "ten": "http://10.1.2.3:8080/video.mjpg",
        "loop": "rtsp://user:pw@127.0.0.1:8554/s",
        "v6": "rtsp://[fd00::20]:554/s",
        "listed": "rtsp://cameras.school.lan:8554/live/room-2",
    }
    replies: dict[str, dict[str, Any]] = {}
    async with running_agent(cfg), backend(broker) as b:
        for name, url in {**refused, **allowed}.items():
            payload = _start(f"s-{name}", yao_embedding, {"id": name, "rtspUrl": url})
            replies[name] = await b.send("session/start", payload)
        registry = await b.send("session/start", _start("s-registry", yao_embedding, {"id": "far"}))
        status = await b.send("status", {})
    for name in refused:
        reply = replies[name]
        assert (reply["status"], reply["code"]) == (422, "CAMERA_URL_NOT_ALLOWED"), reply
        assert f"Camera {name}: rtspUrl" in reply["message"]
        assert "[cameras] allowed_networks" in reply["message"]
        assert "[cameras] allowed_urls" in reply["message"]
        assert "secret" not in reply["message"]
    for name in allowed:
        assert replies[name]["status"] == 200, replies[name]
    assert registry["status"] == 200, registry
    running = {s["slotId"] for s in status["data"]["sessions"]}
    assert running == {f"s-{n}" for n in allowed} | {"s-registry"}


async def test_allowed_networks_can_be_narrowed(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    cfg = agent_config(tmp_path, broker, cameras={"allowed_networks": ["10.20.0.0/16"]})
    async with running_agent(cfg), backend(broker) as b:
        inside = await b.send(
            "session/start",
            _start("s1", yao_embedding, {"id": "a", "rtspUrl": "rtsp://10.20.3.4/s"}),
        )
        loopback = await b.send(
            "session/start",
            _start("s2", yao_embedding, {"id": "b", "rtspUrl": "rtsp://127.0.0.1:1/s"}),
        )
    assert inside["status"] == 200, inside
    assert (loopback["status"], loopback["code"]) == (422, "CAMERA_URL_NOT_ALLOWED"), loopback


def test_config_refuses_bad_entries() -> None:
    for bad in (
        {"allowed_networks": ["10.0.0.0/33"]},
        {"allowed_networks": ["cameras.lan"]},
        {"allowed_urls": ["ftp://10.0.0.1/"]},
        {"allowed_urls": ["rtsp://user:pw@10.0.0.1/"]},
    ):
        with pytest.raises(ValidationError, match="cameras"):
            AgentConfig(cameras=bad)
    assert "192.168.0.0/16" in AgentConfig().cameras.allowed_networks
