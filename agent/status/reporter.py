"""The agent's status report and warnings, and the retained ``online`` message.

Built from the parts it reads (model slot, reload watcher, sessions, MQTT link, outbox,
delivery, supervisor); read by the ``status`` command, the local HTTP endpoint and the
MQTT link when it (re)publishes the availability message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import __version__
from agent.errors import ErrorCode
from agent.events.delivery import Delivery
from agent.events.outbox import Outbox
from agent.session.history import SessionHistory
from agent.session.manager import SessionManager
from agent.session.scheduler import AnalysisScheduler
from agent.session.space_notice import SpaceNotice
from agent.status.models import AgentInfo, AgentStatus, MqttStatus, OnlineMessage
from agent.supervisor import Supervisor
from agent.transport.mqtt import MqttLink
from agent.vision.inference import ModelSlot

if TYPE_CHECKING:  # the watcher loads the engine (ONNX Runtime); status only reads it
    from agent.vision.model_watch import ModelWatcher

OUTBOX_BACKLOG_WARN_S = 3600.0
STORAGE_WARN_S = 600.0  # a state-file failure stays in warnings this long


@dataclass
class StatusReporter:
    """Assembles status, warnings and the online message from the agent's parts."""

    site_id: str
    state: Callable[[], str]
    started: float
    models: ModelSlot
    watcher: ModelWatcher
    sessions: SessionManager
    link: MqttLink
    outbox: Outbox
    delivery: Delivery
    supervisor: Supervisor
    scheduler: AnalysisScheduler | None = None
    history: SessionHistory | None = None
    space_notice: SpaceNotice | None = None

    def online(self) -> OnlineMessage:
        """The retained availability message."""
        engine = self.models.engine
        return OnlineMessage(
            version=__version__,
            site_id=self.site_id,
            model_pack=engine.pack.name if engine else None,
            embedding_space=engine.embedding_space if engine else None,
            active_sessions=[s.slot_id for s in self.sessions.sessions],
            warnings=self.warnings(),
        )

    def warnings(self) -> list[str]:
        """Conditions an operator should see (degraded provider, no model, outbox full...)."""
        engine = self.models.engine
        found = (
            [f"{ErrorCode.MODEL_NOT_LOADED}: {self.models.reason}"]
            if engine is None
            else [f"ONNX_PROVIDER_DEGRADED: {w}" for w in engine.provider_warnings()]
        )
        found.extend(self.supervisor.warnings())
        space_change = self.space_notice.warning() if self.space_notice else None
        if space_change:
            found.append(space_change)
        for session in self.sessions.sessions:
            left = session.waiting_for_cameras()
            if left is not None:
                found.append(
                    f"CAMERAS_DOWN: every camera of slot {session.slot_id} is down; the "
                    f"session stops (ALL_CAMERAS_FAILED) in {left:.0f} s unless one comes back"
                )
        if self.history is not None:
            found.extend(self.history.warnings())
        if insecure := self.link.cfg.exposure_warning():
            found.append(insecure)
        if self.models.reload_error:
            found.append(f"{ErrorCode.MODEL_RELOAD_FAILED}: {self.models.reload_error}")
        news = self.delivery.dead_letters
        if news.count:
            found.append(
                f"CALLBACK_DEAD_LETTERS: {news.count} event(s) refused by the backend since "
                f"start (last: slot {news.last_slot}, {news.last_error}); see "
                "`python -m agent outbox`, re-send with `python -m agent outbox retry`"
            )
        store = self.outbox.store
        if store.busy_for is not None:
            found.append(
                f"{ErrorCode.STORAGE_BUSY}: the state file is locked for {store.busy_for:.0f} s"
            )
        if store.last_error and time.time() - store.last_error[0] < STORAGE_WARN_S:
            when, error = store.last_error
            found.append(f"{error.code}: {time.time() - when:.0f} s ago: {error.message}")
        if self.outbox.full_reason:
            found.append(f"{ErrorCode.OUTBOX_FULL}: {self.outbox.full_reason}")
        oldest = self.outbox.describe().oldest_pending
        if oldest and oldest.age_seconds > OUTBOX_BACKLOG_WARN_S:
            found.append(
                f"OUTBOX_BACKLOG: oldest undelivered event is {oldest.age_seconds:.0f} s old"
            )
        return found

    def status(self) -> AgentStatus:
        """The agent's state for the status command and the local endpoint."""
        link = self.link
        return AgentStatus(
            agent=AgentInfo(
                version=__version__,
                site_id=self.site_id,
                state=self.state(),
                uptime_seconds=round(time.time() - self.started, 1),
            ),
            model=self.models.describe().model_copy(update={"reloads": self.watcher.describe()}),
            sessions=[s.describe() for s in self.sessions.sessions],
            recent_sessions=self.history.recent() if self.history else [],
            mqtt=MqttStatus(
                connected=link.connected, protocol=link.protocol, connects=link.connects
            ),
            outbox=self.outbox.describe(),
            tasks=self.supervisor.describe(),
            analysis=self.scheduler.describe() if self.scheduler else None,
            warnings=self.warnings(),
        )
