"""The local HTTP endpoint answers only requests addressed to this machine while it
listens on loopback (the default): a web page elsewhere can point a host name of its own
at 127.0.0.1 (DNS rebinding) and then read ``/status``, ``/metrics`` or the status page as
its own origin; the Host header it sends still names its host, so such requests are
refused. Off loopback (``[metrics] host`` set to the school's network) the site chose to
be reached under any name, and the status page needs a password there
(:mod:`agent.transport.webui`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from agent.config.hosts import is_loopback
from agent.errors import ErrorCode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def host_name(host_header: str) -> str:
    """The name part of a Host header (``[::1]:9108`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def host_guard(bind_host: str) -> Middleware:
    """An aiohttp middleware refusing (403 REQUEST_FORBIDDEN) every request whose Host
    header is not a loopback name, when ``bind_host`` is a loopback address."""
    loopback = is_loopback(bind_host)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if loopback and not is_loopback(host_name(request.host)):
            return web.json_response(
                {
                    "code": ErrorCode.REQUEST_FORBIDDEN.value,
                    "message": "This endpoint answers requests addressed to this machine "
                    "only: use http://127.0.0.1:<port>/ (over an SSH tunnel from elsewhere).",
                },
                status=403,
            )
        return await handler(request)

    return guard
