"""Reading enrollment photos safely: size limits before decoding, strict decoding, EXIF
orientation applied. Every failure becomes an :class:`AgentError` with a code."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agent.engine import Image as BgrImage
from agent.errors import AgentError, ErrorCode

# Pillow's own bomb guard is replaced by the configured pixel limit checked below.
Image.MAX_IMAGE_PIXELS = None


def read_photo_file(path: Path | str | None, max_bytes: int) -> bytes:
    """Bytes of a photo file, or an error naming what is wrong with the path."""
    if path is None or str(path) == "":
        raise AgentError(ErrorCode.PHOTO_FILE_REQUIRED, "No photo was given: pass an image file.")
    file = Path(path)
    if not file.is_file():
        raise AgentError(
            ErrorCode.PHOTO_FILE_NOT_FOUND, f"Photo file {str(file)!r} does not exist."
        )
    size = file.stat().st_size
    if size > max_bytes:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"Photo is {size} bytes; the limit is {max_bytes}. Send a smaller JPEG or PNG.",
        )
    return file.read_bytes()


def decode_photo(data: bytes | None, *, max_bytes: int, max_pixels: int) -> BgrImage:
    """Decode JPEG/PNG/WebP/BMP bytes into a BGR uint8 image.

    Rejects empty, oversized, truncated and undecodable input and images with more than
    ``max_pixels`` pixels (checked from the header, before the pixels are decoded).
    """
    if not data:
        raise AgentError(
            ErrorCode.PHOTO_FILE_REQUIRED if data is None else ErrorCode.INVALID_FILE_FORMAT,
            "No photo was given: send the image bytes."
            if data is None
            else "The photo is empty (0 bytes).",
        )
    if len(data) > max_bytes:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"Photo is {len(data)} bytes; the limit is {max_bytes}. Send a smaller image.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise AgentError(
                    ErrorCode.INVALID_FILE_FORMAT,
                    f"Photo is {width}x{height} pixels; the limit is {max_pixels} pixels. "
                    "Resize it before sending.",
                )
            img.load()  # raises on truncated data instead of returning grey pixels
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except AgentError:
        raise
    except UnidentifiedImageError as exc:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            "The file is not an image in a supported format. Send a JPEG or PNG photo.",
        ) from exc
    except (OSError, ValueError, SyntaxError, Warning) as exc:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"The photo could not be decoded ({type(exc).__name__}: {exc}). "
            "Send a complete JPEG or PNG image.",
        ) from exc
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] < 16 or array.shape[1] < 16:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"The photo is {array.shape[1]}x{array.shape[0]} pixels; too small to hold a face.",
        )
    return np.ascontiguousarray(array[:, :, ::-1])
