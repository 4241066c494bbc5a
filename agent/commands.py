"""Command processing: every message on a command topic gets exactly one reply.

Order of checks: size, JSON, API key (401, nothing executed), replay of a known
``requestId`` (the same reply again, nothing executed twice), command name (404),
payload validation (422 with every field error), then the command's handler. Handlers
raise :class:`AgentError`; anything else becomes a logged 500.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import ValidationError

from agent.errors import AgentError, ErrorCode
from agent.mqtt import IncomingMessage
from agent.protocol import COMMANDS, Command
from agent.reply import Reply
from agent.store import Store, StoreError

log = logging.getLogger(__name__)

CommandHandler = Callable[[Command], Awaitable[Reply]]
ReplySender = Callable[[IncomingMessage, Reply], Awaitable[None]]

_REDACTED_KEYS = {"apikey", "password", "token", "name"}


def redact(value: Any, key: str = "") -> Any:
    """A loggable copy of a payload: no keys, no names, no embeddings, no photo bytes."""
    lowered = key.lower()
    if lowered in _REDACTED_KEYS:
        return "***"
    if lowered == "photo" and isinstance(value, str):
        return f"<{len(value)} base64 chars>"
    if lowered == "embeddings" and isinstance(value, list):
        return f"<{len(value)} embeddings>"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value[:20]] + (["..."] if len(value) > 20 else [])
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    return value


def _validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"path": ".".join(str(p) for p in err["loc"]) or "(payload)", "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


class CommandProcessor:
    """Turns command messages into replies, with auth, validation and idempotency."""

    def __init__(
        self,
        *,
        command_prefix: str,
        api_keys: list[str],
        max_payload_bytes: int,
        reply_cache_s: float,
        store: Store,
        handlers: Mapping[str, CommandHandler],
        send_reply: ReplySender,
    ) -> None:
        self._prefix = command_prefix.rstrip("/") + "/"
        self._keys = [k.encode() for k in api_keys]
        self._max_bytes = max_payload_bytes
        self._reply_cache_s = reply_cache_s
        self._store = store
        self._handlers = handlers
        self._send = send_reply
        self._in_flight: dict[str, asyncio.Future[Reply]] = {}
        if not self._keys:
            log.warning(
                "AUTH_NO_KEYS every command will be refused: set AGENT_AUTH__API_KEYS or "
                "[auth] api_keys_file"
            )

    async def handle(self, message: IncomingMessage) -> None:
        """Process one message and send its reply."""
        reply = await self.process(message)
        await self._send(message, reply)

    def _authorised(self, key: str | None) -> bool:
        if not key:
            return False
        candidate = key.encode()
        # Compare against every key so timing does not reveal which one nearly matched.
        return any([hmac.compare_digest(candidate, k) for k in self._keys])

    async def process(self, message: IncomingMessage) -> Reply:
        """The reply for one message (without sending it)."""
        name = message.topic[len(self._prefix) :] if message.topic.startswith(self._prefix) else ""
        if len(message.payload) > self._max_bytes:
            return self._refuse(
                name,
                None,
                422,
                ErrorCode.VALIDATION_ERROR,
                f"Payload is {len(message.payload)} bytes; the limit is {self._max_bytes}.",
                {"errors": [{"path": "(payload)", "problem": "too large"}]},
            )
        try:
            payload = json.loads(message.payload)
        except (UnicodeDecodeError, ValueError) as exc:
            return self._refuse(
                name,
                None,
                422,
                ErrorCode.VALIDATION_ERROR,
                "Payload is not valid JSON.",
                {"errors": [{"path": "(payload)", "problem": str(exc)[:200]}]},
            )
        if not isinstance(payload, dict):
            return self._refuse(
                name,
                None,
                422,
                ErrorCode.VALIDATION_ERROR,
                "Payload must be a JSON object.",
                {"errors": [{"path": "(payload)", "problem": "not an object"}]},
            )
        raw_id = payload.get("requestId")
        request_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else None
        key = message.user_properties.get("x-api-key") or payload.get("apiKey")
        if not self._authorised(key if isinstance(key, str) else None):
            return self._refuse(
                name,
                request_id,
                401,
                ErrorCode.UNAUTHORIZED,
                "Missing or invalid API key (MQTT user property x-api-key or field apiKey).",
            )
        log.info(
            "COMMAND_RECEIVED command=%s request_id=%s body=%s",
            name or message.topic,
            request_id,
            json.dumps(redact(payload))[:1000],
        )
        if request_id is None:
            return await self._execute(name, payload, None)
        cached = self._cached(request_id)
        if cached is not None:
            log.info("COMMAND_REPLAYED command=%s request_id=%s", name, request_id)
            return cached
        running = self._in_flight.get(request_id)
        if running is not None:
            log.info("COMMAND_DUPLICATE_IN_FLIGHT command=%s request_id=%s", name, request_id)
            return await asyncio.shield(running)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._in_flight[request_id] = future
        try:
            reply = await self._execute(name, payload, request_id)
            future.set_result(reply)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: duplicates re-raise it themselves
            raise
        finally:
            del self._in_flight[request_id]
        if reply.status < 500:
            # 5xx (not loaded, shutting down, outbox full...) are transient: a retry with
            # the same requestId must run the command again.
            self._remember(request_id, name, reply)
        return reply

    async def _execute(self, name: str, payload: dict[str, Any], request_id: str | None) -> Reply:
        model = COMMANDS.get(name)
        handler = self._handlers.get(name)
        if model is None or handler is None:
            return self._refuse(
                name,
                request_id,
                404,
                ErrorCode.UNKNOWN_COMMAND,
                f"Unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}.",
            )
        try:
            command = model.model_validate(payload)
        except ValidationError as exc:
            errors = _validation_errors(exc)
            return self._refuse(
                name,
                request_id,
                422,
                ErrorCode.VALIDATION_ERROR,
                f"Invalid {name} payload: {len(errors)} problem(s), see data.errors.",
                {"errors": errors},
            )
        try:
            reply = await handler(command)
        except AgentError as exc:
            log.warning(
                "COMMAND_FAILED command=%s request_id=%s status=%d code=%s message=%s",
                name,
                request_id,
                exc.status,
                exc.code,
                exc.message,
            )
            reply = Reply.from_error(exc)
        except Exception:
            log.exception("COMMAND_CRASHED command=%s request_id=%s", name, request_id)
            reply = Reply(
                status=500,
                code=ErrorCode.INTERNAL_ERROR,
                message=f"{name} failed unexpectedly; the error was logged.",
            )
        else:
            log.info("COMMAND_OK command=%s request_id=%s", name, request_id)
        return reply.model_copy(update={"request_id": request_id})

    def _refuse(
        self,
        name: str,
        request_id: str | None,
        status: int,
        code: ErrorCode,
        message: str,
        data: dict[str, Any] | None = None,
    ) -> Reply:
        log.warning(
            "COMMAND_REJECTED command=%s request_id=%s status=%d code=%s message=%s",
            name or "?",
            request_id,
            status,
            code,
            message,
        )
        return Reply(request_id=request_id, status=status, code=code, message=message, data=data)

    def _cached(self, request_id: str) -> Reply | None:
        try:
            found = self._store.find_reply(request_id, self._reply_cache_s)
        except StoreError:
            log.exception("REPLY_CACHE_UNAVAILABLE request_id=%s", request_id)
            return None
        return Reply.model_validate(found) if found is not None else None

    def _remember(self, request_id: str, name: str, reply: Reply) -> None:
        try:
            self._store.save_reply(request_id, name, reply.to_json_dict())
        except StoreError:
            log.exception("REPLY_CACHE_WRITE_FAILED request_id=%s", request_id)


def decode_photo_field(photo: str | None) -> bytes | None:
    """Bytes of a base64 ``photo`` field; invalid base64 is an INVALID_FILE_FORMAT error."""
    if photo is None or photo == "":
        return None
    try:
        return base64.b64decode("".join(photo.split()), validate=True)
    except (ValueError, TypeError) as exc:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT, "photo is not valid base64; encode the image bytes."
        ) from exc
