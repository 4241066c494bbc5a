"""Enrollment photo hardening: only JPEG/PNG/WebP/BMP reach a decoder, decoded memory is
bounded from the header, and awkward but legitimate photos (animated, 16-bit, palette,
multi-picture JPEG) decode correctly. Real files built with Pillow, the real engine."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.config import AgentConfig
from agent.errors import AgentError, ErrorCode
from agent.vision.embedding import generate_embedding
from agent.vision.engine import FaceEngine
from agent.vision.photo import ALLOWED_FORMATS, decode_photo

ROOT = Path(__file__).resolve().parent.parent
LIMITS = {"max_bytes": 10 * 2**20, "max_pixels": 40_000_000}


@pytest.fixture(scope="module")
def face(photos: dict[str, Path]) -> Image.Image:
    """The Yao Ming portrait as an RGB Pillow image."""
    with Image.open(photos["yaoming.jpg"]) as img:
        return img.convert("RGB")


def _encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _refusal(data: bytes, **limits: int) -> AgentError:
    with pytest.raises(AgentError) as info:
        decode_photo(data, **{**LIMITS, **limits})
    assert info.value.code is ErrorCode.INVALID_FILE_FORMAT
    assert info.value.status == 400
    return info.value


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _flat_png(width: int, height: int, *, alpha: bool = False) -> bytes:
    """A complete, valid single-colour PNG: tiny on disk, huge decoded. Rows after the
    first use the "Up" filter with zero deltas, so they compress to almost nothing."""
    bands = 4 if alpha else 3
    packer = zlib.compressobj(1)
    parts = [packer.compress(b"\x00" + bytes((200, 120, 40, 255)[:bands]) * width)]
    row = b"\x02" + bytes(width * bands)
    left = height - 1
    while left:
        n = min(256, left)
        parts.append(packer.compress(row * n))
        left -= n
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


# Refused formats --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "options"),
    [
        ("GIF", "GIF", {}),
        ("TIFF", "TIFF", {}),
        ("PPM", "PPM/PGM/PBM", {}),
        ("ICO", "ICO", {"sizes": [(64, 64)]}),
    ],
)
def test_other_formats_are_refused_by_name(
    face: Image.Image, tmp_path: Path, fmt: str, name: str, options: dict[str, object]
) -> None:
    path = tmp_path / f"face.{fmt.lower()}"
    face.save(path, format=fmt, **options)
    with Image.open(path) as check:  # a real, decodable file of that format
        assert check.format == fmt
    err = _refusal(path.read_bytes())
    assert f"is a {name} image" in err.message
    assert "JPEG, PNG, WebP or BMP" in err.message
    assert err.details == {"format": name, "allowedFormats": list(ALLOWED_FORMATS)}


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "SGI"])
def test_formats_without_a_known_signature_never_reach_their_decoder(
    face: Image.Image, fmt: str
) -> None:
    # Pillow decodes these perfectly well; the allowlist must stop them anyway.
    data = _encode(face, fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == fmt
    err = _refusal(data)
    assert "not an image in a supported format (JPEG, PNG, WebP or BMP)" in err.message


# Memory bounds ----------------------------------------------------------------------------

_PEAK_PROBE = """
import json, resource, sys
from agent.errors import AgentError
from agent.vision.photo import decode_photo
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_photo(data, max_bytes=10 * 2**20, max_pixels=40_000_000)
    outcome = {"code": None, "message": "decoded"}
except AgentError as exc:
    outcome = {"code": str(exc.code), "message": exc.message}
