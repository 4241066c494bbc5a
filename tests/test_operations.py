"""Operations: Prometheus metrics scraped over HTTP during a real session, the local status
endpoint and `python -m agent status`, JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import aiohttp
import cv2
import pytest

from agent.devkit.brokers import Mosquitto
from agent.devkit.ports import free_port
from agent.events.store import Store
from agent.vision.engine import FaceEngine
from tests.agent_harness import (
    RecordingSink,
    agent_config,
    backend,
    running_agent,
    start_payload,
)
from tests.cli import ROOT, run_cli
from tests.rtsp import RtspServer
from tests.waiting import wait_until


def _samples(text: str, family: str) -> dict[str, float]:
    """``{labels: value}`` of one metric family from the text exposition format."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf"^{family}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


@pytest.mark.slow
async def test_metrics_status_and_health_during_a_session(
    broker: Mosquitto,
    yao_camera: RtspServer,
    tmp_path: Path,
    engine: FaceEngine,
    photos: dict[str, Path],
) -> None:
    (yao,) = engine.analyze(cv2.imread(str(photos["yaoming.jpg"])))
    sink = RecordingSink()
    cfg = agent_config(tmp_path, broker, cameras={"analysis_fps": 5.0})
    async with running_agent(cfg, sink, cameras=True) as agent, backend(broker) as b:
        assert agent.http is not None and agent.http.port
        base = f"http://127.0.0.1:{agent.http.port}"
        payload = start_payload(
            "slot-m",
            [float(x) for x in yao.embedding],
            cameras=[{"id": "cam-9", "rtspUrl": yao_camera.url}],
        )
        assert (await b.send("session/start", payload))["status"] == 200
        await wait_until(
            lambda: any(e.type == "RECOGNITION" for e, _ in sink.events), 20, "a recognition"
        )

        def analysed() -> int:
            assert agent.sessions is not None
            session = agent.sessions.get("slot-m")
            assert session is not None and session.camera_health is not None
            return session.camera_health()[0].frames_analysed

        # A confirmed face is followed, not embedded again: let a few analyses show it.
        confirmed_at = analysed()
        await wait_until(lambda: analysed() >= confirmed_at + 5, 20, "five more analyses")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            async with http.get(f"{base}/healthz") as response:
                health = (response.status, await response.json())
        cli = await asyncio.to_thread(run_cli, "status", "--port", str(agent.http.port), timeout=60)
    cam = '{camera="cam-9",slot="slot-m"}'
    assert _samples(text, "edge_agent_camera_state")[cam[:-1] + ',state="LIVE"}'] == 1.0
    assert 0 <= _samples(text, "edge_agent_camera_frame_age_seconds")[cam] < 3
    read = _samples(text, "edge_agent_camera_frames_read_total")[cam]
    analysed = _samples(text, "edge_agent_camera_frames_analysed_total")[cam]
    assert read >= analysed >= 2  # k = 2 analyses confirmed the student
    for stage in ("decode", "detect", "embed", "match"):
        assert _samples(text, "edge_agent_stage_seconds_count")[f'{{stage="{stage}"}}'] > 0
    assert _samples(text, "edge_agent_recognitions_total")['{mode="ATTENDANCE"}'] == 1.0
    faces = _samples(text, "edge_agent_faces_total")
    assert faces['{kind="detected"}'] > faces['{kind="embedded"}'] > 0  # tracked, not re-embedded
    outbox = _samples(text, "edge_agent_outbox_events")
    assert set(outbox) == {'{state="pending"}', '{state="delivered"}', '{state="dead"}'}
    assert _samples(text, "edge_agent_mqtt_connected")[""] == 1.0
    assert _samples(text, "edge_agent_sessions")[""] == 1.0
    info = next(line for line in text.splitlines() if line.startswith("edge_agent_model_info"))
    assert 'pack="buffalo_sc"' in info and 'recognizer_provider="CPUExecutionProvider"' in info
    assert health[0] == 200 and health[1]["state"] == "RUNNING"
    assert cli.returncode == 0, cli.stderr
    assert "agent   RUNNING" in cli.stdout and "camera cam-9  LIVE" in cli.stdout
    assert "model   buffalo_sc" in cli.stdout


def test_status_cli_without_agent(tmp_path: Path) -> None:
    result = run_cli("status", "--port", str(free_port()), timeout=60)
    assert result.returncode == 1
    assert "does not answer" in result.stderr


def _outbox_cli(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_STORAGE__DATA_DIR": str(data_dir)}
    return run_cli("outbox", "--config", str(ROOT / "config.toml"), env=env, timeout=60)


def test_outbox_on_a_missing_state_file_fails_and_creates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "never-ran"
    result = _outbox_cli(data_dir)
    assert result.returncode == 1
    assert f"no state file at {data_dir / 'agent.db'}" in result.stderr
    assert f"config: {ROOT / 'config.toml'}" in result.stderr  # says what it used
    assert list(tmp_path.iterdir()) == []  # not the folder, not a file


def test_outbox_reads_a_stopped_agents_state_file_without_touching_it(tmp_path: Path) -> None:
    store = Store(tmp_path)  # as a stopped agent leaves it: checkpointed, no -wal/-shm
    store.close()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    result = _outbox_cli(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"] == {"pending": 0, "delivered": 0, "dead": 0}
    assert f"state file: {tmp_path / 'agent.db'}" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


async def test_json_logs_carry_event_names(
    broker: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from agent.config import LoggingConfig
    from agent.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(LoggingConfig(level="INFO", format="json"))
        async with running_agent(agent_config(tmp_path, broker)), backend(broker) as b:
            await b.send("status", {"requestId": "log-1"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    messages = [entry["message"] for entry in lines]
    assert any(m.startswith("COMMAND_OK command=status request_id=log-1") for m in messages)
    assert any(m.startswith("AGENT_RUNNING") for m in messages)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
