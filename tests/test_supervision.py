"""Supervision: a failing long-lived task is logged, counted, shown and restarted; one that
keeps failing makes the agent exit non-zero. Real SQLite faults, a real agent process."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.devkit.brokers import Mosquitto
from agent.devkit.callback_receiver import CallbackServer
from agent.errors import ErrorCode
from agent.events import housekeeping as housekeeping_module
from agent.events.store import DB_NAME
from agent.status.models import wire
from agent.supervisor import RestartPolicy, Supervisor
from tests.agent_harness import (
    agent_config,
    backend,
    running_agent,
    scrape_metrics,
    spawn_agent,
    start_payload,
)
from tests.waiting import wait_until

FAST_RESTART = {"task_backoff_min_s": 0.05, "task_backoff_max_s": 0.2}


async def test_a_failing_task_is_restarted_and_counted() -> None:
    calls = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OSError(f"dependency gone #{calls}")
        healthy.set()
        await asyncio.Event().wait()

    failures: list[str] = []
    sup = Supervisor(RestartPolicy(limit=5, backoff_min_s=0.01), on_failure=failures.append)
    sup.spawn("flaky", flaky)
    await asyncio.wait_for(healthy.wait(), 5)
    (record,) = [wire(r) for r in sup.describe()]
    assert (record["state"], record["failures"]) == ("running", 2)
    assert record["lastError"] == "OSError: dependency gone #2"
    assert failures == ["flaky", "flaky"]
    assert sup.warnings() == [
        "TASK_RESTARTED: flaky failed 2 time(s), last: OSError: dependency gone #2"
    ]
    assert not sup.fatal.is_set()
    await sup.stop()
    assert sup.describe()[0].state == "stopped"


async def test_a_task_that_keeps_failing_is_fatal() -> None:
    async def broken() -> None:
        raise RuntimeError("always")

    async def returns() -> None:
        return None

    sup = Supervisor(RestartPolicy(limit=2, window_s=60, backoff_min_s=0.01))
    sup.spawn("broken", broken)
    sup.spawn("returns", returns, restart=False)
    await asyncio.wait_for(sup.fatal.wait(), 5)
    await sup.stop()
    assert sup.fatal_error is not None
    assert sup.fatal_error.code is ErrorCode.TASK_FAILED
    states = {r.name: wire(r) for r in sup.describe()}
    assert states["returns"]["state"] == "failed" or states["broken"]["state"] == "failed"
    assert "must run until cancelled" in (states["returns"]["lastError"] or "")


def _rename(db: Path, old: str, new: str) -> None:
    conn = sqlite3.connect(db, timeout=10)
    try:
        conn.execute(f"alter table {old} rename to {new}")
        conn.commit()
    finally:
        conn.close()


async def test_delivery_scanner_recovers_when_its_table_comes_back(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float]
) -> None:
    server.mode = {"": 503}
    cfg = agent_config(
        tmp_path / "agent",
        broker,
        callback={
            "allowed_urls": [server.url("/")],
            "timeout_s": 0.5,
            "first_retry_s": 0.05,
            "retry_max_s": 0.3,
            "autostop_failures": 0,
            "autostop_seconds": 2,  # scans every 0.5 s
        },
        runtime={"task_restart_limit": 1000, **FAST_RESTART},
    )
    db = tmp_path / "agent" / DB_NAME
    payload = start_payload(
        "slot-1",
        yao_embedding,
        callbackUrl=server.url(),
        cameras=[{"id": "c1", "rtspUrl": "rtsp://127.0.0.1:1/x"}],
    )
    async with running_agent(cfg, outbox=True) as agent, backend(broker) as b:
        assert (await b.send("session/start", payload))["status"] == 200
        supervisor = agent.supervisor
        assert supervisor is not None
        _rename(db, "events", "events_away")  # the scanner's dependency breaks
        await wait_until(
            lambda: _task(agent, "delivery-scanner")["failures"] >= 2, what="scanner failures"
        )
        status = (await b.send("status", {}))["data"]
        metrics = await scrape_metrics(agent)
        _rename(db, "events_away", "events")
        server.mode = {"": "ok"}
        await server.wait_delivered(1, timeout=15)
        assert _task(agent, "delivery-scanner")["state"] in ("running", "backoff")
        assert not supervisor.fatal.is_set()
    scanner = next(t for t in status["tasks"] if t["name"] == "delivery-scanner")
    assert "events" in scanner["lastError"]
    assert any(w.startswith("TASK_RESTARTED: delivery-scanner") for w in status["warnings"])
    assert 'edge_agent_task_failures_total{task="delivery-scanner"}' in metrics


async def test_housekeeping_recovers_when_its_table_comes_back(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping_module, "HOUSEKEEPING_INTERVAL_S", 0.1)
    cfg = agent_config(
        tmp_path / "agent", broker, runtime={"task_restart_limit": 1000, **FAST_RESTART}
    )
    db = tmp_path / "agent" / DB_NAME
    async with running_agent(cfg, outbox=True) as agent:
        _rename(db, "replies", "replies_away")
        await wait_until(lambda: _task(agent, "housekeeping")["failures"] >= 1, what="failure")
        _rename(db, "replies_away", "replies")
        failures = _task(agent, "housekeeping")["failures"]
        await asyncio.sleep(1.0)  # several housekeeping rounds, all fine now
        assert _task(agent, "housekeeping")["failures"] <= failures + 1
        assert _task(agent, "housekeeping")["state"] == "running"


def _task(agent: Agent, name: str) -> dict[str, Any]:
    assert agent.supervisor is not None
    return next(wire(t) for t in agent.supervisor.describe() if t.name == name)


@pytest.mark.parametrize("fault", ["password_file", "ca_file"])
def test_an_unusable_mqtt_file_stops_the_agent_before_it_starts(
    broker: Mosquitto, tmp_path: Path, fault: str
) -> None:
    # Formerly met by the MQTT link at run time (a crash loop until the restart limit);
    # the files are now read when the config is loaded, so the agent exits 2 at once and
    # systemd does not restart it (RestartPreventExitStatus=2).
    if fault == "password_file":
        env = {"AGENT_MQTT__USERNAME": "agent", "AGENT_MQTT__PASSWORD_FILE": str(tmp_path / "gone")}
    else:
        env = {"AGENT_MQTT__TLS": "true", "AGENT_MQTT__CA_FILE": str(tmp_path / "no-ca.pem")}
    proc = spawn_agent(tmp_path, broker, "http://127.0.0.1:9/", **env)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    log = (tmp_path / "agent.log").read_text()
    assert code == 2, log[-3000:]
    assert f"mqtt.{fault}" in log
    assert "AGENT_RUNNING" not in log


async def test_stop_ends_a_task_that_swallowed_its_first_cancellation() -> None:
    # Python 3.11's asyncio.wait_for (inside aiomqtt's publish) can lose a cancellation
    # that arrives as its future completes; a looping task must still be stopped.
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # lost, as wait_for loses it

    supervisor = Supervisor(RestartPolicy())
    supervisor.spawn("stubborn", stubborn)
    await asyncio.sleep(0.05)
    async with asyncio.timeout(10):
        await supervisor.stop()
    assert swallowed.is_set()
    assert [t.state for t in supervisor.describe()] == ["stopped"]
