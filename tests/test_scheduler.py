"""The analysis scheduler at its seam: inference slots granted by priority, the floor rate,
the analysis budget, shed counting, embedding cap and the decode budget. Readers are small
fakes here (the scheduler only sets their decode mode); the real thing is exercised over
RTSP in tests/test_decode_modes.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from agent.camera.video_source import DecodeMode
from agent.config import AnalysisConfig, load_config
from agent.session.scheduler import AnalysisScheduler, ScheduledCamera
from agent.vision.budget import EmbedBudget, Priority


@dataclass
class FakeReader:
    """What the scheduler sees of a camera reader."""

    can_skip_frames: bool = True
    decode_mode: DecodeMode = DecodeMode.FULL
    shed: int = 0

    def record_shed(self, count: int) -> None:
        self.shed += count


def _scheduler(workers: int = 1, **analysis: float) -> AnalysisScheduler:
    cfg = load_config(None)
    return AnalysisScheduler(
        AnalysisConfig(**{"max_analyses_per_s": 1000.0, **analysis}), cfg.cameras, workers
    )


async def _hold(scheduler: AnalysisScheduler, camera: ScheduledCamera, release: asyncio.Event):
    async with scheduler.turn(camera):
        await release.wait()


async def test_slots_go_to_unrecognised_faces_first() -> None:
    scheduler = _scheduler(workers=1)
    busy = scheduler.register("busy", FakeReader(), 1.0)
    cams = {p: scheduler.register(p.name, FakeReader(), 1.0) for p in Priority}
    for priority, camera in cams.items():
        scheduler.settle(camera, priority)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(scheduler, busy, release))
    await asyncio.sleep(0)
    order: list[str] = []

    async def one(camera: ScheduledCamera) -> None:
        async with scheduler.turn(camera):
            order.append(camera.key)

    # Queued lowest priority first: the grant order must not be the arrival order.
    waiters = [asyncio.create_task(one(cams[p])) for p in reversed(Priority)]
    await asyncio.sleep(0.01)
    assert order == []  # the one slot is held
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, *waiters), 5)
    assert order == ["UNRECOGNISED", "EMPTY", "SETTLED"]


async def test_a_starved_camera_goes_first_after_the_floor_interval() -> None:
    # min 2 analyses/s: nobody waits more than 0.5 s past its due time.
    scheduler = _scheduler(workers=1, min_analysis_fps=2.0)
    settled = scheduler.register("settled", FakeReader(), 1.0)
    scheduler.settle(settled, Priority.SETTLED)
    urgent = [scheduler.register(f"u{i}", FakeReader(), 1.0) for i in range(3)]
    order: list[str] = []
    stop = time.monotonic() + 1.5

    async def busy_loop(camera: ScheduledCamera) -> None:
        while time.monotonic() < stop:
            async with scheduler.turn(camera):
                order.append(camera.key)
                await asyncio.sleep(0.05)

    async def settled_once() -> float:
        started = time.monotonic()
        async with scheduler.turn(settled):
            order.append("settled")
        return time.monotonic() - started

    loops = [asyncio.create_task(busy_loop(c)) for c in urgent]
    await asyncio.sleep(0.02)  # the urgent cameras keep the slot busy from now on
    waited = await asyncio.wait_for(settled_once(), 5)
    await asyncio.gather(*loops)
    assert "settled" in order
    assert 0.4 <= waited < 1.2  # served by the floor, not when the urgent ones stopped
    assert settled.reader.shed >= 1  # type: ignore[attr-defined]


async def test_analyses_per_second_stay_within_the_budget() -> None:
    scheduler = _scheduler(workers=4, max_analyses_per_s=20.0)
    cameras = [scheduler.register(f"c{i}", FakeReader(), 1.0) for i in range(4)]
    started = time.monotonic()
    count = 0

    async def loop(camera: ScheduledCamera) -> None:
        nonlocal count
        for _ in range(10):
            async with scheduler.turn(camera):
                count += 1

    await asyncio.wait_for(asyncio.gather(*(loop(c) for c in cameras)), 10)
    took = time.monotonic() - started
    assert count == 40
    # 40 analyses at 20/s with a burst of 4: at least (40 - 4) / 20 = 1.8 s.
    assert took >= 1.7


async def test_a_cancelled_wait_gives_no_slot_away() -> None:
    scheduler = _scheduler(workers=1)
    a, b = (scheduler.register(k, FakeReader(), 1.0) for k in "ab")
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(scheduler, a, release))
    await asyncio.sleep(0)

    async def wait_b() -> None:
        async with scheduler.turn(b):
            pass

    waiter = asyncio.create_task(wait_b())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    release.set()
    await holder
    # The slot is free again: a new turn is granted at once.
    await asyncio.wait_for(wait_b(), 1)
    load = scheduler.describe()
    assert (load.busy_slots, load.waiting, load.cameras) == (0, 0, 2)


async def test_full_decoding_goes_to_unrecognised_cameras_within_the_budget() -> None:
    scheduler = _scheduler(full_decode_mpx_s=40.0)
    readers = {k: FakeReader() for k in ("a", "b", "c")}
    opencv = FakeReader(can_skip_frames=False)
    cams = {k: scheduler.register(k, r, 31.1) for k, r in readers.items()}
    scheduler.register("opencv", opencv, 31.1)
    # New cameras are all unrecognised: the first registered gets the only FULL slot.
    assert [r.decode_mode for r in readers.values()] == [
        DecodeMode.FULL,
        DecodeMode.KEYFRAMES,
        DecodeMode.KEYFRAMES,
    ]
    scheduler.settle(cams["a"], Priority.SETTLED)
    scheduler.settle(cams["b"], Priority.EMPTY)
    assert readers["c"].decode_mode is DecodeMode.FULL  # the one with unknown faces
    assert readers["a"].decode_mode is DecodeMode.KEYFRAMES
    assert readers["b"].decode_mode is DecodeMode.KEYFRAMES
    assert opencv.decode_mode is DecodeMode.FULL  # OpenCV decodes everything anyway
    # Small streams fit together.
    for camera in cams.values():
        scheduler.set_cost(camera, 9.2)  # 720p at 10 fps
    assert all(r.decode_mode is DecodeMode.FULL for r in readers.values())
    assert scheduler.describe().full_decode_cameras == 3  # the OpenCV one is not counted
    scheduler.unregister(cams["c"])
    assert len(scheduler.cameras) == 3


def test_embedding_cap() -> None:
    budget = EmbedBudget(10.0)  # burst of max(4, 10 / 2) = 5
    assert budget.take(0) == 0
    assert budget.take(3) == 3
    assert budget.take(10) == 2
    assert budget.take(1) == 0
    time.sleep(0.25)  # 10/s: about 2 more
    assert 1 <= budget.take(10) <= 3
