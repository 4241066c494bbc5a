"""The auto-stop rule on its own: delivery's per-slot records (BackendHealth) feeding the
session side's AutoStop, with a recording stand-in for SessionManager.autostop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agent.config import CallbackConfig
from agent.events.delivery import BackendHealth, SlotHealth
from agent.protocol import StatusReason
from agent.session.autostop import AutoStop

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

SLOT = "slot-1"


class Stops:
    """Records the stops asked for; a stop may be held open to test cancellation."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, StatusReason]] = []
        self.hold = False
        self.cancelled = 0

    async def __call__(self, slot_id: str, reason: StatusReason) -> None:
        self.asked.append((slot_id, reason))
        if self.hold:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


def _rig(**cfg: Any) -> tuple[AutoStop, BackendHealth, Stops]:
    stops = Stops()
    rule = AutoStop(CallbackConfig(**cfg), stops)
    return rule, BackendHealth(lambda: {SLOT}, rule.observe), stops


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_failures_in_a_row_stop_the_session_once() -> None:
    rule, health, stops = _rig(autostop_failures=3, autostop_seconds=0)
    for _ in range(2):
        health.failed(SLOT, rejected=False)
    await _settle()
    assert stops.asked == []
    health.failed(SLOT, rejected=False)
    await _settle()
    assert stops.asked == [(SLOT, StatusReason.BACKEND_UNRESPONSIVE)]
    health.failed(SLOT, rejected=False)  # the stop is under way: not asked again
    await _settle()
    assert len(stops.asked) == 1
    await rule.close()


async def test_a_refusal_last_is_backend_rejected() -> None:
    rule, health, stops = _rig(autostop_failures=2, autostop_seconds=0)
    health.failed(SLOT, rejected=False)
    health.failed(SLOT, rejected=True)
    await _settle()
    assert stops.asked == [(SLOT, StatusReason.BACKEND_REJECTED)]
    await rule.close()


async def test_a_success_starts_the_count_over() -> None:
    rule, health, stops = _rig(autostop_failures=3, autostop_seconds=0)
    health.failed(SLOT, rejected=False)
    health.failed(SLOT, rejected=False)
    health.succeeded(SLOT)
    assert health.get(SLOT) == SlotHealth()
    health.failed(SLOT, rejected=False)
    health.failed(SLOT, rejected=False)
    await _settle()
    assert stops.asked == []
    assert health.get(SLOT) == SlotHealth(2, health.get(SLOT).failing_since, False)  # type: ignore[union-attr]
    await rule.close()


async def test_the_time_rule_fires_between_failures() -> None:
    rule, health, stops = _rig(autostop_failures=0, autostop_seconds=0.2)
    started = time.monotonic()
    health.failed(SLOT, rejected=False)
    while not stops.asked:
        await asyncio.sleep(0.01)
        assert time.monotonic() - started < 5, "the time rule never fired"
    assert time.monotonic() - started >= 0.19
    assert stops.asked == [(SLOT, StatusReason.BACKEND_UNRESPONSIVE)]
    await rule.close()


async def test_a_success_before_the_time_is_up_keeps_the_session() -> None:
    rule, health, stops = _rig(autostop_failures=0, autostop_seconds=0.2)
    health.failed(SLOT, rejected=False)
    await asyncio.sleep(0.1)
    health.succeeded(SLOT)
    await asyncio.sleep(0.25)
    assert stops.asked == []
    await rule.close()


async def test_a_spell_already_past_the_time_stops_at_once() -> None:
    stops = Stops()
    rule = AutoStop(CallbackConfig(autostop_failures=0, autostop_seconds=60), stops)
    rule.observe(SLOT, SlotHealth(1, time.time() - 61, rejected=True))
    await _settle()
    assert stops.asked == [(SLOT, StatusReason.BACKEND_REJECTED)]
    await rule.close()


async def test_zero_turns_both_rules_off() -> None:
    rule, health, stops = _rig(autostop_failures=0, autostop_seconds=0)
    for _ in range(50):
        health.failed(SLOT, rejected=True)
    await asyncio.sleep(0.05)
    assert stops.asked == []
    await rule.close()


async def test_a_forgotten_slot_starts_afresh() -> None:
    rule, health, stops = _rig(autostop_failures=1, autostop_seconds=0)
    health.failed(SLOT, rejected=False)
    await _settle()
    health.forget(SLOT)  # the session ended; the slot's next session is judged anew
    assert health.get(SLOT) is None
    health.failed(SLOT, rejected=False)
    await _settle()
    assert len(stops.asked) == 2
    await rule.close()


async def test_slots_without_a_running_session_are_not_recorded() -> None:
    rule, health, stops = _rig(autostop_failures=1, autostop_seconds=0)
    health.failed("slot-gone", rejected=False)
    await _settle()
    assert health.get("slot-gone") is None
    assert stops.asked == []
    await rule.close()


async def test_close_cancels_alarms_and_stops_under_way() -> None:
    rule, health, stops = _rig(autostop_failures=1, autostop_seconds=0.1)
    stops.hold = True
    health.failed(SLOT, rejected=False)
    await _settle()
    other = AutoStop(CallbackConfig(autostop_failures=0, autostop_seconds=0.1), stops)
    other.observe("slot-2", SlotHealth(1, time.time(), False))
    await rule.close()
    await other.close()
    assert stops.cancelled == 1
    await asyncio.sleep(0.15)  # the closed rule's alarm does not go off
    assert stops.asked == [(SLOT, StatusReason.BACKEND_UNRESPONSIVE)]
