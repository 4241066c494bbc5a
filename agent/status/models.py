"""Wire models of what the agent reports about itself: the ``status`` reply's data (also
served at ``/status``), its parts, and the retained ``online`` message.

The parts build these models; the JSON form (camelCase, as always) is made only where
it leaves the agent (``model_dump(mode="json", by_alias=True)``: reply data, the local
HTTP endpoint, the retained message). Readers (metrics, ``/healthz``, the CLI) read fields.
JSON Schemas are generated with the protocol's (``python -m agent schemas``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from agent.protocol import PresenceCounts, PresenceEntry, SessionMode, WireModel


class CameraState(StrEnum):
    """A session camera's state: the one vocabulary of the protocol (``state`` in status),
    the status page, ``python -m agent status`` and the README."""

    CONNECTING = "CONNECTING"  # opening the stream; no usable video yet
    LIVE = "LIVE"  # usable video arrives
    RECONNECTING = "RECONNECTING"  # lost; the reconnect attempts are under way
    DEAD = "DEAD"  # every reconnect attempt failed; re-probed until the session ends
    STOPPED = "STOPPED"  # the session's camera work has ended


class DecodeMode(StrEnum):
    """How much of a camera's stream is decoded (``decodeMode`` in status, the metrics'
    ``mode`` label); the scheduler picks it per camera."""

    FULL = "FULL"  # every frame (a frame can be analysed at any time)
    KEYFRAMES = "KEYFRAMES"  # only keyframes that an analysis is waiting for


def _one_of(words: type[StrEnum]) -> str:
    """An enum's values as a sentence: "A, B or C"."""
    *first, last = [w.value for w in words]
    return f"{', '.join(first)} or {last}" if first else last


def wire(model: WireModel) -> dict[str, Any]:
    """The JSON-ready dict of a model, in the wire field names."""
    return model.model_dump(mode="json", by_alias=True)


class FaceWidths(WireModel):
    """Faces a camera saw and recognised, counted once per tracked face, by width (px)."""

    buckets: list[str] = Field(description="Width ranges in source pixels, narrowest first.")
    seen: list[int] = Field(description="Faces first seen, per bucket.")
    recognised: list[int] = Field(description="Faces recognised, per bucket.")


class CameraCoverageStatus(WireModel):
    """How a camera is covered at full resolution and what it sees."""

    fine_detect_cores: float = Field(
        alias="fineDetectCores",
        ge=0,
        description="Its share of full-resolution detection over the last 30 s (cores).",
    )
    sweeps: int = Field(ge=0, description="Full-resolution sweeps of the frame completed.")
    regions: int = Field(ge=0, description="Regions re-detected at native resolution.")
    face_widths: FaceWidths = Field(alias="faceWidths")
    placement_hint: str | None = Field(
        None,
        alias="placementHint",
        description="Set when most faces are too small to recognise reliably.",
    )


class CameraHealth(WireModel):
    """Health of one camera of a running session."""

    id: str = Field(description="Camera id.")
    name: str = Field(description="Display name.")
    state: str = Field(description=f"{_one_of(CameraState)}.")
    # A str, not CameraState: the published schema stays as it is (a plain string with
    # the enum's words in its description).
    frame_age_seconds: float | None = Field(
        alias="frameAgeSeconds", description="Seconds since the last frame; null before one."
    )
    frames_read: int = Field(
        alias="framesRead", ge=0, description="Packets (PyAV) or frames (OpenCV) received."
    )
    frames_decoded: int = Field(
        0, alias="framesDecoded", ge=0, description="Frames decoded; the rest were skipped."
    )
    frames_analysed: int = Field(alias="framesAnalysed", ge=0)
    frames_dropped: int = Field(alias="framesDropped", ge=0, description="Read, not analysed.")
    frames_invalid: int = Field(alias="framesInvalid", ge=0)
    reconnects: int = Field(ge=0, description="Successful reconnects.")
    last_error: str | None = Field(alias="lastError")
    next_retry_at: float | None = Field(
        None,
        alias="nextRetryAt",
        description="While the camera is down: when the next open attempt comes (Unix time).",
    )
    up_seconds: float = Field(alias="upSeconds", ge=0, description="Time the camera was live.")
    analysis_rate: float | None = Field(
        None, alias="analysisRate", description="Analyses per second over the last 10 s."
    )
    analyses_shed: int = Field(
        0,
        alias="analysesShed",
        ge=0,
        description="Analyses skipped because the box was busy.",
    )
    decoder: str | None = Field(None, description="Library reading the stream: pyav or opencv.")
    decode_mode: str | None = Field(
        None,
        alias="decodeMode",
        description=f"{DecodeMode.FULL}: every frame decoded; "
        f"{DecodeMode.KEYFRAMES}: only keyframes analyses use.",
    )
    coverage: CameraCoverageStatus | None = Field(
        None, description="Full-resolution coverage and face sizes; null before analyses."
    )


