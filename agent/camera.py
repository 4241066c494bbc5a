"""Camera readers: one thread per camera, reading with OpenCV, reconnecting by itself.

The thread ``grab()``s every frame (H.264 must decode every frame anyway) but converts
(``retrieve()``) only the frame the analyser asked for, and hands it to the event loop;
nothing is queued, so results are always about *now*. Failures follow the seed: a failed
read (or no frame for ``max_frame_age_s``) releases the capture and retries the open
``reconnect_attempts`` times, ``reconnect_interval_s`` apart; when all fail the camera is
dead for the session, and is then re-probed with capped backoff until it comes back. An
exception from OpenCV is a failed open or read like any other; any other exception on the
thread is logged (CAMERA_THREAD_CRASHED, with the traceback) and ends the reader as DEAD
with the reason, never silently. Logs never show the URL's credentials.

Code on this thread never touches loop state: it hands frames and state changes to the
loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

import cv2
import numpy as np

from agent.config import CamerasConfig
from agent.engine import Image

# redact_url is re-exported: tests/test_camera_units.py imports it from here.
from agent.redaction import log_safe, redact_text, redact_url
from agent.status_models import CameraHealth

log = logging.getLogger(__name__)


class CameraState(StrEnum):
    """Where a camera reader is."""

    CONNECTING = "CONNECTING"
    LIVE = "LIVE"
    RECONNECTING = "RECONNECTING"
    DEAD = "DEAD"  # all reconnect attempts failed; being re-probed slowly
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class Frame:
    """One decoded frame and when it was read."""

    image: Image
    monotonic: float
    wall: float


@dataclass
class CameraStats:
    """Counters shown in status and metrics."""

    frames_read: int = 0
    frames_analysed: int = 0
    frames_invalid: int = 0
    reconnects: int = 0
    last_error: str = ""
    up_seconds: float = 0.0
    live_since: float | None = None
    last_frame_at: float | None = None


def _url_secrets(url: str) -> list[str]:
    """The credentials inside a camera URL, raw and percent-decoded, so they can be masked
    in error text that might quote them (an exception message, a traceback)."""
    scheme_end = url.find("://")
    rest = url[scheme_end + 3 :] if scheme_end >= 0 else url
    userinfo = rest.rpartition("@")[0] if "@" in rest else ""
    secrets = {userinfo, *userinfo.split(":", 1)[1:]}
    return [s for raw in secrets for s in {raw, unquote(raw)} if s]


def _source(url: str) -> tuple[Any, int]:
    """What to pass to cv2.VideoCapture for a camera URL, and the backend to use."""
    if url.isdigit():
        return int(url), cv2.CAP_V4L2
    if url.startswith("file://"):
        return url[len("file://") :], cv2.CAP_FFMPEG
    return url, cv2.CAP_FFMPEG


StateCallback = Callable[[str, CameraState, str], None]


@dataclass
class CameraReader:
    """Reads one camera on its own thread. ``start`` it, ask ``next_frame``, ``stop`` it."""

    camera_id: str
    name: str
    url: str
    cfg: CamerasConfig
    loop: asyncio.AbstractEventLoop
    on_state: StateCallback  # called on the loop: (camera_id, new state, reason)
    observe: Callable[[str, float], None] | None = None  # stage timings (thread-safe)
    state: CameraState = CameraState.CONNECTING
    stats: CameraStats = field(default_factory=CameraStats)
    _stop: threading.Event = field(default_factory=threading.Event)
    _want: threading.Event = field(default_factory=threading.Event)
    _waiter: asyncio.Future[Frame] | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def _log_id(self) -> str:
        """The camera id as logged: ids come from commands, so a newline in one must not
        start a forged log line."""
        return log_safe(self.camera_id, 128)

    # Loop side -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread."""
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = self.cfg.ffmpeg_options
        self._thread = threading.Thread(
            target=self._run, name=f"camera-{self.camera_id}", daemon=True
        )
        self._thread.start()

    async def next_frame(self, timeout: float) -> Frame | None:
        """The next frame the camera delivers, or None if none comes within ``timeout``."""
        future: asyncio.Future[Frame] = self.loop.create_future()
        with self._lock:
            self._waiter = future
            self._want.set()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            with self._lock:
                if self._waiter is future:
                    self._waiter = None
                    self._want.clear()

    def frame_age(self) -> float | None:
        """Seconds since the last frame was read (None before the first)."""
        last = self.stats.last_frame_at
        return None if last is None else time.monotonic() - last

    def up_seconds(self) -> float:
        """Total time the camera was live."""
        live = self.stats.live_since
        return self.stats.up_seconds + (time.monotonic() - live if live is not None else 0.0)

    async def stop(self) -> None:
        """Stop the thread and wait for it (bounded by the open and read timeouts)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            # Polled, not joined in an executor: stopping two dozen cameras must not fill
            # the default thread pool (DNS lookups and other to_thread work wait there).
            deadline = time.monotonic() + self.cfg.open_timeout_s + self.cfg.read_timeout_s + 2
            while thread.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if thread.is_alive():
                log.error("CAMERA_THREAD_STUCK camera=%s (still blocked in OpenCV)", self._log_id)
        self._set_state_local(CameraState.STOPPED)

    def mark_stalled(self) -> None:
        """Loop side: no frame for ``max_frame_age_s`` while the thread is still blocked in
        a read. Reported at once; the thread reconnects when the read gives up."""
        if self.state is CameraState.LIVE:
            self.stats.last_error = f"no frame for {self.cfg.max_frame_age_s:g} s (stream hung)"
            log.warning("CAMERA_READ_FAIL camera=%s reason=%s", self._log_id, self.stats.last_error)
            self._set_state_local(CameraState.RECONNECTING)
            self.on_state(self.camera_id, CameraState.RECONNECTING, self.stats.last_error)

    def describe(self) -> CameraHealth:
        """Health for status: state, frame age, counters, last error."""
        age = self.frame_age()
        return CameraHealth(
            id=self.camera_id,
            name=self.name,
            state=self.state.value,
            frame_age_seconds=None if age is None else round(age, 2),
            frames_read=self.stats.frames_read,
            frames_analysed=self.stats.frames_analysed,
            frames_dropped=max(0, self.stats.frames_read - self.stats.frames_analysed),
            frames_invalid=self.stats.frames_invalid,
            reconnects=self.stats.reconnects,
            last_error=self.stats.last_error or None,
            up_seconds=round(self.up_seconds(), 1),
        )

    def _set_state_local(self, state: CameraState) -> None:
        now = time.monotonic()
        if self.state is CameraState.LIVE and state is not CameraState.LIVE:
            if self.stats.live_since is not None:
                self.stats.up_seconds += now - self.stats.live_since
            self.stats.live_since = None
        elif state is CameraState.LIVE and self.state is not CameraState.LIVE:
            self.stats.live_since = now
        self.state = state

    # Thread side ---------------------------------------------------------------------

    def _report(self, state: CameraState, reason: str = "") -> None:
        """From the thread: change state and tell the loop."""
        if state is self.state:
            return
        self._set_state_local(state)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is exiting
            self.loop.call_soon_threadsafe(self.on_state, self.camera_id, state, reason)

    def _deliver(self, frame: Frame) -> None:
        with self._lock:
            waiter = self._waiter
            if waiter is None:
                return
            self._waiter = None
            self._want.clear()
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_resolve, waiter, frame)

    def _failure(self, what: str, exc: BaseException) -> str:
        """A one-line reason for an exception, safe to log and report (credentials masked:
        FFmpeg and OpenCV messages may quote the URL)."""
        return redact_text(f"{what}: {type(exc).__name__}: {exc}", _url_secrets(self.url), 300)

    def _open(self) -> Any | None:
        cap: Any = None
        started = time.monotonic()
        try:
            source, backend = _source(self.url)
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.cfg.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.cfg.read_timeout_s * 1000),
            ]
            if backend == cv2.CAP_FFMPEG:
                # One decoder thread: FFmpeg's frame threading holds each frame back by
                # (threads - 1) frames, 100 ms at 10 fps on 2 cores (measured), for no gain.
                params += [cv2.CAP_PROP_N_THREADS, 1]
            cap = cv2.VideoCapture(source, backend, params)
            opened = bool(cap.isOpened())
        except Exception as exc:  # cv2.error or whatever a backend raises: a failed open
            _release(cap)
            self.stats.last_error = self._failure("open failed", exc)
            return None
        if opened:
            return cap
        _release(cap)
        took = time.monotonic() - started
        self.stats.last_error = (
            "open timed out" if took >= self.cfg.open_timeout_s * 0.9 else "open refused"
        )
        return None

    def _run(self) -> None:
        """Thread body. Nothing may end it silently: the camera would stay CONNECTING and
        the session would never hear of it. A crash is logged (traceback, credentials
        masked) and reported as DEAD, so the pipeline's all-cameras-dead rule applies."""
        try:
            self._read_loop()
        except Exception as exc:
            secrets = _url_secrets(self.url)
            reason = self._failure("reader crashed", exc)
            trace = "\n".join(
                redact_text(line, secrets, 1000)
                for line in "".join(traceback.format_exception(exc)).splitlines()
            )
            log.error(
                "CAMERA_THREAD_CRASHED camera=%s url=%s error=%s\n%s",
                self._log_id,
                redact_url(self.url),
                reason,
                trace,
            )
            self.stats.last_error = reason
            if not self._stop.is_set():
                self._report(CameraState.DEAD, reason)
                return
        self._report(CameraState.STOPPED)

    def _read_loop(self) -> None:
        attempts = 0
        probe = self.cfg.probe_min_s
        safe_url = redact_url(self.url)
        while not self._stop.is_set():
            cap = self._open()
            if cap is None:
                attempts += 1
                if self.state is CameraState.DEAD:
                    log.info("CAMERA_PROBE_FAILED camera=%s next_in=%.0fs", self._log_id, probe)
                    self._stop.wait(probe)
                    probe = min(self.cfg.probe_max_s, probe * 2)
                    continue
                event = (
                    "CAMERA_RECONNECT_TIMEOUT"
                    if "timed out" in self.stats.last_error
                    else "CAMERA_RECONNECT_ERROR"
                )
                log.warning(
                    "%s camera=%s url=%s attempt=%d/%d error=%s",
                    event,
                    self._log_id,
                    safe_url,
                    attempts,
                    self.cfg.reconnect_attempts,
                    self.stats.last_error,
                )
                if attempts >= self.cfg.reconnect_attempts:
                    log.error(
                        "CAMERA_DEAD camera=%s url=%s after %d attempts",
                        self._log_id,
                        safe_url,
                        attempts,
                    )
                    self._report(CameraState.DEAD, self.stats.last_error)
                    self._stop.wait(probe)
                    continue
                self._stop.wait(self.cfg.reconnect_interval_s)
                continue
            if attempts or self.state is CameraState.DEAD:
                self.stats.reconnects += 1
                log.info(
                    "CAMERA_RECONNECT_OK camera=%s after %d attempt(s)", self._log_id, attempts
                )
            attempts = 0
            probe = self.cfg.probe_min_s
            self._report(CameraState.LIVE)
            try:
                reason = self._read_until_failure(cap)
            finally:  # also on a crash: the capture holds a socket and decoder threads
                _release(cap)
            if self._stop.is_set():
                break
            self.stats.last_error = reason
            log.warning("CAMERA_READ_FAIL camera=%s reason=%s", self._log_id, reason)
            log.info("CAMERA_RECONNECT camera=%s", self._log_id)
            self._report(CameraState.RECONNECTING, reason)

    def _read_until_failure(self, cap: Any) -> str:
        """Read until a failure (returned as the reason) or a stop request. An exception
        from OpenCV is a failure like any other: the capture is reopened."""
        pace = _file_pace(cap) if self.url.startswith("file://") else 0.0
        last = time.monotonic()
        slow = 0.9 * self.cfg.read_timeout_s
        while not self._stop.is_set():
            before = time.monotonic()
            try:
                ok = cap.grab()
            except Exception as exc:
                return self._failure("read failed", exc)
            now = time.monotonic()
            if not ok:
                return "read failed (stream ended or connection lost)"
            if now - before >= slow:
                # The read waited out its timeout: FFmpeg hands back buffered data from a
                # stream that stopped (measured with a frozen RTSP server: one "frame" per
                # timeout). It is not a live frame, so it does not refresh the frame age.
                if now - last > self.cfg.max_frame_age_s:
                    return f"no new frame for {now - last:.1f} s (stream hung)"
                continue
            last = now
            self.stats.frames_read += 1
            self.stats.last_frame_at = now
            if self.state is not CameraState.LIVE:  # frames flow again after a stall
                self._report(CameraState.LIVE)
            if self._want.is_set():
                try:
                    ok, image = cap.retrieve()
                except Exception as exc:
                    return self._failure("decode failed", exc)
                if self.observe is not None:
                    self.observe("decode", time.monotonic() - before)
                if not ok or image is None or image.size == 0 or image.ndim != 3:
                    self.stats.frames_invalid += 1
                else:
                    self._deliver(Frame(np.ascontiguousarray(image), now, time.time()))
            if pace:
                self._stop.wait(pace)
        return "stopped"


def _release(cap: Any) -> None:
    """Release a capture; a failing release leaves nothing to do but move on."""
    if cap is not None:
        with contextlib.suppress(Exception):
            cap.release()


def _file_pace(cap: Any) -> float:
    """Seconds per frame for a video file (read it at its own rate, not as fast as possible)."""
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    except Exception:  # cv2.error: no rate known, use the default below
        fps = 0.0
    return 1.0 / fps if 1.0 <= fps <= 120.0 else 0.1


def _resolve(future: asyncio.Future[Frame], frame: Frame) -> None:
    if not future.done():
        future.set_result(frame)
