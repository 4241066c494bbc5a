"""The agent process: one supervisor that starts every part, owns every task and thread,
and shuts them down in reverse order.

Start: state file -> inference pool -> model -> sessions -> command processor and MQTT
link -> resume persisted sessions. Stop (SIGTERM/SIGINT): refuse new commands, finish the
ones running, stop sessions' work (they stay persisted for resume), publish 'offline',
close the link, the pool and the state file; all within the configured grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum
from typing import Any

from paho.mqtt.client import topic_matches_sub

from agent import __version__
from agent.commands import CommandProcessor, decode_photo_field
from agent.config import AgentConfig, api_keys, read_secret
from agent.delivery import Delivery, OutboxSink
from agent.embedding import generate_embedding
from agent.engine import FaceEngine
from agent.errors import AgentError, ErrorCode
from agent.events import EventFactory, EventSink
from agent.inference import InferencePool, ModelSlot
from agent.local_http import LocalHttp
from agent.metrics import Metrics
from agent.model_watch import ModelWatcher
from agent.mqtt import IncomingMessage, MqttLink
from agent.outbox import Outbox
from agent.pipeline import RecognitionRunner
from agent.protocol import Command, EmbeddingGenerate, SessionStart, SessionStop, StatusReason
from agent.redaction import log_safe
from agent.reply import Reply
from agent.sessions import SessionManager, SessionRunner
from agent.store import Store
from agent.supervisor import RestartPolicy, Supervisor
from agent.webui import UiSources, WebUi

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 3600.0
OUTBOX_BACKLOG_WARN_S = 3600.0
STORAGE_WARN_S = 600.0  # a state-file failure stays in warnings this long


class AgentState(StrEnum):
    """Lifecycle of the agent process."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


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
        self.metrics.attach(self)
        self.http: LocalHttp | None = None
        self.delivery: Delivery | None = None
        self.supervisor: Supervisor | None = None

    # Model ----------------------------------------------------------------------------

    async def _on_swap(self, engine: FaceEngine) -> None:
        """A pack went into service: resume sessions that waited for a model, drop
        recognizers no session needs, tell the backend."""
        for warning in engine.provider_warnings():
            log.warning("ONNX_PROVIDER_DEGRADED %s", warning)
        sessions = self.sessions
        if sessions is not None:
            if self.state is AgentState.RUNNING:
                await sessions.resume_all()
            dropped = self.models.retain({s.embedding_space for s in sessions.sessions})
            if dropped:
                log.info("MODEL_SPACES_RELEASED spaces=%s", ",".join(dropped))
        self._mark_status_dirty()

    def _session_stopped(self, slot_id: str) -> None:
        """Forget the slot's delivery counters; unload recognizers no session needs now."""
        if self.delivery is not None:
            self.delivery.forget(slot_id)
        if self.sessions is not None:
            dropped = self.models.retain({s.embedding_space for s in self.sessions.sessions})
            if dropped:
                log.info("MODEL_SPACES_RELEASED spaces=%s", ",".join(dropped))

    # Status ---------------------------------------------------------------------------

    def online_payload(self) -> dict[str, Any]:
        """The retained availability message."""
        engine = self.models.engine
        return {
            "state": "online",
            "version": __version__,
            "siteId": self.cfg.site.id,
            "modelPack": engine.pack.name if engine else None,
            "embeddingSpace": engine.embedding_space if engine else None,
            "activeSessions": [s.slot_id for s in self.sessions.sessions] if self.sessions else [],
            "warnings": self.warnings(),
        }

    def warnings(self) -> list[str]:
        """Conditions an operator should see (degraded provider, no model, outbox full...)."""
        engine = self.models.engine
        found = (
            [f"MODEL_NOT_LOADED: {self.models.reason}"]
            if engine is None
            else [f"ONNX_PROVIDER_DEGRADED: {w}" for w in engine.provider_warnings()]
        )
        if self.supervisor is not None:
            found.extend(self.supervisor.warnings())
        if self.models.reload_error:
            found.append(f"MODEL_RELOAD_FAILED: {self.models.reload_error}")
        if self.delivery is not None and self.delivery.dead_letters.count:
            news = self.delivery.dead_letters
            found.append(
                f"CALLBACK_DEAD_LETTERS: {news.count} event(s) refused by the backend since "
                f"start (last: slot {news.last_slot}, {news.last_error}); see "
                "`python -m agent outbox`, re-send with `python -m agent outbox retry`"
            )
        store = self.outbox.store if self.outbox is not None else None
        if store is not None:
            if store.busy_for is not None:
                found.append(f"STORAGE_BUSY: the state file is locked for {store.busy_for:.0f} s")
            if store.last_error and time.time() - store.last_error[0] < STORAGE_WARN_S:
                when, error = store.last_error
                found.append(f"{error.code}: {time.time() - when:.0f} s ago: {error.message}")
        if self.outbox is not None:
            if self.outbox.full_reason:
                found.append(f"OUTBOX_FULL: {self.outbox.full_reason}")
            oldest = self.outbox.stats()["oldestPending"]
            if oldest and oldest["ageSeconds"] > OUTBOX_BACKLOG_WARN_S:
                found.append(
                    f"OUTBOX_BACKLOG: oldest undelivered event is {oldest['ageSeconds']:.0f} s old"
                )
        return found

    def status(self) -> dict[str, Any]:
        """The agent's state for the status command."""
        link = self.link
        return {
            "agent": {
                "version": __version__,
                "siteId": self.cfg.site.id,
                "state": self.state.value,
                "uptimeSeconds": round(time.time() - self._started, 1),
            },
            "model": {
                **self.models.describe(),
                "reloads": self.watcher.describe() if self.watcher else None,
            },
            "sessions": [s.summary() for s in self.sessions.sessions] if self.sessions else [],
            "mqtt": {
                "connected": link.connected if link else False,
                "protocol": link.protocol if link else None,
                "connects": link.connects if link else 0,
            },
            "outbox": self.outbox.stats() if self.outbox else None,
            "tasks": self.supervisor.describe() if self.supervisor else [],
            "warnings": self.warnings(),
        }

    def _mark_status_dirty(self) -> None:
        self._status_dirty.set()

    async def _status_publisher(self, link: MqttLink) -> None:
        """Republish the retained 'online' message whenever sessions or the model change."""
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            await link.publish_status()

    # Commands -------------------------------------------------------------------------

    def _handlers(self, sessions: SessionManager, pool: InferencePool) -> dict[str, Any]:
        async def session_start(command: Command) -> Reply:
            assert isinstance(command, SessionStart)
            return Reply.ok("Session started.", await sessions.start(command))

        async def session_stop(command: Command) -> Reply:
            assert isinstance(command, SessionStop)
            return Reply.ok("Session stopped.", await sessions.stop(command.slot_id))

        async def embedding_generate(command: Command) -> Reply:
            assert isinstance(command, EmbeddingGenerate)
            photo = decode_photo_field(command.photo)
            if photo is None:
                raise AgentError(
                    ErrorCode.PHOTO_FILE_REQUIRED,
                    "photo is required: send the image base64-encoded.",
                )
            engine = self.models.require()
            result = await pool.run(
                generate_embedding,
                engine,
                self.cfg.enrollment,
                photo=photo,
                submission_id=command.submission_id,
            )
            return Reply.ok("Embedding generated.", result.as_data())

        async def status(command: Command) -> Reply:
            return Reply.ok("Agent status.", self.status())

        async def refuse_while_stopping(handler: Any, command: Command) -> Reply:
            if self.state is not AgentState.RUNNING and handler is not status:
                raise AgentError(
                    ErrorCode.AGENT_SHUTTING_DOWN,
                    "The agent is starting or shutting down; retry in a moment.",
                    status=503,
                )
            result: Reply = await handler(command)
            return result

        table = {
            "session/start": session_start,
            "session/stop": session_stop,
            "embedding/generate": embedding_generate,
            "status": status,
        }
        return {
            name: (lambda c, h=handler: refuse_while_stopping(h, c))
            for name, handler in table.items()
        }

    def _may_reply_to(self, topic: str, reply: Reply) -> bool:
        """Whether a reply may go to the request's MQTT v5 response topic. An
        unauthenticated sender must not make the agent publish wherever it likes (a
        reflection amplifier on the site's broker): its 401 goes to the site's reply topic
        unless the topic matches ``[mqtt] unauthenticated_reply_topics``."""
        if not topic or len(topic) > 1024 or any(c in topic for c in "+#\x00"):
            log.warning("REPLY_TOPIC_INVALID topic=%s", log_safe(topic))
            return False
        if reply.code is not ErrorCode.UNAUTHORIZED:
            return True
        allowed = any(
            topic_matches_sub(f, topic) for f in self.cfg.mqtt.unauthenticated_reply_topics
        )
        if not allowed:
            log.warning("REPLY_TOPIC_REFUSED topic=%s reason=unauthenticated", log_safe(topic))
        return allowed

    async def _send_reply(self, message: IncomingMessage, reply: Reply) -> None:
        link = self.link
        if link is None:
            return
        if message.response_topic and self._may_reply_to(message.response_topic, reply):
            await link.publish(
                message.response_topic,
                reply.to_json_dict(),
                correlation_data=message.correlation_data,
            )
        else:
            await link.publish(link.reply_topic, reply.to_json_dict())

    # Lifecycle ------------------------------------------------------------------------

    async def _housekeeping(self, store: Store, outbox: Outbox) -> None:
        while True:
            pruned = await store.run(store.prune_replies, self.cfg.mqtt.reply_cache_s)
            delivered = await store.run(
                outbox.prune_delivered, self.cfg.callback.delivered_retention_s
            )
            if pruned or delivered:
                log.info("HOUSEKEEPING replies_pruned=%d delivered_pruned=%d", pruned, delivered)
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)

    async def _autostop(self, slot_id: str, reason: StatusReason) -> None:
        """The delivery rule found the backend unresponsive (or refusing) for this session."""
        if self.sessions is None:
            return
        try:
            await self.sessions.stop(slot_id, reason)
        except AgentError as exc:
            log.info("AUTOSTOP_SKIPPED slot=%s code=%s", slot_id, exc.code)

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
        """Run until ``stop`` is set, then shut down cleanly."""
        cfg = self.cfg
        store = Store(cfg.storage.data_dir, busy_wait_s=cfg.storage.busy_wait_s)
        pool = self._pool = InferencePool(cfg.runtime.inference_workers)
        runtime = cfg.runtime
        supervisor = self.supervisor = Supervisor(
            RestartPolicy(
                limit=runtime.task_restart_limit,
                window_s=runtime.task_restart_window_s,
                backoff_min_s=runtime.task_backoff_min_s,
                backoff_max_s=max(runtime.task_backoff_min_s, runtime.task_backoff_max_s),
            ),
            on_failure=self.metrics.observe_task_failure,
        )
        outbox = self.outbox = Outbox(store, max_pending=cfg.callback.max_pending_events)
        delivery = self.delivery = Delivery(
            outbox,
            cfg.callback,
            api_key=read_secret(cfg.callback.api_key, cfg.callback.api_key_file),
            active_slots=lambda: (
                {s.slot_id for s in self.sessions.sessions} if self.sessions else ()
            ),
            on_unresponsive=self._autostop,
            on_result=self.metrics.observe_delivery,
            on_crash=supervisor.record_failure,
        )
        sink = self._injected_sink or OutboxSink(outbox, delivery)
        events = EventFactory(cfg.site.id, cfg.site.timezone)
        runner = self._runner or RecognitionRunner(
            cameras=cfg.cameras,
            recognition=cfg.recognition,
            models=self.models,
            pool=pool,
            sink=sink,
            events=events,
            store=store,
            metrics=self.metrics,
        )
        try:
            watcher = self.watcher = ModelWatcher(
                cfg.models, cfg.recognition, self.models, pool, on_swap=self._on_swap
            )
            await watcher.reload()
            await delivery.start(scanner=False)
            sessions = self.sessions = SessionManager(
                store=store,
                models=self.models,
                sink=sink,
                events=events,
                cameras=cfg.cameras,
                callback=cfg.callback,
                recognition=cfg.recognition,
                runner=runner,
                limits=cfg.runtime,
                on_change=self._mark_status_dirty,
                on_stopped=self._session_stopped,
            )
            processor = CommandProcessor(
                command_prefix=f"{cfg.mqtt.topic_prefix}/{cfg.site.id}/cmd",
                api_keys=api_keys(cfg.auth),
                max_payload_bytes=cfg.mqtt.max_payload_bytes,
                reply_cache_s=cfg.mqtt.reply_cache_s,
                store=store,
                handlers=self._handlers(sessions, pool),
                send_reply=self._send_reply,
            )
            link = self.link = MqttLink(
                cfg.mqtt, cfg.site.id, processor.handle, self.online_payload
            )
            if cfg.metrics.enabled:
                ui = WebUi(cfg, UiSources(self.status, sessions.get)) if cfg.webui.enabled else None
                self.http = LocalHttp(cfg.metrics, self.metrics, self.status, ui)
                await self.http.start()
            # Sessions resume before commands are accepted, so a command never meets a
            # half-restored agent.
            await sessions.resume_all()
            self.state = AgentState.RUNNING
            supervisor.spawn("delivery-scanner", delivery.scan_forever)
            supervisor.spawn("mqtt-link", link.run)
            supervisor.spawn("status-publisher", lambda: self._status_publisher(link))
            supervisor.spawn("housekeeping", lambda: self._housekeeping(store, outbox))
            if cfg.models.watch:
                supervisor.spawn("model-watcher", watcher.run)
            log.info("AGENT_RUNNING version=%s site=%s", __version__, cfg.site.id)
            await self._wait_for_stop(stop, supervisor.fatal)
            await self._shutdown_gracefully(link, sessions)
        finally:
            if self.sessions is not None:
                await self.sessions.shutdown()  # no-op after a clean shutdown
            await supervisor.stop()
            await delivery.close()
            if self.http is not None:
                await self.http.stop()
            pool.close()
            store.close()
            self.state = AgentState.STOPPED
            log.info("AGENT_STOPPED")
        if supervisor.fatal_error is not None:
            # Exit non-zero (the CLI turns this into exit 1): systemd's
            # Restart=on-failure then starts the agent afresh.
            raise supervisor.fatal_error
