"""Camera readers: one thread per camera, reading a stream and reconnecting by itself.

The thread reads every packet of the stream (``agent.camera.video_source``) but decodes only what
the analyser can use: every frame in :attr:`DecodeMode.FULL`, only the keyframes that an
analysis is waiting for in :attr:`DecodeMode.KEYFRAMES` (the scheduler picks the mode);
it converts a frame to BGR only when the analyser asked for one, and hands it to the event
loop; nothing is queued, so results are always about *now*. Failures: a
failed read (or no frame for ``max_frame_age_s``) releases the stream and opens it again,
as :mod:`agent.camera.reconnect` times it (attempts, then DEAD and re-probed). A
library error is a failed open or read like any other; any other exception on the thread
is logged (CAMERA_THREAD_CRASHED, with the traceback) and ends the reader as DEAD with the
reason, never silently. Logs never show the URL's credentials.

Who writes what: methods named ``_thread_*`` run on the reader thread and write only
:class:`ReaderCounters` and the thread's private fields; they hand state changes and
frames to the loop with ``call_soon_threadsafe``. Everything else runs on the event loop
and writes :attr:`CameraReader.state`, :class:`LoopCounters` and the requested decode mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.camera.counters import Frame, LoopCounters, ReaderCounters
from agent.camera.reconnect import Reconnects
from agent.camera.video_source import (
    DecodeMode,
    SourceError,
    SourceFailure,
    VideoSource,
    choose_decoder,
    failure_kind,
    open_source,
)
from agent.config import CamerasConfig

# redact_url is re-exported: tests/test_camera_units.py imports it from here.
from agent.redaction import log_safe, redact_text, redact_url, url_secrets
from agent.status.models import CameraHealth, CameraState

log = logging.getLogger(__name__)

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
    state: CameraState = CameraState.CONNECTING  # loop-owned
    counters: ReaderCounters = field(default_factory=ReaderCounters)  # thread-owned
    loop_counters: LoopCounters = field(default_factory=LoopCounters)  # loop-owned
    # Loop-owned request; the thread reads it before each packet.
    decode_mode: DecodeMode = DecodeMode.FULL
    _stop: threading.Event = field(default_factory=threading.Event)
    _want: threading.Event = field(default_factory=threading.Event)
    _waiter: asyncio.Future[Frame] | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread_state: CameraState = CameraState.CONNECTING  # the thread's own view
    _thread_source: str = ""  # "pyav" or "opencv" once opened
    _thread_fps: float = 0.0  # the stream's nominal rate once opened
    _thread_failure: SourceFailure = SourceFailure.OTHER  # the kind of counters.last_error

    @property
    def _log_id(self) -> str:
        """The camera id as logged: ids come from commands, so a newline in one must not
        start a forged log line."""
        return log_safe(self.camera_id, 128)

    @property
    def decoder(self) -> str:
        """The library reading this camera ("pyav" or "opencv")."""
        return self._thread_source or choose_decoder(self.url, self.cfg)

    @property
    def can_skip_frames(self) -> bool:
        """Whether KEYFRAMES mode saves anything (OpenCV decodes every frame anyway)."""
        return self.decoder == "pyav"

    @property
    def effective_decode_mode(self) -> DecodeMode:
        """What is really decoded: OpenCV always decodes every frame."""
        return self.decode_mode if self.can_skip_frames else DecodeMode.FULL

    # Loop side -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread."""
        self._thread = threading.Thread(
            target=self._thread_main, name=f"camera-{self.camera_id}", daemon=True
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

    def record_analysis(self, ok: bool) -> None:
        """Count one analysis of this camera's frame (or a failed one)."""
        if ok:
            self.loop_counters.frames_analysed += 1
            self.loop_counters.analysed_at.append(time.monotonic())
        else:
            self.loop_counters.analysis_errors += 1

    def record_shed(self, count: int) -> None:
        """Count analyses the scheduler skipped because the box was busy."""
        self.loop_counters.analyses_shed += count

    def frame_rate(self) -> float:
        """The stream's nominal frame rate (0.0 before it opened or when unknown)."""
        return self._thread_fps

    def analysis_rate(self) -> float:
        """Analyses per second over the last 10 s (``counters.RATE_WINDOW_S``)."""
        return self.loop_counters.analysis_rate(time.monotonic())

    def frame_age(self) -> float | None:
        """Seconds since the last frame was read (None before the first)."""
        last = self.counters.last_frame_at
        return None if last is None else time.monotonic() - last

    def up_seconds(self) -> float:
        """Total time the camera was live."""
        live = self.loop_counters.live_since
        return self.loop_counters.up_seconds + (
            time.monotonic() - live if live is not None else 0.0
        )

    @property
    def last_error(self) -> str:
        """The latest failure reason, from the thread or the loop's stall check."""
        return self.loop_counters.stall_error or self.counters.last_error

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
                log.error("CAMERA_THREAD_STUCK camera=%s (still blocked in a read)", self._log_id)
        self._set_state(CameraState.STOPPED)

    def mark_stalled(self) -> None:
        """No frame for ``max_frame_age_s`` while the thread is still blocked in a read.
        Reported at once; the thread reconnects when the read gives up."""
        if self.state is CameraState.LIVE:
            self.loop_counters.stall_error = (
                f"no frame for {self.cfg.max_frame_age_s:g} s (stream hung)"
            )
            log.warning(
                "CAMERA_READ_FAIL camera=%s reason=%s", self._log_id, self.loop_counters.stall_error
            )
            self._set_state(CameraState.RECONNECTING)
            self.on_state(self.camera_id, CameraState.RECONNECTING, self.loop_counters.stall_error)

    def describe(self) -> CameraHealth:
        """Health for status: state, frame age, rates, decoding, counters, last error."""
        age = self.frame_age()
        counters, mine = self.counters, self.loop_counters
        return CameraHealth(
            id=self.camera_id,
            name=self.name,
            state=self.state.value,
            frame_age_seconds=None if age is None else round(age, 2),
            frames_read=counters.frames_read,
            frames_decoded=counters.frames_decoded,
            frames_analysed=mine.frames_analysed,
            frames_dropped=max(0, counters.frames_read - mine.frames_analysed),
            frames_invalid=counters.frames_invalid + mine.analysis_errors,
            analysis_rate=round(self.analysis_rate(), 2),
            analyses_shed=mine.analyses_shed,
            decoder=self.decoder,
            decode_mode=self.effective_decode_mode.value,
            reconnects=counters.reconnects,
            last_error=self.last_error or None,
            next_retry_at=counters.next_retry_at if self.state is not CameraState.LIVE else None,
            up_seconds=round(self.up_seconds(), 1),
        )

    def _set_state(self, state: CameraState) -> None:
        now = time.monotonic()
        mine = self.loop_counters
        if self.state is CameraState.LIVE and state is not CameraState.LIVE:
            if mine.live_since is not None:
                mine.up_seconds += now - mine.live_since
            mine.live_since = None
        elif state is CameraState.LIVE and self.state is not CameraState.LIVE:
            mine.live_since = now
            mine.stall_error = ""
        self.state = state

    def _apply_state(self, state: CameraState, reason: str) -> None:
        """On the loop: a state change the thread reported."""
        if reason:  # the thread's finding is newer than the loop's stall check
            self.loop_counters.stall_error = ""
        if state is self.state:
            return
        self._set_state(state)
        self.on_state(self.camera_id, state, reason)

    # Thread side ---------------------------------------------------------------------

    def _thread_report(self, state: CameraState, reason: str = "") -> None:
        """Change the thread's state and tell the loop."""
        if state is self._thread_state:
            return
        self._thread_state = state
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is exiting
            self.loop.call_soon_threadsafe(self._apply_state, state, reason)

    def _thread_deliver(self, frame: Frame) -> None:
        with self._lock:
            waiter = self._waiter
            if waiter is None:
                return
            self._waiter = None
            self._want.clear()
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_resolve, waiter, frame)

    def _thread_failure_reason(self, what: str, exc: BaseException) -> str:
        """A one-line reason for an exception, safe to log and report (credentials masked:
        FFmpeg and OpenCV messages may quote the URL)."""
        return self._thread_mask(f"{what}: {type(exc).__name__}: {exc}")

    def _thread_mask(self, text: str) -> str:
        """``text`` with the URL's credentials masked, cut to one reasonable line."""
        return redact_text(text, url_secrets(self.url), 300)

    def _thread_failed(self, failure: str | SourceError) -> None:
        """Keep the latest failure: its reason for status, its kind for the logs."""
        if isinstance(failure, SourceError):
            self.counters.last_error = self._thread_mask(str(failure))
            self._thread_failure = failure.kind
        else:
            self.counters.last_error = failure
            self._thread_failure = SourceFailure.OTHER

    def _thread_open(self) -> VideoSource | None:
        try:
            source = open_source(self.url, self.cfg)
        except SourceError as exc:
            self._thread_failed(exc)
            return None
        except Exception as exc:  # whatever a backend raises: a failed open
            self._thread_failed(self._thread_failure_reason("open failed", exc))
            self._thread_failure = failure_kind(exc)
            return None
        self._thread_source = source.name
        self._thread_fps = source.fps
        return source

    def _thread_main(self) -> None:
        """Thread body. Nothing may end it silently: the camera would stay CONNECTING and
        the session would never hear of it. A crash is logged (traceback, credentials
        masked) and reported as DEAD, so the pipeline's all-cameras-dead rule applies."""
        try:
            self._thread_read_loop()
        except Exception as exc:
            secrets = url_secrets(self.url)
            reason = self._thread_failure_reason("reader crashed", exc)
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
            self._thread_failed(reason)
            if not self._stop.is_set():
                self._thread_report(CameraState.DEAD, reason)
                return
        self._thread_report(CameraState.STOPPED)

    def _thread_wait(self, seconds: float) -> None:
        """Wait before the next open attempt (status shows when it comes)."""
        self.counters.next_retry_at = time.time() + seconds
        self._stop.wait(seconds)

    def _thread_read_loop(self) -> None:
        retry = Reconnects(self.cfg)
        while not self._stop.is_set():
            source = self._thread_open()
            if source is not None:
                try:
                    failure, delivered = self._thread_read_until_failure(source, retry.attempts)
                finally:  # also on a crash: the stream holds a socket and a decoder
                    source.release()
                if self._stop.is_set():
                    break
                self._thread_failed(failure)
                reason = self.counters.last_error
                log.warning("CAMERA_READ_FAIL camera=%s reason=%s", self._log_id, reason)
                if delivered:  # it was live: start the attempts afresh
                    retry.lost()
                    log.info("CAMERA_RECONNECT camera=%s", self._log_id)
                    self._thread_report(CameraState.RECONNECTING, reason)
                    continue
                # Opened but never gave a usable frame (no keyframe, no video): a failed
                # attempt like a failed open, so such a camera ends DEAD with the reason.
            self._thread_attempt_failed(retry)

    def _thread_attempt_failed(self, retry: Reconnects) -> None:
        """An open (or a stream that never gave a frame) failed: wait for the next attempt,
        and report the camera DEAD after the last one."""
        dead = self._thread_state is CameraState.DEAD
        wait = retry.failed(
            self._log_id,
            redact_url(self.url),
            self.counters.last_error,
            dead=dead,
            timed_out=self._thread_failure is SourceFailure.TIMEOUT,
        )
        if not dead and retry.gave_up:
            self._thread_report(CameraState.DEAD, self.counters.last_error)
        self._thread_wait(wait)

    def _thread_went_live(self, attempts: int) -> None:
        """The first usable frame since the stream was opened: the camera is live."""
        self.counters.next_retry_at = None
        if attempts or self._thread_state is CameraState.DEAD:
            self.counters.reconnects += 1
            log.info("CAMERA_RECONNECT_OK camera=%s after %d attempt(s)", self._log_id, attempts)
        self._thread_report(CameraState.LIVE)

    def _thread_read_until_failure(
        self, source: VideoSource, attempts: int
    ) -> tuple[str | SourceError, bool]:
        """Read until a failure or a stop request; returns the failure (a reason, or the
        source's error) and whether a usable frame came at all. A library error is a failure
        like any other: the stream is reopened. Only usable video counts as a frame:
        packets before the first keyframe and other tracks' packets do not keep a camera
        alive."""
        fps = source.fps or 10.0
        pace = 1.0 / fps if self.url.startswith("file://") else 0.0
        last = time.monotonic()  # the last usable frame (or the open)
        delivered = False
        unusable = 0  # video packets since `last` that no decoder could use
        slow = 0.9 * self.cfg.read_timeout_s
        while not self._stop.is_set():
            before = time.monotonic()
            try:
                grab = source.grab(self.decode_mode, self._want.is_set())
            except SourceError as exc:
                return exc, delivered
            now = time.monotonic()
            if not grab.ok:
                return "read failed (stream ended or connection lost)", delivered
            if now - before >= slow:
                # The read waited out its timeout: FFmpeg hands back buffered data from a
                # stream that stopped (measured with a frozen RTSP server: one "frame" per
                # timeout). It is not a live frame, so it does not refresh the frame age.
                if now - last > self.cfg.max_frame_age_s:
                    return f"no new frame for {now - last:.1f} s (stream hung)", delivered
                continue
            if grab.video:
                self.counters.frames_read += 1
            if not grab.fresh:
                unusable += grab.video
                if now - last > self.cfg.max_frame_age_s:
                    return _unusable_reason(now - last, unusable), delivered
                continue
            last = now
            unusable = 0
            self.counters.last_frame_at = now
            if not delivered:
                delivered = True
                self._thread_went_live(attempts)
            elif self._thread_state is not CameraState.LIVE:  # frames flow after a stall
                self._thread_report(CameraState.LIVE)
            elif self.state is CameraState.RECONNECTING:  # the loop saw a stall; it is over
                self._thread_state = CameraState.RECONNECTING
                self._thread_report(CameraState.LIVE)
            if grab.decoded:
                self.counters.frames_decoded += 1
                if self._want.is_set():
                    self._thread_hand_over(source, before, now)
            if pace:
                self._stop.wait(pace)
        return "stopped", delivered

    def _thread_hand_over(self, source: VideoSource, before: float, now: float) -> None:
        """Convert the decoded frame and give it to the waiting analysis."""
        try:
            image = source.retrieve()
        except SourceError as exc:
            self.counters.frames_invalid += 1
            self.counters.last_error = self._thread_mask(str(exc))
            return
        if self.observe is not None:
            self.observe("decode", time.monotonic() - before)
        if image is None:
            self.counters.frames_invalid += 1
        else:
            self._thread_deliver(Frame(image, now, time.time()))


def _unusable_reason(seconds: float, video_packets: int) -> str:
    """Why a stream that still sends data has no usable frame."""
    if video_packets:
        return (
            f"no keyframe for {seconds:.1f} s ({video_packets} video packets that cannot be "
            "decoded): set the camera's keyframe (I-frame) interval below max_frame_age_s"
        )
    return f"no video for {seconds:.1f} s (only audio or other tracks arrive)"


def _resolve(future: asyncio.Future[Frame], frame: Frame) -> None:
    if not future.done():
        future.set_result(frame)
