"""Benchmark: recall and false attendances by face width, through the real agent.

For each width band (16-20, 20-24, 24-32, 32-48, 48-80 px) a 1080p, 15 fps synthetic
classroom (``agent/devkit/classroom.py``, real photos) puts the benchmark class of
``bench/capacity.py`` in view with every face in that band: 16 enrolled students present
(4 of them come in late, at 10, 20, 30 and 40 s), 3 strangers, and 4 enrolled students who
are absent. One RTSP server (GStreamer) serves it; the real agent process (``python -m
agent run``, default ``config.toml``) runs one-camera sessions over MQTT and delivers
RECOGNITION events to a real HTTP callback.

Variants, side by side on the same clips:

* ``agent``: this checkout at its defaults (full-resolution coverage, weighted votes).
* ``shrunk-only``: the same code with the settings before full-resolution coverage (every
  frame shrunk 3x before detection, faces under 32 px dropped, unweighted votes).

Per band and variant: recall (present students recognised within the window), false
attendances (absent students reported), time to recognition, agent CPU (cores).

Run from the project root (about 15 minutes on 2 cores)::

    .venv/bin/python bench/small_faces.py [--bands 16-20 20-24 24-32 32-48 48-80]
        [--variants agent shrunk-only] [--cameras 1] [--window-s 45] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.config import load_config  # noqa: E402
from agent.vision.engine import FaceEngine  # noqa: E402
from agent.vision.modelpack import read_pack  # noqa: E402
from bench.capacity import (  # noqa: E402
    FPS,
    SIZE,
    VARIANTS,
    _f,
    agent_run,
    machine,
    make_clip,
    roster,
    the_class,
)
from tests.rtsp import RtspServer  # noqa: E402

BANDS = ("16-20", "20-24", "24-32", "32-48", "48-80")
CLIP_S = 50.0


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| face width (px) | variant | recall min / mean | false attendances | "
        "time to recognition p50 / p95 / max (s) | agent cores | full-res detection (cores) |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['faces']} | {r['variant']} | {r['recallMin']:.0%} / {r['recallMean']:.0%} | "
            f"{r['falseAttendances']} | {_f(r['ttrP50'], 1)} / {_f(r['ttrP95'], 1)} / "
            f"{_f(r['ttrMax'], 1)} | {_f(r['agentCores'])} | {_f(r.get('fineCoresUsed'))} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="small-faces-"))
    cfg = load_config(None)
    engine = FaceEngine(read_pack(ROOT / "models" / "buffalo_sc"), cfg.models, cfg.recognition)
    pupils = the_class(engine, workdir)
    students = roster(pupils, engine)
    rows: list[dict[str, Any]] = []
    try:
        for band in args.bands:
            lo, hi = (int(v) for v in band.split("-"))
            print(f"clip {band} px ...", file=sys.stderr, flush=True)
            frames = make_clip(pupils, engine, workdir, (lo, hi), CLIP_S)
            server = RtspServer(frames, fps=FPS, width=SIZE[0], height=SIZE[1], bitrate_kbps=4096)
            server.start()
            try:
                for variant in args.variants:
                    print(f"{band} {variant} ...", file=sys.stderr, flush=True)
                    row = await agent_run(
                        variant,
                        ROOT,
                        args.cameras,
                        server,
                        pupils,
                        students,
                        workdir,
                        args.window_s,
                        settings=VARIANTS[variant],
                    )
                    row["faces"] = band
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
            finally:
                server.stop()
            shutil.rmtree(frames, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Machine: {machine()}; {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", nargs="*", default=list(BANDS))
    parser.add_argument("--variants", nargs="*", default=["agent", "shrunk-only"])
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--window-s", type=float, default=45.0)
    parser.add_argument("--json", default="")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
