"""Which pack is "newest", with real pack folders and the real watcher: a pack copied with
``cp -a`` (old modification times preserved) becomes active, the order survives a restart
(it is kept in the state file), and a broken newer pack is not retried on unrelated
changes in ``models/``, only when its own files change."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.events.store import Store
from agent.vision.inference import InferencePool, ModelSlot
from agent.vision.model_watch import ModelWatcher
from agent.vision.modelpack import ModelPack
from tests.conftest import MODELS_DIR
from tests.test_model_faults import DETECTOR, make_pack, write_matching_manifest
from tests.waiting import wait_until

SETTLE_S = 0.3


@pytest.fixture
def pool() -> Iterator[InferencePool]:
    workers = InferencePool(2)
    yield workers
    workers.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    state = Store(tmp_path / "data")
    yield state
    state.close()


def _watcher(
    config: AgentConfig, models_dir: Path, pool: InferencePool, store: Store
) -> tuple[ModelWatcher, ModelSlot]:
    models = config.models.model_copy(update={"dir": models_dir, "settle_s": SETTLE_S})
    slot = ModelSlot()
    return ModelWatcher(models, config.recognition, slot, pool, store=store), slot


@pytest.fixture
async def watching() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Runs watchers' real watch loops (watchdog) and stops them afterwards."""
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_pack_copied_with_cp_a_becomes_active_and_stays_so_after_a_restart(
    default_pack: ModelPack,
    config: AgentConfig,
    tmp_path: Path,
    pool: InferencePool,
    store: Store,
    watching: list[asyncio.Task[None]],
) -> None:
    models_dir = tmp_path / "models"
    make_pack(default_pack, models_dir / "pack-a")  # written now: the newest mtime
    watcher, slot = _watcher(config, models_dir, pool, store)
    assert await watcher.reload()
    assert slot.require().pack.name == "pack-a"
    watching.append(asyncio.create_task(watcher.run()))
    await asyncio.sleep(0.2)  # the observer is watching

    copied = models_dir / "buffalo_sc_copy"
    cp = await asyncio.create_subprocess_exec(
        "cp", "-a", str(MODELS_DIR / "buffalo_sc"), str(copied)
    )
    assert await cp.wait() == 0
    assert copied.stat().st_mtime < (models_dir / "pack-a").stat().st_mtime  # kept old

    def copy_serves() -> bool:
        engine = slot.engine
        return engine is not None and engine.pack.path == copied.resolve()

    await wait_until(copy_serves, 30, "the copied pack in service")
    assert slot.reload_error is None

    # A restart (a new watcher, the same state file) keeps the copied pack the newest.
    again, slot_again = _watcher(config, models_dir, pool, store)
    assert await again.reload()
    engine = slot_again.require()
    assert engine.pack.path == copied.resolve()


@pytest.mark.slow
async def test_a_broken_newer_pack_is_retried_only_when_its_files_change(
    default_pack: ModelPack,
    config: AgentConfig,
    tmp_path: Path,
    pool: InferencePool,
    store: Store,
    watching: list[asyncio.Task[None]],
) -> None:
    models_dir = tmp_path / "models"
    make_pack(default_pack, models_dir / "pack-a")
    watcher, slot = _watcher(config, models_dir, pool, store)
    assert await watcher.reload()
    watching.append(asyncio.create_task(watcher.run()))
    await asyncio.sleep(0.2)

    broken = make_pack(default_pack, tmp_path / "staging" / "pack-b", "unknown-op-detector")
    shutil.copytree(broken, models_dir / "pack-b")
    await wait_until(lambda: watcher.failures == 1, 30, "the broken pack tried once")
    assert slot.require().pack.name == "pack-a"
    failing = slot.reload_error
    assert failing is not None and failing.startswith("pack-b: ")

    # Unrelated changes: each is evaluated (attempts), none retries the broken pack.
    for n in range(3):
        attempts = watcher.attempts
        (models_dir / f"notes-{n}.txt").write_text("an unrelated file\n")
        await wait_until(lambda: watcher.attempts > attempts, 10, "the change evaluated")  # noqa: B023
    assert watcher.failures == 1
    assert slot.reload_error == failing and slot.require().pack.name == "pack-a"

    # Fixed in place: its files changed, so it is tried again, and serves.
    shutil.copyfile(default_pack.detector_path, models_dir / "pack-b" / DETECTOR)
    write_matching_manifest(models_dir / "pack-b")
    await wait_until(lambda: slot.require().pack.name == "pack-b", 30, "the fixed pack serves")
    assert slot.reload_error is None and watcher.failures == 1
