"""Camera cards that help: the page state gives a camera in trouble a reason in words (from
a real reader's error), the time to its next retry, and marks its snapshot stale."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.camera.reader import CameraReader, CameraState
from agent.config import load_config
from agent.status.models import AgentStatus, CameraHealth, wire
from agent.status.view import camera_reason, page_state
from agent.vision.inference import ModelSlot
from tests.waiting import wait_until

NOW = 1_800_000_000.0


def _health(**fields: Any) -> CameraHealth:
    base: dict[str, Any] = {
        "id": "cam-1",
        "name": "Room 1",
        "state": "LIVE",
        "frame_age_seconds": 0.2,
        "frames_read": 10,
        "frames_analysed": 4,
        "frames_dropped": 6,
        "frames_invalid": 0,
        "reconnects": 0,
        "last_error": None,
        "up_seconds": 5.0,
    }
    return CameraHealth(**{**base, **fields})


def _status(cameras: list[CameraHealth]) -> dict[str, Any]:
    return {
        "agent": {"version": "1", "siteId": "s", "state": "RUNNING", "uptimeSeconds": 1.0},
        "model": wire(ModelSlot().describe()),
        "sessions": [
            {
                "slotId": "slot-1",
                "mode": "ATTENDANCE",
                "cameras": [wire(c) for c in cameras],
                "students": 3,
                "embeddingSpace": "arcface-x",
                "threshold": 0.4,
                "endTime": None,
                "startedAt": "2026-12-04T08:00:00+07:00",
                "waitingForCamerasSeconds": 120.0,
            }
        ],
        "mqtt": {"connected": True, "protocol": "5", "connects": 1},
        "outbox": None,
        "warnings": [],
    }


def _card(health: CameraHealth) -> dict[str, Any]:
    data = _status([health])
    (session,) = page_state(AgentStatus.model_validate(data), now=NOW)["sessions"]
    assert session["waitingForCamerasSeconds"] == 120.0
    (card,) = session["cameras"]
    return card


def test_live_camera_card_has_no_trouble() -> None:
    card = _card(_health())
    assert (card["reason"], card["nextRetryInSeconds"], card["stale"]) == (None, None, False)


@pytest.mark.parametrize("state", list(CameraState))
def test_page_cli_and_docs_name_camera_states_alike(
    state: CameraState, capsys: pytest.CaptureFixture[str]
) -> None:
    """One vocabulary: the card's badge, the CLI's line and the docs use the protocol's word."""
    from pathlib import Path

    from agent.cli import _print_status

    card = _card(_health(state=state.value))
    assert card["display"] == state.value
    _print_status(AgentStatus.model_validate(_status([_health(state=state.value)])))
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "camera cam-1" in x]
    assert f"  {state.value}  " in line, line
    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docs/protocol.md"):
        assert f"`{state.value}`" in (root / doc).read_text(encoding="utf-8"), doc
    assert state.value in CameraHealth.model_fields["state"].description  # type: ignore[operator]


def test_down_camera_card_says_why_when_and_greys_the_snapshot() -> None:
    error = "open failed: ConnectionRefusedError: [Errno 111] Connection refused: 'rtsp://x/1'"
    card = _card(
        _health(state="DEAD", frame_age_seconds=40.0, last_error=error, next_retry_at=NOW + 1.5)
    )
    assert card["display"] == "DEAD"  # the protocol's word, as the CLI prints it
    assert card["reason"].startswith("refused: ")
    assert card["nextRetryInSeconds"] == 1.5
    assert card["stale"] is True
    assert card["lastError"] == error  # the raw text stays for a technician


def test_old_frame_of_a_live_camera_is_stale() -> None:
    assert _card(_health(frame_age_seconds=9.0))["stale"] is True


@pytest.mark.parametrize(
    ("error", "words"),
    [
        ("open failed: HTTPUnauthorizedError: [Errno 1094995529] Server returned 401", "unauth"),
        ("open failed: HTTPForbiddenError: Server returned 403 Forbidden", "unauth"),
        ("open timed out", "timed out"),
        ("read timed out (no data from the stream)", "timed out"),
        ("open failed: the stream has no video track", "no video"),
        ("no new frame for 3.1 s (stream hung)", "no video"),
        ("read failed (stream ended or connection lost)", "no video"),
        ("open failed: HTTPNotFoundError: Server returned 404 Not Found", "stream not found"),
        ("open failed: OSError: [Errno 113] No route to host", "unreachable"),
        ("decode failed: InvalidDataError: Invalid data found", "undecodable"),
        ("reader crashed: KeyError: 'x'", "camera error"),
        # A port of the camera's URL is no HTTP status (seen with port 40103 in a test run).
        (
            "open failed: InvalidDataError: [Errno 1094995529] Invalid data found when "
            "processing input: 'rtsp://127.0.0.1:40103/stream'",
            "timed out or not a stream",
        ),
        ("open failed: OSError: Connection refused: 'rtsp://10.0.0.7:4044/404'", "refused"),
    ],
)
def test_reasons_in_words(error: str, words: str) -> None:
    reason = camera_reason(error)
    assert reason is not None and reason.startswith(words), reason
    assert "Error" not in reason and "Errno" not in reason


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung camera)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("kind", ["refused", "timed out"])
async def test_real_reader_errors_read_as_words(kind: str, silent_port: int) -> None:
    port = _free_port() if kind == "refused" else silent_port
    cfg = load_config(None).cameras.model_copy(
        update={
            "open_timeout_s": 0.5,
            "read_timeout_s": 0.5,
            "reconnect_attempts": 1,
            "probe_min_s": 5.0,
        }
    )
    reader = CameraReader(
        camera_id="c1",
        name="Room 1",
        url=f"rtsp://127.0.0.1:{port}/stream",
        cfg=cfg,
        loop=asyncio.get_running_loop(),
        on_state=lambda cid, state, reason: None,
    )
    reader.start()
    try:
        await wait_until(lambda: reader.state is CameraState.DEAD, 10, "the reader DEAD")
        health = reader.describe()
        now = time.time()
    finally:
        await reader.stop()
    reason = camera_reason(health.last_error)
    assert reason is not None and reason.startswith(kind), (health.last_error, reason)
    assert health.next_retry_at is not None  # re-probed every probe_min_s from now
    assert now < health.next_retry_at <= now + 5.0
