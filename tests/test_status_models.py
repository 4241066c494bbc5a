"""The agent's self-reports keep their wire names: the status page, the CLI and backends
read these keys."""

from __future__ import annotations

from agent.protocol import SessionMode
from agent.status.models import (
    AgentInfo,
    AgentStatus,
    CameraHealth,
    CameraRef,
    MqttStatus,
    OnlineMessage,
    OutboxStats,
    ReloadStatus,
    SessionSummary,
    TaskStatus,
    wire,
)
from agent.vision.inference import ModelSlot

CAMERA = CameraHealth(
    id="cam-1",
    name="Room 1",
    state="LIVE",
    frame_age_seconds=0.1,
    frames_read=10,
    frames_analysed=4,
    frames_dropped=6,
    frames_invalid=0,
    reconnects=1,
    last_error=None,
    up_seconds=12.5,
)


def test_camera_health_keys() -> None:
    assert list(wire(CAMERA)) == [
        "id",
        "name",
        "state",
        "frameAgeSeconds",
        "framesRead",
        "framesDecoded",
        "framesAnalysed",
        "framesDropped",
        "framesInvalid",
        "reconnects",
        "lastError",
        "nextRetryAt",
        "upSeconds",
        "analysisRate",
        "analysesShed",
        "decoder",
        "decodeMode",
        "coverage",
    ]


def test_status_keys_and_round_trip() -> None:
    summary = SessionSummary(
        slot_id="slot-1",
        mode=SessionMode.ATTENDANCE,
        cameras=[CAMERA, CameraRef(id="cam-2", name="Room 2")],
        students=3,
        embedding_space="arcface-x",
        threshold=0.4,
        end_time=None,
        started_at="2026-12-04T08:00:00+07:00",
    )
    model = ModelSlot().describe()
    status = AgentStatus(
        agent=AgentInfo(version="1", site_id="site-1", state="RUNNING", uptime_seconds=1.0),
        model=model.model_copy(
            update={
                "reloads": ReloadStatus(attempts=1, failures=0, last_attempt=None, last_error=None)
            }
        ),
        sessions=[summary],
        mqtt=MqttStatus(connected=True, protocol="5", connects=1),
        outbox=OutboxStats(
            counts={"pending": 0, "delivered": 0, "dead": 0},
            oldest_pending=None,
            dead_letters=[],
            max_pending=10,
            refused_since_start=0,
            full=None,
        ),
        tasks=[
            TaskStatus(name="t", state="running", failures=0, last_error=None, last_failure_at=None)
        ],
        warnings=[],
    )
    data = wire(status)
    assert list(data) == [
        "agent",
        "model",
        "sessions",
        "recentSessions",
        "mqtt",
        "outbox",
        "tasks",
        "analysis",
        "warnings",
    ]
    assert list(data["agent"]) == ["version", "siteId", "state", "uptimeSeconds"]
    assert list(data["model"]) == [
        "loaded",
        "reason",
        "keptSpaces",
        "reloadError",
        "swaps",
        "reloads",
    ]
    assert list(data["sessions"][0]) == [
        "slotId",
        "mode",
        "cameras",
        "students",
        "embeddingSpace",
        "threshold",
        "endTime",
        "startedAt",
        "presenceCounts",
        "presence",
        "waitingForCamerasSeconds",
    ]
    assert data["sessions"][0]["cameras"][1] == {"id": "cam-2", "name": "Room 2"}
    assert list(data["outbox"]) == [
        "counts",
        "oldestPending",
        "deadLetters",
        "maxPending",
        "refusedSinceStart",
        "full",
        "error",
    ]
    assert list(data["tasks"][0]) == ["name", "state", "failures", "lastError", "lastFailureAt"]
    # What the CLI does with /status: read it back into the model.
    assert AgentStatus.model_validate(data) == status


def test_online_message_keys() -> None:
    online = OnlineMessage(
        version="1",
        site_id="site-1",
        model_pack=None,
        embedding_space=None,
        active_sessions=[],
        warnings=[],
    )
    assert list(wire(online)) == [
        "state",
        "version",
        "siteId",
        "modelPack",
        "embeddingSpace",
        "activeSessions",
        "warnings",
    ]
    assert wire(online)["state"] == "online"
