"""What the status page shows of the agent's status: the one adapter from the typed
status (:mod:`agent.status.models`) to the page's state.

Everything the page shows of sessions, cameras, the model, the MQTT link and the outbox
goes through :func:`page_state`, so a change in the status data is adapted here only.
"""

from __future__ import annotations

import re
import time
from typing import Any

from agent.session.history import EXPECTED, reason_words
from agent.status.models import (
    AgentStatus,
    CameraHealth,
    CameraRef,
    CameraState,
    EndedSession,
    ModelLoaded,
    ModelNotLoaded,
    OutboxStats,
    SessionSummary,
)

STALE_AFTER_S = 5.0  # a snapshot older than this is shown greyed

# What a camera's last error means, first match wins: (words in the error, the reason).
# The raw text (an FFmpeg or Python exception) stays in the status for a technician.
REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("401", "403", "unauthori", "forbidden", "authoriz"),
        "unauthorised: check the user and password",
    ),
    (("refused", "errno 111"), "refused: the camera is off, rebooting or not serving on this port"),
    (("404", "not found"), "stream not found: check the stream path"),
    (("timed out", "timeout"), "timed out: the camera does not answer (power or network)"),
    (
        # FFmpeg's words when an RTSP server accepts the connection and says nothing
        # (measured: tests/test_camera_cards.py), or answers with something else.
        ("invalid data found when processing input",),
        "timed out or not a stream: the camera connects but sends no video stream",
    ),
    (
        ("no route", "unreachable", "name or service", "name resolution", "resolve"),
        "unreachable: check the address and the network",
    ),
    (
        ("no video", "no frame", "no new frame", "hung", "ended", "connection lost"),
        "no video: the stream stopped sending frames",
    ),
    (("decode",), "undecodable video: check the camera's codec settings"),
)


_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
# A status code matches as a whole number (401, not the 401 in "40103"); words as text.
_REASON_PATTERNS = tuple(
    (
        re.compile("|".join(rf"\b{n}\b" if n.isdigit() else re.escape(n) for n in needles)),
        words,
    )
    for needles, words in REASONS
)


def display_state(state: object) -> str:
    """What the page calls a camera state: the protocol's own word (:class:`CameraState`),
    so the page, the CLI and the status data agree. A camera whose work has not started
    (no health yet) is CONNECTING."""
    return str(state) if state else CameraState.CONNECTING.value


def camera_reason(error: str | None) -> str | None:
    """A camera's last error in a few words (refused, timed out, unauthorised, no video...);
    None without an error."""
    if not error:
        return None
    # Numbers in the camera's URL (a port such as 40103) must not read as an HTTP status.
    text = _URL.sub(" ", error.lower())
    for pattern, words in _REASON_PATTERNS:
        if pattern.search(text):
            return words
    return "camera error: see `python -m agent status` for the details"


def _trouble(health: CameraHealth, now: float) -> dict[str, Any]:
    """What a card says of a camera in trouble: the reason in words, the next retry, and
    whether its snapshot is stale (the camera is not live, or its frame is old)."""
    age = health.frame_age_seconds
    retry = health.next_retry_at
    return {
        "reason": camera_reason(health.last_error) if health.state != CameraState.LIVE else None,
        "nextRetryInSeconds": None if retry is None else round(max(0.0, retry - now), 1),
        "stale": health.state != CameraState.LIVE or (age is not None and age > STALE_AFTER_S),
    }


