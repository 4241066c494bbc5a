"""CommandProcessor at its seam: auth, validation, unknown commands, idempotent replay from
the real SQLite store, and how handler failures become replies (fake handlers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.handlers import build_handlers
from agent.commands.processor import CommandHandler, CommandProcessor
from agent.errors import AgentError, ErrorCode
from agent.events.store import Store
from agent.protocol import COMMANDS, Command, CommandName, Reply
from agent.transport.mqtt import IncomingMessage

KEY = "test-key-123"
PREFIX = "attendance/site-1/cmd"


class Handlers:
    """Fake handlers that count calls; ``session/stop`` raises what ``fail_with`` holds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Command]] = []
        self.fail_with: BaseException | None = None

    def table(self) -> dict[CommandName, CommandHandler]:
        """A handler per command name."""

        def make(name: CommandName) -> CommandHandler:
            async def handle(command: Command) -> Reply:
                self.calls.append((name, command))
                if self.fail_with is not None:
                    raise self.fail_with
                return Reply.ok(f"{name} done.", {"call": len(self.calls)})

            return handle

        return {name: make(name) for name in CommandName}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real state file."""
    db = Store(tmp_path / "state")
    yield db
    db.close()


def _processor(
    store: Store, handlers: Handlers, sent: list[Reply], **options: Any
) -> CommandProcessor:
    """A processor with one accepted key and ``handlers``; replies it sends go to ``sent``."""

    async def send(message: IncomingMessage, reply: Reply) -> None:
        sent.append(reply)

    return CommandProcessor(
        command_prefix=PREFIX,
        api_keys=[KEY],
        max_payload_bytes=64 * 1024,
        reply_cache_s=3600,
        store=store,
        handlers=handlers.table(),
        send_reply=send,
        **options,
    )


@pytest.fixture
async def setup(store: Store) -> AsyncIterator[tuple[CommandProcessor, Handlers, list[Reply]]]:
    """A processor with one accepted key, fake handlers, and the replies it sent."""
    handlers = Handlers()
    sent: list[Reply] = []
    yield _processor(store, handlers, sent), handlers, sent


def message(name: str, payload: dict[str, Any], key: str | None = KEY) -> IncomingMessage:
    """A v5 command message, the key as user property (if any)."""
    return IncomingMessage(
        topic=f"{PREFIX}/{name}",
        payload=json.dumps(payload).encode(),
        response_topic=None,
        correlation_data=None,
        user_properties={"x-api-key": key} if key is not None else {},
    )


STOP = {"slotId": "slot-1"}


@pytest.mark.parametrize("key", [None, "", "wrong-key"])
async def test_missing_or_wrong_key_is_401_and_nothing_runs(setup: Any, key: str | None) -> None:
    processor, handlers, sent = setup
    await processor.handle(message("session/stop", STOP, key=key))
    (reply,) = sent
    assert (reply.status, reply.code) == (401, ErrorCode.UNAUTHORIZED)
    assert handlers.calls == []


async def test_right_key_runs_the_handler(setup: Any) -> None:
    processor, handlers, sent = setup
    await processor.handle(message("session/stop", {**STOP, "requestId": "r1"}))
    (reply,) = sent
    assert (reply.status, reply.code, reply.request_id) == (200, None, "r1")
    assert [name for name, _ in handlers.calls] == ["session/stop"]


async def test_key_in_payload_field(setup: Any) -> None:
    processor, handlers, _ = setup
    reply = await processor.process(message("status", {"apiKey": KEY}, key=None))
    assert reply.status == 200 and len(handlers.calls) == 1


async def test_validation_error_is_422_with_path(setup: Any) -> None:
    processor, handlers, _ = setup
    reply = await processor.process(message("session/stop", {"slotId": "", "extra": 1}))
    assert (reply.status, reply.code) == (422, ErrorCode.VALIDATION_ERROR)
    assert reply.data is not None
    paths = {e["path"] for e in reply.data["errors"]}
    assert paths == {"slotId", "extra"}
    assert handlers.calls == []


async def test_unknown_command(setup: Any) -> None:
    processor, handlers, _ = setup
    reply = await processor.process(message("session/pause", STOP))
    assert (reply.status, reply.code) == (404, ErrorCode.UNKNOWN_COMMAND)
    assert "session/start" in reply.message
    assert handlers.calls == []


async def test_request_id_is_replayed_from_the_store(setup: Any, store: Store) -> None:
    processor, handlers, _ = setup
    first = await processor.process(message("session/stop", {**STOP, "requestId": "dup"}))
    again = await processor.process(message("session/stop", {**STOP, "requestId": "dup"}))
    assert again == first and again.data == {"call": 1}
    assert len(handlers.calls) == 1
    cached = await store.call(store.find_reply, "dup", 3600)
    assert cached is not None and cached["data"] == {"call": 1}


async def test_5xx_is_not_cached(setup: Any) -> None:
    processor, handlers, _ = setup
    handlers.fail_with = AgentError(ErrorCode.MODEL_NOT_LOADED, "no model", status=503)
    first = await processor.process(message("session/stop", {**STOP, "requestId": "t"}))
    handlers.fail_with = None
    second = await processor.process(message("session/stop", {**STOP, "requestId": "t"}))
    assert (first.status, second.status) == (503, 200)
    assert len(handlers.calls) == 2


async def test_agent_error_becomes_its_reply(setup: Any) -> None:
    processor, handlers, _ = setup
    handlers.fail_with = AgentError(
        ErrorCode.SESSION_NOT_FOUND, "no such slot", status=404, details={"slotId": "slot-1"}
    )
    reply = await processor.process(message("session/stop", {**STOP, "requestId": "e"}))
    assert (reply.status, reply.code, reply.message) == (
        404,
        ErrorCode.SESSION_NOT_FOUND,
        "no such slot",
    )
    assert reply.data == {"slotId": "slot-1"} and reply.request_id == "e"


async def test_handler_crash_is_500(setup: Any) -> None:
    processor, handlers, _ = setup
    handlers.fail_with = RuntimeError("boom")
    reply = await processor.process(message("session/stop", STOP))
    assert (reply.status, reply.code) == (500, ErrorCode.INTERNAL_ERROR)
    assert "boom" not in reply.message


async def test_only_status_is_answered_while_not_accepting(store: Store) -> None:
    handlers = Handlers()
    processor = _processor(store, handlers, [], accepting=lambda: False)
    refused = await processor.process(message("session/stop", STOP))
    status = await processor.process(message("status", {}))
    assert (refused.status, refused.code) == (503, ErrorCode.AGENT_SHUTTING_DOWN)
    assert status.status == 200
    assert [name for name, _ in handlers.calls] == ["status"]


def test_handler_table_and_protocol_name_the_same_commands() -> None:
    # The handlers only keep their parts; none is used to build the table.
    part: Any = object()
    table = build_handlers(sessions=part, models=part, pool=part, enrollment=part, status=part)
    assert set(table) == set(COMMANDS) == set(CommandName)
