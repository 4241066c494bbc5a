"""A real MJPEG-over-HTTP camera for tests (aiohttp on the test's event loop).

``/camera`` serves ``multipart/x-mixed-replace`` JPEG frames as IP cameras do: each
client gets the phases in order (``(jpeg, seconds)``; the last one lasts for ever), so a
test can change the frame size in the middle of a stream. ``/redirect`` answers 302 to
``redirect_to``, to check that a camera open does not follow it. ``hits`` counts the
requests per path.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from aiohttp import web

from agent.devkit.ports import free_port

BOUNDARY = b"frame"


def jpeg(width: int, height: int, value: int = 128) -> bytes:
    """A small JPEG of one grey level with a white bar (real image data)."""
    image = np.full((height, width, 3), value, np.uint8)
    image[height // 3 : height // 2] = 255
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data.tobytes())


def write_huge_jpeg(path: Path, side: int) -> bytes:
    """A real ``side`` x ``side`` greyscale JPEG, made in a child process so that the
    test process (where the agent runs) never holds the picture."""
    code = (
        "import sys, cv2, numpy as np\n"
        "side = int(sys.argv[2])\n"
        "ok, data = cv2.imencode('.jpg', np.full((side, side), 90, np.uint8), "
        "[cv2.IMWRITE_JPEG_QUALITY, 50])\n"
        "open(sys.argv[1], 'wb').write(data.tobytes())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(side)], check=True, timeout=120)
    return path.read_bytes()


class MjpegServer:
    """An HTTP MJPEG camera on 127.0.0.1; ``await start()``, ``await stop()``."""

    def __init__(
        self, phases: list[tuple[bytes, float]], *, fps: float = 10.0, redirect_to: str = ""
    ) -> None:
        self.phases = phases
        self.fps = fps
        self.redirect_to = redirect_to
        self.port = free_port()
        self.hits: Counter[str] = Counter()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/camera"

    @property
    def redirect_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/redirect"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/camera", self._camera)
        app.router.add_get("/redirect", self._redirect)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _redirect(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        raise web.HTTPFound(self.redirect_to)

    def _frame_at(self, elapsed: float) -> bytes:
        for data, seconds in self.phases:
            if elapsed < seconds:
                return data
            elapsed -= seconds
        return self.phases[-1][0]

    async def _camera(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        response = web.StreamResponse(
            headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}"}
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while not self._closing.is_set():
                frame = self._frame_at(loop.time() - started)
                await response.write(
                    b"--"
                    + BOUNDARY
                    + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(frame)).encode()
                    + b"\r\n\r\n"
                    + frame
                    + b"\r\n"
                )
                await asyncio.sleep(1 / self.fps)
        except (ConnectionError, asyncio.CancelledError):  # the client left; or shutdown
            pass
        return response
