"""`make demo` runs `python -m agent demo`: it must finish by itself, name the students."""

from __future__ import annotations

import pytest

from tests.cli import run_cli


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_runs_to_completion(broker: str) -> None:
    result = run_cli("demo", "--seconds", "60", "--broker", broker, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    summary = out[out.index("Summary") :]
    for name in ("Yao Ming", "The astronaut", "Group person 1", "Group person 2"):
        line = next(line for line in summary.splitlines() if line.startswith(name))
        assert "+07:00" in line and "Demo classroom" in line, line
    assert "not seen" not in summary
    assert "RECOGNITION stu-group-3" not in out  # the visitor is never reported
    assert "session started with 4 students" in out
    assert "agent stopped; nothing left running" in out
    assert ("MQTT 5" if broker == "mosquitto" else "MQTT 3.1.1") in out
