"""The reply envelope shared by the CLI and the MQTT commands."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import AgentError, ErrorCode


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
