"""Waiting on a condition instead of sleeping: poll a predicate at a short interval until it
holds, and fail with a message that says what never happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> float:
    """Poll ``predicate`` every ``interval`` seconds (on the event loop) until it is true;
    returns the seconds it took. AssertionError naming ``what`` after ``timeout`` seconds."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout:g} s") from None
    return time.monotonic() - started


def wait_until_sync(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> float:
    """As :func:`wait_until`, blocking (for code without an event loop)."""
    started = time.monotonic()
    deadline = started + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - started
