"""Shared fixtures: the real default model pack, real photos, and leak checks."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.defaultpack import sample_photo
from agent.engine import FaceEngine
from agent.modelpack import ModelPack, read_pack

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
