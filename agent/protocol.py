"""Wire formats of the backend protocol: commands, replies and callback events.

These pydantic models are the single source of truth: the agent validates with them and
``docs/schemas/*.json`` are generated from them (``python -m agent schemas``). Field names
are camelCase on the wire, as the backend has always sent them.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticCustomError

from agent.errors import AgentError, ErrorCode

# Ids are logged, persisted and echoed: no control characters (a newline would forge log
# lines).
Id = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=128, strip_whitespace=True, pattern=r"^[^\x00-\x1f\x7f]*$"
    ),
]
"""A string id: 1-128 characters, surrounding whitespace stripped."""


def _id_from_int(value: Any) -> Any:
    """Compatibility with older backends: a JSON integer id becomes its decimal string (42 -> "42").

    Booleans (an ``int`` subclass in Python) and floats are refused, not converted."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("id_type", "Input should be a string or an integer")
    return str(int(value)) if isinstance(value, int) else value


def _int_or(text: Any) -> BeforeValidator:
    """The validator turning integer ids into strings; the schema says string or integer."""
    return BeforeValidator(_id_from_int, json_schema_input_type=text | int)


WireId = Annotated[Id, _int_or(Id)]
"""An id the backend may send as a string or, as older backends did, as a JSON integer;
always a string once validated (so stored, logged and echoed as a string)."""

_SubmissionText = Annotated[str, StringConstraints(max_length=128)]
SubmissionId = Annotated[_SubmissionText, _int_or(_SubmissionText)]
"""``submissionId``: up to 128 characters, or an integer (converted to its string)."""

_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _iso_date_time_only(value: Any) -> Any:
    """Refuse what pydantic would otherwise read as a Unix timestamp (numbers, numeric
    strings): ``endTime`` must be an ISO 8601 date-time string."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE_TIME.match(value):
        raise PydanticCustomError(
            "iso_datetime_required",
            "Input should be an ISO 8601 date-time string with a UTC offset, e.g. "
            "2026-12-03T10:00:00+07:00 or 2026-12-03T03:00:00Z; numbers and Unix "
            "timestamps are not accepted",
        )
    return value


IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_iso_date_time_only)]
"""An ISO 8601 date-time string with an explicit offset (``+07:00``, ``Z``)."""


class WireModel(BaseModel):
    """Base of every wire model: camelCase names, unknown fields rejected, immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Reply(BaseModel):
    """``{"requestId", "status", "code", "message", "data"}``; status is HTTP-like."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    request_id: str | None = Field(None, alias="requestId", description="Echo of the request's id.")
    status: int = Field(description="HTTP-like status: 200, 400, 401, 404, 409, 422, 500, 503.")
    code: ErrorCode | None = Field(None, description="Application code; null on success.")
    message: str = Field(description="Human-readable outcome; says what to fix on errors.")
    data: dict[str, Any] | None = Field(None, description="Result payload, or error details.")

    @classmethod
    def ok(cls, message: str, data: dict[str, Any] | None = None) -> Reply:
        """A 200 reply."""
        return cls(status=200, code=None, message=message, data=data)

    @classmethod
    def from_error(cls, error: AgentError) -> Reply:
        """The reply for a typed error (details become ``data``)."""
        return cls(status=error.status, code=error.code, message=error.message, data=error.details)

    def to_json_dict(self, *, with_request_id: bool = True) -> dict[str, Any]:
        """Plain JSON-ready dict in the wire field names."""
        data = self.model_dump(mode="json", by_alias=True)
        if not with_request_id:
            data.pop("requestId", None)
        return data


class Command(WireModel):
    """Fields every command may carry."""

    request_id: Id | None = Field(
        None,
        alias="requestId",
        description="Caller's id for this request; echoed in the reply and used to "
        "deduplicate redelivered commands.",
    )
    api_key: str | None = Field(
        None,
        alias="apiKey",
        max_length=256,
        description="API key, when the MQTT v5 user property x-api-key is not used.",
    )


class SessionMode(StrEnum):
    """How often a student is reported."""

    ATTENDANCE = "ATTENDANCE"  # once per session
    CONTINUOUS = "CONTINUOUS"  # again every configured interval while seen


class CameraSpec(WireModel):
    """A camera of a session: by id from the site's config, or with its own URL."""

    id: WireId = Field(
        description="Camera id (string, or integer converted to a string); looked up in the "
        "site config when rtspUrl is absent."
    )
    name: str | None = Field(None, max_length=128, description="Display name.")
    rtsp_url: str | None = Field(
        None,
        alias="rtspUrl",
        max_length=2048,
        pattern=r"^(rtsp|rtsps|http|https)://",
        description="Stream URL (rtsp://, rtsps://, http(s):// MJPEG). Local files and "
        "devices can only be named in the site's config.",
    )


