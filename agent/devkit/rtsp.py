"""A real RTSP camera for tests and the demo: GStreamer's RTSP server in a separate process.

The server (``agent/devkit/rtsp_server_main.py``) runs under Debian's ``/usr/bin/python3``,
where the GStreamer bindings live (``scripts/system-deps.sh`` installs them; ``make test``
and ``make demo`` run it). Tests can start it, kill it (SIGKILL), freeze it (SIGSTOP: a
camera whose cable was pulled) and restart it on the same port::

    server = RtspServer(plan.frames_dir, fps=plan.fps)
    server.start()
    try:
        cap = open_capture(server.url)
        ...
    finally:
        server.stop()

No pytest here; no Python threads are started.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.devkit.ports import free_port
from agent.errors import AgentError, ErrorCode

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server_main.py"
INSTALL_HINT = (
    "GStreamer's RTSP server is not available to /usr/bin/python3: run "
    "`make system-deps` (scripts/system-deps.sh installs gir1.2-gst-rtsp-server-1.0, "
    "python3-gi, python3-gst-1.0 and gstreamer1.0-plugins-{base,good,ugly})"
)
# OpenCV's FFmpeg options for a fast open over TCP (read by OpenCV at each open): 0.13 s
# instead of ~2.8 s, and no burst of stale frames.
FAST_CAPTURE_OPTIONS = "rtsp_transport;tcp|analyzeduration;100000|probesize;32768"

_CHECK = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("multifilesrc", "jpegdec", "videorate", "videoscale", "videoconvert",
                       "x264enc", "rtph264pay") if Gst.ElementFactory.find(e) is None]
assert not missing, missing
"""


def _child_env() -> dict[str, str]:
    """Environment for Debian's Python: nothing of the virtual environment's Python paths."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GST_DEBUG", "1")  # errors only
    env["GST_DEBUG_NO_COLOR"] = "1"
    return env


@functools.cache
def gst_rtsp_available() -> bool:
    """Whether ``/usr/bin/python3`` can import the RTSP server bindings and the elements."""
    if not Path(SYSTEM_PYTHON).is_file():
        return False
    try:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", _CHECK],
            env=_child_env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


class RtspServerError(AgentError):
    """The server did not start; the message carries its output (demo and tests only)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL_ERROR, message, status=500)


class RtspServer:
    """One RTSP server process serving ``frames_dir/%04d.jpg`` looped at ``fps``.

    The stream is shared: it starts at frame 0 when the first client connects (a later
    client joins at the next keyframe, one per second) and stops when the last one leaves.
    """

    def __init__(
        self,
        frames_dir: Path | None,
        *,
        fps: int = 10,
        width: int = 640,
        height: int = 480,
        port: int | None = None,
        path: str = "/stream",
        bitrate_kbps: int = 2048,
        audio: bool = False,
        video_stops_after: float = 0.0,
        no_keyframes: bool = False,
    ) -> None:
        """``frames_dir`` None serves GStreamer's test picture. Faulty cameras: ``audio``
        adds an audio track, ``video_stops_after`` drops all video after that many seconds
        (the audio goes on), ``no_keyframes`` drops every keyframe."""
        self.frames_dir = None if frames_dir is None else Path(frames_dir)
        self.faults: list[str] = [
            *(["--audio"] if audio else []),
            *(["--video-stops-after", str(video_stops_after)] if video_stops_after else []),
            *(["--no-keyframes"] if no_keyframes else []),
        ]
        self.fps = fps
        self.width = width
        self.height = height
        self.path = path
        self.bitrate_kbps = bitrate_kbps
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.start_seconds = 0.0  # how long the last start() waited for READY
        self._log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """What the current (or last) server process printed."""
        if self._log_path is None:
            return ""
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until it listens (its READY line).

        With an automatically chosen port that another process took in the meantime, a new
        port is tried (twice at most); with a fixed port, or on any other failure, raises
        ``RtspServerError`` with the server's output.
        """
        if self.alive():
            raise RtspServerError(f"server already running (pid {self.pid})")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._start_once(timeout)
                return
            except RtspServerError as exc:
                if attempt + 1 >= attempts or "cannot listen" not in str(exc):
                    raise
                self.port = free_port()

    def _start_once(self, timeout: float) -> None:
        if not Path(SYSTEM_PYTHON).is_file():
            raise RtspServerError(INSTALL_HINT)
        self._discard_log()
        fd, name = tempfile.mkstemp(prefix="rtsp-server-", suffix=".log")
        self._log_path = Path(name)
        started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [
                    SYSTEM_PYTHON,
                    # -P: the script's folder (agent/devkit) is not put on sys.path, so
                    # none of its modules can shadow one the server imports.
                    "-P",
                    str(SERVER_SCRIPT),
                    "--port",
                    str(self.port),
                    *(
                        ["--pattern"]
                        if self.frames_dir is None
                        else ["--frames", str(self.frames_dir)]
                    ),
                    *self.faults,
                    "--fps",
                    str(self.fps),
                    "--width",
                    str(self.width),
                    "--height",
                    str(self.height),
                    "--path",
                    self.path,
                    "--bitrate",
                    str(self.bitrate_kbps),
                ],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,
            )
        finally:
            os.close(fd)
        self.frozen = False
        deadline = started + timeout
        while True:
            text = self.output()
            if any(line.startswith("READY") for line in text.splitlines()):
                self.start_seconds = time.monotonic() - started
                return
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RtspServerError(
                    f"RTSP server exited with code {code} before READY:\n{text}"
                    + ("" if gst_rtsp_available() else f"\n{INSTALL_HINT}")
                )
            if time.monotonic() > deadline:
                self._kill_and_reap()
                raise RtspServerError(f"RTSP server not READY after {timeout} s:\n{self.output()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (a camera losing power) and reap it."""
        self._kill_and_reap()

    def freeze(self) -> None:
        """SIGSTOP the server: connections stay open, nothing more is sent or answered."""
        if not self.alive():
            raise RtspServerError("server is not running")
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def restart(self, timeout: float = 20.0) -> None:
        """Kill the server if it runs, then start it again on the same port."""
        self._kill_and_reap()
        self._start_once(timeout)

    def terminate(self, timeout: float = 5.0) -> int | None:
        """Graceful stop (SIGTERM), SIGKILL if it does not exit in ``timeout``; exit code."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            self.thaw()
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_and_reap()
                return None
        self.proc = None
        return proc.returncode

    def stop(self) -> None:
        """Teardown: thaw, kill and reap if still alive, remove the log. Always safe."""
        self._kill_and_reap()
        self._discard_log()

    def _kill_and_reap(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            # SIGCONT first: a stopped process dies on SIGKILL too, but its connections are
            # then closed at once rather than left to the kernel's timers.
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)  # its own session/group: started that way
                except ProcessLookupError:
                    break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self.proc = None
        self.frozen = False

    def _discard_log(self) -> None:
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_capture(url: str, *, open_timeout_ms: int = 5000, read_timeout_ms: int = 2000) -> Any:
    """``cv2.VideoCapture`` on ``url`` as the agent opens cameras: FFmpeg, TCP, fast probe,
    bounded open and read timeouts. Sets ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` only for the open
    (OpenCV reads it there) and restores the previous value. Check ``isOpened()``.
    """
    import cv2

    key = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    previous = os.environ.get(key)
    os.environ[key] = FAST_CAPTURE_OPTIONS
    try:
        return cv2.VideoCapture(
            url,
            cv2.CAP_FFMPEG,
            [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                open_timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                read_timeout_ms,
            ],
        )
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
