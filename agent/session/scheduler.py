"""One analysis scheduler for every camera of every session.

A box serves many classrooms with a fixed CPU, so the cameras share one budget instead of
each running its own fixed-rate loop:

* **Priorities.** A camera with faces not yet recognised (:attr:`Priority.UNRECOGNISED`)
  goes first; then an empty room (:attr:`Priority.EMPTY`), analysed at
  ``cameras.idle_analysis_fps``; last a room where everyone in view is recognised or a
  known stranger (:attr:`Priority.SETTLED`). Cameras with faces want
  ``cameras.analysis_fps``. Under overload the lower priorities wait (their skipped
  analyses are counted as *shed*); no camera waits longer than
  ``1 / analysis.min_analysis_fps``, so a newcomer is always noticed.
* **Inference slots.** At most ``runtime.inference_workers`` analyses run at once, granted
  in priority order, and at most ``analysis.max_analyses_per_s`` start per second.
* **Embeddings.** At most ``analysis.max_embeddings_per_s`` faces are embedded per second
  (:class:`agent.vision.budget.EmbedBudget`, taken from inference threads).
* **Full-resolution detection.** Regions around small faces and sweep tiles
  (``agent.vision.coverage``) may use ``analysis.fine_detect_cores`` of CPU over all cameras
  (:class:`agent.vision.budget.FineBudget`); cameras ask in their analysis order, so
  unrecognised rooms first, and each camera's share is shown in status.
* **Decoding.** Frame-by-frame decoding costs ~0.19 of a core per 1080p 15 fps camera, so
  only ``analysis.full_decode_mpx_s`` megapixels per second are decoded that way, given to
  cameras in priority order; the others decode only the keyframes their analyses use.

Everything here runs on the event loop; the budgets it grants are spent from inference
threads (``agent.vision.budget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from agent.config import AnalysisConfig, CamerasConfig
from agent.status.models import AnalysisLoad, DecodeMode
from agent.vision.budget import EmbedBudget, FineBudget, Priority, TokenBucket


class Decodable(Protocol):
    """What the scheduler needs of a camera reader."""

    decode_mode: DecodeMode

    @property
    def can_skip_frames(self) -> bool:
        """Whether KEYFRAMES mode saves anything for this camera."""

    def record_shed(self, count: int) -> None:
        """Count analyses skipped because the box was busy."""


FINE_WINDOW_S = 30.0  # a camera's share of full-resolution detection, averaged over this


@dataclass(eq=False)
class ScheduledCamera:
    """One camera known to the scheduler."""

    key: str
    reader: Decodable
    mpx_s: float  # megapixels per second when every frame is decoded (estimate)
    priority: Priority = Priority.UNRECOGNISED
    since: float = field(default_factory=time.monotonic)  # in this priority since
    last_start: float | None = None
    fine: deque[tuple[float, float]] = field(default_factory=deque)  # (when, seconds)

    def record_fine(self, seconds: float) -> None:
        """Full-resolution detection time one analysis used (on the loop)."""
        now = time.monotonic()
        if seconds > 0:
            self.fine.append((now, seconds))
        while self.fine and self.fine[0][0] < now - FINE_WINDOW_S:
            self.fine.popleft()

    @property
    def fine_cores(self) -> float:
        """Full-resolution detection over the last :data:`FINE_WINDOW_S`, in cores."""
        return sum(s for _, s in self.fine) / FINE_WINDOW_S


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, float, int]
    camera: ScheduledCamera = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class AnalysisScheduler:
    """Shares inference slots, analyses, embeddings and decoding among cameras."""

    def __init__(self, cfg: AnalysisConfig, cameras: CamerasConfig, workers: int) -> None:
        self.cfg = cfg
        self.cameras_cfg = cameras
        self.workers = workers
        self.embeds = EmbedBudget(cfg.max_embeddings_per_s)
        self.fine = FineBudget(cfg.fine_detect_cores)
        self._analyses = TokenBucket(cfg.max_analyses_per_s, max(2.0, float(workers)))
        self._cameras: dict[str, ScheduledCamera] = {}
        self._waiters: list[_Waiter] = []
        self._busy = 0
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    # Registration ----------------------------------------------------------------------

    def register(self, key: str, reader: Decodable, mpx_s: float) -> ScheduledCamera:
        """Add a camera (new cameras start as UNRECOGNISED: analysed soon)."""
        camera = ScheduledCamera(key, reader, mpx_s)
        self._cameras[key] = camera
        self._assign_decoding()
        return camera

    def unregister(self, camera: ScheduledCamera) -> None:
        """Forget a camera (its session stopped)."""
        if self._cameras.get(camera.key) is camera:
            del self._cameras[camera.key]
        self._assign_decoding()

    @property
    def cameras(self) -> list[ScheduledCamera]:
        """Cameras in registration order."""
        return list(self._cameras.values())

    # Rates -----------------------------------------------------------------------------

    def interval(self, camera: ScheduledCamera) -> float:
        """Seconds between two analyses of a camera at its priority."""
        if camera.priority is Priority.EMPTY:
            # Never above analysis_fps: the config refuses it at load.
            return 1.0 / self.cameras_cfg.idle_analysis_fps
        return 1.0 / self.cameras_cfg.analysis_fps

    def next_due(self, camera: ScheduledCamera) -> float:
        """Monotonic time of the camera's next analysis."""
        if camera.last_start is None:
            return time.monotonic()
        return camera.last_start + self.interval(camera)

    def set_cost(self, camera: ScheduledCamera, mpx_s: float) -> None:
        """The camera's frame-by-frame decoding cost, once its frame size is known."""
        if abs(mpx_s - camera.mpx_s) > 0.01:
            camera.mpx_s = mpx_s
            self._assign_decoding()

    def settle(self, camera: ScheduledCamera, priority: Priority) -> None:
        """Record what the camera's latest analysis found."""
        if priority is not camera.priority:
            camera.priority = priority
            camera.since = time.monotonic()
            self._assign_decoding()

    # Inference slots -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, camera: ScheduledCamera) -> AsyncIterator[None]:
        """Wait for this camera's turn to analyse (priority order, within the budget)."""
        due = self.next_due(camera)
        asked = time.monotonic()
        future = asyncio.get_running_loop().create_future()
        waiter = _Waiter((int(camera.priority), due, next(self._order)), camera, future)
        heapq.heappush(self._waiters, waiter)
        self._dispatch()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release()  # granted, then cancelled before use: give it back
            else:
                self._drop(waiter)
            raise
        started = time.monotonic()
        interval = self.interval(camera)
        # Shed: analyses that fell due while this one waited for a slot (not while it
        # waited for a frame, e.g. the next keyframe).
        late = started - max(due, asked)
        if late > interval:
            camera.reader.record_shed(int(late / interval))
        camera.last_start = started
        try:
            yield
        finally:
            self._release()

    def _drop(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
            heapq.heapify(self._waiters)

    def _release(self) -> None:
        self._busy -= 1
        self._dispatch()

    def _promote_starved(self) -> None:
        """A waiter waiting past the floor rate goes to the front."""
        limit = 1.0 / self.cfg.min_analysis_fps
        now = time.monotonic()
        changed = False
        for waiter in self._waiters:
            if waiter.rank[0] >= 0 and now - waiter.rank[1] > limit:
                waiter.rank = (-1, waiter.rank[1], waiter.rank[2])
                changed = True
        if changed:
            heapq.heapify(self._waiters)

    def _dispatch(self) -> None:
        """Grant free slots to the best waiters while the budget allows."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._promote_starved()
        while self._waiters and self._busy < self.workers:
            waiter = self._waiters[0]
            if waiter.future.done():  # cancelled meanwhile
                heapq.heappop(self._waiters)
                continue
            if not self._analyses.take(1):
                delay = max(0.001, self._analyses.wait_time())
                self._timer = asyncio.get_running_loop().call_later(delay, self._dispatch)
                return
            heapq.heappop(self._waiters)
            self._busy += 1
            waiter.future.set_result(None)
        if self._waiters:  # slots full: re-check starvation now and then
            self._timer = asyncio.get_running_loop().call_later(0.5, self._dispatch)

    # Decoding --------------------------------------------------------------------------

    def _assign_decoding(self) -> None:
        """Frame-by-frame decoding for cameras in priority order, within the budget."""
        budget = self.cfg.full_decode_mpx_s
        ranked = sorted(self._cameras.values(), key=lambda c: (int(c.priority), c.since))
        for camera in ranked:
            reader = camera.reader
            if not reader.can_skip_frames:
                continue  # decodes everything anyway; nothing to give or save
            if camera.mpx_s <= budget:
                budget -= camera.mpx_s
                reader.decode_mode = DecodeMode.FULL
            else:
                reader.decode_mode = DecodeMode.KEYFRAMES

    def describe(self) -> AnalysisLoad:
        """Load and budgets for status."""
        full = [
            c
            for c in self._cameras.values()
            if c.reader.can_skip_frames and c.reader.decode_mode is DecodeMode.FULL
        ]
        return AnalysisLoad(
            cameras=len(self._cameras),
            busy_slots=self._busy,
            waiting=sum(1 for w in self._waiters if not w.future.done()),
            full_decode_cameras=len(full),
            max_analyses_per_second=self.cfg.max_analyses_per_s,
            max_embeddings_per_second=self.cfg.max_embeddings_per_s,
            full_decode_mpx_per_second=self.cfg.full_decode_mpx_s,
            fine_detect_cores=self.cfg.fine_detect_cores,
            fine_detect_cores_used=round(sum(c.fine_cores for c in self._cameras.values()), 3),
        )
