"""Benchmark: the agent's FaceEngine against the naive InsightFace loop a user would write.

What it measures, in one process and on the same frames for every pipeline:

* Frames: the sample photos ``t1.jpg`` (6 faces) and ``players.jpg`` (22 faces at its own
  1237x800 size; 16-17 remain detectable once it is shrunk into a 16:9 frame), each
  letterboxed (scaled keeping the aspect ratio, centred on a grey canvas) to 1280x720 and
  1920x1080 -- four BGR frames, like decoded camera frames.
* ``naive``: ``insightface.app.FaceAnalysis(name=<models/buffalo_sc>,
  providers=['CPUExecutionProvider'])`` prepared with ``det_size=(640, 640)``, then
  ``app.get(frame)`` per frame. ONNX Runtime default threading (all cores, spinning on),
  detector input 640x640, one recognizer call per face.
* ``engine-1t``: ``agent.vision.engine.FaceEngine`` with the default config (1 intra-op thread per
  session; aspect-ratio detector input, e.g. 640x384 for 16:9; one batched recognizer call
  per frame; PRelu rewritten as ``Max(x, a*x)`` at load time).
* ``engine-2t``: the same engine with ``intra_op_threads=2`` (spinning off), as a single
  camera stream would run when it has both cores to itself.

Each pipeline is warmed up on each frame (3 runs by default), then timed ``--runs`` times per
frame. By default the pipelines are timed in interleaved rounds (one call of each per round,
the order rotated every round, a short pause between calls so a spinning thread pool goes
idle), so that a noisy neighbour on a shared machine slows all of them alike;
``--order blocks`` times all runs of one pipeline back to back instead. Reported per frame and
pipeline: median and minimum wall-clock ms per frame, frames/s (from the median), median
process CPU ms per frame (all threads together: ~wall for 1 thread, up to 2x wall on 2 busy
cores), and the speed-up ``naive_ms / engine_ms`` of the medians. A second table checks that
the same faces are found: boxes matched greedily between naive and engine (IoU > 0.5), counts
on each side, and the mean / minimum cosine similarity of the embeddings of matched faces. A
third table times the detector alone (naive ``det_model.detect`` vs ``engine.detect``) to
show where the time goes.

Run from the project root::

    .venv/bin/python bench/engine_vs_naive.py [--runs 20] [--warmup 3]
        [--order interleaved|blocks] [--json results.json]

The markdown tables go to stdout; ``--json`` also writes the raw timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR = PROJECT_ROOT / "models" / "buffalo_sc"
PHOTOS = ("t1.jpg", "players.jpg")
SIZES = ((1280, 720), (1920, 1080))
GREY = 114
IOU_MATCH = 0.5
PAUSE_S = 0.5  # between timing blocks, so a spinning thread pool can go idle
GAP_S = 0.02  # between interleaved calls, for the same reason

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Found:
    """One face as reported by a pipeline, normalised to plain arrays."""

    bbox: FloatArray  # x1, y1, x2, y2
    embedding: FloatArray  # L2-normalised


@dataclass
class Timing:
    """Raw timings of one pipeline on one frame."""

    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        """Median wall-clock milliseconds per frame."""
        return statistics.median(self.wall_ms)

    @property
    def min_ms(self) -> float:
        """Fastest wall-clock milliseconds per frame."""
        return min(self.wall_ms)

    @property
    def median_cpu_ms(self) -> float:
        """Median process CPU milliseconds per frame (all threads)."""
        return statistics.median(self.cpu_ms)


def ensure_agent_importable() -> None:
    """Put the project root on ``sys.path`` when the package is not installed (editable)."""
    if importlib.util.find_spec("agent") is None:
        sys.path.insert(0, str(PROJECT_ROOT))


def letterbox(image: Image, width: int, height: int) -> Image:
    """Scale ``image`` to fit ``width`` x ``height`` keeping its aspect, centred on grey."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = round(w * scale), round(h * scale)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    canvas = np.full((height, width, 3), GREY, np.uint8)
    x0, y0 = (width - new_w) // 2, (height - new_h) // 2
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return canvas


def load_frames() -> dict[str, Image]:
    """The four benchmark frames, keyed ``photo@WxH``."""
    from agent.vision.defaultpack import sample_photo

    frames: dict[str, Image] = {}
    for name in PHOTOS:
        decoded = cv2.imread(str(sample_photo(name)), cv2.IMREAD_COLOR)
        if decoded is None:
            raise SystemExit(f"cannot read sample photo {name}")
        image: Image = np.asarray(decoded, np.uint8)
        for width, height in SIZES:
            frames[f"{name}@{width}x{height}"] = letterbox(image, width, height)
    return frames


