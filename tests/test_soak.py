"""A fraction of a minute of the soak (``bench/soak.py``), so that the benchmark keeps
working: the real agent process under session churn, a camera kill, a camera freeze and a
backend 500 window; every event delivered once or dead-lettered with a reason, resources
within the soak's bounds, exit 0 on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import run_soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_short_soak_holds_every_check(tmp_path: Path) -> None:
    result = await run_soak(0.4, tmp_path, session_every=2.0, fault_every=7.0)
    print(result.to_json())
    assert result.ok, result.problems
    assert set(result.faults) == {"camera_kill", "camera_freeze", "backend_500"}
    assert result.sessions_started >= 8
    assert result.exit_code == 0
    assert result.events and result.dead_reasons  # both outcomes were exercised
