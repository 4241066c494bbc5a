"""GPU check for a machine with onnxruntime-gpu: which execution providers each session
really gets, that embeddings match the CPU ones, and detect/embed throughput.

Run on a GPU box (after `scripts/setup-venv.sh .venv gpu`):

    .venv/bin/python bench/gpu_check.py --providers TensorrtExecutionProvider,CUDAExecutionProvider

It prints one JSON object; nothing here is needed on CPU-only machines. For streams per
GPU, run the capacity benchmark there with the GPU providers::

    .venv/bin/python bench/capacity.py --providers CUDAExecutionProvider,CPUExecutionProvider \
        --cameras 24 32 48 64 --previous --naive

(``--previous`` and ``--naive`` with no values skip those variants.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from agent.config import load_config
from agent.vision.defaultpack import sample_photo
from agent.vision.engine import FaceEngine
from agent.vision.modelpack import read_pack

ROOT = Path(__file__).resolve().parent.parent


def _time(fn: Any, runs: int) -> float:
    fn()  # warm-up (TensorRT builds its engine here)
    started = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - started) / runs * 1000


def main() -> None:
    """Build CPU and GPU engines on the default pack and compare them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--providers", default="CUDAExecutionProvider", help="comma-separated, in order"
    )
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    cfg = load_config(None)
    pack = read_pack(ROOT / "models" / "buffalo_sc")
    requested = (*args.providers.split(","), "CPUExecutionProvider")
    cpu = FaceEngine(pack, cfg.models, cfg.recognition)
    gpu = FaceEngine(pack, cfg.models.model_copy(update={"providers": requested}), cfg.recognition)
    image = np.asarray(cv2.imread(str(sample_photo("t1.jpg"))), np.uint8)
    frame = cv2.resize(image, (1280, 720))
    crops = cpu.align(frame, cpu.detect(frame))
    batch = crops * 8
    cosines = np.sum(cpu.embed(crops) * gpu.embed(crops), axis=1)
    result = {
        "available": ort.get_available_providers(),
        "requested": list(requested),
        "active": {role: list(r.active) for role, r in gpu.providers.items()},
        "warnings": gpu.provider_warnings(),
        "faces": len(crops),
        "min_cosine_gpu_vs_cpu": float(cosines.min()),
        "ms": {
            "detect_720p_cpu": _time(lambda: cpu.detect(frame), args.runs),
            "detect_720p_gpu": _time(lambda: gpu.detect(frame), args.runs),
            f"embed_{len(batch)}_cpu": _time(lambda: cpu.embed(batch), max(3, args.runs // 10)),
            f"embed_{len(batch)}_gpu": _time(lambda: gpu.embed(batch), args.runs),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
