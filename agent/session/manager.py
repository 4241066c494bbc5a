"""Recognition sessions: one per class slot, started and stopped by commands, persisted so
they resume after an agent restart, and stopped by themselves at their end time.

A session's work (reading cameras, recognising faces) is done by a :class:`SessionRunner`
given to the manager; the manager owns the session's task, its persisted row and its
status events (STARTED, RESUMED, STOPPED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from agent.allowlist import is_allowed
from agent.config import CallbackConfig, CamerasConfig, RecognitionConfig, RuntimeConfig
from agent.errors import AgentError, ErrorCode
from agent.events.event import EventFactory, EventSink, emit_or_log
from agent.events.store import Store, StoreError
from agent.protocol import (
    CameraUptime,
    PresenceEntry,
    SessionStart,
    SessionStatus,
    SessionStatusEvent,
    StatusReason,
)
from agent.session.at_rest import SessionCommands
from agent.session.end import forget_and_report, forget_row, wind_down
from agent.session.history import SessionHistory
from agent.session.limits import SessionCamera, check_limits
from agent.session.plan import PlanSections, plan_session
from agent.session.presence import PresenceBook
from agent.status.models import CameraHealth, CameraRef, SessionSummary
from agent.vision.inference import ModelSlot
from agent.vision.matching import Roster

if TYPE_CHECKING:  # the runner's parts, which import this module: typing only, no cycle
    from agent.session.camera_watch import CameraWatch
    from agent.session.camera_work import CameraWork

log = logging.getLogger(__name__)


@dataclass
class ActiveSession:
    """A running session: its command, roster and the task doing its work."""

    command: SessionStart
    roster: Roster
    camera_plan: list[SessionCamera]  # the cameras the command named, resolved
    embedding_space: str
    threshold: float
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    task: asyncio.Task[None] | None = None
    stop_reason: StatusReason | None = None
    presence: PresenceBook = field(default_factory=lambda: PresenceBook([]))
    final_presence: list[PresenceEntry] | None = None  # the verdict, once stopped
    # One per camera once the runner made them; kept after the stop for the final summary.
    cameras: list[CameraWork] = field(default_factory=list)
    # The runner's watch over the cameras as a whole (the grace while all are down).
    camera_watch: CameraWatch | None = None

    @property
    def slot_id(self) -> str:
        """The class slot this session serves."""
        return self.command.slot_id

    def camera_health(self) -> list[CameraHealth]:
        """Each running camera's health (empty before the runner made them)."""
        return [work.describe() for work in self.cameras]

    def uptimes(self) -> list[CameraUptime] | None:
        """Each camera's up-time out of the session's (None if no camera ever ran)."""
        total = max(0.0, time.time() - self.started_at.timestamp())
        return [w.uptime(total) for w in self.cameras] if self.cameras else None

    def waiting_for_cameras(self) -> float | None:
        """While every camera is down: seconds of grace left before the session stops."""
        return self.camera_watch.seconds_left() if self.camera_watch is not None else None

    def describe(self) -> SessionSummary:
        """What replies and status show of the session (no embeddings, no names)."""
        end = self.command.end_time
        cameras: list[CameraHealth | CameraRef] = [*self.camera_health()] or [
            CameraRef(id=c.id, name=c.name) for c in self.camera_plan
        ]
        return SessionSummary(
            slot_id=self.slot_id,
            mode=self.command.mode,
            cameras=cameras,
            students=len(self.roster),
            embedding_space=self.embedding_space,
            threshold=self.threshold,
            end_time=end.isoformat() if end else None,
            started_at=self.started_at.isoformat(),
            presence_counts=self.presence.counts(),
            presence=self.final_presence,
            waiting_for_cameras_seconds=self.waiting_for_cameras(),
        )


class SessionStopError(AgentError):
    """A session's work failed while it was being stopped."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.STOP_SESSION_FAILED, reason, status=500)


class SessionRunner(Protocol):
    """Does a session's work until cancelled, or returns a reason to stop it."""

    async def run(self, session: ActiveSession) -> StatusReason | None:
        """Run the session; return a stop reason (e.g. all cameras failed) or be cancelled."""