def _camera(cam: CameraHealth | CameraRef, now: float) -> dict[str, Any]:
    """One camera card; a camera whose work has not started has its id and name only."""
    health = cam if isinstance(cam, CameraHealth) else None
    card: dict[str, Any] = {
        "id": cam.id,
        "name": cam.name,
        "state": health.state if health else None,
        "frameAgeSeconds": health.frame_age_seconds if health else None,
        "framesRead": health.frames_read if health else None,
        "framesAnalysed": health.frames_analysed if health else None,
        "reconnects": health.reconnects if health else None,
        "lastError": health.last_error if health else None,
        "upSeconds": health.up_seconds if health else None,
    }
    card["display"] = display_state(card["state"])
    card.update(
        _trouble(health, now)
        if health is not None
        else {"reason": None, "nextRetryInSeconds": None, "stale": False}
    )
    if health is not None:  # the analysis load, when the status has it
        optional = {
            "analysisRate": health.analysis_rate,
            "analysesShed": health.analyses_shed,
            "decoder": health.decoder,
            "decodeMode": health.decode_mode,
        }
        card.update({k: v for k, v in optional.items() if v is not None})
    if health is not None and health.coverage is not None:
        coverage = health.coverage
        widths = coverage.face_widths
        card["coverage"] = {
            "fineDetectCores": coverage.fine_detect_cores,
            "sweeps": coverage.sweeps,
            "regions": coverage.regions,
            "widths": [
                {"range": r, "seen": s, "recognised": n}
                for r, s, n in zip(widths.buckets, widths.seen, widths.recognised, strict=True)
                if s or n
            ],
            "placementHint": coverage.placement_hint,
        }
    return card


def _session(session: SessionSummary, now: float) -> dict[str, Any]:
    return {
        "slotId": session.slot_id,
        "mode": session.mode.value,
        "students": session.students,
        "endTime": session.end_time,
        "startedAt": session.started_at,
        "cameras": [_camera(c, now) for c in session.cameras],
        "waitingForCamerasSeconds": session.waiting_for_cameras_seconds,
        "presence": session.presence_counts.model_dump(by_alias=True)
        if session.presence_counts
        else None,
    }


def _ended(ended: EndedSession) -> dict[str, Any]:
    """An ended session, its reason in words; ``byItself`` when nobody asked for the stop."""
    return {
        "slotId": ended.slot_id,
        "reason": ended.reason,
        "reasonWords": reason_words(ended.reason),
        "byItself": ended.reason not in EXPECTED,
        "startedAt": ended.started_at,
        "endedAt": ended.ended_at,
        "recognised": ended.recognised,
        "students": ended.students,
    }


def _outbox(outbox: OutboxStats | None) -> dict[str, Any] | None:
    if outbox is None:
        return None
    oldest = outbox.oldest_pending
    return {
        "pending": outbox.counts.get("pending"),
        "dead": outbox.counts.get("dead"),
        "delivered": outbox.counts.get("delivered"),
        "oldestPending": {
            "ageSeconds": oldest.age_seconds,
            "type": oldest.type,
            "slotId": oldest.slot_id,
            "attempts": oldest.attempts,
        }
        if oldest
        else None,
        "full": outbox.full,
        "error": outbox.error,
    }


def page_state(status: AgentStatus, now: float | None = None) -> dict[str, Any]:
    """The page's view of the agent's status: the one place that reads the status for
    the page (the JSON it polls is this dict, plus the registry's cameras). ``now`` (Unix
    time, default the clock) turns retry times into seconds from now: the browser's clock
    may differ from the box's."""
    now = time.time() if now is None else now
    agent, model, mqtt = status.agent, status.model, status.mqtt
    loaded = model if isinstance(model, ModelLoaded) else None
    reloads = model.reloads
    return {
        "agent": {
            "version": agent.version,
            "siteId": agent.site_id,
            "state": agent.state,
            "uptimeSeconds": agent.uptime_seconds,
        },
        "model": {
            "loaded": loaded is not None,
            "pack": loaded.pack if loaded else None,
            "embeddingSpace": loaded.embedding_space if loaded else None,
            "providers": loaded.providers if loaded else {},
            "providerWarnings": loaded.warnings if loaded else [],
            "reason": model.reason if isinstance(model, ModelNotLoaded) else None,
            "swaps": model.swaps,
            "reload": {
                "attempts": reloads.attempts if reloads else None,
                "failures": reloads.failures if reloads else None,
                "lastAttempt": reloads.last_attempt if reloads else None,
                "lastError": reloads.last_error if reloads else model.reload_error,
            },
        },
        "mqtt": {
            "connected": mqtt.connected,
            "protocol": mqtt.protocol,
            "connects": mqtt.connects,
        },
        "outbox": _outbox(status.outbox),
        "warnings": list(status.warnings),
        "sessions": [_session(s, now) for s in status.sessions],
        "recentSessions": [_ended(e) for e in status.recent_sessions],
    }
