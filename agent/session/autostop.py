"""Auto-stop: a session whose backend stops answering, or refuses every event, is stopped
by the agent itself.

Delivery records how each running session's events fare (:class:`BackendHealth` in
:mod:`agent.events.delivery`) and reports every change here; this side decides. A session
stops after ``[callback] autostop_failures`` failures in a row (failed delivery rounds or
dead letters) or ``autostop_seconds`` of failing without a success, whichever comes
first (0 turns a rule off), with BACKEND_REJECTED when the last failure was a refusal and
BACKEND_UNRESPONSIVE otherwise. The defaults weather a 10-minute backend outage: the
events wait in the outbox and are delivered in order once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agent.config import CallbackConfig
from agent.protocol import StatusReason

if TYPE_CHECKING:  # delivery is transport: the session side reads its records only
    from agent.events.delivery import SlotHealth

__all__ = ["AutoStop", "StopSession"]

log = logging.getLogger(__name__)

StopSession = Callable[[str, StatusReason], Coroutine[Any, Any, None]]
"""Stops a slot's session for a reason (``SessionManager.autostop``)."""


class AutoStop:
    """The auto-stop rule, fed with each slot's delivery health as it changes."""

    def __init__(self, cfg: CallbackConfig, stop: StopSession) -> None:
        self.cfg = cfg
        self._stop = stop
        self._health: dict[str, SlotHealth] = {}
        self._triggered: set[str] = set()  # once per session: the stop is under way
        # The time rule's alarm per failing slot, with the failing spell it was set for.
        self._alarms: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def observe(self, slot_id: str, health: SlotHealth | None) -> None:
        """Delivery recorded ``health`` for the slot (None: its record was forgotten, the
        session ended). Called on the event loop."""
        if health is None:
            self._health.pop(slot_id, None)
            self._triggered.discard(slot_id)
            self._disarm(slot_id)
            return
        self._health[slot_id] = health
        if health.failing_since is None:
            self._disarm(slot_id)  # a success: the spell is over
            return
        if not self._check(slot_id, health):
            self._arm(slot_id, health.failing_since)

    def _check(self, slot_id: str, health: SlotHealth, *, time_is_up: bool = False) -> bool:
        """Stop the slot's session when a rule says so; whether it was stopped."""
        if slot_id in self._triggered or health.failing_since is None:
            return False
        failing_for = time.time() - health.failing_since
        by_count = 0 < self.cfg.autostop_failures <= health.consecutive_failures
        by_time = self.cfg.autostop_seconds > 0 and (
            time_is_up or self.cfg.autostop_seconds <= failing_for
        )
        if not (by_count or by_time):
            return False
        self._triggered.add(slot_id)
        self._disarm(slot_id)
        reason = (
            StatusReason.BACKEND_REJECTED if health.rejected else StatusReason.BACKEND_UNRESPONSIVE
        )
        log.error(
            "%s slot=%s failures=%d failing_for=%.0fs: stopping the session",
            reason,
            slot_id,
            health.consecutive_failures,
            failing_for,
        )
        task = asyncio.create_task(self._stop(slot_id, reason), name=f"autostop-{slot_id}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        return True

    def _arm(self, slot_id: str, since: float) -> None:
        """Wake up when the slot has failed for autostop_seconds, unless a success or
        the count rule comes first (the time rule holds between failures too)."""
        alarm = self._alarms.get(slot_id)
        if self.cfg.autostop_seconds <= 0 or (alarm is not None and alarm[0] == since):
            return
        self._disarm(slot_id)
        delay = max(0.0, since + self.cfg.autostop_seconds - time.time())
        handle = asyncio.get_running_loop().call_later(delay, self._time_is_up, slot_id, since)
        self._alarms[slot_id] = (since, handle)

    def _time_is_up(self, slot_id: str, since: float) -> None:
        self._alarms.pop(slot_id, None)
        health = self._health.get(slot_id)
        # Still the spell the alarm was set for: the loop's clock and the wall clock may
        # differ by a hair, so the alarm itself is the proof that the time is up.
        if health is not None and health.failing_since == since:
            self._check(slot_id, health, time_is_up=True)

    def _disarm(self, slot_id: str) -> None:
        alarm = self._alarms.pop(slot_id, None)
        if alarm is not None:
            alarm[1].cancel()

    async def close(self) -> None:
        """Cancel the alarms and any stop under way (the agent is shutting down)."""
        for slot_id in list(self._alarms):
            self._disarm(slot_id)
        tasks = list(self._stopping)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
