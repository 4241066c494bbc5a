"""Reading enrollment photos safely: an allowlist of formats, size and memory limits
checked from the header before decoding, strict decoding, EXIF orientation applied.
Every failure becomes an :class:`AgentError` with a code."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from agent.errors import AgentError, ErrorCode
from agent.vision.faces import Image as BgrImage

# Pillow's own bomb guard is replaced by the configured pixel limit checked below.
Image.MAX_IMAGE_PIXELS = None

# Only these decoders ever see enrollment bytes: Pillow has dozens more (GIF, TIFF, PSD,
# ICO, PPM, ...), each one more parser an upload can reach, and none a camera phone makes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
ALLOWED_TEXT = "JPEG, PNG, WebP or BMP"
# What Pillow may report for an allowed format: a multi-picture JPEG (phone cameras write
# them) opens as MPO; its first picture is the photo.
_DETECTED = {*ALLOWED_FORMATS, "MPO"}
# The pixel limit is stated for 8-bit RGB; images with more bytes per pixel (RGBA, CMYK,
# 16-bit) must have proportionally fewer pixels, so the decoded frame stays this size.
BYTES_PER_LIMIT_PIXEL = 3
STRIP_BYTES = 4 * 2**20  # conversion works on strips of about this size

# Refused formats worth naming in the error, by their leading bytes (no CUR: its
# signature is also how an uncompressed truecolour TGA begins).
_KNOWN_OTHERS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"icns", "ICNS"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (4, b"jP  ", "JPEG 2000"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
)
_GREY16 = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


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

    Refuses, with ``INVALID_FILE_FORMAT``: empty, oversized, truncated and undecodable
    input; any other format (GIF, TIFF, PSD, ICO, PPM, HEIC...), decided before any
    decoder runs; images with more than ``max_pixels`` pixels, or whose decoded frame
    would need more than ``max_pixels * 3`` bytes (both checked from the header, before
    the pixels are decoded). Only the first frame of an animated PNG or WebP is decoded;
    16-bit greyscale is scaled to 8 bits (not clipped to white).
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
            # Pillow's UserWarnings (corrupt EXIF, palette transparency) describe photos
            # that decode fine; they must not make the result depend on warning filters.
            warnings.simplefilter("ignore", UserWarning)
            img = _open_allowed(data, max_pixels)
            _check_size(img, max_pixels)
            img.load()  # raises on truncated data instead of returning grey pixels
            return _to_bgr(img)
    except AgentError:
        raise
    except UnidentifiedImageError as exc:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"The file is not an image in a supported format ({ALLOWED_TEXT}). "
            "Send a JPEG or PNG photo.",
        ) from exc
    except Exception as exc:
        # Pillow raises OSError, ValueError or SyntaxError for most bad data, but struct,
        # Index and Type errors, and MemoryError, come out of its parsers too; all of them
        # mean "this upload is not a usable photo", never an internal error.
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"The photo could not be decoded ({type(exc).__name__}: {exc}). "
            "Send a complete JPEG or PNG image.",
        ) from exc


def _open_allowed(data: bytes, max_pixels: int) -> Image.Image:
    """Open (parse the header of) ``data`` with the allowed decoders only."""
    size = _webp_size(data)
    if size is not None:
        # libwebp allocates its canvases (8 bytes a pixel) when Pillow *opens* a WebP,
        # before any size check after Image.open could run.
        _check_pixels(*size, max_pixels)
    for offset, magic, name in _KNOWN_OTHERS:
        if data[offset : offset + len(magic)] == magic:
            raise _refused(name)
    if data[:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        raise _refused("PPM/PGM/PBM")
    img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    if img.format not in _DETECTED:  # a plugin handed back another kind of image
        raise _refused(str(img.format))
    return img


def _refused(name: str) -> AgentError:
    return AgentError(
        ErrorCode.INVALID_FILE_FORMAT,
        f"The photo is a {name} image, which is not accepted: send a {ALLOWED_TEXT} photo.",
        details={"format": name, "allowedFormats": list(ALLOWED_FORMATS)},
    )


def _check_size(img: Image.Image, max_pixels: int) -> None:
    """Refuse, from the header alone, an image whose decoded frame would be too big."""
    width, height = img.size
    _check_pixels(width, height, max_pixels)
    needed = width * height * _bytes_per_pixel(img.mode)
    budget = max_pixels * BYTES_PER_LIMIT_PIXEL
    if needed > budget:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"Photo is {width}x{height} pixels in mode {img.mode}, {needed / 2**20:.0f} MiB "
            f"decoded; the limit is {budget / 2**20:.0f} MiB. Resize it or save it as an "
            "8-bit RGB JPEG before sending.",
        )


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"Photo is {width}x{height} pixels; the limit is {max_pixels} pixels. "
            "Resize it before sending.",
        )


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP header (RIFF, then a VP8X, VP8 or VP8L chunk), or None."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _bytes_per_pixel(mode: str) -> int:
    """Decoded bytes per pixel of a Pillow mode (bands x bytes per band); 8 when the mode
    is unknown, so that a surprise errs on the side of refusing."""
    try:
        info = ImageMode.getmode(mode)
    except KeyError:
        return 8
    return len(info.bands) * max(1, int(info.typestr[-1]))


def _to_bgr(img: Image.Image) -> BgrImage:
    """The loaded image upright, as a BGR uint8 array.

    Converted a strip at a time straight into the output array, so the peak is the
    decoded frame plus the output (7 bytes a pixel for RGB) instead of the frame, a
    converted copy, ``tobytes()`` chunks, their join and a channel-swapped copy (14).
    """
    ImageOps.exif_transpose(img, in_place=True)
    width, height = img.size
    if width < 16 or height < 16:
        raise AgentError(
            ErrorCode.INVALID_FILE_FORMAT,
            f"The photo is {width}x{height} pixels; too small to hold a face.",
        )
    rows = max(1, STRIP_BYTES // (width * 4))
    grey16 = img.mode in _GREY16
    out = np.empty((height, width) if grey16 else (height, width, 3), dtype=np.uint8)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = img.crop((0, top, width, bottom))
        if grey16:
            # Pillow's convert() clips 16-bit values to 255 (a white photo): keep the top
            # byte instead.
            out[top:bottom] = np.clip(np.asarray(strip), 0, 65535) >> 8
            continue
        if strip.mode != "RGB":  # pointwise conversions: a strip converts like the whole
            strip = strip.convert("RGB")
        # Pillow packs BGR itself: no reversed view to copy.
        packed = np.frombuffer(strip.tobytes("raw", "BGR"), dtype=np.uint8)
        out[top:bottom] = packed.reshape(bottom - top, width, 3)
    img.close()
    if grey16:
        return np.asarray(cv2.cvtColor(out, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    return out
