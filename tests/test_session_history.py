"""Ended sessions are visible: ``recentSessions`` in status, kept in the state file across
restarts, and a warning while a session that ended by itself is recent. Real agent, real
broker; the ALL_CAMERAS_FAILED case reads a real (unreachable) camera."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli import _print_status
from agent.devkit.brokers import Mosquitto
from agent.events.store import Store
from agent.protocol import StatusReason
from agent.session.history import RECENT, SessionHistory
from agent.status.models import AgentStatus, wire
from agent.status.view import page_state
from agent.vision.inference import ModelSlot
from tests.agent_harness import RecordingSink, agent_config, backend, running_agent, start_payload

DEAD_CAMERA = {
    "reconnect_attempts": 1,
    "reconnect_interval_s": 0.1,
    "open_timeout_s": 1.0,
    "probe_min_s": 0.2,
    "all_dead_grace_s": 0.5,
}


async def _recent(b: Any) -> list[dict[str, Any]]:
    reply = await b.send("status", {})
    assert reply["status"] == 200, reply
    recent: list[dict[str, Any]] = reply["data"]["recentSessions"]
    return recent


async def _warnings(b: Any) -> list[str]:
    warnings: list[str] = (await b.send("status", {}))["data"]["warnings"]
    return warnings


async def test_requested_stop_is_listed_and_survives_a_restart(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    cfg = agent_config(tmp_path, broker)
    async with running_agent(cfg), backend(broker) as b:
        assert await _recent(b) == []
        assert (await b.send("session/start", start_payload("slot-r", yao_embedding)))[
            "status"
        ] == 200
        assert (await b.send("session/stop", {"slotId": "slot-r"}))["status"] == 200
        (ended,) = await _recent(b)
        warnings = await _warnings(b)
    assert list(ended) == [
        "slotId",
        "status",
        "reason",
        "startedAt",
        "endedAt",
        "recognised",
        "students",
    ]
    assert ended["slotId"] == "slot-r" and ended["status"] == "STOPPED"
    assert ended["reason"] == "REQUESTED"
    assert (ended["recognised"], ended["students"]) == (0, 1)
    started, stopped = (datetime.fromisoformat(ended[k]) for k in ("startedAt", "endedAt"))
    assert timedelta(0) <= stopped - started < timedelta(seconds=10)
    assert not any("SESSION_ENDED_BY_ITSELF" in w for w in warnings)  # asked for: no warning
    async with running_agent(cfg), backend(broker) as b:
        assert await _recent(b) == [ended]


async def test_all_cameras_failed_is_listed_warned_and_survives_a_restart(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras=DEAD_CAMERA)
    cameras = [{"id": "c1", "rtspUrl": "rtsp://127.0.0.1:9/none"}]
    async with running_agent(cfg, sink, cameras=True), backend(broker) as b:
        await b.send("session/start", start_payload("slot-f", yao_embedding, cameras=cameras))
        await sink.wait_for("STOPPED", "slot-f", timeout=20)
        (ended,) = await _recent(b)
        warnings = await _warnings(b)
    assert ended["reason"] == "ALL_CAMERAS_FAILED"
    (warning,) = [w for w in warnings if w.startswith("SESSION_ENDED_BY_ITSELF")]
    assert "slot-f" in warning and "camera" in warning
    async with running_agent(cfg, cameras=True), backend(broker) as b:
        assert await _recent(b) == [ended]
        assert any(w.startswith("SESSION_ENDED_BY_ITSELF") for w in await _warnings(b))


async def test_only_the_newest_are_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    try:
        history = SessionHistory(store)
        start = datetime(2026, 12, 4, 8, tzinfo=UTC)
        for i in range(RECENT + 5):
            at = start + timedelta(minutes=i)
            await history.record(
                f"slot-{i}", StatusReason.REQUESTED, at, at, recognised=i, students=30
            )
        reloaded = await SessionHistory.loaded(store)
        rows = await store.call(store.query, "select count(*) as n from ended_sessions")
    finally:
        store.close()
    expected = [f"slot-{i}" for i in reversed(range(5, RECENT + 5))]
    assert [e.slot_id for e in history.recent()] == expected
    assert [e.slot_id for e in reloaded.recent()] == expected
    assert rows == [{"n": RECENT}]


async def test_warning_lasts_an_hour(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    try:
        history = SessionHistory(store)
        ended = datetime(2026, 12, 4, 9, tzinfo=UTC)
        await history.record(
            "slot-b", StatusReason.BACKEND_UNRESPONSIVE, ended, ended, recognised=3, students=30
        )
        await history.record(
            "slot-e", StatusReason.SESSION_ENDED, ended, ended, recognised=3, students=30
        )
    finally:
        store.close()
    now = ended.timestamp()
    (warning,) = history.warnings(now + 59 * 60)
    assert "slot-b" in warning and "backend stopped answering" in warning
    assert history.warnings(now + 61 * 60) == []


def test_page_and_cli_show_ended_sessions_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    data = {
        "agent": {"version": "1", "siteId": "s", "state": "RUNNING", "uptimeSeconds": 1.0},
        "model": wire(ModelSlot().describe()),
        "sessions": [],
        "recentSessions": [
            {
                "slotId": "slot-1",
                "status": "STOPPED",
                "reason": "ALL_CAMERAS_FAILED",
                "startedAt": "2026-12-04T08:00:00+07:00",
                "endedAt": "2026-12-04T08:40:00+07:00",
                "recognised": 25,
                "students": 30,
            }
        ],
        "mqtt": {"connected": True, "protocol": "5", "connects": 1},
        "outbox": None,
        "warnings": [],
    }
    state = page_state(AgentStatus.model_validate(data))
    assert state["recentSessions"] == [
        {
            "slotId": "slot-1",
            "reason": "ALL_CAMERAS_FAILED",
            "reasonWords": "every camera stayed down past the grace",
            "byItself": True,
            "startedAt": "2026-12-04T08:00:00+07:00",
            "endedAt": "2026-12-04T08:40:00+07:00",
            "recognised": 25,
            "students": 30,
        }
    ]
    assert wire(AgentStatus.model_validate(data))["recentSessions"][0]["reason"] == (
        "ALL_CAMERAS_FAILED"
    )
    _print_status(AgentStatus.model_validate(data))  # what `python -m agent status` prints
    out = capsys.readouterr().out
    assert "ended   slot-1  ALL_CAMERAS_FAILED (every camera stayed down past the grace)" in out
    assert "recognised 25/30" in out
