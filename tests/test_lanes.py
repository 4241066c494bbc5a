"""Lanes (threads for one kind of blocking work) and the backoff every retry loop uses."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from agent.backoff import Backoff
from agent.lanes import Lane, LaneClosedError, Lanes

WHO = contextvars.ContextVar("who", default="nobody")


async def test_a_call_runs_on_the_lanes_named_thread_with_the_callers_context() -> None:
    lane = Lane("sqlite", 1)
    WHO.set("session slot-a")
    try:
        name, who = await lane.call(lambda: (threading.current_thread().name, WHO.get()))
    finally:
        lane.close()
    assert name.startswith("lane-sqlite")
    assert who == "session slot-a"


async def test_errors_come_back_to_the_caller_unchanged() -> None:
    lane = Lane("page", 1)
    try:
        with pytest.raises(ZeroDivisionError):
            await lane.call(lambda: 1 / 0)
    finally:
        lane.close()


async def test_a_closed_lane_refuses_work_with_a_typed_error() -> None:
    lane = Lane("camera-io", 1)
    lane.close()
    with pytest.raises(LaneClosedError) as caught:
        await lane.call(time.sleep, 0)
    assert "camera-io" in caught.value.message


async def test_a_cancelled_caller_leaves_the_work_to_finish_and_drain_waits_for_it() -> None:
    lane = Lane("sqlite", 1, finish_queued=True)
    done = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        done.set()

    task = asyncio.create_task(lane.call(slow))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert lane.busy == 1 and not done.is_set()
    assert await lane.drain(timeout=5)
    assert done.is_set() and lane.busy == 0
    lane.close()


async def test_queued_work_is_dropped_at_close_unless_the_lane_finishes_it() -> None:
    ran: list[str] = []
    for finish in (False, True):
        lane = Lane("x", 1, finish_queued=finish)
        first = asyncio.ensure_future(lane.call(time.sleep, 0.2))
        second = asyncio.ensure_future(lane.call(ran.append, f"finish={finish}"))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(lane.close)
        await asyncio.gather(first, second, return_exceptions=True)
    assert ran == ["finish=True"]


async def test_the_agents_lanes_each_have_their_own_threads() -> None:
    lanes = Lanes.create(inference_threads=2)
    try:
        names = {
            lane.name: await lane.call(lambda: threading.current_thread().name)
            for lane in lanes.all()
        }
    finally:
        lanes.close()
    assert sorted(names) == ["camera-io", "commands", "inference", "page", "sqlite"]
    assert all(thread.startswith(f"lane-{lane}") for lane, thread in names.items())


def test_backoff_doubles_to_its_cap_and_jitter_stays_in_its_band() -> None:
    backoff = Backoff(first_s=1.0, cap_s=30.0, jitter=(0.5, 1.0))
    assert [backoff.base(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.base(10_000) == 30.0  # no overflow on a very long outage
    for n in range(8):
        assert 0.5 * backoff.base(n) <= backoff.delay(n) <= backoff.base(n)


def test_retries_walk_the_backoff_and_start_over_on_reset() -> None:
    retries = Backoff(first_s=2.0, cap_s=8.0, jitter=(1.0, 1.0)).retries()
    assert [retries.next() for _ in range(4)] == [2.0, 4.0, 8.0, 8.0]
    retries.reset()
    assert retries.next() == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_s": 0.0, "cap_s": 1.0},
        {"first_s": 2.0, "cap_s": 1.0},
        {"first_s": 1.0, "cap_s": 2.0, "factor": 0.5},
        {"first_s": 1.0, "cap_s": 2.0, "jitter": (1.0, 0.5)},
    ],
)
def test_an_unusable_backoff_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not a usable backoff"):
        Backoff(**kwargs)  # type: ignore[arg-type]
