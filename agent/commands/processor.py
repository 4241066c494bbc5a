"""Command processing: every message on a command topic gets exactly one reply.

Order of checks: API key **before the payload is parsed** (401, nothing executed: an
unauthenticated sender costs a byte scan, plus a parse for its requestId when its payload
is small), size, JSON (parsed off the event loop when large; too deep a nesting is a 422,
not a crash), replay of a known ``requestId`` (the same reply again, nothing executed
twice), command name (404), payload validation (422 with every field error), the agent's
readiness (503 while it starts or stops; ``status`` is always answered), then the
command's handler. Handlers raise
:class:`AgentError`; anything else becomes a logged 500.

The key is taken from the MQTT v5 user property ``x-api-key`` or, for 3.1.1 backends, from
the payload's top-level ``apiKey``: candidates are found by a byte scan of the raw payload
(inside a JSON string a quote is always escaped, so ``"apiKey": "..."`` only matches at a
real key), and only a payload with an accepted candidate is parsed; the parsed top-level
``apiKey`` is then checked again. Untrusted strings are escaped before they are logged.

A 401 echoes the request's ``requestId`` so the backend can match it: the only thing read
from an unauthenticated payload, and only from one of at most ``PEEK_REQUEST_ID_BYTES``
(larger ones stay unparsed, their 401 carries ``requestId: null``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import ValidationError

from agent.errors import AgentError, ErrorCode
from agent.events.store import Store, StoreError
from agent.lanes import Lane
from agent.protocol import COMMANDS, Command, CommandName, Reply
from agent.redaction import log_safe, redact_url
from agent.transport.mqtt import IncomingMessage

log = logging.getLogger(__name__)

CommandHandler = Callable[[Command], Awaitable[Reply]]
ReplySender = Callable[[IncomingMessage, Reply], Awaitable[None]]

_REDACTED_KEYS = {"apikey", "password", "token", "name"}
# A top-level or nested "apiKey": "<value>" in raw JSON bytes (value without escapes).
_API_KEY_FIELD = re.compile(rb'"apiKey"\s*:\s*"([^"\\]{1,256})"')
PARSE_OFF_LOOP_BYTES = 256 * 1024  # larger payloads are parsed on the commands lane
# An unauthenticated payload is parsed for its requestId only up to this size: a JSON parse
# of 64 KiB takes well under a millisecond, so a flood of them costs little more than the
# byte scan; a bigger one is never parsed.
PEEK_REQUEST_ID_BYTES = 64 * 1024
MAX_REQUEST_ID_CHARS = 128
_COMMAND_NAMES = frozenset(c.value for c in CommandName)


def redact(value: Any, key: str = "") -> Any:
    """A loggable copy of a payload: no keys, no names, no embeddings, no photo bytes."""
    lowered = key.lower()
    if lowered in _REDACTED_KEYS:
        return "***"
    if lowered == "photo" and isinstance(value, str):
        return f"<{len(value)} base64 chars>"
    if lowered == "embeddings" and isinstance(value, list):
        return f"<{len(value)} embeddings>"
    if lowered.endswith("url") and isinstance(value, str):
        return redact_url(value)  # camera credentials, callback tokens
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value[:20]] + (["..."] if len(value) > 20 else [])
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    return value


def valid_request_id(value: object) -> str | None:
    """``value`` when it is a usable ``requestId`` (a printable string of 1-128 chars)."""
    if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isprintable():
        return value
    return None


def peek_request_id(payload: bytes) -> str | None:
    """The top-level ``requestId`` of an unauthenticated payload, for its 401 only.

    Nothing else of the payload is used or trusted; payloads over
    ``PEEK_REQUEST_ID_BYTES`` and anything that is not a JSON object give None.
    """
    if len(payload) > PEEK_REQUEST_ID_BYTES:
        return None
    try:
        parsed = json.loads(payload)
    except (RecursionError, UnicodeDecodeError, ValueError):
        return None
    return valid_request_id(parsed.get("requestId")) if isinstance(parsed, dict) else None


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
        handlers: Mapping[CommandName, CommandHandler],
        send_reply: ReplySender,
        accepting: Callable[[], bool] = lambda: True,
        parse_lane: Lane | None = None,
    ) -> None:
        self._prefix = command_prefix.rstrip("/") + "/"
        self._keys = [k.encode() for k in api_keys]
        self._max_bytes = max_payload_bytes
        self._reply_cache_s = reply_cache_s
        self._store = store
        self._handlers = handlers
        self._send = send_reply
        self._accepting = accepting
        self._in_flight: dict[str, asyncio.Future[Reply]] = {}
        # Large payloads are parsed on this lane (the agent's commands lane; given none,
        # one of its own, whose thread starts with the first large payload).
        self._owns_lane = parse_lane is None
        self._parse_lane = parse_lane if parse_lane is not None else Lane("commands", 1)
        if not self._keys:
            log.warning(
                "AUTH_NO_KEYS every command will be refused: set AGENT_AUTH__API_KEYS or "
                "[auth] api_keys_file"
            )

    def close(self) -> None:
        """Stop the parse lane's thread, if the processor made its own."""
        if self._owns_lane:
            self._parse_lane.close()

    async def handle(self, message: IncomingMessage) -> None:
        """Process one message and send its reply."""
        reply = await self.process(message)
        await self._send(message, reply)

    def _authorised(self, key: str | bytes | None) -> bool:
        if not key:
            return False
        candidate = key.encode() if isinstance(key, str) else key
        # Compare against every key so timing does not reveal which one nearly matched.
        return any([hmac.compare_digest(candidate, k) for k in self._keys])

    def authenticated(self, message: IncomingMessage) -> bool:
        """Whether the message carries an accepted key, judged before any parsing (the
        user property, else an ``apiKey`` field found by a byte scan)."""
        prop = message.user_properties.get("x-api-key")
        if prop is not None:
            return self._authorised(prop)
        return any(self._authorised(m.group(1)) for m in _API_KEY_FIELD.finditer(message.payload))

    async def process(self, message: IncomingMessage) -> Reply:
        """The reply for one message (without sending it)."""
        name = message.topic[len(self._prefix) :] if message.topic.startswith(self._prefix) else ""
        # The key first: every reply but a 401 then goes to an authenticated sender (only
        # those may choose where replies are published, see agent.transport.replies).
        if not self.authenticated(message):
            return self._unauthorised(name, peek_request_id(message.payload))
        payload = await self._parse(name, message.payload)
        if isinstance(payload, Reply):
            return payload
        raw_id = payload.get("requestId")
        request_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else None
        key = message.user_properties.get("x-api-key") or payload.get("apiKey")
        if not self._authorised(key if isinstance(key, str) else None):
            # The byte scan found an accepted key, but not as the top-level apiKey.
            return self._unauthorised(name, valid_request_id(raw_id))
        if request_id is not None and not request_id.isprintable():
            # It is logged, cached and echoed: a newline in it would forge log lines.
            return self._invalid(
                name,
                "requestId must be printable text (no control characters or line breaks).",
                "requestId",
                "control characters",
            )
        log.info(
            "COMMAND_RECEIVED command=%s request_id=%s body=%s",
            log_safe(name or message.topic),
            log_safe(request_id),
            log_safe(json.dumps(redact(payload)), 1000),
        )
        if request_id is None:
            return await self._execute(name, payload, None)
        return await self._execute_once(name, payload, request_id)

    async def _parse(self, name: str, raw: bytes) -> dict[str, Any] | Reply:
        """The payload as a JSON object, or the 422 that says why it is not one."""
        if len(raw) > self._max_bytes:
            return self._invalid(
                name,
                f"Payload is {len(raw)} bytes; the limit is {self._max_bytes}.",
                "(payload)",
                "too large",
            )
        try:
            if len(raw) > PARSE_OFF_LOOP_BYTES:
                payload = await self._parse_lane.call(json.loads, raw)
            else:
                payload = json.loads(raw)
        except RecursionError:
            return self._invalid(
                name, "Payload is nested too deeply.", "(payload)", "nested too deeply"
            )
        except (UnicodeDecodeError, ValueError) as exc:
            return self._invalid(
                name, "Payload is not valid JSON.", "(payload)", log_safe(exc, 200)
            )
        if not isinstance(payload, dict):
            return self._invalid(
                name, "Payload must be a JSON object.", "(payload)", "not an object"
            )
        return payload

    async def _execute_once(self, name: str, payload: dict[str, Any], request_id: str) -> Reply:
        """Execute a command with a ``requestId`` at most once: a known id gets the reply
        already sent, a duplicate of one still running waits for its reply."""
        cached = await self._cached(request_id)
        if cached is not None:
            log.info("COMMAND_REPLAYED command=%s request_id=%s", name, log_safe(request_id))
            return cached
        running = self._in_flight.get(request_id)
        if running is not None:
            log.info("COMMAND_DUPLICATE_IN_FLIGHT command=%s request_id=%s", name, request_id)
            return await asyncio.shield(running)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._in_flight[request_id] = future
        try:
            reply = await self._execute(name, payload, request_id)
            if reply.status < 500:
                # 5xx (not loaded, shutting down, outbox full...) are transient: a retry
                # with the same requestId must run the command again. Remembered before
                # leaving the in-flight table, so a duplicate never falls between the two.
                await self._remember(request_id, name, reply)
            future.set_result(reply)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: duplicates re-raise it themselves
            raise
        finally:
            del self._in_flight[request_id]
        return reply

    async def _execute(self, name: str, payload: dict[str, Any], request_id: str | None) -> Reply:
        known = name in _COMMAND_NAMES
        model = COMMANDS.get(CommandName(name)) if known else None
        handler = self._handlers.get(CommandName(name)) if known else None
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
            self._check_accepting(name)
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

    def _check_accepting(self, name: str) -> None:
        """The one place of the rule: while the agent starts or stops only ``status`` runs."""
        if name != CommandName.STATUS and not self._accepting():
            raise AgentError(
                ErrorCode.AGENT_SHUTTING_DOWN,
                "The agent is starting or shutting down; retry in a moment.",
                status=503,
            )

    def _unauthorised(self, name: str, request_id: str | None = None) -> Reply:
        return self._refuse(
            name,
            request_id,
            401,
            ErrorCode.UNAUTHORIZED,
            "Missing or invalid API key (MQTT user property x-api-key or field apiKey).",
        )

    def _invalid(self, name: str, message: str, path: str, problem: str) -> Reply:
        """The 422 for a payload refused before it is read as a command (no requestId
        is trusted yet): one problem, at ``path``."""
        return self._refuse(
            name,
            None,
            422,
            ErrorCode.VALIDATION_ERROR,
            message,
            {"errors": [{"path": path, "problem": problem}]},
        )

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
            log_safe(name or "?"),
            log_safe(request_id),
            status,
            code,
            log_safe(message, 300),
        )
        return Reply(request_id=request_id, status=status, code=code, message=message, data=data)

    async def _cached(self, request_id: str) -> Reply | None:
        try:
            found = await self._store.call(self._store.find_reply, request_id, self._reply_cache_s)
        except StoreError:
            log.exception("REPLY_CACHE_UNAVAILABLE request_id=%s", request_id)
            return None
        return Reply.model_validate(found) if found is not None else None

    async def _remember(self, request_id: str, name: str, reply: Reply) -> None:
        try:
            await self._store.call(self._store.save_reply, request_id, name, reply.to_json_dict())
        except StoreError:
            log.exception("REPLY_CACHE_WRITE_FAILED request_id=%s", request_id)
