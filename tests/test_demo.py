"""`make demo` runs `python -m agent demo`: it must finish by itself, name the students, read
its camera over RTSP, print the status page's address while it runs, and end by stopping the
session and printing the STOPPED event with the presence verdict on every student."""

from __future__ import annotations

import re

import pytest

from tests.cli import run_cli

ENROLLED = ("Yao Ming", "The astronaut", "Group person 1", "Group person 2")


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_runs_to_completion(broker: str) -> None:
    result = run_cli("demo", "--seconds", "60", "--broker", broker, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    summary = out[out.index("Summary") : out.index("SESSION_STATUS STOPPED")]
    for name in ENROLLED:
        line = next(line for line in summary.splitlines() if line.startswith(name))
        assert "+07:00" in line and "Demo classroom" in line, line
    assert "not seen" not in summary
    assert "RECOGNITION stu-group-3" not in out  # the visitor is never reported
    assert "session started with 4 students" in out
    assert "agent stopped; nothing left running" in out
    assert ("MQTT 5" if broker == "mosquitto" else "MQTT 3.1.1") in out
    # The camera is an RTSP camera, and the status page's address is printed before the
    # session starts, while the agent runs.
    assert re.search(r"RTSP camera at rtsp://127\.0\.0\.1:\d+/stream", out), out
    page = re.search(r"status page: http://127\.0\.0\.1:\d+/", out)
    assert page is not None and page.start() < out.index("session started"), out
    # It ends with the session stopped: the STOPPED event as the callback got it, its
    # summary, and a PRESENT verdict for each enrolled student (the visitor has none).
    stopped = out[out.index("SESSION_STATUS STOPPED") :]
    assert "reason REQUESTED" in stopped.splitlines()[0]
    assert "4 students" in stopped and "present 4, uncertain 0, not seen 0" in stopped
    assert "camera cam-1 (Demo classroom): up" in stopped
    verdicts = stopped[stopped.index("presence (4 students):") :]
    for name in ENROLLED:
        line = next(line for line in verdicts.splitlines() if line.strip().startswith(name))
        assert "PRESENT" in line, line
    assert "Group person 3" not in verdicts.split("agent stopped")[0]
    assert out.index("SESSION_STATUS STOPPED") < out.index("agent stopped")
