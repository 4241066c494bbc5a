"""The technician's status page: a small web UI on the local HTTP endpoint.

Routes (mounted by :class:`agent.transport.local_http.LocalHttp` on the ``[metrics]`` address):

* ``GET /`` the page (plain HTML, CSS and JS from ``agent/static``; nothing fetched from
  elsewhere); ``GET /ui/app.js`` and ``/ui/style.css``;
* ``GET /ui/api/state`` the agent, model, MQTT link, outbox, warnings, and every session's
  cameras and the registry's cameras, as the page shows them (fetched every few seconds);
* ``GET /ui/api/snapshot?slot=S&camera=C`` the camera's last analysed frame as JPEG with
  its face boxes and labels drawn, made on request in memory, never stored; headers
  ``X-Face-Count`` and ``X-Face-Labels`` (percent-encoded JSON list, null = unknown);
* ``POST /ui/api/camera-test`` (JSON ``{"camera": id}`` or ``{"url": url}``) opens a camera
  and reports frames, resolution and rate, with one frame;
* ``GET /ui/api/models`` what ``python -m agent models verify`` prints, and the last reload.

Security: on a loopback address (the default) the page answers only requests addressed to
a loopback name (no DNS rebinding); on any other address it is served only with a
password (``[webui] password_file`` or ``AGENT_WEBUI__PASSWORD``), otherwise every page
route answers 403 ``WEBUI_PASSWORD_REQUIRED`` and the agent logs it at start. With a
password every page route needs it (HTTP Basic with any user name, or ``Authorization:
Bearer``), compared in constant time and never logged. POSTs must be same-origin JSON.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.camera.check import check_camera_url, probe_camera
from agent.camera.snapshot import SnapshotError, render_snapshot
from agent.camera.urls import CameraUrlError
from agent.camera.view import CameraView
from agent.config import AgentConfig
from agent.config.hosts import is_loopback
from agent.errors import ErrorCode
from agent.lanes import Lane
from agent.redaction import log_safe, redact_url
from agent.session.limits import same_camera
from agent.session.manager import ActiveSession
from agent.status.models import AgentStatus
from agent.status.view import page_state
from agent.transport.auth_throttle import PasswordThrottle

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATIC = {
    "/": ("index.html", "text/html"),
    "/ui/": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/style.css": ("style.css", "text/css"),
}
MAX_LABELS = 100


def _error(status: int, code: ErrorCode, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"code": code.value, "message": message}, status=status, headers=headers
    )


@dataclass(frozen=True)
class UiSources:
    """What the page reads from the running agent."""

    status: Callable[[], AgentStatus]  # the status command's data
    session: Callable[[str], ActiveSession | None]  # a running session by slot id
    # (slot id, stream URL) of every camera the running sessions read
    cameras_in_use: Callable[[], list[tuple[str, str]]] = lambda: []


class WebUi:
    """The page's routes and guard, mounted on the local HTTP app.

    Blocking work runs on two lanes: ``page`` (snapshots, pack verification) and
    ``camera_io`` (camera tests). The agent passes its own, which it closes at shutdown;
    given none (tests), the page makes its own and closes them in :meth:`close`.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        sources: UiSources,
        *,
        page: Lane | None = None,
        camera_io: Lane | None = None,
    ) -> None:
        self.cfg = cfg.webui
        self.cameras = cfg.cameras
        self.models_dir = cfg.models.dir
        self.bind_host = cfg.metrics.host
        self.sources = sources
        self._loopback = is_loopback(self.bind_host)
        self._password: bytes | None = None
        self._refused: str | None = None
        self._static: dict[str, tuple[bytes, str]] = {}
        # Threads start with the first call, so an unused page costs none.
        self._page = page if page is not None else Lane("page", 2)
        self._camera_io = camera_io if camera_io is not None else Lane("camera-io", 1)
        self._owned = [
            lane for lane, given in ((self._page, page), (self._camera_io, camera_io)) if not given
        ]
        self._test_lock = asyncio.Lock()
        self._verify_lock = asyncio.Lock()
        self._cancel = threading.Event()
        self._snapshots: dict[tuple[str, str], tuple[CameraView, str, bytes]] = {}
        self._throttle = PasswordThrottle()

    # Mounting -------------------------------------------------------------------------

    def _load_password(self) -> None:
        """Take the password (resolved at load); decide whether the page may be served."""
        secret = self.cfg.password_value()
        self._password = secret.encode() if secret else None
        if self._password is None and not self._loopback:
            self._refused = (
                f"The agent listens on {self.bind_host} ([metrics] host), not only on this "
                "machine: the status page needs a password. Set [webui] password_file (or "
                'AGENT_WEBUI__PASSWORD), or set [metrics] host = "127.0.0.1" and use an '
                "SSH tunnel."
            )
            log.error(
                "WEBUI_PASSWORD_REQUIRED host=%s: the status page is not served; set "
                "[webui] password_file or AGENT_WEBUI__PASSWORD, or listen on 127.0.0.1",
                self.bind_host,
            )

    def middlewares(self) -> list[Middleware]:
        """The guard of the page's routes (other routes pass through untouched)."""
        return [self._guard]

    def mount(self, app: web.Application) -> None:
        """Add the page's routes to ``app`` (whose middlewares include :meth:`middlewares`)."""
        self._load_password()
        static = files("agent.transport").joinpath("static")
        for path, (name, kind) in STATIC.items():
            self._static[path] = (static.joinpath(name).read_bytes(), kind)
            app.router.add_get(path, self._serve_static)
        app.router.add_get("/ui/api/state", self._state)
        app.router.add_get("/ui/api/snapshot", self._snapshot)
        app.router.add_post("/ui/api/camera-test", self._camera_test)
        app.router.add_get("/ui/api/models", self._models)
        if self._refused is None:
            log.info(
                "WEBUI_LISTENING host=%s password=%s",
                self.bind_host,
                "yes" if self._password else "no",
            )

    async def close(self) -> None:
        """Wait for the page's work in flight; a camera test in progress is cut short
        (bounded by the camera open and read timeouts). Closes the lanes it made."""
        self._cancel.set()
        bound = self.cameras.open_timeout_s + self.cameras.read_timeout_s + 2
        await asyncio.gather(self._page.drain(bound), self._camera_io.drain(bound))
        for lane in self._owned:
            lane.close(wait=False)
        self._snapshots.clear()

    # Guard ----------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in STATIC and not request.path.startswith("/ui/"):
            return await handler(request)
        if self._refused is not None:
            return _error(403, ErrorCode.WEBUI_PASSWORD_REQUIRED, self._refused)
        # The Host check (DNS rebinding) is agent.transport.host_guard's, for every route.
        if self._password is not None:
            remote = request.remote or "?"
            wait = self._throttle.wait_s(remote)
            if wait > 0:
                return _error(
                    429,
                    ErrorCode.LIMIT_EXCEEDED,
                    f"Too many wrong passwords from this address; try again in {wait:.0f} s.",
                    **{"Retry-After": str(math.ceil(wait))},
                )
            if self._authorised(request):
                self._throttle.succeeded(remote)
            else:
                if "Authorization" in request.headers and self._throttle.failed(remote):
                    log.warning(
                        "WEBUI_AUTH_THROTTLED remote=%s failures=%d (each further wrong "
                        "password doubles the wait)",
                        log_safe(remote),
                        self._throttle.allowed,
                    )
                return _error(
                    401,
                    ErrorCode.UNAUTHORIZED,
                    "This page needs the password set in [webui] (any user name).",
                    **{"WWW-Authenticate": 'Basic realm="edge-agent", charset="UTF-8"'},
                )
        if request.method == "POST":
            origin = request.headers.get("Origin")
            site = request.headers.get("Sec-Fetch-Site", "same-origin")
            if (origin and urlsplit(origin).netloc != request.host) or site not in (
                "same-origin",
                "none",
            ):
                return _error(403, ErrorCode.REQUEST_FORBIDDEN, "Cross-site requests are refused.")
            if request.content_type != "application/json":
                return _error(415, ErrorCode.VALIDATION_ERROR, "Send a JSON body.")
        return await handler(request)

    def _authorised(self, request: web.Request) -> bool:
        assert self._password is not None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = b""
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        elif scheme.lower() == "bearer":
            given = value.strip().encode()
        return bool(given) and hmac.compare_digest(given, self._password)

    # Routes ---------------------------------------------------------------------------

    async def _serve_static(self, request: web.Request) -> web.Response:
        body, kind = self._static[request.path]
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def _state(self, request: web.Request) -> web.Response:
        state = page_state(self.sources.status())
        in_use: dict[str, list[str]] = {}
        for session in state["sessions"]:
            for cam in session["cameras"]:
                in_use.setdefault(str(cam["id"]), []).append(str(session["slotId"]))
        state["registry"] = [
            {"id": c.id, "name": c.name, "url": redact_url(c.url), "slots": in_use.get(c.id, [])}
            for c in self.cameras.registry
        ]
        state["page"] = {
            "refreshSeconds": self.cfg.refresh_s,
            "snapshotSeconds": self.cfg.snapshot_interval_s,
            "urlTest": bool(self.cfg.camera_test_allowed_urls),
            # Off loopback the page (and its password) travel over plain HTTP.
            "plainHttp": not self._loopback,
            "serverTime": time.time(),
        }
        return web.json_response(state)

    def _labels(self, session: ActiveSession, view: CameraView) -> list[str | None]:
        """What each face of ``view`` is called on the snapshot (``[webui] face_labels``)."""
        if self.cfg.face_labels == "id":
            return [f.student_id for f in view.faces]
        students = {s.id: s for s in session.command.students}
        out: list[str | None] = []
        for face in view.faces:
            student = students.get(face.student_id) if face.student_id else None
            if student is None:
                out.append(face.student_id)
            elif self.cfg.face_labels == "name":
                out.append(student.name or student.code or student.id)
            else:
                out.append(student.code or student.id)
        return out

    async def _snapshot(self, request: web.Request) -> web.Response:
        slot, camera = request.query.get("slot", ""), request.query.get("camera", "")
        session = self.sources.session(slot) if slot else None
        if session is None:
            return _error(404, ErrorCode.SESSION_NOT_FOUND, "No session runs for this slot.")
        if camera not in {c.id for c in session.camera_plan}:
            return _error(404, ErrorCode.CAMERA_NOT_FOUND, "This session has no such camera.")
        view = next((w.view for w in session.cameras if w.camera_id == camera), None)
        if view is None:
            return _error(
                503,
                ErrorCode.SNAPSHOT_NOT_READY,
                "No frame of this camera was analysed yet (connecting, or no model).",
                **{"Retry-After": "2"},
            )
        labels = self._labels(session, view)
        label_header = quote(json.dumps(labels[:MAX_LABELS], ensure_ascii=False), safe="")
        cached = self._snapshots.get((slot, camera))
        if cached is not None and cached[0] is view and cached[1] == label_header:
            jpeg = cached[2]
        else:
            render = functools.partial(
                render_snapshot,
                view,
                labels,
                self.cfg.snapshot_max_width,
                self.cfg.snapshot_jpeg_quality,
            )
            try:
                jpeg = await self._page.call(render)
            except SnapshotError as exc:
                log.error(
                    "SNAPSHOT_FAILED slot=%s camera=%s error=%s",
                    log_safe(slot),
                    log_safe(camera),
                    exc,
                )
                return _error(500, ErrorCode.INTERNAL_ERROR, "The snapshot could not be made.")
            self._snapshots = {
                key: value
                for key, value in self._snapshots.items()
                if self.sources.session(key[0]) is not None
            }
            self._snapshots[slot, camera] = (view, label_header, jpeg)
        return web.Response(
            body=jpeg,
            content_type="image/jpeg",
            headers={
                "X-Face-Count": str(len(view.faces)),
                "X-Face-Labels": label_header,
                "X-Frame-Age": f"{max(0.0, time.time() - view.wall):.1f}",
            },
        )

    def _test_url(self, body: object) -> str | web.Response:
        """The URL a camera-test request names, or the error response."""
        if not isinstance(body, dict):
            return _error(422, ErrorCode.VALIDATION_ERROR, 'Send {"camera": id} or {"url": url}.')
        camera, url = body.get("camera"), body.get("url")
        if isinstance(camera, str) and camera:
            entry = self.cameras.find(camera)
            if entry is None:
                return _error(
                    404, ErrorCode.CAMERA_NOT_FOUND, "No camera with this id in [cameras] registry."
                )
            return entry.stream_url()  # credentials resolved at load: nothing to read
        if isinstance(url, str) and url.strip():
            try:
                check_camera_url(url, self.cfg.camera_test_allowed_urls)
            except CameraUrlError as exc:
                return _error(403, ErrorCode.CAMERA_URL_NOT_ALLOWED, f"{redact_url(url)} {exc}.")
            return url.strip()
        return _error(422, ErrorCode.VALIDATION_ERROR, 'Send {"camera": id} or {"url": url}.')

    async def _camera_test(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(422, ErrorCode.VALIDATION_ERROR, "The body is not JSON.")
        url = self._test_url(body)
        if isinstance(url, web.Response):
            return url
        if not self.cameras.allow_shared:  # one reader per camera, the test included
            slots = [s for s, u in self.sources.cameras_in_use() if same_camera(u, url)]
            if slots:
                return _error(
                    409,
                    ErrorCode.CAMERA_IN_USE,
                    f"Session {slots[0]} is reading this camera ([cameras] allow_shared = "
                    "false): its card shows how it is doing.",
                )
        if self._test_lock.locked():
            return _error(
                429,
                ErrorCode.LIMIT_EXCEEDED,
                "A camera test is running; try again when it ends.",
                **{"Retry-After": "5"},
            )
        async with self._test_lock:
            probe = functools.partial(
                probe_camera,
                url,
                self.cameras,
                seconds=self.cfg.camera_test_seconds,
                max_width=self.cfg.snapshot_max_width,
                quality=self.cfg.snapshot_jpeg_quality,
                cancel=self._cancel,
            )
            result = await self._camera_io.call(probe)
        log.info(
            "CAMERA_TEST url=%s ok=%s size=%sx%s fps=%s code=%s",
            result.source,
            result.ok,
            result.width,
            result.height,
            result.fps,
            result.error_code,
        )
        data = result.as_json()
        data["frame"] = (
            "data:image/jpeg;base64," + base64.b64encode(result.jpeg).decode()
            if result.jpeg
            else None
        )
        return web.json_response(data)

    async def _models(self, request: web.Request) -> web.Response:
        if self._verify_lock.locked():
            return _error(429, ErrorCode.LIMIT_EXCEEDED, "Packs are being verified; wait.")
        # Imported here: pack verification loads ONNX Runtime, which the page's other
        # routes never need.
        from agent.vision.modelpack import verify_packs

        async with self._verify_lock:
            checks = await self._page.call(verify_packs, self.models_dir)
        model = page_state(self.sources.status())["model"]
        return web.json_response(
            {
                "dir": str(self.models_dir),
                "packs": [
                    {
                        "folder": c.folder,
                        "ok": c.pack is not None,
                        "line": c.line(),
                        "embeddingSpace": c.pack.embedding_space if c.pack else None,
                        "embeddingDim": c.pack.embedding_dim if c.pack else None,
                        "reason": c.reason,
                    }
                    for c in checks
                ],
                "active": model,
            }
        )
