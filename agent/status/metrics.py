"""Prometheus metrics: per-stage latency histograms fed as work happens, and a collector
that reads the agent's state (cameras, outbox, MQTT, model) at scrape time.

Each agent has its own registry (no global state), served by :mod:`agent.transport.local_http` on
the event loop, so the collector reads the typed status (:mod:`agent.status.reporter`) on the loop
thread. Histograms and counters are thread-safe and may be observed from camera and
inference threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent.status.models import (
    AgentStatus,
    CameraHealth,
    CameraState,
    DecodeMode,
    ModelLoaded,
    ModelStatus,
    OutboxStats,
)

STAGES = ("decode", "detect", "embed", "match")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric family of one agent."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_seconds = Histogram(
            "edge_agent_stage_seconds",
            "Time per pipeline stage and frame.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.faces = Counter(
            "edge_agent_faces_total",
            "Faces detected, how many were embedded, and how many waited for the embedding cap.",
            ["kind"],
            registry=self.registry,
        )
        self.recognitions = Counter(
            "edge_agent_recognitions_total",
            "RECOGNITION events produced.",
            ["mode"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "edge_agent_callback_attempts_total",
            "Callback POSTs by result (delivered, failed), and dead letters (dead).",
            ["result"],
            registry=self.registry,
        )
        self.task_failures = Counter(
            "edge_agent_task_failures_total",
            "Failures of supervised long-lived tasks (each is logged and restarted).",
            ["task"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "edge_agent_callback_seconds",
            "Time of one callback POST.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

    def observe_task_failure(self, task: str) -> None:
        """Count one failure of a supervised task."""
        self.task_failures.labels(task).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record one stage's duration (thread-safe)."""
        self.stage_seconds.labels(stage).observe(seconds)

    def observe_delivery(self, result: str, seconds: float) -> None:
        """Record one callback POST."""
        self.deliveries.labels(result).inc()
        if result != "dead":  # a dead letter is counted here, its POST was timed already
            self.delivery_seconds.observe(seconds)

    def attach(self, status: Callable[[], AgentStatus | None]) -> None:
        """Expose the agent's state through a scrape-time collector reading ``status``
        (None before the agent has its parts)."""
        self.registry.register(_StateCollector(status))


