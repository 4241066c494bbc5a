"""The tests' RTSP camera: it lives in :mod:`agent.devkit.rtsp` (the demo uses it too)."""

from agent.devkit.rtsp import (
    FAST_CAPTURE_OPTIONS,
    INSTALL_HINT,
    RtspServer,
    RtspServerError,
    gst_rtsp_available,
    open_capture,
)

__all__ = [
    "FAST_CAPTURE_OPTIONS",
    "INSTALL_HINT",
    "RtspServer",
    "RtspServerError",
    "gst_rtsp_available",
    "open_capture",
]
