"""What the status page shows of the agent's status: the one adapter from the typed
status (:mod:`agent.status_models`) to the page's state.

Everything the page shows of sessions, cameras, the model, the MQTT link and the outbox
goes through :func:`page_state`, so a change in the status data is adapted here only.
"""

from __future__ import annotations

from typing import Any

from agent.status_models import (
    AgentStatus,
    CameraHealth,
    CameraRef,
    ModelLoaded,
    ModelNotLoaded,
    OutboxStats,
    SessionSummary,
)

DISCONNECTED = frozenset({"RECONNECTING", "DEAD"})


def display_state(state: object) -> str:
    """What the page calls a camera state: RECONNECTING and DEAD are DISCONNECTED."""
    text = str(state or "UNKNOWN")
    return "DISCONNECTED" if text in DISCONNECTED else text


def _camera(cam: CameraHealth | CameraRef) -> dict[str, Any]:
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


def _session(session: SessionSummary) -> dict[str, Any]:
    return {
        "slotId": session.slot_id,
        "mode": session.mode.value,
        "students": session.students,
        "endTime": session.end_time,
        "startedAt": session.started_at,
        "cameras": [_camera(c) for c in session.cameras],
        "presence": session.presence_counts.model_dump(by_alias=True)
        if session.presence_counts
        else None,
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


def page_state(status: AgentStatus) -> dict[str, Any]:
    """The page's view of the agent's status: the one place that reads the status for
    the page (the JSON it polls is this dict, plus the registry's cameras)."""
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
        "sessions": [_session(s) for s in status.sessions],
    }
