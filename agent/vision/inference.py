"""The bounded worker pool for ONNX inference, and the model currently in service.

Inference is CPU-bound and releases the GIL inside ONNX Runtime, so it runs in a small
thread pool off the event loop; the pool size bounds how many analyses run at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from agent.errors import ModelNotLoadedError
from agent.status.models import ModelLoaded, ModelNotLoaded, ModelStatus

if TYPE_CHECKING:  # the engine pulls in ONNX Runtime; the slot only holds one
    from agent.vision.engine import FaceEngine

T = TypeVar("T")


class InferencePool:
    """A fixed-size thread pool; ``run`` awaits a function executed in it."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the pool and return its result."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def close(self) -> None:
        """Wait for running work, then stop the threads."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class ModelSlot:
    """The engine in service, and the engines kept for running sessions' embedding spaces.

    Swapping is one reference assignment on the event loop: an analysis takes its engine
    once, so it never sees half of two packs. When a new pack brings another recognizer
    (another embedding space), sessions started on the old space keep matching with the
    old recognizer until they end (:meth:`retain`), while new sessions use the new one.
    """

    def __init__(self) -> None:
        self.engine: FaceEngine | None = None
        self.reason = "not loaded yet"
        self._kept: dict[str, FaceEngine] = {}
        self.reload_error: str | None = None
        self.swaps = 0

    def activate(self, engine: FaceEngine) -> None:
        """Put an engine in service (the previous one is kept for its space's sessions)."""
        previous = self.engine
        if previous is not None and previous.embedding_space != engine.embedding_space:
            self._kept[previous.embedding_space] = previous
        self._kept.pop(engine.embedding_space, None)
        self.engine = engine
        self.reason = ""
        self.reload_error = None
        self.swaps += 1

    def clear(self, reason: str) -> None:
        """No engine in service, saying why."""
        self.engine = None
        self.reason = reason

    def require(self) -> FaceEngine:
        """The engine in service, or a 503 ``MODEL_NOT_LOADED`` error with the reason."""
        engine = self.engine
        if engine is None:
            raise ModelNotLoadedError(self.reason)
        return engine

    def for_space(self, space: str) -> FaceEngine | None:
        """The engine to match embeddings of ``space`` with (None if none is loaded).

        For the space in service this is the current engine, so a detector-only change
        reaches running sessions at once.
        """
        engine = self.engine
        if engine is not None and engine.embedding_space == space:
            return engine
        return self._kept.get(space)

    def retain(self, spaces_in_use: set[str]) -> list[str]:
        """Drop kept engines no running session needs; returns the spaces dropped."""
        dropped = [space for space in self._kept if space not in spaces_in_use]
        for space in dropped:
            del self._kept[space]
        return dropped

    def describe(self) -> ModelStatus:
        """Model state for status (``reloads`` is the watcher's, added by the report)."""
        kept = sorted(self._kept)
        if self.engine is None:
            return ModelNotLoaded(
                reason=self.reason,
                kept_spaces=kept,
                reload_error=self.reload_error,
                swaps=self.swaps,
            )
        return ModelLoaded(
            **dict(self.engine.describe()),
            kept_spaces=kept,
            reload_error=self.reload_error,
            swaps=self.swaps,
        )
