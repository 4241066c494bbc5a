"""When a camera reader tries to open its stream again after a loss.

A lost camera is reopened ``reconnect_attempts`` times, ``reconnect_interval_s`` apart;
when all fail it is DEAD for the session and is re-probed: every ``probe_min_s`` during
``probe_fast_for_s`` after the loss (a camera reboot is over in 30-90 s, and the session
waits for it), then with the agent's one backoff (:mod:`agent.backoff`), doubling up to
``probe_max_s`` (a camera gone for good costs little). Without jitter: the probes of one
camera are spread by its own failures already, and status shows the next retry time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from agent.backoff import Backoff, Retries
from agent.config import CamerasConfig

log = logging.getLogger("agent.camera.reader")  # the reader's log lines, as before


@dataclass
class Reconnects:
    """The reader thread's count of failed opens since the camera was last live, and the
    wait before its next probe while it is dead."""

    cfg: CamerasConfig
    attempts: int = 0  # failed opens since the camera was last live
    lost_at: float = field(default_factory=time.monotonic)
    _probes: Retries = field(init=False)

    def __post_init__(self) -> None:
        # A cap below the first wait (a config with probe_max_s < probe_min_s) is raised
        # to it: the probe never waits less than probe_min_s.
        cap = max(self.cfg.probe_min_s, self.cfg.probe_max_s)
        backoff = Backoff(first_s=self.cfg.probe_min_s, cap_s=cap, factor=2.0, jitter=(1.0, 1.0))
        self._probes = backoff.retries()

    def lost(self) -> None:
        """The live camera was lost: the attempts and the fast probes start afresh."""
        self.attempts = 0
        self._probes.reset()
        self.lost_at = time.monotonic()

    def failed(self, camera: str, url: str, error: str, *, dead: bool, timed_out: bool) -> float:
        """One more open of ``camera`` (its log id; ``url`` with credentials masked) failed
        with ``error``: logs it and returns the wait before the next one. ``dead``: the
        camera is DEAD already (a probe failed). Ends in :meth:`gave_up` when that was the
        last attempt: the caller then reports the camera DEAD."""
        self.attempts += 1
        if dead:
            wait = self.probe_wait()
            log.info("CAMERA_PROBE_FAILED camera=%s next_in=%.0fs", camera, wait)
            return wait
        event = "CAMERA_RECONNECT_TIMEOUT" if timed_out else "CAMERA_RECONNECT_ERROR"
        log.warning(
            "%s camera=%s url=%s attempt=%d/%d error=%s",
            event,
            camera,
            url,
            self.attempts,
            self.cfg.reconnect_attempts,
            error,
        )
        if not self.gave_up:
            return self.cfg.reconnect_interval_s
        log.error("CAMERA_DEAD camera=%s url=%s after %d attempts", camera, url, self.attempts)
        return self.cfg.probe_min_s

    @property
    def gave_up(self) -> bool:
        """Whether every reconnect attempt has failed (the camera is DEAD)."""
        return self.attempts >= self.cfg.reconnect_attempts

    def probe_wait(self) -> float:
        """The wait before the next probe of a dead camera: ``probe_min_s`` while the loss
        is recent, then doubling up to ``probe_max_s``."""
        if time.monotonic() - self.lost_at < self.cfg.probe_fast_for_s:
            return self.cfg.probe_min_s
        return self._probes.next()
