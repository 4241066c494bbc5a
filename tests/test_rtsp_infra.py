"""The camera test infrastructure itself: a synthetic classroom clip served over real RTSP
(GStreamer) and read with OpenCV/FFmpeg exactly as the agent reads cameras."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.devkit.classroom import (
    ClassroomPlan,
    Person,
    face_box_of,
    make_classroom_frames,
    read_photo,
)
from agent.vision.engine import FaceEngine
from tests.rtsp import INSTALL_HINT, RtspServer, gst_rtsp_available, open_capture

FPS = 10
SIZE = (640, 480)


@pytest.fixture(scope="module")
def classroom(
    tmp_path_factory: pytest.TempPathFactory,
    engine: FaceEngine,
    photos: dict[str, Path],
    skimage_photos: dict[str, Path],
) -> ClassroomPlan:
    """4 s: Yao Ming all along, moving right; the astronaut from 1 s, moving left and down."""
    yao, astronaut = photos["yaoming.jpg"], skimage_photos["astronaut"]
    people = [
        Person("yao", yao, 0.0, 4.0, (180, 250), (15, 0), 110, face_box_of(yao, engine)),
        Person(
            "astronaut",
            astronaut,
            1.0,
            4.0,
            (470, 260),
            (-10, 5),
            110,
            face_box_of(astronaut, engine),
        ),
    ]
    return make_classroom_frames(
        tmp_path_factory.mktemp("classroom"), people, seconds=4, fps=FPS, size=SIZE
    )


@pytest.fixture
def server(classroom: ClassroomPlan) -> Iterator[RtspServer]:
    if not gst_rtsp_available():
        pytest.fail(INSTALL_HINT)
    srv = RtspServer(classroom.frames_dir, fps=FPS, width=SIZE[0], height=SIZE[1])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def captures(server: RtspServer) -> Iterator[list[Any]]:
    """Captures a test opens; released after the server is gone (so never on a frozen one)."""
    opened: list[Any] = []
    try:
        yield opened
    finally:
        server.stop()
        for cap in opened:
            cap.release()


def open_stream(server: RtspServer, captures: list[Any], **timeouts: int) -> Any:
    cap = open_capture(server.url, **timeouts)
    captures.append(cap)
    return cap


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def read_until_false(cap: Any, limit_s: float) -> float:
    """Seconds until ``read()`` returns False; fails past ``limit_s`` (each read is bounded
    by the capture's read timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        ok, _ = cap.read()
        if not ok:
            return time.monotonic() - started
    pytest.fail(f"read() still returned frames {limit_s} s after the server went away")


@pytest.mark.slow
def test_stream_is_the_clip_and_faces_are_recognised(
    server: RtspServer, captures: list[Any], classroom: ClassroomPlan, engine: FaceEngine
) -> None:
    sources = [classroom.image(i) for i in range(classroom.n_frames)]
    cap = open_stream(server, captures)
    assert cap.isOpened()
    indexes: list[int] = []
    frames: list[np.ndarray] = []
    for _ in range(25):  # 2.5 s: three keyframes, before and after the astronaut enters
        ok, frame = cap.read()
        assert ok
        assert frame.shape == (SIZE[1], SIZE[0], 3)
        psnrs = [psnr(frame, s) for s in sources]
        best = int(np.argmax(psnrs))
        # The upper half too: with sliced keyframes FFmpeg garbles it (~12 dB).
        assert psnrs[best] > 30, f"frame decodes badly: {psnrs[best]:.1f} dB"
        assert psnr(frame[: SIZE[1] // 2], sources[best][: SIZE[1] // 2]) > 30
        indexes.append(best)
        frames.append(frame)
    # The shared stream starts at the clip's first frame for the first client, in order
    # (measured: exactly 0, 1, 2, ...; a step of 2 is tolerated on a loaded machine).
    assert indexes[0] <= 2, indexes
    assert all(0 < b - a <= 2 for a, b in itertools.pairwise(indexes)), indexes

    refs = {p.name: engine.analyze(read_photo(p.photo))[0].embedding for p in classroom.people}
    early = next(k for k, i in enumerate(indexes) if classroom.names_at(i) == {"yao"})
    assert len(engine.detect(frames[early])) == 1
    both = set(classroom.frames_with("yao", "astronaut"))
    k = next(k for k, i in enumerate(indexes) if i in both)
    faces = engine.analyze(frames[k])
    truth = classroom.visible(indexes[k])
    assert len(faces) == len(truth) == 2
    for app in truth:
        face = max(faces, key=lambda f: iou(tuple(f.bbox), app.box))
        assert iou(tuple(face.bbox), app.box) > 0.5
        cosines = {name: float(ref @ face.embedding) for name, ref in refs.items()}
        assert cosines[app.name] > 0.5, cosines
        assert max(cosines, key=lambda n: cosines[n]) == app.name


def test_kill_is_seen_at_once_and_restart_serves_again(
    server: RtspServer, captures: list[Any]
) -> None:
    cap = open_stream(server, captures)
    assert cap.read()[0]
    server.kill()
    assert not server.alive()
    assert read_until_false(cap, 5.0) < 1.0
    port = server.port
    server.restart()
    assert server.port == port
    again = open_stream(server, captures)
    assert again.isOpened()
    ok, frame = again.read()
    assert ok
    assert frame.shape == (SIZE[1], SIZE[0], 3)


@pytest.mark.slow
def test_frozen_server_times_reads_out_and_thaws(server: RtspServer, captures: list[Any]) -> None:
    cap = open_stream(server, captures)
    assert cap.read()[0]
    server.freeze()
    # Read timeout 2 s; FFmpeg gives up after a few of them (~6 s measured).
    assert read_until_false(cap, 12.0) < 9.0
    started = time.monotonic()
    frozen_open = open_stream(server, captures, open_timeout_ms=1000)
    assert not frozen_open.isOpened()
    assert time.monotonic() - started < 4.0
    server.thaw()
    again = open_stream(server, captures)
    assert again.isOpened()
    assert again.read()[0]
