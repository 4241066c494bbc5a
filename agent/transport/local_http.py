"""The local HTTP endpoint: ``/metrics`` (Prometheus), ``/status`` (the status command's
data as JSON), ``/healthz`` and, when given one, the technician's status page
(:mod:`agent.transport.webui`, at ``/``). Served on the event loop with aiohttp, on localhost by
default; ``/metrics``, ``/status`` and ``/healthz`` expose no secrets, names, embeddings or
images. Every response, errors included, says ``Cache-Control: no-store`` and carries
headers that keep browsers from sniffing, framing or embedding it elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.config.sections import MetricsConfig
from agent.status.metrics import Metrics
from agent.status.models import AgentStatus, wire
from agent.transport.host_guard import host_guard
from agent.transport.webui import WebUi

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
        "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Set on every response the server prepares (404s and 401s included)."""
    response.headers.update(SECURITY_HEADERS)


class LocalHttp:
    """Starts and stops the endpoint."""

    def __init__(
        self,
        cfg: MetricsConfig,
        metrics: Metrics,
        status: Callable[[], AgentStatus],
        ui: WebUi | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.status = status
        self.ui = ui
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(wire(self.status()))

    async def _health(self, request: web.Request) -> web.Response:
        status = self.status()
        healthy = status.agent.state == "RUNNING"
        return web.json_response(
            {"state": status.agent.state, "warnings": status.warnings},
            status=200 if healthy else 503,
        )

    def build_app(self) -> web.Application:
        """The application with every route (``start`` serves it; tests may serve it)."""
        # The Host check first: /status and /metrics are read by the same pages a DNS
        # rebinding attack would use on the status page.
        guards = [host_guard(self.cfg.host), *(self.ui.middlewares() if self.ui else ())]
        app = web.Application(middlewares=guards)
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_get("/healthz", self._health)
        if self.ui is not None:
            self.ui.mount(app)
        return app

    async def start(self) -> None:
        """Listen on the configured address (a failure is logged, never fatal)."""
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, self.cfg.port)
        try:
            await site.start()
        except OSError as exc:
            log.error(
                "METRICS_UNAVAILABLE host=%s port=%d error=%s", self.cfg.host, self.cfg.port, exc
            )
            await runner.cleanup()
            if self.ui is not None:
                await self.ui.close()
            return
        self._runner = runner
        server = site._server  # the bound socket tells the real port when port = 0
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.cfg.port
        log.info("METRICS_LISTENING url=http://%s:%s/metrics", self.cfg.host, self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.ui is not None:
            await self.ui.close()
