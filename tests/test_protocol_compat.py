"""Compatibility of the command wire format: integer ids from older backends, and
``endTime`` as an ISO 8601 string only (never a Unix timestamp)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.devkit.brokers import Mosquitto
from agent.protocol import EmbeddingGenerate, SessionStart, SessionStop
from agent.schemas import json_schemas
from tests.agent_harness import (
    CALLBACK,
    RecordingSink,
    agent_config,
    backend,
    running_agent,
    start_payload,
)

ISO_HINT = "ISO 8601 date-time string with a UTC offset"


def _start(**fields: Any) -> dict[str, Any]:
    """A valid session/start payload (short embedding: the model only checks the shape)."""
    payload: dict[str, Any] = {
        "slotId": "slot-1",
        "callbackUrl": CALLBACK,
        "cameras": [{"id": "cam-1"}],
        "students": [{"id": "stu-1", "embeddings": [[0.1, 0.2]]}],
    }
    payload.update(fields)
    return payload


def _error_paths(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in exc.value.errors()]


# --- integer ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(42, "42"), (0, "0"), (-3, "-3"), (10**20, "100000000000000000000"), (" 42 ", "42")],
)
def test_integer_slot_id_becomes_string(value: object, expected: str) -> None:
    start = SessionStart.model_validate(_start(slotId=value))
    stop = SessionStop.model_validate({"slotId": value})
    assert start.slot_id == expected and type(start.slot_id) is str
    assert stop.slot_id == expected and type(stop.slot_id) is str


def test_integer_camera_and_student_ids_become_strings() -> None:
    start = SessionStart.model_validate(
        _start(
            cameras=[{"id": 7}, {"id": "cam-2", "rtspUrl": "rtsp://127.0.0.1:1/x"}],
            students=[{"id": 3, "embeddings": [[0.1]]}, {"id": "s-4", "embeddings": [[0.2]]}],
        )
    )
    assert [c.id for c in start.cameras] == ["7", "cam-2"]
    assert [s.id for s in start.students] == ["3", "s-4"]
    # Stored (persisted for resume) and echoed as strings.
    dumped = start.model_dump(mode="json", by_alias=True)
    assert dumped["cameras"][0]["id"] == "7" and dumped["students"][0]["id"] == "3"
    assert SessionStart.model_validate(dumped) == start


@pytest.mark.parametrize(("value", "expected"), [(9, "9"), ("sub-9", "sub-9"), ("", "")])
def test_submission_id_accepts_integers(value: object, expected: str) -> None:
    assert EmbeddingGenerate.model_validate({"submissionId": value}).submission_id == expected


@pytest.mark.parametrize("value", [True, False, 1.5, 1.0, None, [1], {"id": 1}])
@pytest.mark.parametrize(
    ("model", "build", "path"),
    [
        (SessionStart, lambda v: _start(slotId=v), "slotId"),
        (SessionStop, lambda v: {"slotId": v}, "slotId"),
        (SessionStart, lambda v: _start(cameras=[{"id": v}]), "cameras.0.id"),
        (
            SessionStart,
            lambda v: _start(students=[{"id": v, "embeddings": [[0.1]]}]),
            "students.0.id",
        ),
    ],
)
def test_non_integer_ids_are_refused(model: Any, build: Any, path: str, value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        model.model_validate(build(value))
    assert path in _error_paths(exc)


@pytest.mark.parametrize("value", [True, 1.5, 1.0, [1]])
def test_non_integer_submission_ids_are_refused(value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        EmbeddingGenerate.model_validate({"submissionId": value})
    assert _error_paths(exc) == ["submissionId"]


def test_bool_id_problem_says_string_or_integer() -> None:
    with pytest.raises(ValidationError) as exc:
        SessionStop.model_validate({"slotId": True})
    assert exc.value.errors()[0]["msg"] == "Input should be a string or an integer"


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (_start(slotId=10**128), "slotId"),  # 129 digits: over the 128-character limit
        (_start(slotId=""), "slotId"),
        (_start(slotId="   "), "slotId"),
        (_start(cameras=[{"id": 7}, {"id": "7"}]), "cameras"),  # the same id twice
        (
            _start(students=[{"id": 3, "embeddings": [[0.1]]}, {"id": "3", "embeddings": [[0.1]]}]),
            "students",
        ),
    ],
)
def test_id_constraints_still_apply(payload: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SessionStart.model_validate(payload)
    assert path in _error_paths(exc)


def test_request_id_stays_string_only() -> None:
    # The command processor only echoes and deduplicates string requestIds.
    with pytest.raises(ValidationError) as exc:
        SessionStop.model_validate({"slotId": "a", "requestId": 5})
    assert _error_paths(exc) == ["requestId"]


def _types(field_schema: dict[str, Any]) -> set[str]:
    return {s.get("type", "?") for s in field_schema.get("anyOf", [field_schema])}


def test_schemas_say_string_or_integer() -> None:
    schemas = json_schemas()
    start = schemas["command.session.start"]
    assert _types(start["properties"]["slotId"]) == {"string", "integer"}
    assert _types(start["$defs"]["CameraSpec"]["properties"]["id"]) == {"string", "integer"}
    assert _types(start["$defs"]["StudentSpec"]["properties"]["id"]) == {"string", "integer"}
    string = next(s for s in start["properties"]["slotId"]["anyOf"] if s["type"] == "string")
    assert (string["minLength"], string["maxLength"]) == (1, 128)
    stop = schemas["command.session.stop"]
    assert _types(stop["properties"]["slotId"]) == {"string", "integer"}
    generate = schemas["command.embedding.generate"]
    assert _types(generate["properties"]["submissionId"]) == {"string", "integer", "null"}
    assert _types(start["properties"]["requestId"]) == {"string", "null"}
    end = start["properties"]["endTime"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in end and _types(
        start["properties"]["endTime"]
    ) == {"string", "null"}


# --- endTime ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-12-03T10:00:00+07:00", datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
        ("2026-12-03T03:00:00Z", datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
        ("2026-12-03T03:00:00z", datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
        ("2026-12-02T22:30:00-04:30", datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
        ("2026-12-03T03:00:00.250000+00:00", datetime(2026, 12, 3, 3, 0, 0, 250000, tzinfo=UTC)),
        ("2026-12-03 10:00:00+07:00", datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
    ],
)
def test_end_time_with_offset_is_accepted(value: str, expected: datetime) -> None:
    end = SessionStart.model_validate(_start(endTime=value)).end_time
    assert end == expected and end.utcoffset() is not None


@pytest.mark.parametrize(
    "value",
    [
        1893456000,
        1893456000.5,
        0,
        -1,
        "1893456000",
        "1893456000.5",
        " 1893456000 ",
        "-1",
        "1e9",
        True,
        "",
        "tomorrow",
    ],
)
def test_end_time_numbers_are_refused(value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        SessionStart.model_validate(_start(endTime=value))
    (error,) = exc.value.errors()
    assert error["loc"] == ("endTime",)
    assert ISO_HINT in error["msg"] and "2026-12-03T10:00:00+07:00" in error["msg"]


@pytest.mark.parametrize("value", ["2026-12-03T10:00:00", "2026-12-03"])
def test_naive_end_time_is_still_refused(value: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SessionStart.model_validate(_start(endTime=value))
    assert _error_paths(exc) == ["endTime"]


def test_end_time_round_trips_through_the_saved_form() -> None:
    start = SessionStart.model_validate(_start(endTime="2026-12-03T10:00:00+07:00"))
    dumped = start.model_dump(mode="json", by_alias=True)
    assert dumped["endTime"] == "2026-12-03T10:00:00+07:00"
    assert SessionStart.model_validate(dumped).end_time == start.end_time


# --- through the real agent over MQTT -----------------------------------------------------


async def test_older_backends_integer_ids_over_mqtt(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float]
) -> None:
    cfg = agent_config(
        tmp_path,
        broker,
        cameras={"registry": [{"id": "7", "name": "Room 7", "url": "rtsp://127.0.0.1:1/room7"}]},
    )
    end = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    payload = start_payload("unused", yao_embedding, endTime=end) | {
        "slotId": 42,
        "cameras": [{"id": 7}],
        "students": [{"id": 3, "code": "S003", "embeddings": [yao_embedding]}],
    }
    sink = RecordingSink()
    async with running_agent(cfg, sink), backend(broker) as b:
        started = await b.send("session/start", payload | {"requestId": "int-start"})
        status = await b.send("status", {})
    assert started["status"] == 200, started
    assert started["data"]["slotId"] == "42"
    assert started["data"]["cameras"] == [{"id": "7", "name": "Room 7"}]
    assert [s["slotId"] for s in status["data"]["sessions"]] == ["42"]
    (event, _), *_ = sink.events
    assert (event.type, event.slot_id) == ("SESSION_STATUS", "42")

    # Saved with string ids: the session resumes after a restart and stops by integer id.
    resumed = RecordingSink()
    async with running_agent(cfg, resumed), backend(broker) as b:
        again = await b.send("status", {})
        stopped = await b.send("session/stop", {"requestId": "int-stop", "slotId": 42})
        gone = await b.send("session/stop", {"slotId": 42})
    assert [s["slotId"] for s in again["data"]["sessions"]] == ["42"]
    assert again["data"]["sessions"][0]["endTime"] == end
    assert stopped["status"] == 200, stopped
    assert stopped["data"]["slotId"] == "42"
    assert stopped["data"]["cameras"] == [{"id": "7", "name": "Room 7"}]
    assert (gone["status"], gone["code"]) == (404, "SESSION_NOT_FOUND")
    assert resumed.statuses("42") == ["RESUMED", "STOPPED"]
    last = resumed.events[-1][0]
    assert getattr(last, "slot_id", None) == "42"


async def test_integer_submission_id_and_rtsp_camera_over_mqtt(
    broker: Mosquitto, tmp_path: Path, photos: dict[str, Path], yao_embedding: list[float]
) -> None:
    photo = base64.b64encode(photos["yaoming.jpg"].read_bytes()).decode()
    payload = start_payload("x", yao_embedding) | {
        "slotId": 43,
        "cameras": [{"id": 8, "rtspUrl": "rtsp://127.0.0.1:1/eight"}],
    }
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        generated = await b.send("embedding/generate", {"submissionId": 9, "photo": photo})
        started = await b.send("session/start", payload)
        refused = await b.send("session/start", payload | {"slotId": True})
    assert generated["status"] == 200, generated
    assert generated["data"]["submissionId"] == "9"
    assert started["status"] == 200, started
    assert (started["data"]["slotId"], started["data"]["cameras"][0]["id"]) == ("43", "8")
    assert (refused["status"], refused["code"]) == (422, "VALIDATION_ERROR")
    assert [e["path"] for e in refused["data"]["errors"]] == ["slotId"]


@pytest.mark.parametrize("end_time", [1893456000, "1893456000"])
async def test_numeric_end_time_is_422_over_mqtt(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float], end_time: object
) -> None:
    payload = start_payload("slot-t", yao_embedding, endTime=end_time)
    async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
        reply = await b.send("session/start", payload | {"requestId": "num-end"})
        status = await b.send("status", {})
    assert (reply["status"], reply["code"]) == (422, "VALIDATION_ERROR"), reply
    assert reply["requestId"] == "num-end"
    (error,) = reply["data"]["errors"]
    assert error["path"] == "endTime"
    assert ISO_HINT in error["problem"] and "2026-12-03T10:00:00+07:00" in error["problem"]
    assert status["data"]["sessions"] == []
