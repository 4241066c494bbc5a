"""The cap on a camera frame's size (``[cameras] max_frame_pixels``).

A decoded frame costs its pixel count in memory several times over (the decoder's
picture, the BGR copy an analysis gets): five 16000x16000 MJPEG frames took the agent
from 346 MiB to 2.5 GiB. So the size is checked before decoding wherever the stream says
it (its header when opened; a JPEG's frame header, which costs a few bytes to read), and
FFmpeg's decoder is given the same cap (``max_pixels``) so it refuses a larger picture
before allocating it, whatever the codec.
"""

from __future__ import annotations

import struct

from agent.errors import ErrorCode

CODE = ErrorCode.CAMERA_FRAME_TOO_LARGE

# JPEG start-of-frame markers (SOF0-SOF15), except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, SOS start, TEM


def too_large(width: int, height: int, max_pixels: int) -> str | None:
    """Why a ``width`` x ``height`` frame is refused, or None when it is within the cap."""
    pixels = width * height
    if pixels <= max_pixels:
        return None
    return (
        f"frame {width}x{height} ({pixels / 1e6:.1f} Mpx) is larger than [cameras] "
        f"max_frame_pixels ({max_pixels / 1e6:.1f} Mpx): lower the camera's resolution "
        "or raise the limit"
    )


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's start-of-frame header (None when there is none)."""
    pos = 2 if data[:2] == b"\xff\xd8" else 0
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF_MARKERS:
            if pos + 9 > end:
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        if marker == 0xDA:  # start of scan: no frame header before the image data
            return None
        pos += 2 + length
    return None
