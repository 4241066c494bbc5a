"""Shared fixtures: the real default model pack, real photos, and leak checks."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pytest_asyncio import is_async_test

from agent.config import AgentConfig, load_config
from agent.devkit.brokers import Mosquitto
from agent.devkit.callback_receiver import CallbackServer
from agent.devkit.classroom import Person, face_box_of, make_classroom_frames
from agent.vision.defaultpack import sample_photo
from agent.vision.engine import FaceEngine
from agent.vision.modelpack import ModelPack, read_pack
from tests.rtsp import INSTALL_HINT, RtspServer, gst_rtsp_available

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
SHARED_FACES = ROOT.parent / "shared" / "faces"


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Fail a test that leaves a Python thread running."""
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for thread in leftover:
        thread.join(timeout=2.0)
    leftover = [t for t in leftover if t.is_alive()]
    assert not leftover, f"threads left running: {[t.name for t in leftover]}"


@pytest.fixture(autouse=True)
def _clean_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from the defaults: no AGENT_* variables from the caller's shell."""
    for key in list(os.environ):
        if key.startswith("AGENT_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def config() -> AgentConfig:
    """The default configuration, pointed at the project's models folder."""
    cfg = load_config(None)
    return cfg.model_copy(update={"models": cfg.models.model_copy(update={"dir": MODELS_DIR})})


@pytest.fixture(scope="session")
def default_pack() -> ModelPack:
    """The installed default pack (``make setup`` installs it)."""
    folder = MODELS_DIR / "buffalo_sc"
    if not folder.is_dir():
        pytest.fail("models/buffalo_sc is missing: run `make setup` (make test does it)")
    return read_pack(folder)


@pytest.fixture(scope="session")
def engine(default_pack: ModelPack, config: AgentConfig) -> FaceEngine:
    """A real engine on the default pack, shared by the session's tests."""
    return FaceEngine(default_pack, config.models, config.recognition)


@pytest.fixture(scope="session")
def yao_embedding(engine: FaceEngine, photos: dict[str, Path]) -> list[float]:
    """A real enrollment embedding: the one face in InsightFace's Yao Ming photo."""
    import cv2

    (face,) = engine.analyze(cv2.imread(str(photos["yaoming.jpg"])))
    return [float(x) for x in face.embedding]


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """Photos shipped inside installed packages (available on any fresh machine)."""
    return {
        name: sample_photo(name) for name in ("yaoming.jpg", "players.jpg", "gdp.jpg", "t1.jpg")
    }


@pytest.fixture(scope="session")
def skimage_photos() -> dict[str, Path]:
    """scikit-image's sample images: astronaut (one face) and three without faces."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return {
        p.stem: p
        for p in (data / n for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"))
    }


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """``../shared/faces`` beside the project, or skip with the reason."""
    if not (SHARED_FACES / "manifest.csv").is_file():
        pytest.skip(f"extended photo set not present at {SHARED_FACES}")
    return SHARED_FACES


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto broker (with persistence) on a free port, stopped afterwards."""
    server = Mosquitto(tmp_path / "broker")
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_leftover_tasks_in_async_tests(
    request: pytest.FixtureRequest,
    no_leftover_threads: None,  # set up before this one: see below
) -> None:
    """Every async test gets :func:`no_leftover_tasks`; a sync test has no event loop of its
    own to check (one that starts a loop, e.g. with ``asyncio.run``, closes it itself).

    Requested here, before the test's other fixtures, so it is torn down after them: the
    check runs once everything the test started has been stopped. It asks for
    :func:`no_leftover_threads` (autouse fixtures alone are set up in name order, which would
    put this one first), so the test's event loop, set up with this one, is closed (its
    executor threads joined) before the threads are counted."""
    if is_async_test(request.node):
        request.getfixturevalue("no_leftover_tasks")


@pytest.fixture
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves an asyncio task running (every async test: see
    :func:`_no_leftover_tasks_in_async_tests`)."""
    yield
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if leftover:  # give cancelled tasks a moment to finish unwinding
        await asyncio.wait(leftover, timeout=2)
        leftover = [t for t in leftover if not t.done()]
    assert not leftover, f"tasks left running: {[t.get_name() for t in leftover]}"


@pytest.fixture
def yao_camera(tmp_path: Path, engine: FaceEngine, photos: dict[str, Path]) -> Iterator[RtspServer]:
    """A real RTSP camera looping 4 s of Yao Ming walking across a classroom."""
    if not gst_rtsp_available():
        pytest.fail(INSTALL_HINT)
    yao = photos["yaoming.jpg"]
    plan = make_classroom_frames(
        tmp_path / "room",
        [Person("yao", yao, 0.0, 4.0, (300, 240), (10, 0), 120, face_box_of(yao, engine))],
        seconds=4,
        fps=10,
    )
    server = RtspServer(plan.frames_dir, fps=10)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def server() -> AsyncIterator[CallbackServer]:
    """A real HTTP backend receiving callbacks (``agent.devkit.callback_receiver``)."""
    srv = CallbackServer()
    await srv.start()
    yield srv
    await srv.stop()
