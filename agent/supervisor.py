"""Supervision of the agent's long-lived tasks: nothing dies silently.

Each task is spawned here under a name. If its coroutine raises (or returns, which a
long-lived task never should), the failure is logged with its traceback, counted (status
and metrics), and the task is started again after a jittered, capped backoff. A task that
fails more than ``restart_limit`` times within ``restart_window_s`` is beyond repair in
this process: the supervisor then reports a fatal error, and the agent shuts down and
exits non-zero so that systemd restarts it (``Restart=on-failure``) with a fresh state.

Cancellation is never swallowed; :meth:`Supervisor.stop` cancels the tasks in reverse
start order and waits for each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agent.backoff import Backoff
from agent.errors import AgentError, ErrorCode
from agent.redaction import log_safe
from agent.status.models import TaskStatus

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class TaskFailedError(AgentError):
    """A supervised task kept failing; the agent must restart."""

    def __init__(self, name: str, failures: int, window_s: float, last: str) -> None:
        super().__init__(
            ErrorCode.TASK_FAILED,
            f"task {name} failed {failures} times within {window_s:.0f} s (last: {last}); "
            "exiting so that the service manager restarts the agent",
            status=500,
            details={"task": name},
        )


@dataclass
class TaskRecord:
    """What status shows of one supervised task."""

    name: str
    restart: bool
    state: str = "running"  # running | backoff | failed | stopped
    failures: int = 0
    last_error: str | None = None
    last_failure_at: float | None = None
    recent: deque[float] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class RestartPolicy:
    """How often a failing task is restarted before the agent gives up."""

    limit: int = 5
    window_s: float = 300.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 30.0

    def backoff(self) -> Backoff:
        """The pause before each restart: doubling from ``backoff_min_s`` up to
        ``backoff_max_s`` (never below the first), jittered."""
        return Backoff(
            first_s=self.backoff_min_s, cap_s=max(self.backoff_min_s, self.backoff_max_s)
        )


class Supervisor:
    """Owns the agent's long-lived tasks; see the module docstring."""

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._backoff = self.policy.backoff()  # an unusable policy fails here, not later
        self._on_failure = on_failure
        self._records: dict[str, TaskRecord] = {}
        self.fatal = asyncio.Event()
        self.fatal_error: TaskFailedError | None = None

    def spawn(self, name: str, factory: TaskFactory, *, restart: bool = True) -> None:
        """Start ``factory()`` as the supervised task ``name`` (restarted on failure unless
        ``restart`` is False, in which case its failure is fatal at once)."""
        if name in self._records:
            raise ValueError(f"task {name} is already supervised")
        record = TaskRecord(name, restart)
        self._records[name] = record
        record.task = asyncio.create_task(self._keep(record, factory), name=name)

    def record_failure(self, name: str, exc: BaseException) -> None:
        """Count a failure of work restarted elsewhere (e.g. a delivery worker)."""
        record = self._records.setdefault(name, TaskRecord(name, restart=True))
        self._note(record, exc)

    async def _keep(self, record: TaskRecord, factory: TaskFactory) -> None:
        policy = self.policy
        retries = self._backoff.retries()
        while True:
            record.state = "running"
            started = time.monotonic()
            try:
                await factory()
                failure: BaseException = RuntimeError("returned, but must run until cancelled")
            except asyncio.CancelledError:
                record.state = "stopped"
                raise
            except Exception as exc:  # the point of a supervisor: any error, logged
                failure = exc
            self._note(record, failure)
            if not record.restart or self._beyond_repair(record):
                record.state = "failed"
                self.fatal_error = TaskFailedError(
                    record.name, len(record.recent), policy.window_s, record.last_error or "?"
                )
                log.critical("AGENT_FATAL %s", self.fatal_error.message)
                self.fatal.set()
                return
            if time.monotonic() - started > policy.window_s:
                retries.reset()  # it ran well for a while: start over
            wait = retries.next()
            record.state = "backoff"
            log.warning(
                "TASK_RESTART task=%s in=%.1fs failures=%d", record.name, wait, record.failures
            )
            await asyncio.sleep(wait)

    def _note(self, record: TaskRecord, exc: BaseException) -> None:
        now = time.monotonic()
        record.failures += 1
        record.last_error = log_safe(f"{type(exc).__name__}: {exc}", 300)
        record.last_failure_at = time.time()
        record.recent.append(now)
        log.error(
            "TASK_CRASHED task=%s failures=%d error=%s",
            record.name,
            record.failures,
            record.last_error,
            exc_info=exc,
        )
        if self._on_failure is not None:
            self._on_failure(record.name)

    def _beyond_repair(self, record: TaskRecord) -> bool:
        horizon = time.monotonic() - self.policy.window_s
        while record.recent and record.recent[0] < horizon:
            record.recent.popleft()
        return len(record.recent) > self.policy.limit

    async def stop(self) -> None:
        """Cancel every task in reverse start order, waiting for each to end."""
        for record in reversed(list(self._records.values())):
            task = record.task
            if task is not None and not task.done():
                await cancel_and_wait(task)
            record.state = "stopped" if record.state != "failed" else record.state

    def describe(self) -> list[TaskStatus]:
        """Per task: state, failures, last error and when (for status)."""
        return [
            TaskStatus(
                name=r.name,
                state=r.state,
                failures=r.failures,
                last_error=r.last_error,
                last_failure_at=r.last_failure_at,
            )
            for r in self._records.values()
        ]

    def warnings(self) -> list[str]:
        """A line per task that has failed since start."""
        return [
            f"TASK_RESTARTED: {r.name} failed {r.failures} time(s), last: {r.last_error}"
            for r in self._records.values()
            if r.failures
        ]


async def cancel_and_wait(task: asyncio.Task[Any], *, again_after_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again while it runs on.

    A cancellation can be lost inside a library: Python 3.11's ``asyncio.wait_for`` (which
    aiomqtt uses to wait for a PUBACK) returns the result instead of raising when the
    awaited future completes at the moment it is cancelled. A looping task (the status
    publisher) then runs on, and a plain ``cancel(); await task`` waits for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=again_after_s)
    if not task.cancelled():
        task.exception()  # retrieved: its failure was already counted and logged