def iou(a: FloatArray, b: FloatArray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_faces(
    reference: Sequence[Found], candidate: Sequence[Found]
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU (> ``IOU_MATCH``): (ref index, cand index, iou)."""
    pairs = sorted(
        (
            (iou(r.bbox, c.bbox), i, j)
            for i, r in enumerate(reference)
            for j, c in enumerate(candidate)
        ),
        reverse=True,
    )
    used_r: set[int] = set()
    used_c: set[int] = set()
    matched: list[tuple[int, int, float]] = []
    for value, i, j in pairs:
        if value <= IOU_MATCH:
            break
        if i in used_r or j in used_c:
            continue
        used_r.add(i)
        used_c.add(j)
        matched.append((i, j, value))
    return matched


def timed_call(run: Callable[[Image], object], frame: Image, timing: Timing) -> None:
    """Call ``run(frame)`` once and append its wall-clock and process CPU milliseconds."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run(frame)
    timing.cpu_ms.append((time.process_time() - cpu0) * 1000)
    timing.wall_ms.append((time.perf_counter() - wall0) * 1000)


def time_pipelines(
    runs_by_name: Mapping[str, Callable[[Image], object]],
    frame: Image,
    *,
    warmup: int,
    runs: int,
    interleaved: bool,
) -> dict[str, Timing]:
    """Warm up every pipeline on ``frame``, then time ``runs`` calls of each.

    Interleaved: round by round, one call of each pipeline, the order rotated each round.
    Blocks: all calls of one pipeline back to back, then the next pipeline.
    """
    names = list(runs_by_name)
    timings = {name: Timing() for name in names}
    for name in names:
        for _ in range(warmup):
            runs_by_name[name](frame)
    gc.collect()
    if interleaved:
        for round_no in range(runs):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                time.sleep(GAP_S)
                timed_call(runs_by_name[name], frame, timings[name])
    else:
        for name in names:
            time.sleep(PAUSE_S)
            for _ in range(runs):
                timed_call(runs_by_name[name], frame, timings[name])
    return timings


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, library versions, date."""
    import insightface
    import onnxruntime as ort

    cpu_model = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu_model == "unknown":
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        cpu_model = platform.processor() or "unknown"
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags]
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model,
        "simd": simd,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "insightface": insightface.__version__,
        "platform": platform.platform(),
    }


def build_pipelines() -> tuple[dict[str, Callable[[Image], list[Found]]], dict[str, Any]]:
    """The three pipelines (naive, engine-1t, engine-2t) and their detector-only calls."""
    from insightface.app import FaceAnalysis

    from agent.config import load_config
    from agent.vision.engine import FaceEngine
    from agent.vision.modelpack import read_pack

    app = FaceAnalysis(name=str(PACK_DIR), providers=["CPUExecutionProvider"])
    if set(app.models) != {"detection", "recognition"}:
        raise SystemExit(f"FaceAnalysis loaded {sorted(app.models)}, expected both models")
    app.prepare(ctx_id=-1, det_size=(640, 640))

    cfg = load_config(None)
    pack = read_pack(PACK_DIR)
    engine_1t = FaceEngine(pack, cfg.models, cfg.recognition)
    models_2t = cfg.models.model_copy(update={"intra_op_threads": 2})
    engine_2t = FaceEngine(pack, models_2t, cfg.recognition)

    def naive(frame: Image) -> list[Found]:
        return [
            Found(np.asarray(f.bbox, np.float32), np.asarray(f.normed_embedding, np.float32))
            for f in app.get(frame)
        ]

    def engine_run(engine: FaceEngine) -> Callable[[Image], list[Found]]:
        def run(frame: Image) -> list[Found]:
            return [Found(f.bbox, f.embedding) for f in engine.analyze(frame)]

        return run

    pipelines = {
        "naive": naive,
        "engine-1t": engine_run(engine_1t),
        "engine-2t": engine_run(engine_2t),
    }
    detectors: dict[str, Callable[[Image], object]] = {
        "naive": app.det_model.detect,
        "engine-1t": engine_1t.detect,
        "engine-2t": engine_2t.detect,
    }
    setup = {
        "naive": {
            "det_size": [640, 640],
            "threads": "ONNX Runtime default (intra_op_num_threads=0: all cores, spinning on)",
        },
        "engine-1t": {
            "intra_op_threads": cfg.models.intra_op_threads,
            "det_long_side": cfg.recognition.det_long_side,
            "optimize_prelu": cfg.models.optimize_prelu,
        },
        "engine-2t": {
            "intra_op_threads": models_2t.intra_op_threads,
            "det_long_side": cfg.recognition.det_long_side,
            "optimize_prelu": models_2t.optimize_prelu,
        },
        "_detectors": detectors,
    }
    return pipelines, setup


def fmt(value: float, digits: int = 1) -> str:
    """Fixed-point number for the tables."""
    return f"{value:.{digits}f}"


def render(results: dict[str, Any]) -> str:
    """Markdown report of ``results``."""
    info = results["machine"]
    lines = [
        f"Machine: {info['cpu']} ({info['usable_cores']} usable cores, "
        f"{'/'.join(info['simd']) or 'no AVX'}), Python {info['python']}, "
        f"onnxruntime {info['onnxruntime']}, OpenCV {info['opencv']}, numpy {info['numpy']}, "
        f"insightface {info['insightface']}; load average before start "
        f"{info['loadavg_before']}.",
        f"Date: {info['date']}. Runs per frame: {results['runs']} timed after "
        f"{results['warmup']} warm-up, order: {results['order']}.",
        "",
        "| frame | faces | pipeline | det input | median ms/frame | min ms | frames/s "
        "| CPU ms/frame | speed-up vs naive |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for frame, per in results["frames"].items():
        naive_ms = per["timing"]["naive"]["median_ms"]
        for name, t in per["timing"].items():
            ms = t["median_ms"]
            speed = "1.00x" if name == "naive" else f"{naive_ms / ms:.2f}x"
            lines.append(
                f"| {frame} | {per['faces'][name]} | {name} | {per['det_input'][name]} "
                f"| {fmt(ms)} | {fmt(t['min_ms'])} | {fmt(1000 / ms, 2)} "
                f"| {fmt(t['median_cpu_ms'])} | {speed} |"
            )
    lines += [
        "",
        "Same faces found (naive vs engine, boxes matched at IoU > 0.5):",
        "",
        "| frame | engine | naive faces | engine faces | matched | mean IoU "
        "| mean cosine | min cosine |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for frame, per in results["frames"].items():
        for name, check in per["agreement"].items():
            lines.append(
                f"| {frame} | {name} | {check['naive_faces']} | {check['engine_faces']} "
                f"| {check['matched']} | {fmt(check['mean_iou'], 3)} "
                f"| {fmt(check['mean_cosine'], 5)} | {fmt(check['min_cosine'], 5)} |"
            )
    lines += [
        "",
        "Detector alone (median ms per call):",
        "",
        "| frame | engine det input | naive (640x640) | engine-1t | engine-2t |",
        "|---|---|---:|---:|---:|",
    ]
    for frame, per in results["frames"].items():
        det = per["detector_ms"]
        lines.append(
            f"| {frame} | {per['det_input']['engine-1t']} | {fmt(det['naive'])} "
            f"| {fmt(det['engine-1t'])} | {fmt(det['engine-2t'])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the pipelines, check agreement, time them, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per frame (20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs per frame (3)")
    parser.add_argument("--det-runs", type=int, default=20, help="detector-only runs (20)")
    parser.add_argument(
        "--order",
        choices=("interleaved", "blocks"),
        default="interleaved",
        help="interleaved rounds (default) or all runs of one pipeline back to back",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    ensure_agent_importable()
    from agent.vision.engine import detector_input_size

    info = machine_info()
    started = time.perf_counter()
    frames = load_frames()
    pipelines, setup = build_pipelines()
    detectors = setup.pop("_detectors")
    print(f"# pipelines ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    results: dict[str, Any] = {
        "machine": info,
        "runs": args.runs,
        "warmup": args.warmup,
        "order": args.order,
        "setup": setup,
        "frames": {},
    }
    for frame_name, frame in frames.items():
        h, w = frame.shape[:2]
        ew, eh = detector_input_size(w, h, 640)
        per: dict[str, Any] = {
            "shape": [w, h],
            "det_input": {"naive": "640x640", "engine-1t": f"{ew}x{eh}", "engine-2t": f"{ew}x{eh}"},
            "faces": {},
            "timing": {},
            "agreement": {},
            "detector_ms": {},
        }
        outputs = {name: run(frame) for name, run in pipelines.items()}
        reference = outputs["naive"]
        for name, found in outputs.items():
            per["faces"][name] = len(found)
            if name == "naive":
                continue
            matched = match_faces(reference, found)
            cosines = [float(reference[i].embedding @ found[j].embedding) for i, j, _ in matched]
            per["agreement"][name] = {
                "naive_faces": len(reference),
                "engine_faces": len(found),
                "matched": len(matched),
                "mean_iou": statistics.fmean(v for _, _, v in matched) if matched else 0.0,
                "mean_cosine": statistics.fmean(cosines) if cosines else 0.0,
                "min_cosine": min(cosines) if cosines else 0.0,
            }
        interleaved = args.order == "interleaved"
        timings = time_pipelines(
            pipelines, frame, warmup=args.warmup, runs=args.runs, interleaved=interleaved
        )
        for name, timing in timings.items():
            per["timing"][name] = {
                "median_ms": timing.median_ms,
                "min_ms": timing.min_ms,
                "median_cpu_ms": timing.median_cpu_ms,
                "wall_ms": [round(v, 3) for v in timing.wall_ms],
                "cpu_ms": [round(v, 3) for v in timing.cpu_ms],
            }
            print(f"# {frame_name} {name}: {timing.median_ms:.1f} ms/frame", file=sys.stderr)
        det_timings = time_pipelines(
            detectors, frame, warmup=args.warmup, runs=args.det_runs, interleaved=interleaved
        )
        per["detector_ms"] = {name: t.median_ms for name, t in det_timings.items()}
        results["frames"][frame_name] = per
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]

    print(render(results))
    print(f"\nTotal benchmark time: {results['total_seconds']} s.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
