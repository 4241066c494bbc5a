"""Lanes: the one way the event loop hands blocking work to a thread.

Each kind of blocking work has a lane of its own, so one kind never waits behind another
(a slow camera test never delays an SQLite write, a burst of inference never delays the
status page or the parse of a large command). A lane is a few named threads and one
awaitable hop, :meth:`Lane.call`; its threads are named ``lane-<name>`` so a thread dump
says what each one does.

The other direction, a thread handing a result to the loop, is always
``loop.call_soon_threadsafe`` (camera readers, the model-file watcher).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from agent.errors import AgentError, ErrorCode

__all__ = ["Lane", "LaneClosedError", "Lanes"]

P = ParamSpec("P")
T = TypeVar("T")


class LaneClosedError(AgentError):
    """Work was handed to a lane after it was closed (the agent is shutting down)."""

    def __init__(self, lane: str) -> None:
        super().__init__(
            ErrorCode.INTERNAL_ERROR,
            f"The {lane} lane is closed: the agent is shutting down.",
            status=500,
        )


class Lane:
    """A few threads for one kind of blocking work. Threads start with the first call.

    ``finish_queued``: at :meth:`close`, work already handed over still runs (the store:
    a queued write must not be lost); otherwise it is dropped and only running work is
    waited for.
    """

    def __init__(self, name: str, threads: int, *, finish_queued: bool = False) -> None:
        if threads < 1:
            raise ValueError(f"lane {name!r} needs at least one thread")
        self.name = name
        self.threads = threads
        self._finish_queued = finish_queued
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"lane-{name}")
        self._in_flight: set[Future[object]] = set()
        self._lock = threading.Lock()  # _in_flight is also changed by the lane's threads

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on one of the lane's threads and await its result.

        The call sees the caller's context variables. A caller cancelled while ``fn`` runs
        does not stop ``fn``: it finishes on its thread (and :meth:`drain` waits for it).
        """
        context = contextvars.copy_context()
        try:
            future = self._executor.submit(functools.partial(context.run, fn, *args, **kwargs))
        except RuntimeError as exc:  # submitted after shutdown
            raise LaneClosedError(self.name) from exc
        with self._lock:
            self._in_flight.add(future)  # type: ignore[arg-type]
        future.add_done_callback(self._finished)
        return await asyncio.wrap_future(future)

    def _finished(self, future: Future[T]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    @property
    def busy(self) -> int:
        """Calls handed over and not finished yet (running or queued)."""
        with self._lock:
            return len(self._in_flight)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the calls in flight; returns whether all
        finished."""
        with self._lock:
            pending = [asyncio.wrap_future(f) for f in self._in_flight if not f.done()]
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    def close(self, *, wait: bool = True) -> None:
        """Stop the threads: queued work runs or is dropped (``finish_queued``); with
        ``wait``, block until the running work is done."""
        self._executor.shutdown(wait=wait, cancel_futures=not self._finish_queued)


@dataclass(frozen=True)
class Lanes:
    """The agent's lanes, one per kind of blocking work (see docs/architecture.md)."""

    inference: Lane
    sqlite: Lane
    camera_io: Lane
    page: Lane
    commands: Lane

    @classmethod
    def create(cls, inference_threads: int) -> Lanes:
        """The agent's lanes: ``inference_threads`` for ONNX Runtime, one thread for the
        state file (SQLite wants one writer), one for opening and testing cameras, two
        for the status page (snapshots, JSON), one for parsing large command payloads
        (``json.loads`` holds the GIL: a second thread would not parse any faster)."""
        return cls(
            inference=Lane("inference", inference_threads),
            sqlite=Lane("sqlite", 1, finish_queued=True),
            camera_io=Lane("camera-io", 1),
            page=Lane("page", 2),
            commands=Lane("commands", 1),
        )

    def all(self) -> tuple[Lane, ...]:
        """Every lane, in the order they are closed at shutdown (users before the store)."""
        return (self.page, self.commands, self.camera_io, self.inference, self.sqlite)

    def close(self) -> None:
        """Close every lane, waiting for running work on all but the status page's two:
        the page already waited (bounded) for its work in flight when it closed, and a
        camera test still running past its timeouts must not hold up shutdown."""
        unwaited = (self.page, self.camera_io)
        for lane in self.all():
            lane.close(wait=not any(lane is u for u in unwaited))