class SessionManager:
    """Owns every session: start, stop, resume, end-time stop, shutdown."""

    def __init__(
        self,
        *,
        store: Store,
        models: ModelSlot,
        sink: EventSink,
        events: EventFactory,
        cameras: CamerasConfig,
        callback: CallbackConfig,
        recognition: RecognitionConfig,
        runner: SessionRunner,
        limits: RuntimeConfig | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_stopped: Callable[[str], None] = lambda slot_id: None,
        history: SessionHistory | None = None,
    ) -> None:
        self._store = store
        self._models = models
        self._sink = sink
        self._events = events
        self._cameras = cameras
        self._callback = callback
        # What plan_session reads: the start command's checks are the planner's.
        self._plan_config = PlanSections(callback, cameras, recognition)
        self._runner = runner
        self._on_change = on_change
        self._on_stopped = on_stopped
        self._history = history
        self._limits = limits or RuntimeConfig()
        self._sessions: dict[str, ActiveSession] = {}
        self._stopping: dict[str, ActiveSession] = {}
        self._resume_lock = asyncio.Lock()
        self._commands = SessionCommands()  # credentials in memory only (agent.session.at_rest)

    @property
    def sessions(self) -> list[ActiveSession]:
        """Running sessions in start order."""
        return list(self._sessions.values())

    def get(self, slot_id: str) -> ActiveSession | None:
        """The running session of a slot, if any."""
        return self._sessions.get(slot_id)

    def _build(self, command: SessionStart, started_at: datetime | None = None) -> ActiveSession:
        """Plan the session (:func:`plan_session`: its refusals are the command's) and build
        it, started now or, when resumed, at ``started_at``."""
        plan = plan_session(command, self._plan_config, self._models.require)
        return ActiveSession(
            command=plan.command,
            roster=plan.roster,
            camera_plan=list(plan.cameras),
            embedding_space=plan.embedding_space,
            threshold=plan.threshold,
            started_at=started_at or self._events.now(),
            presence=PresenceBook(plan.student_ids),
        )

    async def start(self, command: SessionStart) -> SessionSummary:
        """Start a session; returns its summary."""
        if command.slot_id in self._sessions:
            log.warning("SESSION_EXISTS slot=%s", command.slot_id)
            raise AgentError(
                ErrorCode.SESSION_ALREADY_EXISTS,
                f"A session for slot {command.slot_id} is already running; stop it first.",
                status=409,
            )
        if command.end_time is not None and command.end_time.timestamp() <= time.time():
            raise AgentError(
                ErrorCode.VALIDATION_ERROR,
                "endTime is in the past.",
                status=422,
                details={"errors": [{"path": "endTime", "problem": "in the past"}]},
            )
        if command.slot_id in self._stopping:
            raise AgentError(
                ErrorCode.SESSION_ALREADY_EXISTS,
                f"The session for slot {command.slot_id} is still stopping; retry in a moment.",
                status=409,
            )
        session = self._build(command)
        check_limits(
            session.camera_plan,
            [*self._sessions.values(), *self._stopping.values()],
            self._limits,
            allow_shared=self._cameras.allow_shared,
        )
        # No await between the existence and limit checks and this insertion: two
        # concurrent starts cannot both pass.
        self._sessions[command.slot_id] = session
        try:
            await self._store.call(
                self._store.save_session,
                command.slot_id,
                self._commands.save(command),
                command.end_time.timestamp() if command.end_time else None,
            )
            await self._emit(session, SessionStatus.STARTED, strict=True)
        except AgentError as exc:
            # Not saved, or its STARTED event could not be stored (outbox full, state file
            # locked or damaged): do not run a session whose events would be lost.
            del self._sessions[command.slot_id]
            await self._forget(command.slot_id)
            log.error(
                "SESSION_START_FAILED slot=%s code=%s message=%s",
                command.slot_id,
                exc.code,
                exc.message,
            )
            raise
        self._launch(session)
        log.info(
            "SESSION_STARTED slot=%s cameras=%d students=%d mode=%s",
            session.slot_id,
            len(session.camera_plan),
            len(session.roster),
            command.mode,
        )
        return session.describe()

    def _launch(self, session: ActiveSession) -> None:
        session.task = asyncio.create_task(
            self._lifecycle(session), name=f"session-{session.slot_id}"
        )
        self._on_change()

    async def _lifecycle(self, session: ActiveSession) -> None:
        """Run the session until its runner gives up or its end time comes."""
        end = session.command.end_time
        runner = asyncio.create_task(self._runner.run(session), name=f"runner-{session.slot_id}")
        try:
            timeout = None if end is None else max(0.0, end.timestamp() - time.time())
            done, _ = await asyncio.wait({runner}, timeout=timeout)
            reason = runner.result() if runner in done else StatusReason.SESSION_ENDED
        except asyncio.CancelledError:
            runner.cancel()
            (result,) = await asyncio.gather(runner, return_exceptions=True)
            if isinstance(result, Exception):
                # The work did not wind down cleanly (a camera that would not release...):
                # the stop must say so rather than pretend.
                raise SessionStopError(str(result) or type(result).__name__) from result
            raise
        except Exception:
            log.exception("SESSION_RUNNER_CRASHED slot=%s", session.slot_id)
            reason = StatusReason.STOP_FAILED
        if not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        if reason is None:
            return
        if self._sessions.get(session.slot_id) is session:
            await self._finish(session, reason)

    async def stop(
        self, slot_id: str, reason: StatusReason = StatusReason.REQUESTED
    ) -> SessionSummary:
        """Stop a session; returns its final summary."""
        session = self._sessions.get(slot_id)
        if session is None:
            raise AgentError(
                ErrorCode.SESSION_NOT_FOUND,
                f"No session is running for slot {slot_id}.",
                status=404,
            )
        await self._finish(session, reason)
        if session.stop_reason is StatusReason.STOP_FAILED:
            raise AgentError(
                ErrorCode.STOP_SESSION_FAILED,
                f"Session {slot_id} did not stop cleanly; it was removed. See the agent log.",
                status=500,
            )
        return session.describe()

    async def _finish(self, session: ActiveSession, reason: StatusReason) -> None:
        """Cancel the session's work, forget it, and report STOPPED."""
        if self._sessions.get(session.slot_id) is not session:
            return
        del self._sessions[session.slot_id]  # a concurrent stop now gets 404
        # Until its row is gone, the slot is "stopping": a resume (after a model swap)
        # or a new start must not bring it back while its work winds down.
        self._stopping[session.slot_id] = session
        session.stop_reason = reason
        try:
            stuck = await wind_down(session.task, session.slot_id)
            # After the work is cancelled: no analysis can change the verdict any more.
            session.final_presence = session.presence.entries(self._events.at)

            def stopped(row_problem: str | None) -> SessionStatusEvent:
                problems = "; ".join(p for p in (stuck, row_problem) if p)
                return self._stopped_event(session, reason, problems or None)

            stored = await forget_and_report(
                self._store, self._sink, session.slot_id, session.command.callback_url, stopped
            )
            if stored is None:
                self._commands.forget(session.slot_id)
            if stuck or stored:
                session.stop_reason = StatusReason.STOP_FAILED
            if self._history is not None:
                await self._history.ended(session, session.stop_reason, self._events.now())
        finally:
            del self._stopping[session.slot_id]
        self._on_stopped(session.slot_id)
        self._on_change()
        log.info("SESSION_STOPPED slot=%s reason=%s", session.slot_id, session.stop_reason)

    def _stopped_event(
        self, session: ActiveSession, reason: StatusReason, problem: str | None
    ) -> SessionStatusEvent:
        """The STOPPED event; when the stop went wrong its reason is STOP_FAILED and its
        message keeps the reason the session was stopped for."""
        return self._events.status(
            session.slot_id,
            SessionStatus.STOPPED,
            StatusReason.STOP_FAILED if problem else reason,
            cameras=session.uptimes(),
            presence=session.final_presence,
            message=f"Stopping for {reason} failed: {problem}." if problem else None,
        )

    async def _emit(
        self,
        session: ActiveSession,
        status: SessionStatus,
        reason: StatusReason | None = None,
        *,
        strict: bool = False,
    ) -> None:
        """Report a status change (STOPPED: :meth:`_stopped_event`); ``strict`` raises when
        the event cannot be stored (a session must not start if its events would be lost),
        else the loss is logged."""
        event = self._events.status(session.slot_id, status, reason)
        if strict:
            await self._sink.emit(event, session.command.callback_url)
        else:
            await emit_or_log(self._sink, event, session.command.callback_url)

    async def resume_all(self) -> None:
        """Resume persisted sessions whose end time has not passed (after a restart).

        Without a model, sessions are not resumed and their rows are kept: they resume
        when the agent next starts with a model.
        """
        async with self._resume_lock:  # a model swap during the start-up resume waits
            await self._resume_rows()

    async def _resume_rows(self) -> None:
        rows = await self._store.call(self._store.sessions)
        if self._models.engine is None:
            if rows:
                log.error("SESSION_RESUME_DEFERRED sessions=%d reason=no model loaded", len(rows))
            return
        for row in rows:
            slot = row["slot_id"]
            if slot in self._sessions or slot in self._stopping:
                continue  # running, or stopping (resume_all also runs after a model swap)
            try:
                command = self._commands.restore(slot, row["command"])
            except ValueError:
                log.exception("SESSION_RESUME_FAILED slot=%s (unreadable row dropped)", slot)
                await self._forget(slot)
                continue
            started = datetime.fromtimestamp(row["started_at"], self._events.zone)
            if command.end_time is not None and command.end_time.timestamp() <= time.time():
                ended = "ended while the agent was down"
                await self._drop(command, started, StatusReason.SESSION_ENDED, ended)
                continue
            try:
                session = self._build(command, started)
            except AgentError as exc:
                log.error(
                    "SESSION_RESUME_FAILED slot=%s code=%s message=%s", slot, exc.code, exc.message
                )
                await self._drop(command, started, StatusReason.AGENT_RESTARTED, exc.message)
                continue
            session.presence.restore(await self._store.call(self._store.presence, slot))
            self._sessions[slot] = session
            await self._emit(session, SessionStatus.RESUMED, StatusReason.AGENT_RESTARTED)
            self._launch(session)
            log.info("SESSION_RESUMED slot=%s", slot)

    async def _drop(
        self, command: SessionStart, started: datetime, reason: StatusReason, message: str
    ) -> None:
        """Forget a persisted session that cannot resume, report it STOPPED, and list it
        among the ended sessions."""
        book = PresenceBook([s.id for s in command.students])
        with contextlib.suppress(StoreError):  # the verdict then says only NOT_SEEN
            book.restore(await self._store.call(self._store.presence, command.slot_id))
        log.info("SESSION_NOT_RESUMED slot=%s reason=%s", command.slot_id, reason)
        if self._history is not None:
            await self._history.record(
                command.slot_id,
                reason,
                started,
                self._events.now(),
                recognised=book.counts().present,
                students=len(command.students),
            )
        if not is_allowed(command.callback_url, self._callback.allowed_urls):
            await self._forget(command.slot_id)
            log.warning(
                "SESSION_EVENT_NOT_SENT slot=%s reason=callback no longer allowed", command.slot_id
            )
            return

        def stopped(row_problem: str | None) -> SessionStatusEvent:
            return self._events.status(
                command.slot_id,
                SessionStatus.STOPPED,
                StatusReason.STOP_FAILED if row_problem else reason,
                message=f"{message}; {row_problem}" if row_problem else message,
                presence=book.entries(self._events.at),
            )

        if not await forget_and_report(
            self._store, self._sink, command.slot_id, command.callback_url, stopped
        ):
            self._commands.forget(command.slot_id)

    async def _forget(self, slot_id: str) -> None:
        """Delete the slot's saved row and, once it is gone, its credentials in memory."""
        if await forget_row(self._store, slot_id):
            self._commands.forget(slot_id)

    async def autostop(self, slot_id: str, reason: StatusReason) -> None:
        """Stop a session on the agent's own initiative (the backend stopped answering or
        refuses every event); a session already gone is only logged."""
        try:
            await self.stop(slot_id, reason)
        except AgentError as exc:
            log.info("AUTOSTOP_SKIPPED slot=%s code=%s", slot_id, exc.code)

    def release_unused_models(self) -> None:
        """Unload recognizers kept for embedding spaces no running session uses now."""
        dropped = self._models.retain({s.embedding_space for s in self.sessions})
        if dropped:
            log.info("MODEL_SPACES_RELEASED spaces=%s", ",".join(dropped))

    async def shutdown(self) -> None:
        """Stop every session's work in reverse start order; rows stay for resume."""
        for session in reversed(self.sessions):
            task = session.task
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._sessions.clear()
