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
from typing import Any, TypeVar

from agent.engine import FaceEngine
from agent.errors import ModelNotLoadedError

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
    """The engine in service (or why there is none). Swapped by assigning one reference."""

    def __init__(self) -> None:
        self.engine: FaceEngine | None = None
        self.reason = "not loaded yet"

    def set(self, engine: FaceEngine) -> None:
        """Put an engine in service."""
        self.engine = engine
        self.reason = ""

    def clear(self, reason: str) -> None:
        """Take the engine out of service, saying why."""
        self.engine = None
        self.reason = reason

    def require(self) -> FaceEngine:
        """The engine, or a 503 ``MODEL_NOT_LOADED`` error with the reason."""
        engine = self.engine
        if engine is None:
            raise ModelNotLoadedError(self.reason)
        return engine

    def describe(self) -> dict[str, Any]:
        """Model state for status."""
        if self.engine is None:
            return {"loaded": False, "reason": self.reason}
        return {"loaded": True, **self.engine.describe()}