class StudentSpec(WireModel):
    """One student of the roster with one or more enrollment embeddings."""

    id: WireId = Field(
        description="Student id (string, or integer converted to a string), reported in "
        "recognition events."
    )
    code: str | None = Field(None, max_length=64, description="Student code (e.g. school id).")
    name: str | None = Field(None, max_length=256, description="Display name (never logged).")
    embeddings: list[list[float]] = Field(
        min_length=1,
        max_length=32,
        description="Enrollment embeddings (each as long as the model's embedding dimension).",
    )
    embedding_space: str | None = Field(
        None,
        alias="embeddingSpace",
        max_length=64,
        description="Space the embeddings belong to (from embedding/generate); checked.",
    )


class SessionStart(Command):
    """``session/start``: begin recognising a class slot's students on its cameras."""

    slot_id: WireId = Field(
        alias="slotId",
        description="Class slot (string, or integer converted to a string); one session per slot.",
    )
    mode: SessionMode = Field(SessionMode.ATTENDANCE, description="Reporting mode.")
    callback_url: str = Field(
        alias="callbackUrl",
        min_length=8,
        max_length=2048,
        pattern=r"^https?://",
        description="Where events are POSTed; must match the site's allowlist.",
    )
    cameras: list[CameraSpec] = Field(min_length=1, max_length=64, description="Cameras.")
    students: list[StudentSpec] = Field(min_length=1, max_length=5000, description="Roster.")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Cosine threshold for this session (default: config)."
    )
    end_time: IsoDateTime | None = Field(
        None,
        alias="endTime",
        description="ISO 8601 date-time string with an explicit offset (e.g. "
        "2026-12-03T10:00:00+07:00 or ...Z; not a number); the session stops itself then "
        "(SESSION_ENDED).",
    )

    @field_validator("students")
    @classmethod
    def _unique_students(cls, students: list[StudentSpec]) -> list[StudentSpec]:
        ids = [s.id for s in students]
        if len(set(ids)) != len(ids):
            raise ValueError("student ids must be unique")
        return students

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraSpec]) -> list[CameraSpec]:
        ids = [c.id for c in cameras]
        if len(set(ids)) != len(ids):
            raise ValueError("camera ids must be unique")
        return cameras


class SessionStop(Command):
    """``session/stop``: end a slot's session."""

    slot_id: WireId = Field(
        alias="slotId",
        description="Class slot of the session to stop (string, or integer converted to a string).",
    )


class EmbeddingGenerate(Command):
    """``embedding/generate``: enrollment embedding from a photo."""

    submission_id: SubmissionId | None = Field(
        None,
        alias="submissionId",
        description="Echoed in the result (string, or integer converted to a string).",
    )
    photo: str | None = Field(
        None, description="The image file's bytes, base64-encoded (JPEG, PNG, WebP, BMP)."
    )


class StatusRequest(Command):
    """``status``: the agent's state."""


class CommandName(StrEnum):
    """Every command the agent answers: the topic suffix after ``cmd/``. The one list of
    names: the payload models below and the handler table (:mod:`agent.commands.handlers`) are
    keyed by it."""

    SESSION_START = "session/start"
    SESSION_STOP = "session/stop"
    EMBEDDING_GENERATE = "embedding/generate"
    STATUS = "status"


COMMANDS: dict[CommandName, type[Command]] = {
    CommandName.SESSION_START: SessionStart,
    CommandName.SESSION_STOP: SessionStop,
    CommandName.EMBEDDING_GENERATE: EmbeddingGenerate,
    CommandName.STATUS: StatusRequest,
}
"""Command name -> payload model."""


class StatusReason(StrEnum):
    """Why a session's status changed."""

    REQUESTED = "REQUESTED"
    SESSION_ENDED = "SESSION_ENDED"
    ALL_CAMERAS_FAILED = "ALL_CAMERAS_FAILED"
    CAMERA_FAILURE = "CAMERA_FAILURE"
    CAMERA_RECOVERED = "CAMERA_RECOVERED"
    BACKEND_UNRESPONSIVE = "BACKEND_UNRESPONSIVE"
    BACKEND_REJECTED = "BACKEND_REJECTED"  # every delivery was refused (4xx, 3xx)
    AGENT_RESTARTED = "AGENT_RESTARTED"
    STOP_FAILED = "STOP_FAILED"


