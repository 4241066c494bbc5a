"""The JSON Schemas of the protocol (docs/schemas/): every command, the reply, every
callback event and the agent's own reports, generated from the typed models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.protocol import COMMANDS, RecognitionEvent, Reply, SessionStatusEvent
from agent.status.models import AgentStatus, OfflineMessage, OnlineMessage

__all__ = ["json_schemas", "write_schemas"]


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every command, the reply, every callback event and the agent's own
    reports (status data, online message), by file stem."""
    schemas: dict[str, dict[str, Any]] = {
        f"command.{name.replace('/', '.')}": model.model_json_schema(by_alias=True)
        for name, model in COMMANDS.items()
    }
    schemas["reply"] = Reply.model_json_schema(by_alias=True)
    schemas["event.session_status"] = SessionStatusEvent.model_json_schema(by_alias=True)
    schemas["event.recognition"] = RecognitionEvent.model_json_schema(by_alias=True)
    schemas["status"] = AgentStatus.model_json_schema(by_alias=True)
    schemas["online"] = OnlineMessage.model_json_schema(by_alias=True)
    schemas["offline"] = OfflineMessage.model_json_schema(by_alias=True)
    return schemas


def write_schemas(folder: Path) -> list[Path]:
    """Write ``<stem>.schema.json`` files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, schema in json_schemas().items():
        path = folder / f"{stem}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
