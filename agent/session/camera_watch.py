"""A session's cameras as a whole: which are down, and the grace before the session stops.

A camera is *down* once its reader gave up reconnecting (DEAD); it is re-probed until it
comes back. One down camera among live ones is reported (CAMERA_DISCONNECTED) and the
session goes on. When the last live camera goes down the session waits for them:
CAMERA_DISCONNECTED is sent at once, and the session stops with ALL_CAMERAS_FAILED only if
none is back within ``[cameras] all_dead_grace_s`` (an IP camera reboot takes 30-90 s, a
PoE switch restart longer); one back in time is reported CAMERA_RECONNECTED and the
session carries on. A grace of 0 stops the session the moment every camera is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from agent.protocol import SessionStatus, StatusReason
from agent.redaction import log_safe
from agent.session.camera_work import CameraWork
from agent.status.models import CameraState

log = logging.getLogger(__name__)

Report = Callable[[SessionStatus, StatusReason, CameraWork, str], Awaitable[None]]
"""Sends one camera status event of the session (status, reason, camera, message)."""

StateChange = tuple[str, CameraState, str]
"""(camera id, new state, reason), as the readers report them."""


@dataclass
class CameraWatch:
    """Turns a session's camera state changes into events and decides when it must stop.
    A camera reported down is marked :attr:`CameraWork.disconnected` until it is back."""

    slot_id: str
    cameras: Sequence[CameraWork]
    grace_s: float
    report: Report
    deadline: float | None = None  # monotonic; set while every camera is down

    def seconds_left(self) -> float | None:
        """While every camera is down: seconds of grace left; else None."""
        if self.deadline is None:
            return None
        return round(max(0.0, self.deadline - time.monotonic()), 1)

    async def run(self, changes: asyncio.Queue[StateChange]) -> StatusReason:
        """Follow the changes until the session must stop (every camera down past the
        grace); returns the stop reason."""
        while True:
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    camera_id, state, reason = await changes.get()
            except TimeoutError:
                log.error(
                    "ALL_CAMERAS_DEAD slot=%s (none back within %g s)",
                    log_safe(self.slot_id),
                    self.grace_s,
                )
                return StatusReason.ALL_CAMERAS_FAILED
            work = next(w for w in self.cameras if w.camera_id == camera_id)
            if state is CameraState.DEAD:
                if await self._lost(work, reason):
                    return StatusReason.ALL_CAMERAS_FAILED
            elif state is CameraState.LIVE and work.disconnected:
                await self._back(work)

    async def _lost(self, work: CameraWork, reason: str) -> bool:
        """A camera went down; True when the session must stop at once (no grace)."""
        all_down = all(w.reader.state is CameraState.DEAD for w in self.cameras)
        if all_down and self.grace_s <= 0:
            log.error("ALL_CAMERAS_DEAD slot=%s", log_safe(self.slot_id))
            return True
        if all_down and self.deadline is None:
            self.deadline = time.monotonic() + self.grace_s
            log.warning(
                "ALL_CAMERAS_DOWN slot=%s waiting=%gs for a camera to come back",
                log_safe(self.slot_id),
                self.grace_s,
            )
        if not work.disconnected:
            work.disconnected = True
            await self.report(
                SessionStatus.CAMERA_DISCONNECTED, StatusReason.CAMERA_FAILURE, work, reason
            )
        return False

    async def _back(self, work: CameraWork) -> None:
        """A down camera is live again: the wait, if any, is over."""
        work.disconnected = False
        if self.deadline is not None:
            log.info(
                "CAMERAS_BACK slot=%s camera=%s", log_safe(self.slot_id), log_safe(work.camera_id)
            )
        self.deadline = None
        await self.report(SessionStatus.CAMERA_RECONNECTED, StatusReason.CAMERA_RECOVERED, work, "")
