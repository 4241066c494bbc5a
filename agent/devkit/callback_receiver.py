"""An HTTP backend receiving the agent's callbacks: it records every request, and answers
each path 200, an error status, a redirect, or hangs; it can be stopped and restarted on
the same port (connections refused meanwhile)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent.devkit.ports import free_port


@dataclass
class Received:
    """One request as the backend saw it; ``answered`` is the status sent back (None while
    the answer is pending)."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answered: int | None = None
    at: float = field(default_factory=time.monotonic)
    method: str = "POST"
    query: str = ""  # the query string (where a backend may put a token)


@dataclass
class CallbackServer:
    """The receiver on 127.0.0.1:``port``.

    ``mode`` per path prefix (the longest matching prefix wins): 'ok', 'hang' (answer 200
    after ``hang_s``), or an HTTP status such as 500, 400 or 307 (with ``location``).
    ``on_request`` is called with each request as it arrives, on the event loop.
    """

    port: int = field(default_factory=free_port)
    mode: dict[str, str | int] = field(default_factory=lambda: {"": "ok"})
    hang_s: float = 30.0
    retry_after: str | None = None
    location: str | None = None  # Location header sent with a 3xx mode
    received: list[Received] = field(default_factory=list)
    on_request: Callable[[Received], None] | None = None
    _runner: web.AppRunner | None = None
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/callback") -> str:
        """Absolute URL of a path on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def _mode_for(self, path: str) -> str | int:
        best = max((p for p in self.mode if path.startswith(p)), key=len, default="")
        return self.mode.get(best, "ok")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is None:  # not run as a task: nothing that stop() could cancel
            return await self._answer(request)
        self._handlers.add(task)
        try:
            return await self._answer(request)
        finally:
            self._handlers.discard(task)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        entry = Received(
            request.path,
            dict(request.headers),
            body,
            method=request.method,
            query=request.query_string,
        )
        self.received.append(entry)
        if self.on_request is not None:
            self.on_request(entry)
        self.arrived.set()
        mode = self._mode_for(request.path)
        if mode == "hang":
            await asyncio.sleep(self.hang_s)
            mode = "ok"
        status = 200 if mode == "ok" else int(mode)
        entry.answered = status
        self.arrived.set()
        headers = {"Retry-After": self.retry_after} if self.retry_after and status != 200 else {}
        if 300 <= status < 400 and self.location:
            headers["Location"] = self.location
        return web.json_response({"ok": status == 200}, status=status, headers=headers)

    async def start(self) -> None:
        """Listen on the server's port (the same port after a stop)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening: connections are refused until ``start`` again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # A request left hanging ("hang" mode) must not outlive the server.
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def delivered(self, path_prefix: str = "") -> list[Received]:
        """Requests answered 200 (optionally under a path)."""
        return [r for r in self.received if r.answered == 200 and r.path.startswith(path_prefix)]

    def delivered_ids(self, path_prefix: str = "") -> list[str]:
        """Event ids of the requests answered 200, in arrival order."""
        return [r.body["eventId"] for r in self.delivered(path_prefix)]

    async def wait_delivered(
        self, count: int, timeout: float = 20.0, path_prefix: str = ""
    ) -> None:
        """Wait until ``count`` distinct events were answered 200."""
        async with asyncio.timeout(timeout):
            while len(set(self.delivered_ids(path_prefix))) < count:
                self.arrived.clear()
                await self.arrived.wait()
