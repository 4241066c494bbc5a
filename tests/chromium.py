"""Headless Chromium for page tests, driven over the DevTools protocol (CDP) with aiohttp's
websocket client: no browser-automation package, nothing downloaded.

Debian's ``chromium`` package (``scripts/system-deps.sh`` installs it; ``make test`` runs
it). The browser runs in its own process group with a throw-away profile and is killed by
that group's id on exit::

    async with Chromium(tmp_path) as browser:
        await browser.navigate("http://127.0.0.1:9108/")
        state = await browser.wait_for("document.body.dataset.loaded", timeout=10)
        png = await browser.screenshot()

No pytest here; no Python threads are started.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

INSTALL_HINT = (
    "Chromium is not installed: run `make system-deps` (scripts/system-deps.sh installs "
    "Debian's `chromium` package)"
)


def chromium_path() -> str | None:
    """The Chromium executable, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class ChromiumError(RuntimeError):
    """The browser did not start, or a DevTools call failed."""


class Chromium:
    """One headless Chromium with one page, driven over CDP."""

    def __init__(self, profile_dir: Path, *, width: int = 1100, height: int = 900) -> None:
        self.profile_dir = profile_dir
        self.width = width
        self.height = height
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = 0

    async def __aenter__(self) -> Chromium:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def log(self) -> str:
        """What the browser printed (for failure messages)."""
        with contextlib.suppress(OSError):
            return (self.profile_dir / "chromium.log").read_text(errors="replace")[-4000:]
        return ""

    async def start(self, timeout: float = 60.0) -> None:
        """Start the browser and attach to its page."""
        exe = chromium_path()
        if exe is None:
            raise ChromiumError(INSTALL_HINT)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        args = [
            exe,
            "--headless",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile_dir / 'profile'}",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with the sandbox
        self.proc = self._spawn(args)
        port_file = self.profile_dir / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ChromiumError(f"Chromium did not start:\n{self.log()}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        self._http = aiohttp.ClientSession()
        async with asyncio.timeout(timeout):
            while True:
                async with self._http.get(f"http://127.0.0.1:{port}/json/list") as response:
                    pages = [t for t in await response.json() if t.get("type") == "page"]
                if pages:
                    break
                await asyncio.sleep(0.1)
            self._ws = await self._http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        await self.resize(self.width, self.height)

    async def resize(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Emulate a screen of this size (``mobile``: a phone's viewport)."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        """The browser in a new process group (killed as a group), output to a log file."""
        with (self.profile_dir / "chromium.log").open("ab") as log:
            return subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One CDP command; events arriving meanwhile are skipped."""
        if self._ws is None:
            raise ChromiumError("not started")
        self._ids += 1
        ident = self._ids
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params or {}}))
        async with asyncio.timeout(30):
            while True:
                message = await self._ws.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    raise ChromiumError(f"DevTools connection closed during {method}")
                data = json.loads(message.data)
                if data.get("id") == ident:
                    break
        if "error" in data:
            raise ChromiumError(f"{method}: {data['error']}")
        result: dict[str, Any] = data.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def navigate(self, url: str, timeout: float = 20.0) -> None:
        """Open ``url`` and wait until its document has loaded."""
        await self.call("Page.navigate", {"url": url})
        await self.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            timeout=timeout,
            what=f"{url} loaded",
        )

    async def wait_for(self, expression: str, *, timeout: float, what: str = "") -> Any:
        """Poll a JavaScript expression (every 0.2 s) until it is truthy; return its value.
        Fails after ``timeout`` seconds with the last value seen."""
        last: Any = None
        try:
            async with asyncio.timeout(timeout):
                while not (last := await self.evaluate(expression)):
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(
                f"{what or expression} not reached within {timeout:g} s (last: {last!r})"
            ) from None
        return last

    async def screenshot(self, *, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole page by default)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = await self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
            params["captureBeyondViewport"] = True
        result = await self.call("Page.captureScreenshot", params)
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        """Close the connection and kill the browser's process group."""
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group holds renderer and GPU children
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self.proc = None
