"""The inference lane's users' handle, and the model currently in service.

Inference is CPU-bound and releases the GIL inside ONNX Runtime, so it runs on the
agent's inference lane (:class:`agent.lanes.Lane`), off the event loop; the lane's thread
count bounds how many analyses run at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from agent.errors import ModelNotLoadedError
from agent.lanes import Lane
from agent.status.models import ModelLoaded, ModelNotLoaded, ModelStatus

if TYPE_CHECKING:  # the engine pulls in ONNX Runtime; the slot only holds one
    from agent.vision.engine import FaceEngine

P = ParamSpec("P")
T = TypeVar("T")


class InferencePool:
    """The inference lane, with its size (what the analysis scheduler plans with).

    Given no lane (tests, tools), it makes one of ``workers`` threads and closes it in
    :meth:`close`; the agent passes its own, which it closes itself at shutdown.
    """

    def __init__(self, workers: int | None = None, *, lane: Lane | None = None) -> None:
        if lane is None:
            if workers is None:
                raise ValueError("an InferencePool needs a lane or a number of workers")
            lane = Lane("inference", workers)
            self._owned = True
        else:
            self._owned = False
        self.lane = lane
        self.workers = lane.threads

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the inference lane and return its result."""
        return await self.lane.call(fn, *args, **kwargs)

    def close(self) -> None:
        """Wait for running work, then stop the threads (only those this pool made)."""
        if self._owned:
            self.lane.close()


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
