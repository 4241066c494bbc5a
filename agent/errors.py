"""Typed errors and the one list of application codes.

Every failure the agent reports (an MQTT reply, a callback event, a log line, a CLI
exit) carries an :class:`ErrorCode` and an HTTP-like status. Third-party exceptions
are translated into :class:`AgentError` where they enter the agent, so callers above
that boundary handle one exception type. Every exception class the agent defines
(``StoreError``, ``ConfigError``, ``DefaultPackError``, ``SessionStopError``...) derives
from :class:`AgentError` and carries a code from :class:`ErrorCode`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Application codes shared by replies, callbacks and logs."""

    # Photos and embedding generation.
    PHOTO_FILE_REQUIRED = "PHOTO_FILE_REQUIRED"
    PHOTO_FILE_NOT_FOUND = "PHOTO_FILE_NOT_FOUND"
    INVALID_FILE_FORMAT = "INVALID_FILE_FORMAT"
    NO_FACE_IN_PHOTO = "NO_FACE_IN_PHOTO"
    MULTIPLE_FACES_DETECTED = "MULTIPLE_FACES_DETECTED"
    LOW_QUALITY_FACE = "LOW_QUALITY_FACE"
    IMAGE_PROCESSING_FAILED = "IMAGE_PROCESSING_FAILED"
    # Models.
    MODEL_NOT_LOADED = "MODEL_NOT_LOADED"
    MODEL_PACK_INVALID = "MODEL_PACK_INVALID"
    MODEL_RELOAD_FAILED = "MODEL_RELOAD_FAILED"
    EMBEDDING_MODEL_MISMATCH = "EMBEDDING_MODEL_MISMATCH"
    INVALID_EMBEDDING = "INVALID_EMBEDDING"
    # Commands and sessions.
    UNAUTHORIZED = "UNAUTHORIZED"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    SESSION_ALREADY_EXISTS = "SESSION_ALREADY_EXISTS"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    CAMERA_NOT_FOUND = "CAMERA_NOT_FOUND"
    CAMERA_IN_USE = "CAMERA_IN_USE"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    CALLBACK_URL_NOT_ALLOWED = "CALLBACK_URL_NOT_ALLOWED"
    STOP_SESSION_FAILED = "STOP_SESSION_FAILED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    AGENT_SHUTTING_DOWN = "AGENT_SHUTTING_DOWN"
    TASK_FAILED = "TASK_FAILED"
    # Event delivery and the state file.
    OUTBOX_FULL = "OUTBOX_FULL"
    STORAGE_ERROR = "STORAGE_ERROR"
    STORAGE_BUSY = "STORAGE_BUSY"
    STORAGE_FULL = "STORAGE_FULL"
    STORAGE_CORRUPT = "STORAGE_CORRUPT"
    # Camera streams (reasons in status and CAMERA_DISCONNECTED events; the status page's
    # camera test) and the technician's status page (local HTTP only, never sent to the
    # backend).
    CAMERA_OPEN_FAILED = "CAMERA_OPEN_FAILED"
    CAMERA_NO_FRAME = "CAMERA_NO_FRAME"
    CAMERA_FRAME_TOO_LARGE = "CAMERA_FRAME_TOO_LARGE"
    SNAPSHOT_NOT_READY = "SNAPSHOT_NOT_READY"
    CAMERA_URL_NOT_ALLOWED = "CAMERA_URL_NOT_ALLOWED"
    WEBUI_PASSWORD_REQUIRED = "WEBUI_PASSWORD_REQUIRED"
    REQUEST_FORBIDDEN = "REQUEST_FORBIDDEN"
    # Configuration and the process (CLI exits and logs only, never sent to the backend).
    CONFIG_INVALID = "CONFIG_INVALID"
    MQTT_INSECURE = "MQTT_INSECURE"
    AGENT_ALREADY_RUNNING = "AGENT_ALREADY_RUNNING"


class AgentError(Exception):
    """An error the agent reports to its caller.

    ``status`` is the HTTP-like status of the reply (400, 404, 409, 422, 500, 503, ...);
    ``details`` is optional machine-readable context (never secrets or embeddings).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        status: int = 400,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details

    def __repr__(self) -> str:
        return f"AgentError({self.code!s}, status={self.status}, message={self.message!r})"


class ModelNotLoadedError(AgentError):
    """Raised by operations that need a model while none is loaded."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            ErrorCode.MODEL_NOT_LOADED,
            f"No face model is loaded: {reason}",
            status=503,
        )


class ModelPackError(AgentError):
    """A model pack is missing files, fails verification, or cannot be loaded."""

    def __init__(self, pack: str, reason: str) -> None:
        super().__init__(
            ErrorCode.MODEL_PACK_INVALID,
            f"Model pack {pack!r} is not usable: {reason}",
            status=500,
            details={"pack": pack, "reason": reason},
        )
        self.pack = pack
        self.reason = reason