class SessionStatus(StrEnum):
    """Session status events."""

    STARTED = "STARTED"
    RESUMED = "RESUMED"
    CAMERA_DISCONNECTED = "CAMERA_DISCONNECTED"
    CAMERA_RECONNECTED = "CAMERA_RECONNECTED"
    STOPPED = "STOPPED"


class CameraUptime(WireModel):
    """How long a camera delivered frames during the session."""

    camera_id: str = Field(alias="cameraId")
    camera_name: str | None = Field(None, alias="cameraName")
    up_seconds: float = Field(alias="upSeconds", ge=0)
    session_seconds: float = Field(alias="sessionSeconds", ge=0)


class PresenceStatus(StrEnum):
    """The verdict on one roster student at the end of a session."""

    PRESENT = "PRESENT"  # recognised: exactly the students that got a RECOGNITION
    UNCERTAIN = "UNCERTAIN"  # never confirmed, but some face came close to them
    NOT_SEEN = "NOT_SEEN"  # nothing pointed at them


class PresenceEntry(WireModel):
    """One roster student's verdict (STOPPED events and the ``session/stop`` reply)."""

    student_id: str = Field(alias="studentId")
    status: PresenceStatus
    first_seen_at: datetime | None = Field(
        None, alias="firstSeenAt", description="PRESENT: when first recognised; else null."
    )
    last_seen_at: datetime | None = Field(
        None, alias="lastSeenAt", description="PRESENT: when last seen recognised; else null."
    )
    camera_id: str | None = Field(
        None,
        alias="cameraId",
        description="PRESENT: the camera that recognised them; UNCERTAIN: the camera of the "
        "closest match; NOT_SEEN: null.",
    )
    best_score: float | None = Field(
        None,
        alias="bestScore",
        description="PRESENT: best score while recognised; UNCERTAIN: best score of a face "
        "whose best match they were; NOT_SEEN: null.",
    )
    sightings: int = Field(
        0,
        ge=0,
        description="PRESENT: analyses in which they were seen recognised; UNCERTAIN: "
        "matches that came close; NOT_SEEN: 0.",
    )


class PresenceCounts(WireModel):
    """How many roster students are present, uncertain and not seen (so far)."""

    present: int = Field(ge=0)
    uncertain: int = Field(ge=0)
    not_seen: int = Field(alias="notSeen", ge=0)


class SessionStatusEvent(WireModel):
    """Callback body ``type = SESSION_STATUS``."""

    type: Literal["SESSION_STATUS"] = "SESSION_STATUS"
    event_id: str = Field(alias="eventId", description="UUID; also the Idempotency-Key header.")
    slot_id: str = Field(alias="slotId")
    site_id: str = Field(alias="siteId")
    status: SessionStatus
    reason: StatusReason | None = None
    camera_id: str | None = Field(None, alias="cameraId")
    camera_name: str | None = Field(None, alias="cameraName")
    cameras: list[CameraUptime] | None = Field(
        None, description="Per-camera up-time (STOPPED only)."
    )
    presence: list[PresenceEntry] | None = Field(
        None, description="STOPPED only: one verdict per roster student."
    )
    message: str | None = None
    occurred_at: datetime = Field(alias="occurredAt", description="ISO 8601 with offset.")


class RecognitionEvent(WireModel):
    """Callback body ``type = RECOGNITION``."""

    type: Literal["RECOGNITION"] = "RECOGNITION"
    event_id: str = Field(alias="eventId", description="UUID; also the Idempotency-Key header.")
    slot_id: str = Field(alias="slotId")
    site_id: str = Field(alias="siteId")
    mode: SessionMode
    student_id: str = Field(alias="studentId")
    student_code: str | None = Field(None, alias="studentCode")
    confidence: float = Field(ge=-1.0, le=1.0, description="Cosine similarity of the match.")
    camera_id: str = Field(alias="cameraId")
    camera_name: str | None = Field(None, alias="cameraName")
    recognized_at: datetime = Field(alias="recognizedAt", description="ISO 8601 with offset.")
    embedding_space: str = Field(alias="embeddingSpace")
    face_jpeg: str | None = Field(
        None, alias="faceJpeg", description="Base64 JPEG crop of the face, when enabled."
    )