class CameraRef(WireModel):
    """A camera of a session whose work has not started yet (no health to show)."""

    id: str
    name: str


class SessionSummary(WireModel):
    """A running session (the ``session/start`` and ``session/stop`` reply's data)."""

    slot_id: str = Field(alias="slotId")
    mode: SessionMode
    cameras: list[CameraHealth | CameraRef]
    students: int = Field(ge=0, description="Roster size.")
    embedding_space: str = Field(alias="embeddingSpace")
    threshold: float = Field(description="Cosine threshold in effect.")
    end_time: str | None = Field(alias="endTime", description="ISO 8601, as sent; or null.")
    started_at: str = Field(alias="startedAt", description="ISO 8601 with an offset.")
    presence_counts: PresenceCounts | None = Field(
        None,
        alias="presenceCounts",
        description="Roster students present, uncertain and not seen so far.",
    )
    presence: list[PresenceEntry] | None = Field(
        None,
        description="The ``session/stop`` reply only: one verdict per roster student, as "
        "in the STOPPED event.",
    )
    waiting_for_cameras_seconds: float | None = Field(
        None,
        alias="waitingForCamerasSeconds",
        ge=0,
        description="Set while every camera of the session is down: seconds left of "
        "[cameras] all_dead_grace_s before it stops with ALL_CAMERAS_FAILED.",
    )


class EndedSession(WireModel):
    """A session that ended (``recentSessions`` of the status): how and when."""

    slot_id: str = Field(alias="slotId")
    status: Literal["STOPPED"] = "STOPPED"
    reason: str = Field(description="The STOPPED event's reason (REQUESTED, ...).")
    started_at: str = Field(alias="startedAt", description="ISO 8601 with an offset.")
    ended_at: str = Field(alias="endedAt", description="ISO 8601 with an offset.")
    recognised: int = Field(ge=0, description="Roster students recognised (PRESENT).")
    students: int = Field(ge=0, description="Roster size.")


class EngineInfo(WireModel):
    """The model pack in service (no weights, no embeddings)."""

    pack: str
    embedding_space: str = Field(alias="embeddingSpace")
    embedding_dim: int = Field(alias="embeddingDim")
    providers: dict[str, list[str]] = Field(description="ONNX providers per role.")
    warnings: list[str]
    load_seconds: float = Field(alias="loadSeconds")


class ReloadStatus(WireModel):
    """Model pack reload counters."""

    attempts: int = Field(ge=0)
    failures: int = Field(ge=0)
    last_attempt: float | None = Field(alias="lastAttempt", description="Unix seconds.")
    last_error: str | None = Field(alias="lastError")


class ModelLoaded(WireModel):
    """``model`` while a pack is in service."""

    loaded: Literal[True] = True
    pack: str
    embedding_space: str = Field(alias="embeddingSpace")
    embedding_dim: int = Field(alias="embeddingDim")
    providers: dict[str, list[str]]
    warnings: list[str]
    load_seconds: float = Field(alias="loadSeconds")
    kept_spaces: list[str] = Field(alias="keptSpaces")
    reload_error: str | None = Field(alias="reloadError")
    swaps: int = Field(ge=0)
    reloads: ReloadStatus | None = None


class ModelNotLoaded(WireModel):
    """``model`` while no pack is in service."""

    loaded: Literal[False] = False
    reason: str
    kept_spaces: list[str] = Field(alias="keptSpaces")
    reload_error: str | None = Field(alias="reloadError")
    swaps: int = Field(ge=0)
    reloads: ReloadStatus | None = None


ModelStatus = ModelLoaded | ModelNotLoaded
"""``model`` of the status report."""


class MqttStatus(WireModel):
    """The MQTT link."""

    connected: bool
    protocol: str | None = Field(description='"5" or "3.1.1".')
    connects: int = Field(ge=0, description="Connections since start.")


