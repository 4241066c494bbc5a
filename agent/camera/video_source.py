"""Video sources: the one place that talks to a decoding library (PyAV or OpenCV).

A camera reader thread (``agent.camera.reader``) opens a :class:`VideoSource`, calls ``grab`` for
each packet or frame the stream delivers, and ``retrieve`` only for a frame it will
analyse. Errors of the libraries are translated here into :class:`SourceError` with a
one-line reason.

Why two libraries: an H.264 frame that is never analysed should not be decoded. PyAV
(FFmpeg's libraries) hands over the compressed packets, so in :attr:`DecodeMode.KEYFRAMES`
only the keyframes that an analysis asked for are decoded (measured on a 1080p15 stream:
0.7 % of a core instead of ~19 % for decoding every frame), and the conversion to BGR is
done only for analysed frames. OpenCV's ``grab()`` always decodes; it stays as the
fallback for sources PyAV cannot read (device indexes, a missing PyAV) and can be chosen
with ``[cameras] decoder = "opencv"``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import cv2
import numpy as np

from agent.camera import frame_size
from agent.camera.frame_size import jpeg_size, too_large
from agent.config import CamerasConfig
from agent.errors import AgentError, ErrorCode

# DecodeMode is spelled in the status models (it is reported); readers and the scheduler
# import it from here with the sources that honour it.
from agent.status.models import DecodeMode
from agent.vision.faces import Image

try:  # PyAV is a dependency; without it every camera is read with OpenCV.
    import av

    HAVE_PYAV = True
except ImportError:  # pragma: no cover - exercised only on a broken install
    HAVE_PYAV = False

__all__ = [
    "HAVE_PYAV",
    "OPENCV_OPTIONS_ENV",
    "DecodeMode",
    "Grab",
    "OpenCvSource",
    "PyAvSource",
    "SourceError",
    "SourceFailure",
    "VideoSource",
    "choose_decoder",
    "failure_kind",
    "install_opencv_options",
    "open_source",
    "opencv_options",
]


class SourceFailure(StrEnum):
    """What kind of failure a :class:`SourceError` is, as the source knew it (callers act on
    this, never on the words of the reason)."""

    TIMEOUT = "TIMEOUT"  # no answer (or no data) within the open or read timeout
    REFUSED = "REFUSED"  # the library declined the stream at once, without saying why
    CONNECTION_REFUSED = "CONNECTION_REFUSED"  # nothing accepts connections at the address
    OTHER = "OTHER"  # anything else: the reason says what


class SourceError(AgentError):
    """Opening or reading a stream failed; ``str()`` is a one-line reason (it becomes the
    camera's ``lastError`` and the CAMERA_DISCONNECTED message), ``kind`` its kind."""

    def __init__(
        self,
        reason: str,
        *,
        opening: bool = False,
        code: ErrorCode | None = None,
        kind: SourceFailure = SourceFailure.OTHER,
    ) -> None:
        default = ErrorCode.CAMERA_OPEN_FAILED if opening else ErrorCode.CAMERA_NO_FRAME
        super().__init__(code or default, reason, status=502)
        self.kind = kind


def failure_kind(exc: BaseException) -> SourceFailure:
    """The kind of any exception an open or a read raised: a SourceError's own, else by the
    exception's type (PyAV raises FFmpeg's ETIMEDOUT as a TimeoutError, ECONNREFUSED as a
    ConnectionRefusedError)."""
    if isinstance(exc, SourceError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return SourceFailure.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return SourceFailure.CONNECTION_REFUSED
    return SourceFailure.OTHER


def _check_size(width: int, height: int, cfg: CamerasConfig, *, opening: bool = False) -> None:
    """Raise SourceError (CAMERA_FRAME_TOO_LARGE) for a frame over ``max_frame_pixels``."""
    reason = too_large(width, height, cfg.max_frame_pixels)
    if reason is not None:
        raise SourceError(reason, opening=opening, code=frame_size.CODE)


@dataclass
class Grab:
    """What one ``grab`` brought: whether the stream is still there, whether it was a video
    packet, whether that packet is usable (the stream has given the decoder a keyframe to
    start from since it was opened), and whether a new decoded frame is ready for
    ``retrieve``. Packets of other tracks (audio) are read too, so that a stream whose
    video stopped while its audio goes on is noticed (see ``PyAvSource``)."""

    ok: bool
    decoded: bool = False
    video: bool = False
    fresh: bool = False


class VideoSource(Protocol):
    """An open stream, read on one camera thread."""

    name: str  # "pyav" or "opencv"
    fps: float  # the stream's nominal rate (0.0 when unknown)

    def grab(self, mode: DecodeMode, wanted: bool) -> Grab:
        """Read the next packet (PyAV) or frame (OpenCV); decode it if ``mode`` and
        ``wanted`` (a frame is being waited for) call for it. Raises SourceError."""

    def retrieve(self) -> Image | None:
        """The last decoded frame as a BGR image (None if it cannot be converted)."""

    def release(self) -> None:
        """Close the stream; never raises."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _interrupted(exc: BaseException) -> bool:
    """Whether PyAV gave up because its timeout interrupted FFmpeg (its ExitError, which
    says only "Immediate exit requested"): a timeout."""
    return "Immediate exit requested" in str(exc)


def choose_decoder(url: str, cfg: CamerasConfig) -> str:
    """Which library reads ``url``: "pyav" or "opencv"."""
    if cfg.decoder == "opencv" or not HAVE_PYAV or url.isdigit():
        return "opencv"
    return "pyav"


OPENCV_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# OpenCV (4.x and 5.x) reads FFmpeg's options only from this environment variable, at each
# open: ``VideoCapture``'s params take timeouts and threads, not FFmpeg's dictionary. A
# write to os.environ while another thread calls getenv (OpenCV's open, or any C library)
# may crash, so the value is set once, on the main thread before any reader starts
# (install_opencv_options). A caller that did not install it (a library user, a test
# with other options) gets it written here, with the write and the open under this lock.
_OPENCV_ENV_LOCK = threading.Lock()


def opencv_options(cfg: CamerasConfig) -> str:
    """OPENCV_FFMPEG_CAPTURE_OPTIONS for ``cfg``: its FFmpeg options, and no HTTP redirect
    followed (as with PyAV; measured: OpenCV's FFmpeg honours ``max_redirects``)."""
    return f"{cfg.ffmpeg_options}|max_redirects;0"


def install_opencv_options(cfg: CamerasConfig) -> None:
    """Set OpenCV's FFmpeg options for the process. Call it once at start-up, before any
    camera reader or camera test thread exists; afterwards no open writes os.environ."""
    if os.environ.get(OPENCV_OPTIONS_ENV) != opencv_options(cfg):
        os.environ[OPENCV_OPTIONS_ENV] = opencv_options(cfg)


def _opencv_capture(source: str | int, backend: int, params: list[int], cfg: CamerasConfig) -> Any:
    """``cv2.VideoCapture`` with ``cfg``'s FFmpeg options (see _OPENCV_ENV_LOCK)."""
    wanted = opencv_options(cfg)
    if os.environ.get(OPENCV_OPTIONS_ENV) == wanted:
        return cv2.VideoCapture(source, backend, params)
    with _OPENCV_ENV_LOCK:
        os.environ[OPENCV_OPTIONS_ENV] = wanted
        return cv2.VideoCapture(source, backend, params)


def open_source(url: str, cfg: CamerasConfig) -> VideoSource:
    """Open a stream with the configured library and timeouts; raises SourceError."""
    if choose_decoder(url, cfg) == "pyav":
        return PyAvSource.open(url, cfg)
    return OpenCvSource.open(url, cfg)


class PyAvSource:
    """A stream read packet by packet with PyAV; frames decoded only when needed."""

    name = "pyav"

    def __init__(self, container: Any, stream: Any, cfg: CamerasConfig) -> None:
        self._container = container
        self._stream = stream
        self._cfg = cfg
        self._codec = stream.codec_context
        # FFmpeg's own cap: the decoder refuses a larger picture before allocating it,
        # also after a resolution change in the middle of the stream.
        self._codec.options = {"max_pixels": str(cfg.max_frame_pixels)}
        # Every track is demuxed, not only the video: PyAV's demux(video) skips audio
        # packets inside one call, and FFmpeg's read timeout restarts with each of them, so
        # a camera whose video died while its audio went on blocked a read for ever
        # (measured: GStreamer RTSP server, H.264 + A-law). Other packets are returned
        # unread and the camera reader watches the age of the last usable video packet.
        self._packets = container.demux()
        self._frame: Any = None
        self._synced = False  # the decoder has seen a keyframe since the last gap
        self._keyed = False  # the stream has sent a keyframe since it was opened
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0

    @classmethod
    def open(cls, url: str, cfg: CamerasConfig) -> PyAvSource:
        """Open ``url`` with the FFmpeg options and both timeouts of ``cfg``."""
        target = url[len("file://") :] if url.startswith("file://") else url
        options = dict(pair.split(";", 1) for pair in cfg.ffmpeg_options.split("|") if ";" in pair)
        # Probing the stream may decode a frame: never one over the cap (measured: a
        # 16000x16000 MJPEG stream then opens with its size unknown, and the first decode
        # is refused below).
        options["max_pixels"] = str(cfg.max_frame_pixels)
        if target.startswith(("http://", "https://")):
            # Redirects are not followed: the URL that was checked against the allowlists
            # ([cameras] allowed_urls, [webui] camera_test_allowed_urls) is the one opened.
            options["max_redirects"] = "0"
        container: Any = None
        try:
            container = av.open(
                target,
                options=options,
                timeout=(cfg.open_timeout_s, cfg.read_timeout_s),
            )
            if not container.streams.video:
                raise SourceError("open failed: the stream has no video track", opening=True)
            stream = container.streams.video[0]
            # One decoder thread: frame threading holds each frame back by (threads - 1)
            # frames for no gain at these sizes (measured with OpenCV's FFmpeg, the same
            # decoder).
            stream.thread_type = "SLICE"
            stream.codec_context.thread_count = 1
            _check_size(stream.codec_context.width, stream.codec_context.height, cfg, opening=True)
        except SourceError:
            _close(container)
            raise
        except Exception as exc:  # av.error.*, OSError: a failed open
            _close(container)
            if _interrupted(exc):
                raise SourceError(
                    "open timed out", opening=True, kind=SourceFailure.TIMEOUT
                ) from exc
            hint = " (HTTP redirects are not followed)" if "max_redirects" in options else ""
            raise SourceError(
                f"open failed: {_describe(exc)}{hint}", opening=True, kind=failure_kind(exc)
            ) from exc
        return cls(container, stream, cfg)

    def grab(self, mode: DecodeMode, wanted: bool) -> Grab:
        """Read one packet; decode it when the mode asks for it."""
        try:
            packet = next(self._packets, None)
            while packet is not None and packet.size == 0:  # flush packets carry nothing
                packet = next(self._packets, None)
        except Exception as exc:
            if _interrupted(exc):
                raise SourceError(
                    "read timed out (no data from the stream)", kind=SourceFailure.TIMEOUT
                ) from exc
            raise SourceError(f"read failed: {_describe(exc)}", kind=failure_kind(exc)) from exc
        if packet is None:
            return Grab(ok=False)
        if packet.stream_index != self._stream.index:
            return Grab(ok=True)  # audio or data: read only to keep the read loop turning
        key = bool(packet.is_keyframe)
        # Usable = a decoder could have made a frame of it: nothing before the stream's
        # first keyframe is (a stream that never sends one must not look alive).
        self._keyed = self._keyed or key
        fresh = self._keyed
        if mode is DecodeMode.KEYFRAMES:
            # A P-frame after skipped frames would decode as garbage: wait for a keyframe.
            self._synced = False
            if not (key and wanted):
                return Grab(ok=True, video=True, fresh=fresh)
        elif not self._synced and not key:
            return Grab(ok=True, video=True, fresh=fresh)
        try:
            frames = self._codec.decode(packet)
        except Exception as exc:  # a damaged packet: skip it, resync at the next keyframe
            self._synced = False
            self._check_packet_size(packet)
            raise SourceError(f"decode failed: {_describe(exc)}") from exc
        if key:
            self._synced = mode is DecodeMode.FULL
        if not frames:
            return Grab(ok=True, video=True, fresh=fresh)
        _check_size(frames[-1].width, frames[-1].height, self._cfg)
        self._frame = frames[-1]
        return Grab(ok=True, decoded=True, video=True, fresh=True)

    def _check_packet_size(self, packet: Any) -> None:
        """After a failed decode: whether the frame was refused for its size (FFmpeg says
        only "Invalid argument"). A JPEG's header says its size; other codecs leave the
        new size in the decoder's context."""
        size = None
        if self._codec.name == "mjpeg":
            with contextlib.suppress(Exception):
                size = jpeg_size(bytes(packet))
        if size is None:
            size = (self._codec.width, self._codec.height)
        _check_size(*size, self._cfg)

    def retrieve(self) -> Image | None:
        """The last decoded frame in BGR."""
        frame = self._frame
        if frame is None:
            return None
        try:
            image = frame.to_ndarray(format="bgr24")
        except Exception as exc:
            raise SourceError(f"decode failed: {_describe(exc)}") from exc
        return _valid(image)

    def release(self) -> None:
        """Close the container (its socket and decoder)."""
        self._frame = None
        with contextlib.suppress(Exception):
            self._packets.close()
        _close(self._container)


class OpenCvSource:
    """A stream read with ``cv2.VideoCapture``: every frame is decoded by ``grab``."""

    name = "opencv"

    def __init__(self, cap: Any, cfg: CamerasConfig) -> None:
        self._cap = cap
        self._cfg = cfg
        try:
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        except Exception:  # cv2.error: no rate known
            fps = 0.0
        self.fps = fps if 1.0 <= fps <= 120.0 else 0.0

    @classmethod
    def open(cls, url: str, cfg: CamerasConfig) -> OpenCvSource:
        """Open ``url`` with OpenCV's FFmpeg (or V4L2 for a device index)."""
        cap: Any = None
        started = time.monotonic()
        try:
            source, backend = _opencv_source(url)
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(cfg.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(cfg.read_timeout_s * 1000),
            ]
            if backend == cv2.CAP_FFMPEG:
                # One decoder thread: FFmpeg's frame threading holds each frame back by
                # (threads - 1) frames, 100 ms at 10 fps on 2 cores (measured), for no gain.
                params += [cv2.CAP_PROP_N_THREADS, 1]
            cap = _opencv_capture(source, backend, params, cfg)
            opened = bool(cap.isOpened())
        except Exception as exc:  # cv2.error or whatever a backend raises: a failed open
            _release(cap)
            raise SourceError(
                f"open failed: {_describe(exc)}", opening=True, kind=failure_kind(exc)
            ) from exc
        if not opened:
            _release(cap)
            # OpenCV says only "not opened": an open that took the whole timeout timed out.
            if time.monotonic() - started >= cfg.open_timeout_s * 0.9:
                raise SourceError("open timed out", opening=True, kind=SourceFailure.TIMEOUT)
            raise SourceError("open refused", opening=True, kind=SourceFailure.REFUSED)
        source = cls(cap, cfg)
        try:
            source.check_size(opening=True)
        except SourceError:
            _release(cap)
            raise
        return source

    def check_size(self, *, opening: bool = False) -> None:
        """Refuse a stream whose frames are over ``max_frame_pixels``. OpenCV decodes
        inside ``grab``, so this only stops a large stream after its first frame; and it
        scales every frame to the stream's first size (measured: 320x240 then 640x480
        MJPEG frames all come out 320x240), so a later size change is not seen here."""
        try:
            width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
            height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        except Exception:  # cv2.error: size unknown; the frame is checked when retrieved
            return
        _check_size(width, height, self._cfg, opening=opening)

    def grab(self, mode: DecodeMode, wanted: bool) -> Grab:
        """Read (and, OpenCV being what it is, decode) one frame."""
        try:
            ok = bool(self._cap.grab())
        except Exception as exc:
            raise SourceError(f"read failed: {_describe(exc)}") from exc
        if ok:
            self.check_size()  # the size may change in the middle of a stream
        return Grab(ok=ok, decoded=ok, video=ok, fresh=ok)

    def retrieve(self) -> Image | None:
        """Convert the grabbed frame."""
        try:
            ok, image = self._cap.retrieve()
        except Exception as exc:
            raise SourceError(f"decode failed: {_describe(exc)}") from exc
        return _valid(image) if ok else None

    def release(self) -> None:
        """Release the capture."""
        _release(self._cap)


def _opencv_source(url: str) -> tuple[Any, int]:
    """What to pass to cv2.VideoCapture for a camera URL, and the backend to use."""
    if url.isdigit():
        return int(url), cv2.CAP_V4L2
    if url.startswith("file://"):
        return url[len("file://") :], cv2.CAP_FFMPEG
    return url, cv2.CAP_FFMPEG


def _valid(image: Any) -> Image | None:
    if image is None or getattr(image, "size", 0) == 0 or getattr(image, "ndim", 0) != 3:
        return None
    result: Image = np.ascontiguousarray(image)
    return result


def _release(cap: Any) -> None:
    """Release a capture; a failing release leaves nothing to do but move on."""
    if cap is not None:
        with contextlib.suppress(Exception):
            cap.release()


def _close(container: Any) -> None:
    if container is not None:
        with contextlib.suppress(Exception):
            container.close()
