"""The published protocol stays in step with the code."""

from __future__ import annotations

import json
from pathlib import Path

from agent.cli import build_parser
from agent.errors import ErrorCode
from agent.protocol import COMMANDS
from agent.schemas import json_schemas

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
    from agent.protocol import RecognitionEvent, Reply, SessionStatusEvent
    from agent.status.models import AgentStatus, OnlineMessage, SessionSummary

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


def _log_event_names() -> set[str]:
    """Every event name the agent logs: the leading NAME of each ``log.<level>("NAME ...")``,
    and for ``log.<level>("%s ...", name)`` the names the variable is given in that function
    (``event = "A" if ... else "B"``)."""
    import ast
    import re

    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    pattern = re.compile(r"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b")
    names: set[str] = set()
    for path in (ROOT / "agent").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assigned: dict[str, list[str]] = {}
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target = node.targets[0]
                    if isinstance(target, ast.Name):
                        assigned[target.id] = [
                            c.value
                            for c in ast.walk(node.value)
                            if isinstance(c, ast.Constant) and isinstance(c.value, str)
                        ]
            for node in ast.walk(func):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in levels
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    continue
                text = node.args[0].value
                if (match := pattern.match(text)) is not None:
                    names.add(match.group(1))
                elif text.startswith("%s") and len(node.args) > 1:
                    arg = node.args[1]
                    if isinstance(arg, ast.Name):
                        names.update(n for n in assigned.get(arg.id, []) if pattern.fullmatch(n))
    return names


def test_readme_lists_every_log_event_name() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = _log_event_names()
    # The extraction itself works: these are logged in the three forms it reads.
    assert {"AGENT_FATAL", "METRICS_UNAVAILABLE", "CAMERA_RECONNECT_ERROR"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"README's log names miss {missing}"


def test_protocol_lists_every_stop_reason() -> None:
    from agent.protocol import StatusReason

    text = PROTOCOL.read_text(encoding="utf-8")
    for reason in StatusReason:
        if reason in (StatusReason.CAMERA_FAILURE, StatusReason.CAMERA_RECOVERED):
            continue  # camera events' reasons, not STOPPED's
        assert f"| `STOPPED` | `{reason.value}` |" in text, f"STOPPED / {reason.value}"


def test_session_reply_examples_have_every_summary_field() -> None:
    """The start and stop replies in the doc show the summary as the code sends it: every
    field (nulls included, ``wire`` keeps them), in order; the stop reply's cameras carry
    their health."""
    from agent.status.models import CameraHealth, SessionSummary

    fields = [f.alias or name for name, f in SessionSummary.model_fields.items()]
    health = [f.alias or name for name, f in CameraHealth.model_fields.items()]
    replies = {
        e["message"]: e["data"]
        for e in _json_examples()
        if isinstance(e, dict) and e.get("message") in ("Session started.", "Session stopped.")
    }
    assert set(replies) == {"Session started.", "Session stopped."}
    for data in replies.values():
        assert list(data) == fields
    stopped = replies["Session stopped."]
    assert all(list(c) == health and c["state"] == "STOPPED" for c in stopped["cameras"])
    assert stopped["presence"] and stopped["waitingForCamerasSeconds"] is None


def test_protocol_doc_says_5xx_replies_are_not_cached() -> None:
    """The code (CommandProcessor) caches only replies below 500; the doc must say so."""
    text = " ".join(PROTOCOL.read_text(encoding="utf-8").split())
    assert "error replies are cached too." not in text
    assert "5xx replies" in text and "are **not** cached" in text
