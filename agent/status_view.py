"""What the status page shows of the agent's status: the one adapter from the status
command's data (its JSON shape, as ``/status`` serves it) to the page's state.

Everything the page shows of sessions, cameras, the model, the MQTT link and the outbox
goes through :func:`page_state`, so a change in the status data is adapted here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DISCONNECTED = frozenset({"RECONNECTING", "DEAD"})
# Per-camera fields shown when the status has them (not every version does).
OPTIONAL_CAMERA_FIELDS = ("analysisRate", "analysesShed", "decoder", "decodeMode")


def display_state(state: object) -> str:
    """What the page calls a camera state: RECONNECTING and DEAD are DISCONNECTED."""
    text = str(state or "UNKNOWN")
    return "DISCONNECTED" if text in DISCONNECTED else text


def page_state(status: Mapping[str, Any]) -> dict[str, Any]:
    """The page's view of the agent's status: the one place that reads the status dict
    (its JSON shape, as ``/status`` serves it). Optional camera fields (analysisRate,
    analysesShed, decoder, decodeMode) are passed on when present."""
    agent = status.get("agent") or {}
    model = status.get("model") or {}
    mqtt = status.get("mqtt") or {}
    outbox = status.get("outbox") or {}
    counts = outbox.get("counts") or {}
    oldest = outbox.get("oldestPending")
    reloads = model.get("reloads") or {}
    sessions = []
    for session in status.get("sessions") or []:
        cameras = []
        for cam in session.get("cameras") or []:
            card = {
                key: cam.get(key)
                for key in (
                    "id",
                    "name",
                    "state",
                    "frameAgeSeconds",
                    "framesRead",
                    "framesAnalysed",
                    "reconnects",
                    "lastError",
                    "upSeconds",
                )
            }
            card["display"] = display_state(cam.get("state"))
            card.update({k: cam[k] for k in OPTIONAL_CAMERA_FIELDS if k in cam})
            cameras.append(card)
        sessions.append(
            {
                "slotId": session.get("slotId"),
                "mode": session.get("mode"),
                "students": session.get("students"),
                "endTime": session.get("endTime"),
                "startedAt": session.get("startedAt"),
                "cameras": cameras,
            }
        )
    return {
        "agent": {k: agent.get(k) for k in ("version", "siteId", "state", "uptimeSeconds")},
        "model": {
            "loaded": bool(model.get("loaded")),
            "pack": model.get("pack"),
            "embeddingSpace": model.get("embeddingSpace"),
            "providers": model.get("providers") or {},
            "providerWarnings": model.get("warnings") or [],
            "reason": model.get("reason"),
            "swaps": model.get("swaps"),
            "reload": {
                "attempts": reloads.get("attempts"),
                "failures": reloads.get("failures"),
                "lastAttempt": reloads.get("lastAttempt"),
                "lastError": reloads.get("lastError", model.get("reloadError")),
            },
        },
        "mqtt": {k: mqtt.get(k) for k in ("connected", "protocol", "connects")},
        "outbox": {
            "pending": counts.get("pending"),
            "dead": counts.get("dead"),
            "delivered": counts.get("delivered"),
            "oldestPending": {
                k: oldest.get(k) for k in ("ageSeconds", "type", "slotId", "attempts")
            }
            if oldest
            else None,
            "full": outbox.get("full"),
            "error": outbox.get("error"),
        }
        if outbox
        else None,
        "warnings": list(status.get("warnings") or []),
        "sessions": sessions,
    }
