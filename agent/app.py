"""The agent process: one supervisor that starts every part, owns every task and thread,
and shuts them down in reverse order.

Start: lanes and state file -> supervisor, outbox and delivery -> model -> sessions -> MQTT
link, status report and command processor -> local HTTP -> resume persisted sessions ->
long-lived tasks. Stop (SIGTERM/SIGINT): refuse new commands, finish the ones running, stop
sessions' work (they stay persisted for resume), publish 'offline', close the link, then
the tasks, the lanes (the sqlite lane last) and the state file; all within the configured
grace period. The agent's blocking work goes to threads through its lanes
(:mod:`agent.lanes`, created here and closed at the end); the camera readers and the
model-file watcher have threads of their own, which hand results to the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from enum import StrEnum

from agent import __version__
from agent.camera.video_source import install_opencv_options
from agent.commands.handlers import build_handlers
from agent.commands.processor import CommandProcessor
from agent.config import AgentConfig, api_keys
from agent.events.delivery import Delivery
from agent.events.event import EventFactory, EventSink
from agent.events.housekeeping import housekeeping
from agent.events.outbox import Outbox
from agent.events.sink import OutboxSink
from agent.events.store import Store
from agent.lanes import Lanes
from agent.protocol import StatusReason
from agent.session.autostop import AutoStop
from agent.session.history import SessionHistory
from agent.session.manager import SessionManager, SessionRunner
from agent.session.runner import RecognitionRunner
from agent.session.scheduler import AnalysisScheduler
from agent.session.space_notice import SpaceNotice
from agent.status.metrics import Metrics
from agent.status.models import AgentStatus, wire
from agent.status.reporter import StatusReporter
from agent.supervisor import RestartPolicy, Supervisor
from agent.transport.local_http import LocalHttp
from agent.transport.mqtt import MqttLink
from agent.transport.replies import ReplyRouter
from agent.transport.webui import UiSources, WebUi
from agent.vision.engine import FaceEngine
from agent.vision.inference import InferencePool, ModelSlot
from agent.vision.model_watch import ModelWatcher

log = logging.getLogger(__name__)


class AgentState(StrEnum):
    """Lifecycle of the agent process."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class _Core:
    """The parts built first, in this order, that the rest of the agent stands on."""

    lanes: Lanes
    store: Store
    pool: InferencePool
    supervisor: Supervisor
    outbox: Outbox
    delivery: Delivery
    sink: EventSink
    events: EventFactory
    scheduler: AnalysisScheduler | None
    runner: SessionRunner


