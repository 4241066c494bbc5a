"""Model hot reload: notice new files in ``models/``, verify the pack, load it beside the
running one, test it on a golden photo, and swap it in without stopping sessions.

Rule for which pack is active: ``[models] pack`` when set, otherwise the newest pack
folder: the one the agent saw last in its present form (:mod:`agent.vision.pack_order`; not the
folder's modification time, which ``cp -a`` keeps old). A pack is considered only once its
files have stopped changing for ``settle_s``; a manifest with sha256 hashes (written last
by the technician) guarantees that a half-copied pack is never loaded. A pack that fails
any check never replaces the one in service: the failure is logged and reported as
``MODEL_RELOAD_FAILED``, and the pack is tried again only when its own files change (not
on every change in ``models/``).

While no pack is in service (at start-up) and no pack is configured, a pack that fails
does not leave the agent without a model: the newest other pack that loads is put in
service instead, and the failure stays reported. A configured pack is never replaced by
another. No failure of one reload, expected or not, stops the watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from agent.config import ModelsConfig, RecognitionConfig
from agent.errors import ModelPackError
from agent.lanes import LaneClosedError
from agent.status.models import ReloadStatus
from agent.vision.defaultpack import DefaultPackError, sample_photo
from agent.vision.engine import FaceEngine
from agent.vision.faces import Image
from agent.vision.inference import InferencePool, ModelSlot
from agent.vision.modelpack import ModelPack, read_pack
from agent.vision.onnx_sessions import describe_error
from agent.vision.pack_order import PackSightings
from agent.vision.tracker import iou_matrix

if TYPE_CHECKING:  # the state file, handed on to the pack sightings (vision imports no events code)
    from agent.events.store import Store

log = logging.getLogger(__name__)

CANARY_PHOTO = "yaoming.jpg"
# Where InsightFace's buffalo_sc finds the face in the golden photo (x1, y1, x2, y2).
CANARY_BOX = np.array([[71.5, 73.3, 177.0, 212.0]], np.float32)
CANARY_MIN_IOU = 0.5


def canary(engine: FaceEngine) -> None:
    """Check a freshly loaded engine on the golden photo; raises ModelPackError if not sound.

    The detector must find the one expected face; the recognizer must return a finite,
    non-zero embedding of the pack's dimension. An error raised while running the graphs
    (ONNX Runtime, OpenCV, the InsightFace wrappers) is a failed canary too.
    """
    try:
        _canary_checks(engine)
    except ModelPackError:
        raise
    except Exception as exc:
        raise ModelPackError(
            engine.pack.name, f"canary: running the pack failed: {describe_error(exc)}"
        ) from exc


def _canary_checks(engine: FaceEngine) -> None:
    name = engine.pack.name
    try:
        raw_image = cv2.imread(str(sample_photo(CANARY_PHOTO)), cv2.IMREAD_COLOR)
    except DefaultPackError as exc:
        raise ModelPackError(name, f"canary photo unavailable: {exc}") from exc
    if raw_image is None:
        raise ModelPackError(name, f"canary photo {CANARY_PHOTO} cannot be read")
    image: Image = np.asarray(raw_image, dtype=np.uint8)
    faces = engine.detect(image, long_side=640)
    if len(faces) != 1:
        raise ModelPackError(
            name, f"canary: detector found {len(faces)} faces in the golden photo, expected 1"
        )
    overlap = float(iou_matrix(CANARY_BOX, faces[0].bbox[None, :])[0, 0])
    if overlap < CANARY_MIN_IOU:
        raise ModelPackError(name, f"canary: face box off by IoU {overlap:.2f}")
    raw = engine.raw_embedding(engine.align(image, faces)[0])
    norm = float(np.linalg.norm(raw))
    if raw.shape != (engine.embedding_dim,) or not np.all(np.isfinite(raw)) or norm < 1e-6:
        raise ModelPackError(
            name, f"canary: recognizer returned shape {raw.shape}, norm {norm:.3g}"
        )


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: only hands the news to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, changed: asyncio.Event) -> None:
        self._loop = loop
        self._changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (our own hashing) are not changes
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._changed.set)


class ModelWatcher:
    """Loads the active pack at start and whenever ``models/`` changes."""

    def __init__(
        self,
        models: ModelsConfig,
        recognition: RecognitionConfig,
        slot: ModelSlot,
        pool: InferencePool,
        *,
        on_swap: Callable[[FaceEngine], Awaitable[None]] | None = None,
        store: Store | None = None,
    ) -> None:
        self.cfg = models
        self.recognition = recognition
        self.slot = slot
        self.pool = pool
        self.on_swap = on_swap
        self.attempts = 0
        self.failures = 0
        self.last_attempt: float | None = None
        self._changed = asyncio.Event()
        self.sightings = PackSightings(store)
        # Folder name -> fingerprint when it failed: not retried until its files change.
        self._refused: dict[str, str] = {}

    def _build(self, pack: ModelPack) -> FaceEngine:
        engine = FaceEngine(pack, self.cfg, self.recognition)
        canary(engine)
        return engine

    def _serving(self, pack: ModelPack) -> bool:
        current = self.slot.engine
        return current is not None and (
            current.pack.path == pack.path
            and current.pack.detector_sha256 == pack.detector_sha256
            and current.pack.recognizer_sha256 == pack.recognizer_sha256
        )

    async def _load(self, folder: Path) -> FaceEngine | None:
        """Verify, load and canary-test the pack in ``folder``; None when it is the pack
        already in service. Every failure is raised as ModelPackError."""
        try:
            pack = await self.pool.call(read_pack, folder)
            if self._serving(pack):
                return None
            return await self.pool.call(self._build, pack)
        except ModelPackError:
            raise
        except Exception as exc:
            # The layers below translate what they know; anything else is a bug or a
            # library surprise, and must still not take the watcher (or the agent's
            # start-up) down with it.
            log.exception("MODEL_LOAD_UNEXPECTED_ERROR pack=%s", folder.name)
            raise ModelPackError(
                folder.name, f"unexpected error while loading: {describe_error(exc)}"
            ) from exc

    async def reload(self) -> bool:
        """Evaluate the pack the activation rule points at; swap it in if it is new and
        sound. Returns whether a swap happened.

        Never raises for a bad pack: the failure is recorded (``MODEL_RELOAD_FAILED``)
        and the pack in service keeps serving. With none in service and no configured
        pack, the newest other pack that loads is put in service instead.
        """
        self.attempts += 1
        self.last_attempt = time.time()
        try:
            ordered = await self.sightings.newest_first(self.cfg.dir)
        except OSError as exc:  # models folder unreadable: nothing to evaluate
            self._failed(self.cfg.dir.name, f"cannot list {self.cfg.dir}: {describe_error(exc)}")
            return False
        folder = self.cfg.dir / self.cfg.pack if self.cfg.pack else next(iter(ordered), None)
        if folder is None:
            if self.slot.engine is None:
                self.slot.clear(f"no model pack in {self.cfg.dir}")
                log.error("MODEL_NOT_LOADED reason=no model pack in %s", self.cfg.dir)
            return False
        if self._unchanged_since_failure(folder):
            return False  # still broken as it was: an unrelated change is no reason to retry
        started = time.perf_counter()
        still_failing: str | None = None
        try:
            engine = await self._load(folder)
        except ModelPackError as exc:
            self._failed(folder.name, exc.reason)
            self._remember_refusal(folder)
            if self.slot.engine is not None or self.cfg.pack:
                return False
            still_failing = self.slot.reload_error
            engine = None
        if still_failing is not None:
            engine = await self._fallback(folder, started)
            if engine is None:
                return False
        elif engine is None:
            # The rule points at the pack in service (e.g. a broken newer pack was
            # removed): an earlier failure no longer describes the active pack.
            self.slot.reload_error = None
            return False
        await self._swap(engine, started, still_failing=still_failing)
        return True

    async def _fallback(self, failed: Path, started: float) -> FaceEngine | None:
        """With no model in service, the newest pack other than ``failed`` that loads."""
        tried: list[str] = []
        try:
            candidates = [p for p in await self.sightings.newest_first(self.cfg.dir) if p != failed]
        except OSError as exc:
            log.error("MODEL_FALLBACK_FAILED cannot list %s: %s", self.cfg.dir, exc)
            candidates = []
        for folder in candidates:
            try:
                engine = await self._load(folder)
            except ModelPackError as exc:
                tried.append(folder.name)
                log.error("MODEL_FALLBACK_FAILED pack=%s reason=%s", folder.name, exc.reason)
                continue
            if engine is not None:
                log.warning(
                    "MODEL_FALLBACK pack=%s instead_of=%s seconds=%.2f",
                    folder.name,
                    failed.name,
                    time.perf_counter() - started,
                )
                return engine
        others = (
            f"no other pack loads (tried: {', '.join(tried)})"
            if tried
            else "no other pack to fall back on"
        )
        self.slot.clear(f"{self.slot.reason}; {others}")
        return None

    async def _swap(
        self, engine: FaceEngine, started: float, *, still_failing: str | None = None
    ) -> None:
        """Put ``engine`` in service; ``still_failing`` keeps a fallback's cause reported."""
        previous = self.slot.engine
        self.slot.activate(engine)
        # activate() clears the reload error; after a fallback the pack the rule points
        # at is still broken, and status must keep saying so.
        self.slot.reload_error = still_failing
        log.info(
            "MODEL_SWAPPED pack=%s space=%s provider=%s previous=%s previous_space=%s "
            "load_seconds=%.2f",
            engine.pack.name,
            engine.embedding_space,
            engine.providers["recognizer"].active[0],
            previous.pack.name if previous else None,
            previous.embedding_space if previous else None,
            time.perf_counter() - started,
        )
        if self.on_swap is not None:
            await self.on_swap(engine)

    def _unchanged_since_failure(self, folder: Path) -> bool:
        """Whether ``folder`` failed before and its files have not changed since (only
        while another pack serves: without one, the fallback rules apply)."""
        if self.slot.engine is None:
            return False
        known = self.sightings.fingerprint_of(folder)
        return known is not None and self._refused.get(folder.name) == known

    def _remember_refusal(self, folder: Path) -> None:
        known = self.sightings.fingerprint_of(folder)
        if known is not None:
            self._refused[folder.name] = known

    def _failed(self, pack: str, reason: str) -> None:
        self.failures += 1
        self.slot.reload_error = f"{pack}: {reason}"
        if self.slot.engine is None:
            self.slot.clear(f"pack {pack!r} is not usable: {reason}")
        log.error(
            "MODEL_RELOAD_FAILED pack=%s reason=%s serving=%s",
            pack,
            reason,
            self.slot.engine.pack.name if self.slot.engine else None,
        )

    async def run(self) -> None:
        """Watch the models folder until cancelled (the observer thread is always joined).

        One failed reload never ends the watch: it is logged with its traceback and the
        next change is evaluated as usual. Cancellation is never caught.
        """
        self.cfg.dir.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(
            _Handler(asyncio.get_running_loop(), self._changed), str(self.cfg.dir), recursive=True
        )
        observer.daemon = True
        observer.start()
        try:
            while True:
                await self._changed.wait()
                try:
                    await self._settle()
                    await self.reload()
                except Exception:
                    # CancelledError is a BaseException, so shutdown still gets through.
                    log.exception("MODEL_WATCH_ERROR reload failed; still watching")
        finally:
            observer.stop()
            await self._join(observer)

    async def _join(self, observer: BaseObserver) -> None:
        """Wait (up to 5 s) for the observer thread to end, off the event loop: on the
        inference lane, where the watcher's other blocking work (reading and loading
        packs) runs too."""
        try:
            await self.pool.call(observer.join, 5.0)
        except LaneClosedError:
            # Only when the lane closed before the watch ended (the agent stops its tasks
            # before closing lanes; a test may not): the observer is stopped already, so
            # its thread ends within moments.
            observer.join(5.0)

    async def _settle(self) -> None:
        """Return once no change was seen for ``settle_s`` (a copy in progress keeps
        writing)."""
        while True:
            self._changed.clear()
            try:
                async with asyncio.timeout(self.cfg.settle_s):
                    await self._changed.wait()
            except TimeoutError:
                return

    def describe(self) -> ReloadStatus:
        """Reload counters for status."""
        return ReloadStatus(
            attempts=self.attempts,
            failures=self.failures,
            last_attempt=self.last_attempt,
            last_error=self.slot.reload_error,
        )
