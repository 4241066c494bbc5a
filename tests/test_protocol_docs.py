"""The published protocol stays in step with the code."""

from __future__ import annotations

import json
from pathlib import Path

from agent.cli import build_parser
from agent.errors import ErrorCode
from agent.protocol import COMMANDS, json_schemas

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "docs" / "schemas"
PROTOCOL = ROOT / "docs" / "protocol.md"


def test_json_schemas_are_current() -> None:
    expected = json_schemas()
    on_disk = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert on_disk == set(expected), "run `python -m agent schemas` and commit docs/schemas"
    for stem, schema in expected.items():
        current = json.loads((SCHEMAS / f"{stem}.schema.json").read_text())
        assert current == schema, f"{stem} is stale: run `python -m agent schemas`"


def test_protocol_doc_names_every_command_and_code() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    for name in COMMANDS:
        assert f"`{name}`" in text, f"docs/protocol.md does not document {name}"
    for code in ErrorCode:
        if code is not ErrorCode.CONFIG_INVALID:
            assert f"`{code.value}`" in text, f"docs/protocol.md does not document {code}"


def test_readme_documents_every_cli_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"python -m agent {name}" in readme, f"README does not document `{name}`"


def _json_examples() -> list[object]:
    """Every ```json block of docs/protocol.md, with the `...` shortenings removed."""
    import re

    text = PROTOCOL.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    examples = []
    for block in blocks:
        cleaned = re.sub(r",\s*\.\.\.(?=\s*[\]}])", "", block)  # ", ...]" inside arrays
        cleaned = re.sub(r'\.\.\."', '"', cleaned)  # "abc..." in shortened strings
        examples.append(json.loads(cleaned))
    return examples


def test_protocol_examples_are_valid() -> None:
    from agent.protocol import RecognitionEvent, SessionStatusEvent
    from agent.reply import Reply
    from agent.status_models import AgentStatus, OnlineMessage, SessionSummary

    examples = _json_examples()
    assert len(examples) >= 20
    checked = reports = 0
    for example in examples:
        if not isinstance(example, dict):
            continue
        if example.get("type") == "RECOGNITION":
            RecognitionEvent.model_validate(example)
        elif example.get("type") == "SESSION_STATUS":
            SessionStatusEvent.model_validate(example)
        elif example.get("state") == "online":
            OnlineMessage.model_validate(example)
        elif {"status", "code", "message"} <= set(example):
            reply = Reply.model_validate(example)
            data = reply.data or {}
            if reply.message == "Agent status.":
                AgentStatus.model_validate(data)
                reports += 1
            elif "startedAt" in data:
                SessionSummary.model_validate(data)
                reports += 1
        else:
            continue
        checked += 1
    assert checked >= 10
    assert reports >= 2  # the status reply and session summaries


def test_protocol_doc_says_5xx_replies_are_not_cached() -> None:
    """The code (CommandProcessor) caches only replies below 500; the doc must say so."""
    text = " ".join(PROTOCOL.read_text(encoding="utf-8").split())
    assert "error replies are cached too." not in text
    assert "5xx replies" in text and "are **not** cached" in text