class _StateCollector(Collector):
    """Reads the agent's typed status when Prometheus scrapes (on the event loop)."""

    def __init__(self, status: Callable[[], AgentStatus | None]) -> None:
        self.status = status

    def describe(self) -> list[Any]:
        return []  # families are dynamic; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        status = self.status()
        if status is None:
            return
        yield from self._cameras(status)
        yield from self._coverage(status)
        yield from self._outbox(status.outbox)
        mqtt = GaugeMetricFamily("edge_agent_mqtt_connected", "1 while connected to the broker.")
        mqtt.add_metric([], 1.0 if status.mqtt.connected else 0.0)
        yield mqtt
        sessions = GaugeMetricFamily("edge_agent_sessions", "Running sessions.")
        sessions.add_metric([], float(len(status.sessions)))
        yield sessions
        yield from self._model(status.model)

    def _cameras(self, status: AgentStatus) -> Iterator[Any]:
        state = GaugeMetricFamily(
            "edge_agent_camera_state",
            "1 for the camera's current state.",
            labels=["slot", "camera", "state"],
        )
        age = GaugeMetricFamily(
            "edge_agent_camera_frame_age_seconds",
            "Seconds since the camera's last frame.",
            labels=["slot", "camera"],
        )
        counters = {
            name: CounterMetricFamily(
                f"edge_agent_camera_{name}", help_text, labels=["slot", "camera"]
            )
            for name, help_text in (
                ("frames_read", "Frames read from the camera."),
                ("frames_analysed", "Frames analysed."),
                ("frames_dropped", "Frames read but not analysed."),
                ("reconnects", "Successful reconnects."),
                ("frames_decoded", "Frames decoded (the rest were skipped)."),
                ("analyses_shed", "Analyses skipped because the box was busy."),
            )
        }
        rate = GaugeMetricFamily(
            "edge_agent_camera_analysis_rate",
            "Analyses per second over the last 10 s.",
            labels=["slot", "camera"],
        )
        mode = GaugeMetricFamily(
            "edge_agent_camera_decode_mode",
            f"1 for the camera's decode mode ({DecodeMode.FULL}: every frame; "
            f"{DecodeMode.KEYFRAMES}: keyframes only).",
            labels=["slot", "camera", "mode"],
        )
        for session in status.sessions:
            for cam in session.cameras:
                if not isinstance(cam, CameraHealth):
                    continue  # the session's work has not started yet
                labels = [session.slot_id, cam.id]
                for name in CameraState:
                    state.add_metric([*labels, name.value], 1.0 if cam.state == name else 0.0)
                if cam.frame_age_seconds is not None:
                    age.add_metric(labels, cam.frame_age_seconds)
                for field, family in counters.items():  # field names match the metric names
                    family.add_metric(labels, float(getattr(cam, field)))
                rate.add_metric(labels, cam.analysis_rate or 0.0)
                for dm in DecodeMode:
                    mode.add_metric([*labels, dm.value], 1.0 if cam.decode_mode == dm else 0.0)
        yield state
        yield age
        yield rate
        yield mode
        yield from counters.values()

    def _coverage(self, status: AgentStatus) -> Iterator[Any]:
        """Full-resolution detection share, face widths per camera, presence per session."""
        fine = GaugeMetricFamily(
            "edge_agent_camera_fine_detect_cores",
            "CPU (cores) of full-resolution detection the camera used over the last 30 s.",
            labels=["slot", "camera"],
        )
        widths = CounterMetricFamily(
            "edge_agent_camera_faces_by_width",
            "Tracked faces first seen and recognised, by width in pixels.",
            labels=["slot", "camera", "kind", "width"],
        )
        presence = GaugeMetricFamily(
            "edge_agent_session_presence",
            "Roster students by verdict so far (PRESENT, UNCERTAIN, NOT_SEEN).",
            labels=["slot", "status"],
        )
        for session in status.sessions:
            counts = session.presence_counts
            if counts is not None:
                for name, value in (
                    ("PRESENT", counts.present),
                    ("UNCERTAIN", counts.uncertain),
                    ("NOT_SEEN", counts.not_seen),
                ):
                    presence.add_metric([session.slot_id, name], float(value))
            for cam in session.cameras:
                if not isinstance(cam, CameraHealth) or cam.coverage is None:
                    continue
                labels = [session.slot_id, cam.id]
                fine.add_metric(labels, cam.coverage.fine_detect_cores)
                hist = cam.coverage.face_widths
                for label, seen, recognised in zip(
                    hist.buckets, hist.seen, hist.recognised, strict=True
                ):
                    widths.add_metric([*labels, "seen", label], float(seen))
                    widths.add_metric([*labels, "recognised", label], float(recognised))
        yield fine
        yield widths
        yield presence

    def _outbox(self, stats: OutboxStats | None) -> Iterator[Any]:
        if stats is None:
            return
        depth = GaugeMetricFamily(
            "edge_agent_outbox_events", "Outbox rows by state.", labels=["state"]
        )
        for state, count in stats.counts.items():
            depth.add_metric([state], float(count))
        yield depth
        oldest = GaugeMetricFamily(
            "edge_agent_outbox_oldest_pending_seconds", "Age of the oldest undelivered event."
        )
        pending = stats.oldest_pending
        oldest.add_metric([], pending.age_seconds if pending else 0.0)
        yield oldest
        refused = CounterMetricFamily(
            "edge_agent_outbox_refused", "Events refused because the outbox or disk was full."
        )
        refused.add_metric([], float(stats.refused_since_start))
        yield refused

    def _model(self, model: ModelStatus) -> Iterator[Any]:
        loaded = GaugeMetricFamily("edge_agent_model_loaded", "1 while a model pack is in service.")
        loaded.add_metric([], 1.0 if isinstance(model, ModelLoaded) else 0.0)
        yield loaded
        if isinstance(model, ModelLoaded):
            info = InfoMetricFamily("edge_agent_model", "The model pack in service.")
            info.add_metric(
                [],
                {
                    "pack": model.pack,
                    "embedding_space": model.embedding_space,
                    "detector_provider": (model.providers.get("detector") or ["none"])[0],
                    "recognizer_provider": (model.providers.get("recognizer") or ["none"])[0],
                },
            )
            yield info
        if model.reloads is not None:
            reloads = CounterMetricFamily(
                "edge_agent_model_reloads", "Model pack evaluations by result.", labels=["result"]
            )
            reloads.add_metric(["failed"], float(model.reloads.failures))
            reloads.add_metric(["swapped"], float(model.swaps))
            yield reloads


StageObserver = Callable[[str, float], None]
