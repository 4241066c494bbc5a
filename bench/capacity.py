"""Benchmark: how many 1080p classroom cameras one box serves, through the real agent.

Set-up, as a new user would measure it:

* **One RTSP server** (``agent/devkit/rtsp.py``: GStreamer, x264 ``ultrafast``, one encoder, one
  keyframe a second) serving a 1920x1080, 15 fps synthetic classroom made from real face
  photos (``agent/devkit/classroom.py``): 16 enrolled students present (4 of them come in
  late, at 10, 20, 30 and 40 s), 3 strangers, and 4 enrolled students who are absent;
  faces 36-80 px wide, drifting slowly. Every camera connects to the same stream, so the
  server's cost stays flat as N grows.
* **The real agent process** (``python -m agent run``, the default ``config.toml``; only
  the broker, state folder, callback allowlist and ``cameras.allow_shared`` are set) and a
  real Mosquitto broker; the benchmark is the backend: it starts N one-camera sessions
  over MQTT (each with the 20 enrolled students) and receives RECOGNITION events on a
  real HTTP callback server.
* A clock client opens the stream first: the shared stream starts at clip frame 0 when
  it connects (``T0``; its open takes 0.1-0.2 s), so a student who enters the clip at
  ``t`` enters a session's view at ``max(T0 + t, session start)``.

Per N: agent CPU (``/proc/PID/stat`` over the window), cores per camera, recall per
session (present enrolled students recognised within the window), false attendances
(absent students reported), time from entering the view to the callback (p50/p95), and
the analyses shed (from the agent's ``/status``).

Variants, side by side in the same run:

* ``agent``: this checkout.
* ``previous``: the per-camera loop of an earlier commit (``--previous-rev``), run from a
  temporary git worktree with the same settings.
* ``naive``: InsightFace's ``FaceAnalysis.get`` on every frame a thread reads with
  ``cv2.VideoCapture`` (one thread and one model per camera), matching against the roster
  with the same threshold; measured for small N only.

On a GPU box (after ``scripts/setup-venv.sh .venv gpu``) the same benchmark runs with
``--providers CUDAExecutionProvider,CPUExecutionProvider`` (or TensorRT first); streams per
GPU is the largest N that still meets the goal.

Run from the project root (about 15-20 minutes on 2 cores)::

    .venv/bin/python bench/capacity.py [--cameras 1 4 8 12 16 24 32] [--window-s 55]
        [--previous 12 16 24] [--naive 1 4] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "faces"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.config import load_config  # noqa: E402
from agent.devkit.backend import Backend  # noqa: E402
from agent.devkit.brokers import Mosquitto  # noqa: E402
from agent.devkit.callback_receiver import CallbackServer  # noqa: E402
from agent.devkit.classroom import Person, face_box_of, make_classroom_frames  # noqa: E402
from agent.devkit.ports import free_port  # noqa: E402
from agent.vision.engine import FaceEngine  # noqa: E402
from agent.vision.modelpack import read_pack  # noqa: E402
from bench.pipeline_latency import read_counter, stamp_counter  # noqa: E402
from tests.agent_harness import API_KEY  # noqa: E402
from tests.rtsp import RtspServer  # noqa: E402

SIZE = (1920, 1080)
FPS = 15
CLIP_S = 75.0
LATE = (10.0, 20.0, 30.0, 40.0)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# The class ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pupil:
    """One person of the benchmark class."""

    name: str
    video_photo: Path  # what the camera sees
    enroll_photo: Path  # what the school enrolled (another photo where one exists)
    enrolled: bool
    present: bool
    enter_s: float = 0.0


def _group_faces(engine: FaceEngine, workdir: Path, min_width: float = 45.0) -> list[Path]:
    """Faces cut out of group photos (each a distinct person), big enough."""
    from agent.vision.defaultpack import sample_photo

    out: list[Path] = []
    groups = [Path(sample_photo("t1.jpg")), *sorted(FACES.glob("dlib_multi_*.jpg"))]
    for photo in groups:
        image = cv2.imread(str(photo))
        if image is None:
            continue
        for i, face in enumerate(engine.detect(image)):
            x1, y1, x2, y2 = (int(v) for v in face.bbox)
            if x2 - x1 < min_width:
                continue
            m = int(0.6 * (x2 - x1))
            crop = image[max(0, y1 - m) : y2 + m, max(0, x1 - m) : x2 + m]
            crop = cv2.resize(crop, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
            path = workdir / f"{photo.stem}_{i}.jpg"
            cv2.imwrite(str(path), crop)
            out.append(path)
    return out


def the_class(engine: FaceEngine, workdir: Path) -> list[Pupil]:
    """16 present enrolled (4 late), 4 absent enrolled, 3 strangers."""
    from agent.vision.defaultpack import sample_photo

    named = [
        ("obama", "fr_obama_1.jpg", "fr_obama_2.jpg"),
        ("biden", "fr_biden_1.jpg", "fr_biden_2.jpg"),
        ("kit", "fr_kit_harington_3.jpg", "fr_kit_harington_1.jpeg"),
        ("rose", "fr_rose_leslie_1.jpg", "fr_rose_leslie_2.jpg"),
        ("alex", "fr_alex_lacamoire_1.jpg", "fr_alex_lacamoire_3.jpg"),
        ("lin", "fr_lin_manuel_miranda_1.png", "fr_lin_manuel_miranda_1.png"),
        ("tom", "dlib_tom_cruise_1.jpg", "dlib_tom_cruise_1.jpg"),
    ]
    people = [(n, FACES / v, FACES / e) for n, v, e in named]
    yao = Path(sample_photo("yaoming.jpg"))
    people.append(("yao", yao, yao))
    people += [(p.stem, p, p) for p in _group_faces(engine, workdir)]
    if len(people) < 23:
        raise SystemExit(f"only {len(people)} faces found in {FACES}; 23 needed")
    pupils = []
    for i, (name, video, enroll) in enumerate(people[:23]):
        if i < 16:
            late = i in (3, 7, 11, 15)
            enter = LATE[(3, 7, 11, 15).index(i)] if late else 0.0
            pupils.append(Pupil(name, video, enroll, True, True, enter))
        elif i < 20:
            pupils.append(Pupil(name, video, enroll, True, False))
        else:
            pupils.append(Pupil(name, video, enroll, False, True))
    return pupils


def make_clip(
    pupils: list[Pupil],
    engine: FaceEngine,
    workdir: Path,
    faces: tuple[int, int] = (36, 80),
    clip_s: float = CLIP_S,
) -> Path:
    """The classroom: 19 people in view at seats, back rows smaller, slow drift; face
    widths from ``faces[0]`` (back row) to ``faces[1]`` px (front row)."""
    in_view = [p for p in pupils if p.present]
    cols, rows = 6, 4
    people = []
    for seat, pupil in enumerate(in_view):
        row, col = divmod(seat, cols)
        width = faces[0] + int((faces[1] - faces[0]) * row / (rows - 1))
        x = 180 + col * 300 + (row % 2) * 90
        y = 260 + row * 200
        drift = ((seat % 5) - 2) * 0.6, ((seat % 3) - 1) * 0.4
        people.append(
            Person(
                pupil.name,
                pupil.video_photo,
                pupil.enter_s,
                clip_s + 1,
                (x, y),
                drift,
                width,
                face_box_of(pupil.video_photo, engine),
            )
        )
    frames = workdir / f"clip-{faces[0]}-{faces[1]}"
    if not (frames / f"{round(clip_s * FPS) - 1:04d}.jpg").exists():
        plan = make_classroom_frames(frames, people, seconds=clip_s, fps=FPS, size=SIZE)
        for index in range(plan.n_frames):  # the clip frame index, for the clock
            image = plan.image(index)
            stamp_counter(image, index)
            cv2.imwrite(str(plan.path(index)), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return frames


def roster(pupils: list[Pupil], engine: FaceEngine) -> list[dict[str, Any]]:
    """The enrolled students with embeddings from their enrollment photos."""
    students = []
    for pupil in pupils:
        if not pupil.enrolled:
            continue
        image = cv2.imread(str(pupil.enroll_photo))
        faces = engine.analyze(image)
        face = max(faces, key=lambda f: f.area)
        students.append(
            {
                "id": pupil.name,
                "code": pupil.name[:16],
                "embeddings": [[round(float(x), 6) for x in face.embedding]],
            }
        )
    return students


# Measuring ------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


class Clock:
    """Holds the stream open so its timeline never restarts, and finds ``T0``, when the
    shared stream showed clip frame 0: each keyframe carries its clip frame index (drawn
    in its top-right corner), so ``T0 = min(arrival - index / fps)`` over the keyframes of
    the first loop of the clip (the least delayed one)."""

    def __init__(self, url: str) -> None:
        import av

        self.opened_at = time.time()
        self._container = av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10, 5))
        self._candidates: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="clock", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        stream = self._container.streams.video[0]
        with contextlib.suppress(Exception):
            for packet in self._container.demux(stream):
                if self._stop.is_set():
                    break
                if not packet.is_keyframe or time.time() - self.opened_at > CLIP_S - 5:
                    continue
                for frame in stream.codec_context.decode(packet):
                    index = read_counter(frame.to_ndarray(format="bgr24"))
                    if index >= 0:
                        self._candidates.append(time.time() - index / FPS)

    @property
    def t0(self) -> float:
        """Wall time of clip frame 0 (the open's time until a keyframe was read)."""
        return min(self._candidates, default=self.opened_at)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self._container.close()


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def score_run(
    pupils: list[Pupil],
    starts: dict[str, float],
    t0: float,
    received: list[tuple[float, dict[str, Any]]],
    window_end: float,
) -> dict[str, Any]:
    """Recall, false attendances and time-to-recognition from the callbacks received.

    A false attendance is an absent student reported, or a latecomer reported more than a
    second before entering the view (a stranger or another student taken for them)."""
    present = {p.name: p for p in pupils if p.enrolled and p.present}
    absent = {p.name for p in pupils if p.enrolled and not p.present}
    first: dict[tuple[str, str], float] = {}
    false = 0
    for at, body in received:
        if body.get("type") != "RECOGNITION" or at > window_end:
            continue
        slot, student = body["slotId"], body["studentId"]
        if student in absent:
            false += 1
        first.setdefault((slot, student), at)
    recalls, delays = [], []
    for slot, start in starts.items():
        seen = [s for s in present if (slot, s) in first]
        recalls.append(len(seen) / len(present))
        for name in seen:
            enter = max(t0 + present[name].enter_s, start)
            delay = first[(slot, name)] - enter
            if delay < -1.0:  # reported before coming in: someone else was taken for them
                false += 1
                continue
            delays.append(delay)
    return {
        "recallMin": min(recalls) if recalls else 0.0,
        "recallMean": statistics.fmean(recalls) if recalls else 0.0,
        "falseAttendances": false,
        "ttrP50": _pct(delays, 0.5),
        "ttrP95": _pct(delays, 0.95),
        "ttrMax": max(delays) if delays else None,
    }


# The agent under test -------------------------------------------------------------------


def spawn_agent(
    code_root: Path,
    workdir: Path,
    broker: Mosquitto,
    callback: str,
    metrics_port: int,
    providers: str = "",
    settings: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m agent run`` from ``code_root`` with its own config.toml (``settings``:
    extra ``AGENT_*`` variables, e.g. the settings a variant differs by)."""
    extra = {"AGENT_MODELS__PROVIDERS": json.dumps(providers.split(","))} if providers else {}
    env = {
        **extra,
        **(settings or {}),
        **os.environ,
        "AGENT_MQTT__PORT": str(broker.port),
        "AGENT_STORAGE__DATA_DIR": str(workdir / "data"),
        "AGENT_MODELS__DIR": str(ROOT / "models"),
        "AGENT_METRICS__PORT": str(metrics_port),
        "AGENT_CAMERAS__ALLOW_SHARED": "true",
        "AGENT_AUTH__API_KEYS": API_KEY,
        "AGENT_CALLBACK__ALLOWED_URLS": json.dumps([callback]),
        "AGENT_MQTT__UNAUTHENTICATED_REPLY_TOPICS": json.dumps(["backend-test/#"]),
        "AGENT_LOGGING__LEVEL": "WARNING",
        "PYTHONPATH": str(code_root),
    }
    log = (workdir / "agent.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(code_root / "config.toml")],
        cwd=code_root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the agent exited at start; see agent.log")
        with contextlib.suppress(Exception):
            status = await asyncio.to_thread(http_json, f"http://127.0.0.1:{port}/status")
            if status["agent"]["state"] == "RUNNING" and status["mqtt"]["connected"]:
                return
        await asyncio.sleep(0.3)
    raise RuntimeError("the agent did not become healthy")


async def agent_run(
    variant: str,
    code_root: Path,
    n: int,
    server: RtspServer,
    pupils: list[Pupil],
    students: list[dict[str, Any]],
    workdir: Path,
    window_s: float,
    providers: str = "",
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """N one-camera sessions on the real agent; returns the measurements."""
    import aiomqtt

    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant}-{n}-", dir=workdir))
    broker = Mosquitto(run_dir / "broker", persistence=False)
    broker.start()
    callback = CallbackServer()
    await callback.start()
    arrivals: list[tuple[float, dict[str, Any]]] = []
    callback.on_request = lambda entry: arrivals.append((time.time(), entry.body))
    port = free_port()
    proc = spawn_agent(code_root, run_dir, broker, callback.url("/"), port, providers, settings)
    clock: Clock | None = None
    try:
        await wait_healthy(port, proc)
        async with (
            aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c,
            Backend(c, api_key=API_KEY) as backend,
        ):
            clock = await asyncio.to_thread(Clock, server.url)
            starts: dict[str, float] = {}
            cpu0, wall0 = proc_cpu_s(proc.pid), time.monotonic()
            sys0 = system_busy_s()
            for i in range(n):
                slot = f"room-{i:02d}"
                payload = {
                    "slotId": slot,
                    "mode": "ATTENDANCE",
                    "callbackUrl": callback.url(f"/cb/{slot}"),
                    "cameras": [{"id": f"cam-{i:02d}", "rtspUrl": server.url}],
                    "students": students,
                }
                reply = await backend.send("session/start", payload, timeout=60)
                if reply.get("status") != 200:
                    raise RuntimeError(f"session/start {slot}: {reply}")
                starts[slot] = time.time()
            window_end = time.time() + window_s
            await asyncio.sleep(max(0.0, window_end - time.time()))
            cpu1, wall1 = proc_cpu_s(proc.pid), time.monotonic()
            sys1 = system_busy_s()
            status = await asyncio.to_thread(http_json, f"http://127.0.0.1:{port}/status")
    finally:
        if clock is not None:
            await asyncio.to_thread(clock.close)
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        await callback.stop()
        broker.stop()
    cores = (cpu1 - cpu0) / (wall1 - wall0)
    cams = [c for s in status["sessions"] for c in s["cameras"]]
    result = {
        "variant": variant,
        "cameras": n,
        "agentCores": round(cores, 3),
        "coresPerCamera": round(cores / n, 3),
        "machineBusyCores": round((sys1[0] - sys0[0]) / (wall1 - wall0), 2),
        "analysesShed": sum(int(c.get("analysesShed", 0)) for c in cams) if cams else None,
        "analysisRateMean": (
            round(statistics.fmean(float(c.get("analysisRate", 0.0)) for c in cams), 2)
            if cams and "analysisRate" in cams[0]
            else None
        ),
        "fullDecodeCameras": sum(1 for c in cams if c.get("decodeMode") == "FULL"),
        "fineCoresUsed": (status.get("analysis") or {}).get("fineDetectCoresUsed"),
        **score_run(pupils, starts, clock.t0 if clock else 0.0, arrivals, window_end),
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


# The naive loop -------------------------------------------------------------------------


def naive_run(
    n: int, server: RtspServer, pupils: list[Pupil], students: list[dict[str, Any]], window_s: float
) -> dict[str, Any]:
    """``FaceAnalysis.get`` on every frame read, one thread and model per camera."""
    from insightface.app import FaceAnalysis

    names = [s["id"] for s in students]
    matrix = np.array([s["embeddings"][0] for s in students], np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    threshold = load_config(None).recognition.match_threshold
    apps = []
    for _ in range(n):
        app = FaceAnalysis(
            name="buffalo_sc",
            root=str(ROOT / ".bench-naive"),
            providers=["CPUExecutionProvider"],
            allowed_modules=["detection", "recognition"],
        )
        app.prepare(ctx_id=-1, det_size=(640, 640))
        apps.append(app)
    clock = Clock(server.url)
    stop = threading.Event()
    first: dict[tuple[int, str], float] = {}
    starts: dict[str, float] = {}
    lock = threading.Lock()

    def camera(index: int) -> None:
        cap = cv2.VideoCapture(server.url, cv2.CAP_FFMPEG)
        starts[f"{index}"] = time.time()
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:
                break
            for face in apps[index].get(frame):
                emb = face.normed_embedding
                scores = matrix @ emb
                best = int(np.argmax(scores))
                if scores[best] >= threshold:
                    with lock:
                        first.setdefault((index, names[best]), time.time())
        cap.release()

    cpu0, wall0 = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    time.sleep(window_s)
    cpu1, wall1 = time.process_time(), time.monotonic()
    window_end = time.time()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    clock.close()
    received = [
        (at, {"type": "RECOGNITION", "slotId": str(i), "studentId": s})
        for (i, s), at in first.items()
    ]
    cores = (cpu1 - cpu0) / (wall1 - wall0)
    return {
        "variant": "naive",
        "cameras": n,
        "agentCores": round(cores, 3),
        "coresPerCamera": round(cores / n, 3),
        "analysesShed": None,
        "analysisRateMean": None,
        "fullDecodeCameras": n,
        **score_run(pupils, starts, clock.t0, received, window_end),
    }


def prepare_naive_models() -> None:
    """FaceAnalysis looks for ``<root>/models/<name>/*.onnx``: point it at the pack."""
    folder = ROOT / ".bench-naive" / "models" / "buffalo_sc"
    folder.mkdir(parents=True, exist_ok=True)
    for onnx in (ROOT / "models" / "buffalo_sc").glob("*.onnx"):
        target = folder / onnx.name
        if not target.exists():
            target.symlink_to(onnx)


# Report ---------------------------------------------------------------------------------


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | faces (px) | cameras | agent cores | cores/camera | recall min / mean | "
        "false attendances | time to recognition p50 / p95 / max (s) | analyses shed | "
        "analyses/s per camera | full-decode cameras | full-res detection (cores) |",
        "|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r.get('faces', '36-80')} | {r['cameras']} | "
            f"{_f(r['agentCores'])} | "
            f"{_f(r['coresPerCamera'], 3)} | {r['recallMin']:.0%} / {r['recallMean']:.0%} | "
            f"{r['falseAttendances']} | {_f(r['ttrP50'], 1)} / {_f(r['ttrP95'], 1)} / "
            f"{_f(r['ttrMax'], 1)} | {_f(r['analysesShed'])} | {_f(r['analysisRateMean'])} | "
            f"{r['fullDecodeCameras']} | {_f(r.get('fineCoresUsed'))} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def previous_checkout(rev: str, workdir: Path) -> Path:
    """A worktree of ``rev`` (its agent package and config.toml)."""
    target = workdir / "previous"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(target), rev],
        check=True,
        capture_output=True,
    )
    return target


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="capacity-"))
    cfg = load_config(None)
    engine = FaceEngine(read_pack(ROOT / "models" / "buffalo_sc"), cfg.models, cfg.recognition)
    pupils = the_class(engine, workdir)
    print(f"class: {[p.name for p in pupils]}", file=sys.stderr)
    lo, hi = (int(v) for v in args.faces.split("-"))
    frames = make_clip(pupils, engine, workdir, (lo, hi))
    students = roster(pupils, engine)
    del engine
    server = RtspServer(
        frames, fps=FPS, width=SIZE[0], height=SIZE[1], bitrate_kbps=args.bitrate_kbps
    )
    server.start()
    rows: list[dict[str, Any]] = []
    previous: Path | None = None
    try:
        plan = [("agent", ROOT, n) for n in args.cameras]
        for spec in args.variants:
            name, count = spec.split(":")
            if name not in VARIANTS:
                raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
            plan.append((name, ROOT, int(count)))
        if args.previous:
            previous = previous_checkout(args.previous_rev, workdir)
            plan += [("previous", previous, n) for n in args.previous]
        for variant, code_root, n in plan:
            print(f"{variant} N={n} ...", file=sys.stderr, flush=True)
            row = await agent_run(
                variant,
                code_root,
                n,
                server,
                pupils,
                students,
                workdir,
                args.window_s,
                args.providers,
                VARIANTS.get(variant, {}) if code_root == ROOT else {},
            )
            row["faces"] = args.faces
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        if args.naive:
            prepare_naive_models()
            for n in args.naive:
                print(f"naive N={n} ...", file=sys.stderr, flush=True)
                row = await asyncio.to_thread(naive_run, n, server, pupils, students, args.window_s)
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        server.stop()
        if previous is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(previous)],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Machine: {machine()}; {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


VARIANTS: dict[str, dict[str, str]] = {
    # This checkout at its defaults.
    "agent": {},
    # Every analysis detects on the frame shrunk to 1280 px: full recall by brute force.
    "brute-1280": {
        "AGENT_RECOGNITION__DET_LONG_SIDE": "1280",
        "AGENT_RECOGNITION__MIN_FACE_PX": "16",
        "AGENT_RECOGNITION__CANDIDATE_THRESHOLD": "0.5",
        "AGENT_RECOGNITION__REFINE_BELOW_PX": "0",
        "AGENT_ANALYSIS__FINE_DETECT_CORES": "0",
    },
    # The shrunk frame only, with the defaults before full-resolution coverage.
    "shrunk-only": {
        "AGENT_RECOGNITION__MIN_FACE_PX": "32",
        "AGENT_RECOGNITION__CANDIDATE_THRESHOLD": "0.5",
        "AGENT_RECOGNITION__REFINE_BELOW_PX": "0",
        "AGENT_RECOGNITION__SMALL_FACE_MARGIN": "0",
        "AGENT_RECOGNITION__FULL_WEIGHT_PX": "8",
        "AGENT_ANALYSIS__FINE_DETECT_CORES": "0",
    },
}
"""Settings (environment overrides) each variant of this checkout runs with."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, nargs="*", default=[1, 4, 8, 12, 16, 24, 32])
    parser.add_argument("--previous", type=int, nargs="*", default=[12, 16, 24])
    parser.add_argument("--previous-rev", default="1a37238")
    parser.add_argument("--naive", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--window-s", type=float, default=55.0)
    parser.add_argument(
        "--faces",
        default="36-80",
        help="face widths in px, back row to front row (36-80: the hard clip; 24-44 and "
        "18-26: small faces)",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help=f"more variants of this checkout as NAME:N (NAME in {', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--bitrate-kbps",
        type=int,
        default=4096,
        help="H.264 bitrate of the camera stream (IP cameras default to 4-6 Mbit/s at 1080p)",
    )
    parser.add_argument("--json", default="")
    parser.add_argument(
        "--providers",
        default="",
        help="ONNX Runtime providers for the agent, e.g. "
        "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider (GPU boxes)",
    )
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