class Agent:
    """Supervisor of one agent process. ``run`` returns after a clean shutdown."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        sink: EventSink | None = None,
        runner: SessionRunner | None = None,
    ) -> None:
        self.cfg = cfg
        # Before any camera thread exists: no camera open writes os.environ afterwards.
        install_opencv_options(cfg.cameras)
        self.state = AgentState.STARTING
        self.models = ModelSlot()
        self._injected_sink = sink
        self._runner = runner  # None: the real camera pipeline, built in run()
        self._started = time.time()
        self._status_dirty = asyncio.Event()
        self.sessions: SessionManager | None = None
        self.link: MqttLink | None = None
        self._pool: InferencePool | None = None
        self.outbox: Outbox | None = None
        self.watcher: ModelWatcher | None = None
        self.metrics = Metrics()
        self.metrics.attach(self._status_for_metrics)
        self.http: LocalHttp | None = None
        self.delivery: Delivery | None = None
        # Stops a session whose backend fails its events (fed by delivery's records).
        self.autostop = AutoStop(cfg.callback, self._autostop)
        self.supervisor: Supervisor | None = None
        self.reporter: StatusReporter | None = None
        self.space_notice: SpaceNotice | None = None
        self._history: SessionHistory | None = None

    # Model ----------------------------------------------------------------------------

    async def _on_swap(self, engine: FaceEngine) -> None:
        """A pack went into service: resume sessions that waited for a model, drop
        recognizers no session needs, tell the backend."""
        for warning in engine.provider_warnings():
            log.warning("ONNX_PROVIDER_DEGRADED %s", warning)
        if self.space_notice is not None:
            await self.space_notice.serving(engine.embedding_space)
        sessions = self.sessions
        if sessions is not None:
            if self.state is AgentState.RUNNING:
                await sessions.resume_all()
            sessions.release_unused_models()
        self._mark_status_dirty()

    async def _load_state_views(self, store: Store) -> SessionHistory:
        """What the state file remembers for operators: ended sessions, and the embedding
        space in service (read before the first pack loads, which may change it)."""
        notice = self.space_notice = SpaceNotice(store, self._mark_status_dirty)
        await notice.load()
        return await SessionHistory.loaded(store)

    def _session_stopped(self, slot_id: str) -> None:
        """Forget the slot's delivery counters; unload recognizers no session needs now."""
        if self.delivery is not None:
            self.delivery.forget(slot_id)
        if self.sessions is not None:
            self.sessions.release_unused_models()

    def _active_slots(self) -> set[str]:
        """Slots of the running sessions (none before the session manager exists)."""
        sessions = self.sessions
        return {s.slot_id for s in sessions.sessions} if sessions is not None else set()

    # Status ---------------------------------------------------------------------------

    def _status_for_metrics(self) -> AgentStatus | None:
        """The status report, once the reporter exists (metrics read it on scrape)."""
        return self.reporter.status() if self.reporter is not None else None

    def _mark_status_dirty(self) -> None:
        self._status_dirty.set()

    async def _status_publisher(self, link: MqttLink) -> None:
        """Republish the retained 'online' message whenever sessions or the model change."""
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            await link.publish_status()

    # Lifecycle ------------------------------------------------------------------------

    async def _autostop(self, slot_id: str, reason: StatusReason) -> None:
        """The delivery rule found the backend unresponsive (or refusing) for this session."""
        if self.sessions is not None:
            await self.sessions.autostop(slot_id, reason)

    async def _wait_for_stop(self, stop: asyncio.Event, fatal: asyncio.Event) -> None:
        """Return when a stop is requested or a supervised task is beyond repair."""
        waits = [
            asyncio.create_task(stop.wait(), name="stop-wait"),
            asyncio.create_task(fatal.wait(), name="fatal-wait"),
        ]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    async def _shutdown_gracefully(self, link: MqttLink, sessions: SessionManager) -> None:
        """Refuse new commands, finish running ones, stop sessions' work, say offline."""
        self.state = AgentState.STOPPING
        grace = self.cfg.runtime.shutdown_grace_s
        log.info("AGENT_STOPPING grace=%.0fs", grace)
        try:
            async with asyncio.timeout(grace):
                await link.drain_handlers(timeout=grace / 2)
                await sessions.shutdown()
                await link.close()
        except TimeoutError:
            log.error("AGENT_SHUTDOWN_TIMEOUT some work was cut short")

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly: build the parts in dependency
        order, start them, serve, and stop them in reverse order."""
        core = self._build_core()
        try:
            sessions = await self._build_sessions(core)
            link = self._build_control_plane(core, sessions)
            await self._start(core, sessions, link)
            log.info("AGENT_RUNNING version=%s site=%s", __version__, self.cfg.site.id)
            await self._wait_for_stop(stop, core.supervisor.fatal)
            await self._shutdown_gracefully(link, sessions)
        finally:
            await self._close(core)
        if core.supervisor.fatal_error is not None:
            # Exit non-zero (the CLI turns this into exit 1): systemd's
            # Restart=on-failure then starts the agent afresh.
            raise core.supervisor.fatal_error

    # Building -------------------------------------------------------------------------

    def _build_core(self) -> _Core:
        """The lanes, the state file, the supervisor, the outbox and its delivery, and
        the session runner: everything the sessions and the control plane stand on."""
        cfg = self.cfg
        lanes = Lanes.create(cfg.runtime.inference_workers)
        try:
            store = Store(
                cfg.storage.data_dir, busy_wait_s=cfg.storage.busy_wait_s, lane=lanes.sqlite
            )
        except BaseException:
            lanes.close()  # no thread started yet, but every lane is closed
            raise
        pool = self._pool = InferencePool(lane=lanes.inference)
        supervisor = self.supervisor = Supervisor(
            self._restart_policy(), on_failure=self.metrics.observe_task_failure
        )
        outbox = self.outbox = Outbox(store, max_pending=cfg.callback.max_pending_events)
        delivery = self.delivery = Delivery(
            outbox,
            cfg.callback,
            api_key=cfg.callback.api_key_value(),
            active_slots=self._active_slots,
            on_health=self.autostop.observe,
            on_result=self.metrics.observe_delivery,
            on_crash=supervisor.record_failure,
        )
        sink = self._injected_sink or OutboxSink(outbox, delivery)
        events = EventFactory(cfg.site.id, cfg.site.timezone)
        scheduler = (  # shared by every session's cameras; none when the runner is injected
            None
            if self._runner
            else AnalysisScheduler(cfg.analysis, cfg.cameras, cfg.runtime.inference_workers)
        )
        runner = self._runner or RecognitionRunner(
            cameras=cfg.cameras,
            recognition=cfg.recognition,
            models=self.models,
            pool=pool,
            sink=sink,
            events=events,
            store=store,
            metrics=self.metrics,
            scheduler=scheduler,
        )
        return _Core(
            lanes, store, pool, supervisor, outbox, delivery, sink, events, scheduler, runner
        )

    def _restart_policy(self) -> RestartPolicy:
        runtime = self.cfg.runtime
        return RestartPolicy(
            limit=runtime.task_restart_limit,
            window_s=runtime.task_restart_window_s,
            backoff_min_s=runtime.task_backoff_min_s,
            backoff_max_s=runtime.task_backoff_max_s,
        )

    async def _build_sessions(self, core: _Core) -> SessionManager:
        """The model watcher (and the first pack loaded), what the state file remembers,
        the delivery of events left from before, and the session manager."""
        cfg = self.cfg
        self.watcher = ModelWatcher(
            cfg.models,
            cfg.recognition,
            self.models,
            core.pool,
            on_swap=self._on_swap,
            store=core.store,
        )
        history = self._history = await self._load_state_views(core.store)
        await self.watcher.reload()
        await core.delivery.start(scanner=False)
        sessions = self.sessions = SessionManager(
            store=core.store,
            models=self.models,
            sink=core.sink,
            events=core.events,
            cameras=cfg.cameras,
            callback=cfg.callback,
            recognition=cfg.recognition,
            runner=core.runner,
            limits=cfg.runtime,
            on_change=self._mark_status_dirty,
            on_stopped=self._session_stopped,
            history=history,
        )
        return sessions

    def _build_control_plane(self, core: _Core, sessions: SessionManager) -> MqttLink:
        """The MQTT link, the status report (which describes the link) and the command
        processor (which replies through it); the link is then given the other two."""
        cfg = self.cfg
        assert self.watcher is not None and self.space_notice is not None
        link = self.link = MqttLink(cfg.mqtt, cfg.site.id)
        reporter = self.reporter = StatusReporter(
            site_id=cfg.site.id,
            state=lambda: self.state.value,
            started=self._started,
            models=self.models,
            watcher=self.watcher,
            sessions=sessions,
            link=link,
            outbox=core.outbox,
            delivery=core.delivery,
            supervisor=core.supervisor,
            scheduler=core.scheduler,
            history=self._history,
            space_notice=self.space_notice,
        )
        processor = CommandProcessor(
            command_prefix=f"{cfg.mqtt.topic_prefix}/{cfg.site.id}/cmd",
            api_keys=api_keys(cfg.auth),
            max_payload_bytes=cfg.mqtt.max_payload_bytes,
            reply_cache_s=cfg.mqtt.reply_cache_s,
            store=core.store,
            handlers=build_handlers(
                sessions=sessions,
                models=self.models,
                pool=core.pool,
                enrollment=cfg.enrollment,
                status=reporter,
                space_notice=self.space_notice,
            ),
            send_reply=ReplyRouter(link, cfg.mqtt.unauthenticated_reply_topics).send,
            accepting=lambda: self.state is AgentState.RUNNING,
            parse_lane=core.lanes.commands,
        )
        link.attach(processor.handle, lambda: wire(reporter.online()))
        return link

    # Starting and stopping ------------------------------------------------------------

    async def _start(self, core: _Core, sessions: SessionManager, link: MqttLink) -> None:
        """Serve the local HTTP endpoint, resume sessions, then accept commands and start
        the long-lived tasks."""
        await self._start_http(core, sessions)
        # Sessions resume before commands are accepted, so a command never meets a
        # half-restored agent.
        await sessions.resume_all()
        self.state = AgentState.RUNNING
        cfg = self.cfg
        supervisor = core.supervisor
        supervisor.spawn("delivery-scanner", core.delivery.scan_forever)
        supervisor.spawn("mqtt-link", link.run)
        supervisor.spawn("status-publisher", functools.partial(self._status_publisher, link))
        supervisor.spawn(
            "housekeeping",
            functools.partial(
                housekeeping,
                core.store,
                core.outbox,
                reply_cache_s=cfg.mqtt.reply_cache_s,
                delivered_retention_s=cfg.callback.delivered_retention_s,
                dead_letter_crop_retention_s=cfg.callback.dead_letter_crop_retention_s,
            ),
        )
        if cfg.models.watch and self.watcher is not None:
            supervisor.spawn("model-watcher", self.watcher.run)

    async def _start_http(self, core: _Core, sessions: SessionManager) -> None:
        """The local HTTP endpoint (and the status page on it), when configured."""
        cfg = self.cfg
        if not cfg.metrics.enabled or self.reporter is None:
            return
        ui = None
        if cfg.webui.enabled:
            sources = UiSources(
                self.reporter.status,
                sessions.get,
                lambda: [(s.slot_id, c.url) for s in sessions.sessions for c in s.camera_plan],
            )
            ui = WebUi(cfg, sources, page=core.lanes.page, camera_io=core.lanes.camera_io)
        self.http = LocalHttp(cfg.metrics, self.metrics, self.reporter.status, ui)
        await self.http.start()

    async def _close(self, core: _Core) -> None:
        """Stop everything that was started, in reverse order; the state file last."""
        if self.sessions is not None:
            await self.sessions.shutdown()  # no-op after a clean shutdown
        await core.supervisor.stop()
        await self.autostop.close()
        await core.delivery.close()
        if self.http is not None:
            await self.http.stop()
        # The sqlite lane closes last of the lanes, finishing the writes queued on it;
        # then the state file's connections close.
        core.lanes.close()
        core.store.close()
        self.state = AgentState.STOPPED
        log.info("AGENT_STOPPED")