class PendingEvent(WireModel):
    """The oldest undelivered callback event."""

    event_id: str = Field(alias="eventId")
    slot_id: str = Field(alias="slotId")
    type: str
    created_at: float = Field(alias="createdAt", description="Unix seconds.")
    attempts: int
    last_error: str | None = Field(alias="lastError")
    age_seconds: float = Field(alias="ageSeconds")


class DeadLetter(WireModel):
    """A callback event the backend refused."""

    event_id: str = Field(alias="eventId")
    slot_id: str = Field(alias="slotId")
    type: str
    created_at: float = Field(alias="createdAt", description="Unix seconds.")
    attempts: int
    status_code: int | None = Field(alias="statusCode")
    last_error: str | None = Field(alias="lastError")


class OutboxStats(WireModel):
    """Callback events by state, the oldest pending one, and recent dead letters."""

    counts: dict[str, int] = Field(description="Events per state: pending, delivered, dead.")
    oldest_pending: PendingEvent | None = Field(alias="oldestPending")
    dead_letters: list[DeadLetter] = Field(alias="deadLetters", description="Up to 20.")
    max_pending: int = Field(alias="maxPending")
    refused_since_start: int = Field(alias="refusedSinceStart")
    full: str | None = Field(description="Why events are refused; null when they are not.")
    error: str | None = Field(None, description="Why the counts could not be read.")


class TaskStatus(WireModel):
    """A supervised long-lived task."""

    name: str
    state: str = Field(description="running, backoff, failed or stopped.")
    failures: int = Field(ge=0)
    last_error: str | None = Field(alias="lastError")
    last_failure_at: float | None = Field(alias="lastFailureAt", description="Unix seconds.")


class AgentInfo(WireModel):
    """The agent process."""

    version: str
    site_id: str = Field(alias="siteId")
    state: str = Field(description="STARTING, RUNNING, STOPPING or STOPPED.")
    uptime_seconds: float = Field(alias="uptimeSeconds")


class AnalysisLoad(WireModel):
    """How busy the box's analysis capacity is."""

    cameras: int = Field(ge=0, description="Cameras sharing the capacity.")
    busy_slots: int = Field(alias="busySlots", ge=0, description="Analyses running now.")
    waiting: int = Field(ge=0, description="Cameras waiting for their turn now.")
    full_decode_cameras: int = Field(
        alias="fullDecodeCameras", ge=0, description="Cameras decoding every frame."
    )
    max_analyses_per_second: float = Field(alias="maxAnalysesPerSecond")
    max_embeddings_per_second: float = Field(alias="maxEmbeddingsPerSecond")
    full_decode_mpx_per_second: float = Field(alias="fullDecodeMpxPerSecond")
    fine_detect_cores: float = Field(
        0.0,
        alias="fineDetectCores",
        description="CPU (cores) full-resolution detection may use over all cameras.",
    )
    fine_detect_cores_used: float = Field(
        0.0,
        alias="fineDetectCoresUsed",
        description="CPU (cores) it used over the last 30 s, all cameras together.",
    )


class AgentStatus(WireModel):
    """The ``status`` reply's data, also served at ``/status`` on the box."""

    agent: AgentInfo
    model: ModelStatus
    sessions: list[SessionSummary]
    recent_sessions: list[EndedSession] = Field(
        default_factory=list,
        alias="recentSessions",
        description="The last 20 ended sessions, newest first (kept across restarts).",
    )
    mqtt: MqttStatus
    outbox: OutboxStats | None
    tasks: list[TaskStatus] = Field(default_factory=list)
    analysis: AnalysisLoad | None = Field(
        None, description="The shared analysis capacity; null when sessions read no cameras."
    )
    warnings: list[str] = Field(description="Conditions for an operator, `CODE: detail`.")


class OnlineMessage(WireModel):
    """The retained availability message while the agent is connected."""

    state: Literal["online"] = "online"
    version: str
    site_id: str = Field(alias="siteId")
    model_pack: str | None = Field(alias="modelPack")
    embedding_space: str | None = Field(alias="embeddingSpace")
    active_sessions: list[str] = Field(alias="activeSessions")
    warnings: list[str]


class OfflineMessage(WireModel):
    """The retained availability message when the agent is gone: published on a clean
    stop, and left by the broker as the agent's last will when it vanishes."""

    state: Literal["offline"] = "offline"
    site_id: str = Field(alias="siteId")
    client_id: str = Field(alias="clientId", description="The agent's MQTT client id.")
