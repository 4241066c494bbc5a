"""Enrollment embeddings: every error code with a real bad input, and the good path."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from agent.config import AgentConfig
from agent.errors import AgentError, ErrorCode
from agent.vision.embedding import generate_embedding
from agent.vision.engine import FaceEngine
from tests.cli import run_cli


def _embed(engine: FaceEngine, config: AgentConfig, **kwargs: object) -> AgentError:
    with pytest.raises(AgentError) as info:
        generate_embedding(engine, config.enrollment, **kwargs)  # type: ignore[arg-type]
    return info.value


def _jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def test_good_photo(engine: FaceEngine, config: AgentConfig, photos: dict[str, Path]) -> None:
    result = generate_embedding(
        engine, config.enrollment, path=photos["yaoming.jpg"], submission_id="sub-1"
    )
    data = result.as_data()
    assert len(data["embedding"]) == 512
    assert np.linalg.norm(data["embedding"]) == pytest.approx(1.0, abs=1e-4)
    assert data["embeddingSpace"] == engine.embedding_space
    assert data["submissionId"] == "sub-1"
    assert data["quality"]["passed"] is True
    assert set(data["quality"]["parts"]) == {
        "faceSize",
        "sharpness",
        "pose",
        "exposure",
        "detScore",
    }
    assert 0.5 < data["quality"]["score"] <= 1.0
    x1, y1, x2, y2 = data["bbox"]
    assert 0 <= x1 < x2 and 0 <= y1 < y2


def test_bytes_and_path_give_the_same_embedding(
    engine: FaceEngine, config: AgentConfig, photos: dict[str, Path]
) -> None:
    by_path = generate_embedding(engine, config.enrollment, path=photos["yaoming.jpg"])
    by_bytes = generate_embedding(
        engine, config.enrollment, photo=photos["yaoming.jpg"].read_bytes()
    )
    assert by_path.embedding == by_bytes.embedding


def test_exif_rotation_is_applied(
    engine: FaceEngine, config: AgentConfig, photos: dict[str, Path]
) -> None:
    upright = generate_embedding(engine, config.enrollment, path=photos["yaoming.jpg"])
    img = Image.open(photos["yaoming.jpg"]).rotate(90, expand=True)  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    rotated = generate_embedding(engine, config.enrollment, photo=buf.getvalue())
    assert float(np.dot(upright.embedding, rotated.embedding)) > 0.9


def test_rgba_and_grayscale_photos(
    engine: FaceEngine, config: AgentConfig, photos: dict[str, Path]
) -> None:
    img = Image.open(photos["yaoming.jpg"])
    for mode, fmt in (("RGBA", "PNG"), ("L", "PNG")):
        buf = io.BytesIO()
        img.convert(mode).save(buf, format=fmt)
        assert (
            len(generate_embedding(engine, config.enrollment, photo=buf.getvalue()).embedding)
            == 512
        )


def test_photo_required(engine: FaceEngine, config: AgentConfig) -> None:
    assert _embed(engine, config).code is ErrorCode.PHOTO_FILE_REQUIRED
    assert _embed(engine, config, path="").code is ErrorCode.PHOTO_FILE_REQUIRED


def test_photo_not_found(engine: FaceEngine, config: AgentConfig, tmp_path: Path) -> None:
    err = _embed(engine, config, path=tmp_path / "missing.jpg")
    assert err.code is ErrorCode.PHOTO_FILE_NOT_FOUND
    assert err.status == 400
    assert "missing.jpg" in err.message


def _bomb_png(width: int, height: int) -> bytes:
    """A small PNG that claims width x height pixels (a decompression bomb)."""
    raw = zlib.compress(b"\x00" * (width // 8 + 1) * 10)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("name", "make", "fragment"),
    [
        ("text", lambda p: b"hello, this is not an image\n", "not an image"),
        ("zero bytes", lambda p: b"", "empty"),
        (
            "truncated jpeg",
            lambda p: p.read_bytes()[: len(p.read_bytes()) // 2],
            "could not be decoded",
        ),
        ("pdf", lambda p: b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "not an image"),
        ("svg", lambda p: b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not an image"),
        ("bomb", lambda p: _bomb_png(30000, 30000), "pixels"),
        ("tiny", lambda p: _jpeg(np.zeros((8, 8, 3), np.uint8)), "too small"),
    ],
)
def test_invalid_file_format(
    engine: FaceEngine,
    config: AgentConfig,
    photos: dict[str, Path],
    name: str,
    make: object,
    fragment: str,
) -> None:
    data = make(photos["yaoming.jpg"])  # type: ignore[operator]
    err = _embed(engine, config, photo=data)
    assert err.code is ErrorCode.INVALID_FILE_FORMAT, name
    assert fragment in err.message, err.message


def test_oversized_file(engine: FaceEngine, config: AgentConfig, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * (config.enrollment.max_photo_bytes + 1))
    assert "limit" in _embed(engine, config, path=big).message
    assert _embed(engine, config, photo=big.read_bytes()).code is ErrorCode.INVALID_FILE_FORMAT


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_no_face(
    engine: FaceEngine, config: AgentConfig, skimage_photos: dict[str, Path], name: str
) -> None:
    assert _embed(engine, config, path=skimage_photos[name]).code is ErrorCode.NO_FACE_IN_PHOTO


def test_single_face_in_skimage_astronaut(
    engine: FaceEngine, config: AgentConfig, skimage_photos: dict[str, Path]
) -> None:
    assert (
        len(
            generate_embedding(
                engine, config.enrollment, path=skimage_photos["astronaut"]
            ).embedding
        )
        == 512
    )


@pytest.mark.parametrize("name", ["players.jpg", "t1.jpg", "gdp.jpg"])
def test_multiple_faces(
    engine: FaceEngine, config: AgentConfig, photos: dict[str, Path], name: str
) -> None:
    err = _embed(engine, config, path=photos[name])
    assert err.code is ErrorCode.MULTIPLE_FACES_DETECTED
    assert err.details is not None and err.details["faces"] >= 2


def test_tiny_background_face_is_ignored(
    engine: FaceEngine, config: AgentConfig, photos: dict[str, Path]
) -> None:
    portrait = cv2.imread(str(photos["yaoming.jpg"]))
    canvas = np.full((600, 600, 3), 128, np.uint8)
    canvas[50 : 50 + portrait.shape[0], 50 : 50 + portrait.shape[1]] = portrait
    small = cv2.resize(portrait, None, fx=0.35, fy=0.35)
    canvas[450 : 450 + small.shape[0], 450 : 450 + small.shape[1]] = small
    assert len(engine.detect(canvas)) == 2
    result = generate_embedding(engine, config.enrollment, photo=_jpeg(canvas))
    assert result.bbox[0] < 300  # the large face was enrolled


@pytest.mark.parametrize(
    ("name", "transform", "part"),
    [
        ("blurred", lambda im: cv2.GaussianBlur(im, (0, 0), 4), "sharpness"),
        ("dark", lambda im: (im * 0.15).astype(np.uint8), "exposure"),
        ("overexposed", lambda im: cv2.convertScaleAbs(im, alpha=1.0, beta=150), "exposure"),
        (
            "tiny face",
            lambda im: cv2.resize(im, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA),
            "faceSize",
        ),
        (
            "tilted",
            lambda im: cv2.warpAffine(
                im,
                cv2.getRotationMatrix2D((im.shape[1] / 2, im.shape[0] / 2), 45, 0.8),
                (im.shape[1], im.shape[0]),
            ),
            "pose",
        ),
    ],
)
def test_low_quality(
    engine: FaceEngine,
    config: AgentConfig,
    photos: dict[str, Path],
    name: str,
    transform: object,
    part: str,
) -> None:
    image = transform(cv2.imread(str(photos["yaoming.jpg"])))  # type: ignore[operator]
    err = _embed(engine, config, photo=_jpeg(image))
    assert err.code is ErrorCode.LOW_QUALITY_FACE, (name, err.code, err.message)
    assert part in err.message
    assert err.details is not None and part in err.details["quality"]["failed"]
    assert "score" in err.details["quality"]


def test_unexpected_failure_is_500(
    engine: FaceEngine,
    config: AgentConfig,
    photos: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A seam fake: the recognizer blows up inside a real pipeline run.
    def boom(crops: object) -> None:
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(engine, "embed", boom)
    err = _embed(engine, config, path=photos["yaoming.jpg"])
    assert err.code is ErrorCode.IMAGE_PROCESSING_FAILED
    assert err.status == 500
    assert "Traceback" in caplog.text and "IMAGE_PROCESSING_FAILED" in caplog.text


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("embed", "--json", *args)


@pytest.mark.slow
def test_cli_embed_outputs(
    photos: dict[str, Path], skimage_photos: dict[str, Path], tmp_path: Path
) -> None:
    ok = _cli(str(photos["yaoming.jpg"]))
    assert ok.returncode == 0, ok.stderr
    reply = json.loads(ok.stdout)
    assert reply["status"] == 200 and reply["code"] is None
    assert len(reply["data"]["embedding"]) == 512
    assert reply["data"]["embeddingSpace"].startswith("arcface-")
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    cases = {
        str(photos["players.jpg"]): "MULTIPLE_FACES_DETECTED",
        str(skimage_photos["coffee"]): "NO_FACE_IN_PHOTO",
        str(text): "INVALID_FILE_FORMAT",
        str(tmp_path / "missing.jpg"): "PHOTO_FILE_NOT_FOUND",
    }
    for arg, code in cases.items():
        result = _cli(arg)
        assert result.returncode == 1, (arg, result.stderr)
        reply = json.loads(result.stdout)
        assert (reply["status"], reply["code"], reply["data"]) == (400, code, reply["data"])
        assert "embedding" not in (reply["data"] or {})
    missing = _cli()
    assert json.loads(missing.stdout)["code"] == "PHOTO_FILE_REQUIRED"


def test_cli_without_model_is_503(photos: dict[str, Path], tmp_path: Path) -> None:
    import os

    env = {**os.environ, "AGENT_MODELS__DIR": str(tmp_path)}
    result = run_cli("embed", "--json", str(photos["yaoming.jpg"]), env=env)
    reply = json.loads(result.stdout)
    assert (result.returncode, reply["status"], reply["code"]) == (1, 503, "MODEL_NOT_LOADED")
    assert "no model pack folder" in reply["message"]