outcome["grew_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(outcome))
"""


def _decode_in_child(path: Path) -> dict[str, object]:
    """Decode ``path`` in a fresh interpreter and report how much its peak RSS grew
    (Pillow allocates pixels with malloc, which tracemalloc does not see)."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_huge_png_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_flat_png(20000, 20000))  # 1.2 GB of RGB in about 5 MB
    assert path.stat().st_size < LIMITS["max_bytes"]
    outcome = _decode_in_child(path)
    assert outcome["code"] == "INVALID_FILE_FORMAT"
    assert "20000x20000 pixels" in str(outcome["message"])
    assert int(str(outcome["grew_kib"])) < 64 * 1024, outcome


def test_wide_mode_within_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    # 36 Mpx is under the 40 Mpx limit, but RGBA needs 4 bytes a pixel (137 MiB) where
    # the limit allows an RGB photo's 3 (114 MiB): refused from the header alone.
    path = tmp_path / "wide.png"
    path.write_bytes(_flat_png(6000, 6000, alpha=True))
    outcome = _decode_in_child(path)
    assert outcome["code"] == "INVALID_FILE_FORMAT"
    assert "mode RGBA" in str(outcome["message"]) and "MiB" in str(outcome["message"])
    assert int(str(outcome["grew_kib"])) < 64 * 1024, outcome


def test_decoded_bytes_budget_follows_max_pixels(face: Image.Image) -> None:
    square = face.resize((100, 100))
    rgba = _encode(square.convert("RGBA"), "PNG")
    grey16 = _encode(Image.fromarray(np.full((100, 100), 30000, np.uint16)), "PNG")
    # 10 000 pixels allowed: RGB (30 000 bytes) fits, RGBA (40 000) does not.
    assert decode_photo(_encode(square, "PNG"), max_bytes=2**20, max_pixels=10_000).shape == (
        100,
        100,
        3,
    )
    assert "mode RGBA" in _refusal(rgba, max_pixels=10_000).message
    assert decode_photo(grey16, max_bytes=2**20, max_pixels=10_000).shape == (100, 100, 3)
    assert "limit is 9999 pixels" in _refusal(rgba, max_pixels=9999).message


def test_webp_canvas_is_checked_before_libwebp_allocates_it() -> None:
    # A VP8X header claiming a 16384 x 16384 canvas: libwebp would reserve 2 GiB for its
    # canvases as soon as Pillow opens the file.
    header = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    header += (16383).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(header)) + b"WEBP" + header
    assert "16384x16384 pixels" in _refusal(data).message


# Accepted photos --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options", "same_pixels"),
    [
        ("PNG", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("WEBP", {"quality": 90}, False),
        ("BMP", {}, True),
        ("JPEG", {"quality": 95}, False),
    ],
)
def test_allowed_formats_of_a_real_face_are_enrolled(
    engine: FaceEngine,
    config: AgentConfig,
    face: Image.Image,
    photos: dict[str, Path],
    fmt: str,
    options: dict[str, object],
    same_pixels: bool,
) -> None:
    reference = generate_embedding(engine, config.enrollment, path=photos["yaoming.jpg"])
    data = _encode(face, fmt, **options)
    result = generate_embedding(engine, config.enrollment, photo=data)
    assert len(result.embedding) == 512
    assert float(np.dot(reference.embedding, result.embedding)) > (0.999 if same_pixels else 0.95)
    if same_pixels:
        expected = np.asarray(face)[:, :, ::-1]
        assert np.array_equal(decode_photo(data, **LIMITS), expected)


def test_sixteen_bit_grey_is_scaled_not_clipped(
    engine: FaceEngine, config: AgentConfig, face: Image.Image
) -> None:
    grey8 = np.asarray(face.convert("L"))
    grey16 = grey8.astype(np.uint16) * 257  # the same picture in 16 bits
    data = _encode(Image.fromarray(grey16), "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "I;16"
    decoded = decode_photo(data, **LIMITS)
    assert np.array_equal(decoded[:, :, 0], grey8) and np.array_equal(decoded[:, :, 2], grey8)
    assert len(generate_embedding(engine, config.enrollment, photo=data).embedding) == 512


def test_palette_png_with_alpha_palette_is_enrolled(
    engine: FaceEngine, config: AgentConfig, face: Image.Image
) -> None:
    # A palette with per-entry alpha (tRNS bytes) makes Pillow warn on convert(); the
    # photo is fine and must not depend on the warning filters in force.
    data = _encode(face.convert("RGBA").quantize(128), "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "P" and isinstance(check.info.get("transparency"), bytes)
    assert len(generate_embedding(engine, config.enrollment, photo=data).embedding) == 512


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("WEBP", {"lossless": True}), ("MPO", {})],
)
def test_only_the_first_frame_of_a_multi_frame_file_is_used(
    face: Image.Image, fmt: str, options: dict[str, object]
) -> None:
    rng = np.random.default_rng(7)
    noise = [
        Image.fromarray(rng.integers(0, 255, (face.height, face.width, 3), np.uint8))
        for _ in range(2)
    ]
    data = _encode(face, fmt, save_all=True, append_images=noise, **options)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 3
    decoded = decode_photo(data, **LIMITS)
    first = decode_photo(_encode(face, "JPEG" if fmt == "MPO" else fmt, **options), **LIMITS)
    assert decoded.shape == first.shape
    if fmt == "MPO":  # lossy either way: close to the face, far from the noise
        assert float(np.abs(decoded.astype(int) - first.astype(int)).mean()) < 2.0
    else:
        assert np.array_equal(decoded, first)
