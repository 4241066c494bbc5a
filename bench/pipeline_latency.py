"""Benchmark: the live pipeline on real RTSP cameras -- event latency and CPU per camera.

Everything runs against real RTSP servers (``agent/devkit/rtsp.py``: GStreamer's RTSP server in its
own process under Debian's Python, x264 ``ultrafast``/``zerolatency``, one keyframe a second)
serving synthetic 1280x720, 10 fps classrooms made from real face photos
(``agent/devkit/classroom.py``). Every frame carries its clip frame index as a row of black and
white squares in its top-right corner (12 bits, 20 px cells: H.264 at 2 Mbit/s keeps them
exact), so whoever reads a frame knows which clip frame it is. The agent side is the real
``agent.session.runner.RecognitionRunner`` with the default configuration (``analysis_fps`` 4,
k=2 of n=3, 2 inference workers, 1 intra-op thread), run without MQTT: events go to an
in-memory sink that stamps the wall time of each ``emit``.

1. **Latency**, face appearing in the stream -> its RECOGNITION event, one camera. A
   ~33 s clip in which enrolled people *pop in* (fully visible from one frame to the next,
   one at a time, each at its own place) at known frame indexes. First half, an **empty
   room**: each person appears after >= 2.7 s with nobody in view, when the runner is at
   its idle rate (``cameras.idle_analysis_fps``, 1/s). Second half, a **busy room**:
   someone (also enrolled) sits in view all along, so the runner stays at
   ``analysis_fps`` (4/s), and the others pop in one by one. Appearance times are spread
   over the phases of the idle (1 s) and busy (0.25 s) periods. Clock: the server's shared
   pipeline starts at clip frame 0 when the first client connects and then produces frame
   ``i`` at ``T0 + i / fps`` (checked: the delivered frames' counter gives 100.0 ms per
   frame). ``T0`` lies between the start and the end of the reader's
   ``cv2.VideoCapture`` open (the RTSP PLAY is sent inside the open, which returns only
   after reading the first frame), so latency = wall time of the event's ``emit`` -
   (``T0`` + appearance index / fps) is reported as a bracket: from the open's end (low)
   to its start (high); the open takes ~0.13-0.2 s. A third figure, the "agent part", uses
   ``T0' = min(grab wall time - i / fps)`` over every frame the reader delivered, i.e. it
   leaves out the stream's fixed delay (encode, RTP, FFmpeg's decoder) and keeps what the
   agent adds: waiting for an analysis, the k-of-n votes, the analysis and the emit. The
   runner is restarted ``--latency-runs`` times (new session; the clip starts again from
   frame 0). Expected agent part in a busy room: the next analysis (0-0.25 s, plus up to
   one frame, 0.1 s, because a request takes the *next* grabbed frame) finds the face and
   gives its track vote 1; the analysis 0.25 s later gives vote 2 and confirms; plus the
   analysis itself (~30-40 ms): ~0.3-0.6 s, about k analysis periods. In an empty room the
   first wait is up to 1 s (the idle period): ~0.3-1.4 s.
2. **CPU per camera**, 1, 2 and 4 cameras (one RTSP server each, all serving the same 20 s
   classroom: two enrolled people present nearly all the time, one person who is *not*
   enrolled present half of the time, all moving slowly). After ``--warmup-s``, process CPU
   time (``os.times()`` user + system of this process: the RTSP servers are other processes
   and are reported separately) over a ``--window-s`` window, divided by wall time and by
   the number of cameras. Split by thread (``/proc/self/task``): camera reader threads
   (``grab()`` every frame, ``retrieve()`` the requested one), inference workers
   (detect + align + embed + match), the event loop, and the rest (native threads: FFmpeg's
   decoder workers). Also frames decoded and analysed per camera per second, faces per
   analysis, faces embedded (``analyse_frame`` is wrapped in this script only: a track that
   was embedded has ``since_embed == 0`` afterwards; it is "unconfirmed" if it had no
   confirmed student before the analysis, a "re-check" otherwise), detector and recognizer
   CPU (thread CPU time around ``engine.detect`` / ``engine.embed``), and the age of the
   analysed frames (from the frame counter).
3. **The naive loop** on the same servers: one thread per camera doing ``cap.read()`` and
   ``FaceAnalysis(name=<models/buffalo_sc>, providers=['CPUExecutionProvider'])``
   ``.prepare(ctx_id=-1, det_size=(640, 640))`` + ``.get(frame)`` on every frame as fast as
   it can (one ``FaceAnalysis`` per thread, loaded before the clock starts; the capture is
   opened with the same FFmpeg options as the agent, RTSP over TCP). Reported: frames
   analysed per camera per second, CPU per camera, and how far behind real time the frame
   being analysed is at the end of the window (it reads every frame, so when it cannot keep
   up with 10 fps the frames queue up and results get older and older).
4. **The decoder's own delay**: the latency clip's stream opened as the agent opens it, with
   OpenCV's default decoder threads (one per core, frame-threaded) and with
   ``CAP_PROP_N_THREADS=1``, alternately (``--decoder-rounds``); reported: how long after
   the open's start frame ``i`` comes out at ``T0 + i / fps``, and decode CPU per frame.

The machine is shared (another developer's tests may be running): the load of other
processes during each window is measured from ``/proc/stat`` and reported; run it twice.

Run from the project root (about 4-5 minutes on 2 cores)::

    .venv/bin/python bench/pipeline_latency.py [--json results.json]
        [--latency-runs 2] [--cameras 1 2 4] [--warmup-s 6] [--window-s 20]
        [--decoder-rounds 1] [--skip-latency] [--skip-naive]

The markdown tables go to stdout; ``--json`` also writes the raw results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR = PROJECT_ROOT / "models" / "buffalo_sc"
FACES_DIR = PROJECT_ROOT.parent / "shared" / "faces"
if str(PROJECT_ROOT) not in sys.path:  # ``tests.*`` helpers (the RTSP server)
    sys.path.insert(0, str(PROJECT_ROOT))

FPS = 10
SIZE = (1280, 720)
FACE_WIDTH = 140
CPU_CLIP_S = 20.0
COUNTER_BITS = 12
CELL = 20  # px per counter cell
COUNTER_Y = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")
CAPTURE_OPTIONS = "rtsp_transport;tcp|analyzeduration;100000|probesize;32768"

Image = npt.NDArray[np.uint8]


# Frame counter ---------------------------------------------------------------------------


def _counter_x0(width: int) -> int:
    return width - (COUNTER_BITS + 2) * CELL - 8


def stamp_counter(image: Image, index: int) -> None:
    """Draw ``index`` as COUNTER_BITS black/white cells, framed by a white and a black guard."""
    x0 = _counter_x0(image.shape[1])
    cells = [255] + [255 if (index >> bit) & 1 else 0 for bit in range(COUNTER_BITS)] + [0]
    for i, value in enumerate(cells):
        x = x0 + i * CELL
        image[COUNTER_Y : COUNTER_Y + CELL, x : x + CELL] = value


def read_counter(image: Image) -> int:
    """The frame index drawn by :func:`stamp_counter`, or -1 if the guards do not read."""
    x0 = _counter_x0(image.shape[1])
    m = CELL // 4
    row = image[COUNTER_Y + m : COUNTER_Y + CELL - m]
    values = [
        float(row[:, x0 + i * CELL + m : x0 + (i + 1) * CELL - m].mean())
        for i in range(COUNTER_BITS + 2)
    ]
    if values[0] < 170 or values[-1] > 85:
        return -1
    return sum(1 << bit for bit, v in enumerate(values[1:-1]) if v > 128)


class Unwrapper:
    """Turns clip indexes of a looping clip into a monotonic frame count."""

    def __init__(self, n_frames: int) -> None:
        self.n = n_frames
        self.loops = 0
        self.last = -1

    def __call__(self, index: int) -> int:
        if self.last >= 0 and index < self.last - self.n // 2:
            self.loops += 1
        self.last = index
        return self.loops * self.n + index


# CPU accounting --------------------------------------------------------------------------


def _ticks(stat_text: str) -> int:
    fields = stat_text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if it is gone."""
    try:
        return _ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def thread_cpu_s() -> dict[int, float]:
    """CPU seconds of every thread of this process, by native thread id."""
    out: dict[int, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[int(task.name)] = _ticks((task / "stat").read_text()) / CLK_TCK
    return out


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine (all cores) since boot."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLK_TCK


def thread_bucket(name: str) -> str:
    """Which part of the agent a Python thread belongs to."""
    if name.startswith("camera-"):
        return "reader"
    if name.startswith(("inference", "lane-inference")):  # the lane's threads since issue 20
        return "inference"
    if name == "MainThread":
        return "loop"
    if name.startswith("naive-"):
        return "naive"
    return "other"


@dataclass
class CpuSnapshot:
    """Everything a CPU window needs at one instant."""

    wall: float  # monotonic
    unix: float  # time.time()
    process: float
    threads: dict[str, float]
    servers: float
    system: float

    @classmethod
    def take(cls, server_pids: Sequence[int]) -> CpuSnapshot:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        buckets: dict[str, float] = {}
        for tid, cpu in thread_cpu_s().items():
            bucket = thread_bucket(names.get(tid, "native"))
            if tid not in names:
                bucket = "native"
            buckets[bucket] = buckets.get(bucket, 0.0) + cpu
        times = os.times()
        return cls(
            wall=time.monotonic(),
            unix=time.time(),
            process=times.user + times.system,
            threads=buckets,
            servers=sum(proc_cpu_s(pid) for pid in server_pids),
            system=system_busy_s(),
        )


def cpu_window(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, Any]:
    """Cores used (CPU seconds per wall second) over a window, split by thread kind.

    Thread buckets are differences of live threads' counters; a thread that ended inside the
    window loses its share, so the native bucket is "process minus the named buckets".
    """
    wall = end.wall - start.wall
    named = {
        k: max(0.0, end.threads.get(k, 0.0) - start.threads.get(k, 0.0))
        for k in ("reader", "inference", "loop", "naive", "other")
    }
    process = end.process - start.process
    named["native"] = max(0.0, process - sum(named.values()))
    servers = end.servers - start.servers
    others = (end.system - start.system) - process - servers
    return {
        "wall_s": round(wall, 2),
        "process_cores": process / wall,
        "by_thread_cores": {k: v / wall for k, v in named.items()},
        "servers_cores": servers / wall,
        "other_processes_cores": max(0.0, others) / wall,
    }


# Clips -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A person in the clips: a photo (read in place) and the face box in it."""

    name: str
    photo: Path


def identities() -> list[Identity]:
    """Real photos: the two shipped with installed packages, then ``../shared/faces``."""
    import skimage

    from agent.vision.defaultpack import sample_photo

    found = [
        Identity("yao", Path(sample_photo("yaoming.jpg"))),
        Identity("astronaut", Path(skimage.__file__).parent / "data" / "astronaut.png"),
    ]
    for name, file in (
        ("obama", "fr_obama_1.jpg"),
        ("biden", "fr_biden_1.jpg"),
        ("kit", "fr_kit_harington_1.jpeg"),
        ("rose", "fr_rose_leslie_1.jpg"),
        ("alex", "fr_alex_lacamoire_1.jpg"),
        ("tom", "dlib_tom_cruise_1.jpg"),
        ("lin", "fr_lin_manuel_miranda_1.png"),
    ):
        if (FACES_DIR / file).is_file():
            found.append(Identity(name, FACES_DIR / file))
    return found


def read_image(path: Path) -> Image:
    """A BGR image from disk (FileNotFoundError when unreadable)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return np.asarray(image, dtype=np.uint8)


def stamp_clip(frames_dir: Path, n_frames: int) -> None:
    """Overwrite every frame with its counter drawn in."""
    for index in range(n_frames):
        path = frames_dir / f"{index:04d}.jpg"
        image = read_image(path)
        stamp_counter(image, index)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])


# Appearance schedule of the latency clip. First half, an empty room: each person pops in
# alone after >= 2.7 s without anyone (the tracker has dropped every track, so the runner
# is at its idle rate); their times mod 1 s cycle through 0, 0.7, 0.4, 0.1 (phases of the
# idle period). Second half, a busy room: someone sits in view all along (the astronaut,
# also enrolled) and the others pop in one at a time; times mod 0.25 s cycle through 0.1,
# 0.2, 0.05, 0.15 (phases of the busy period).
EMPTY_FIRST_S = 2.0
EMPTY_EVERY_S = 4.7
EMPTY_STAY_S = 2.0
BUSY_EVERY_S = 3.1
BUSY_STAY_S = 2.5
PLACES = ((320, 300), (960, 320), (420, 540), (860, 560))
ANCHOR_PLACE = (1130, 430)


@dataclass(frozen=True)
class Appearance:
    """An enrolled person who pops into the latency clip at ``frame``."""

    name: str
    frame: int
    room: str  # "empty" (idle analysis rate) or "busy" (someone else in view)


def latency_timeline(
    people: list[Identity], boxes: dict[str, Any]
) -> tuple[list[Any], list[Appearance], float]:
    """People of the latency clip, the appearances to time, and the clip length."""
    from agent.devkit.classroom import Person

    targets = [p for p in people if p.name != "astronaut"]
    anchor = next(p for p in people if p.name == "astronaut")
    n_empty = (len(targets) + 1) // 2
    timeline, appearances = [], []
    enter, anchor_enter = EMPTY_FIRST_S, 0.0
    for i, person in enumerate(targets):
        room = "empty" if i < n_empty else "busy"
        if i == n_empty:  # the anchor sits down 1 s after the room emptied
            anchor_enter = enter - EMPTY_EVERY_S + EMPTY_STAY_S + 1.0
            enter = anchor_enter + 1.6
        stay = EMPTY_STAY_S if room == "empty" else BUSY_STAY_S
        timeline.append(
            Person(
                person.name,
                person.photo,
                enter,
                enter + stay,
                PLACES[i % len(PLACES)],
                (6.0, 0.0),
                FACE_WIDTH,
                boxes[person.name],
            )
        )
        appearances.append(Appearance(person.name, round(enter * FPS), room))
        enter = round(enter + (EMPTY_EVERY_S if room == "empty" else BUSY_EVERY_S), 1)
    end = timeline[-1].leave_s + 0.6
    if len(targets) > n_empty:
        timeline.append(
            Person(
                anchor.name,
                anchor.photo,
                anchor_enter,
                end + 1.0,
                ANCHOR_PLACE,
                (0.0, 0.0),
                FACE_WIDTH,
                boxes[anchor.name],
            )
        )
    return timeline, appearances, end


def make_clips(
    workdir: Path, people: list[Identity], engine: Any
) -> tuple[Any, list[Appearance], Any]:
    """The latency clip (people pop in one by one) and the CPU clip (2-3 faces)."""
    from agent.devkit.classroom import Person, face_box_of, make_classroom_frames

    boxes = {p.name: face_box_of(p.photo, engine) for p in people}
    timeline, appearances, seconds = latency_timeline(people, boxes)
    latency = make_classroom_frames(
        workdir / "latency", timeline, seconds=seconds, fps=FPS, size=SIZE
    )
    stamp_clip(latency.frames_dir, latency.n_frames)
    # CPU clip: two enrolled people (the first two of the roster) nearly all the time, the
    # astronaut (never enrolled) from 5 to 15 s.
    enrolled = [p for p in people if p.name != "astronaut"][:2]
    astronaut = next(p for p in people if p.name == "astronaut")
    crowd = [
        Person(
            enrolled[0].name, enrolled[0].photo, 0.0, 19.5, (300, 330), (8, 2), 130,
            boxes[enrolled[0].name],
        ),
        Person(
            enrolled[1].name, enrolled[1].photo, 1.0, 20.0, (900, 300), (-6, 4), 130,
            boxes[enrolled[1].name],
        ),
        Person(
            astronaut.name, astronaut.photo, 5.0, 15.0, (640, 520), (5, -3), 130,
            boxes[astronaut.name],
        ),
    ]  # fmt: skip
    cpu = make_classroom_frames(workdir / "cpu", crowd, seconds=CPU_CLIP_S, fps=FPS, size=SIZE)
    stamp_clip(cpu.frames_dir, cpu.n_frames)
    return latency, appearances, cpu


# Instrumentation of the runner (this script only) ----------------------------------------


@dataclass
class Recorder:
    """What the instrumented runner saw; appended from several threads (list.append)."""

    opens: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # wall before/after
    delivered: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # index, wall
    analyses: list[dict[str, Any]] = field(default_factory=list)
    detect_cpu: list[float] = field(default_factory=list)
    embed_cpu: list[tuple[int, float]] = field(default_factory=list)
    events: list[tuple[str, str, float, float]] = field(default_factory=list)

    def reset_counters(self) -> None:
        """Forget analyses and engine timings (start of a measuring window)."""
        self.analyses.clear()
        self.detect_cpu.clear()
        self.embed_cpu.clear()


class CountingEngine:
    """Delegates to a FaceEngine; times ``detect`` and ``embed`` in thread CPU time."""

    def __init__(self, engine: Any, recorder: Recorder) -> None:
        self._engine = engine
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def detect(self, image: Image, **kwargs: Any) -> Any:
        started = time.thread_time()
        faces = self._engine.detect(image, **kwargs)
        self._recorder.detect_cpu.append(time.thread_time() - started)
        return faces

    def embed(self, crops: Sequence[Image]) -> Any:
        started = time.thread_time()
        out = self._engine.embed(crops)
        self._recorder.embed_cpu.append((len(crops), time.thread_time() - started))
        return out


def instrumented(recorder: Recorder) -> dict[str, Any]:
    """Recording versions of the runner's camera reader and analysis (its two seams)."""
    from agent.camera.reader import CameraReader
    from agent.vision.recognition import analyse_frame

    class RecordingReader(CameraReader):
        def _thread_open(self) -> Any:
            before = time.time()
            source = super()._thread_open()
            if source is not None:
                recorder.opens.setdefault(self.camera_id, []).append((before, time.time()))
            return source

        def _thread_deliver(self, frame: Any) -> None:
            index = read_counter(frame.image)
            recorder.delivered.setdefault(self.camera_id, []).append((index, frame.wall))
            super()._thread_deliver(frame)

    def analyse(engine: Any, image: Image, tracker: Any, *args: Any, **kwargs: Any) -> Any:
        before = {t.track_id: t.confirmed for t in tracker.tracks}
        wall, cpu = time.time(), time.thread_time()
        result = analyse_frame(engine, image, tracker, *args, **kwargs)
        embedded = [t for t in tracker.tracks if t.missed == 0 and t.since_embed == 0]
        recheck = sum(1 for t in embedded if before.get(t.track_id) is not None)
        recorder.analyses.append(
            {
                "tracker": id(tracker),
                "index": read_counter(image),
                "start": wall,
                "wall_s": time.time() - wall,
                "cpu_s": time.thread_time() - cpu,
                "faces": result.faces,
                "embedded": result.embedded,
                "recheck": recheck,
                "confirmed": sorted(s.student_id for s in result.sightings),
            }
        )
        return result

    return {"reader_type": RecordingReader, "analyse": analyse}


class TimedSink:
    """EventSink that keeps RECOGNITION events with the wall time of their emit."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def emit(self, event: Any, callback_url: str | None = None) -> None:
        now = time.time()
        if getattr(event, "type", "") == "RECOGNITION":
            self.recorder.events.append(
                (event.student_id, event.camera_id, now, event.recognized_at.timestamp())
            )


@dataclass
class Agent:
    """The runner's parts, built once: engine, enrolled roster, config."""

    cfg: Any
    engine: Any
    roster: dict[str, list[float]]


def build_agent(people: list[Identity]) -> Agent:
    """Default config, the buffalo_sc engine, and each person enrolled from their photo."""
    from agent.config import load_config
    from agent.vision.engine import FaceEngine
    from agent.vision.modelpack import read_pack

    cfg = load_config(None)
    engine = FaceEngine(read_pack(PACK_DIR), cfg.models, cfg.recognition)
    roster = {}
    for person in people:
        faces = engine.analyze(read_image(person.photo))
        best = max(faces, key=lambda f: f.area)
        roster[person.name] = [float(x) for x in best.embedding]
    return Agent(cfg, engine, roster)


@contextlib.asynccontextmanager
async def running_session(
    agent: Agent,
    urls: list[str],
    recorder: Recorder,
    slot: str,
    exclude: frozenset[str] = frozenset(),
) -> Any:
    """A RecognitionRunner running one ATTENDANCE session on ``urls`` (a task), torn down on
    exit (runner cancelled: readers stopped and joined; pool and store closed). Everyone in
    ``agent.roster`` but ``exclude`` is enrolled."""
    from agent.events.event import EventFactory
    from agent.events.store import Store
    from agent.protocol import SessionStart
    from agent.session.limits import SessionCamera
    from agent.session.manager import ActiveSession
    from agent.session.runner import RecognitionRunner
    from agent.vision.inference import InferencePool, ModelSlot
    from agent.vision.matching import Roster

    pool = InferencePool(agent.cfg.runtime.inference_workers)
    slot_models = ModelSlot()
    counting: Any = CountingEngine(agent.engine, recorder)
    slot_models.activate(counting)
    tmp = tempfile.TemporaryDirectory(prefix="bench-pipeline-")
    store = Store(Path(tmp.name))
    runner = RecognitionRunner(
        cameras=agent.cfg.cameras,
        recognition=agent.cfg.recognition,
        models=slot_models,
        pool=pool,
        sink=TimedSink(recorder),
        events=EventFactory("bench", "UTC"),
        store=store,
        **instrumented(recorder),
    )
    ids = [s for s in agent.roster if s not in exclude]
    command = SessionStart.model_validate(
        {
            "slotId": slot,
            "callbackUrl": "http://127.0.0.1/bench",
            "cameras": [{"id": f"cam-{i}", "rtspUrl": u} for i, u in enumerate(urls)],
            "students": [{"id": s, "code": s, "embeddings": [agent.roster[s]]} for s in ids],
        }
    )
    session = ActiveSession(
        command=command,
        roster=Roster(ids, [np.asarray([agent.roster[s]], np.float32) for s in ids]),
        camera_plan=[SessionCamera(f"cam-{i}", f"cam-{i}", u) for i, u in enumerate(urls)],
        embedding_space=agent.engine.embedding_space,
        threshold=agent.cfg.recognition.match_threshold,
    )
    task = asyncio.create_task(runner.run(session), name=f"bench-{slot}")
    try:
        yield session
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pool.close()
        store.close()
        tmp.cleanup()


# 1. Latency ------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation (q in 0..100)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


async def latency_run(
    agent: Agent, server: Any, clip: Any, appearances: list[Appearance], run: int
) -> dict[str, Any]:
    """One session on the latency clip; one row per appearance."""
    recorder = Recorder()
    async with running_session(agent, [server.url], recorder, f"latency-{run}"):
        deadline = time.monotonic() + clip.duration_s + 3.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            if recorder.opens and time.time() > recorder.opens["cam-0"][0][0] + (
                clip.duration_s - 0.3
            ):
                break  # the clip is about to loop: stop before frame 0 comes again
    opens = recorder.opens.get("cam-0", [])
    frames = [(i, w) for i, w in recorder.delivered.get("cam-0", []) if i >= 0]
    if not opens or not frames:
        raise RuntimeError("the reader never delivered a frame")
    open_before, open_after = opens[0]
    offsets = [w - i / FPS for i, w in frames]
    t0_counter = min(offsets)
    slope = np.polyfit([i for i, _ in frames], [w for _, w in frames], 1)[0]
    by_wall = {w: i for i, w in frames}
    analyses = sorted(recorder.analyses, key=lambda a: a["start"])
    rows = []
    for appear in appearances:
        event = next((e for e in recorder.events if e[0] == appear.name), None)
        if event is None:
            rows.append(
                {
                    "name": appear.name,
                    "frame": appear.frame,
                    "room": appear.room,
                    "recognised": False,
                }
            )
            continue
        _, _, emitted, frame_wall = event
        # recognized_at went through a datetime (microseconds): take the nearest grab.
        nearest = min(by_wall, key=lambda w: abs(w - frame_wall))
        confirm_index = by_wall[nearest] if abs(nearest - frame_wall) < 0.002 else -1
        seen = [a for a in analyses if a["index"] >= appear.frame and a["faces"] > 0]
        first = seen[0] if seen else None
        count = sum(1 for a in seen if a["index"] <= confirm_index)
        rows.append(
            {
                "name": appear.name,
                "frame": appear.frame,
                "room": appear.room,
                "recognised": True,
                # Frame 0 left the server between the start and the end of the open.
                "latency_low_s": emitted - (open_after + appear.frame / FPS),
                "latency_high_s": emitted - (open_before + appear.frame / FPS),
                "latency_counter_s": emitted - (t0_counter + appear.frame / FPS),
                "first_detected_frame": first["index"] if first else None,
                "confirm_frame": confirm_index,
                "analyses_to_confirm": count,
                "wait_first_analysis_s": (first["index"] - appear.frame) / FPS if first else None,
                "confirm_span_s": (confirm_index - first["index"]) / FPS if first else None,
                "grab_to_emit_s": emitted - frame_wall,
            }
        )
    return {
        "run": run,
        "open_s": open_after - open_before,
        "t0_counter_minus_open_s": t0_counter - open_before,
        "first_index": frames[0][0],
        "frame_interval_s": float(slope),
        "frames_delivered": len(frames),
        "analysis_wall_ms_p50": 1000 * _pct([a["wall_s"] for a in analyses], 50),
        "rows": rows,
    }


# 2. CPU per camera, the pipeline ---------------------------------------------------------


async def pipeline_cpu(
    agent: Agent, servers: list[Any], warmup_s: float, window_s: float
) -> dict[str, Any]:
    """Run a session on ``servers`` and measure one CPU window after the warm-up."""
    recorder = Recorder()
    pids = [s.pid for s in servers]
    async with running_session(
        agent, [s.url for s in servers], recorder, "cpu", frozenset({"astronaut"})
    ) as session:
        await asyncio.sleep(warmup_s)
        health0 = {c.id: c for c in session.camera_health()}
        recorder.reset_counters()
        start = CpuSnapshot.take(pids)
        await asyncio.sleep(window_s)
        end = CpuSnapshot.take(pids)
        analyses = list(recorder.analyses)
        detect_cpu, embed_cpu = list(recorder.detect_cpu), list(recorder.embed_cpu)
        health1 = {c.id: c for c in session.camera_health()}
    n = len(servers)
    window = cpu_window(start, end)
    wall = window["wall_s"]
    read = [(health1[c].frames_read - health0[c].frames_read) / wall for c in health1]
    done = [(health1[c].frames_analysed - health0[c].frames_analysed) / wall for c in health1]
    embedded = sum(a["embedded"] for a in analyses)
    recheck = sum(a["recheck"] for a in analyses)
    ages = analysed_frame_ages(recorder, analyses)
    return {
        "cameras": n,
        **window,
        "cpu_per_camera_cores": window["process_cores"] / n,
        "frames_read_per_cam_s": read,
        "frames_analysed_per_cam_s": done,
        "faces_per_analysis": statistics.fmean(a["faces"] for a in analyses) if analyses else 0,
        "embedded_per_cam_s": embedded / wall / n,
        "embedded_unconfirmed_per_cam_s": (embedded - recheck) / wall / n,
        "embedded_recheck_per_cam_s": recheck / wall / n,
        "faces_detected_per_cam_s": sum(a["faces"] for a in analyses) / wall / n,
        "recognizer_calls_per_cam_s": len(embed_cpu) / wall / n,
        "detect_cpu_ms_p50": 1000 * _pct(detect_cpu, 50),
        "embed_cpu_ms_per_face": 1000 * sum(c for _, c in embed_cpu) / max(1, embedded),
        "analysis_wall_ms_p50": 1000 * _pct([a["wall_s"] for a in analyses], 50),
        "analysis_wall_ms_p95": 1000 * _pct([a["wall_s"] for a in analyses], 95),
        "analysed_frame_age_ms_p50": 1000 * _pct(ages, 50),
        "analysed_frame_age_ms_p95": 1000 * _pct(ages, 95),
        "reconnects": sum(c.reconnects for c in health1.values()),
        "states": sorted({c.state for c in health1.values()}),
    }


def analysed_frame_ages(recorder: Recorder, analyses: list[dict[str, Any]]) -> list[float]:
    """Start of each analysis minus when its frame was produced (counter clock, per camera).

    The counter clock per camera: T0 = min(grab wall - frame / fps) over delivered frames
    (indexes unwrapped across clip loops). Analyses are tied to cameras by their tracker.
    """
    n_frames = round(CPU_CLIP_S * FPS)
    t0: dict[str, float] = {}
    frame_of_wall: dict[str, dict[float, int]] = {}
    for camera, delivered in recorder.delivered.items():
        unwrap = Unwrapper(n_frames)
        seq = [(unwrap(i), w) for i, w in delivered if i >= 0]
        if seq:
            t0[camera] = min(w - i / FPS for i, w in seq)
            frame_of_wall[camera] = {w: i for i, w in seq}
    # Each analysis's frame was delivered just before the analysis started: pair them by the
    # closest earlier delivery of the same clip index.
    ages = []
    deliveries = sorted((w, camera, i) for camera, m in frame_of_wall.items() for w, i in m.items())
    walls = [d[0] for d in deliveries]
    for a in analyses:
        pos = int(np.searchsorted(walls, a["start"], side="right")) - 1
        while pos >= 0 and deliveries[pos][2] % n_frames != a["index"]:
            pos -= 1
        if pos >= 0 and a["start"] - deliveries[pos][0] < 1.0:
            _, camera, unwrapped = deliveries[pos]
            ages.append(a["start"] - (t0[camera] + unwrapped / FPS))
    return ages


# 4. The decoder's own delay ---------------------------------------------------------------


def decoder_delay(server: Any, rounds: int, frames: int = 30) -> list[dict[str, Any]]:
    """How late frames come out of OpenCV's FFmpeg decoder, default threads vs one thread.

    Opens the latency clip's stream as the agent does (same options and timeouts), with and
    without ``CAP_PROP_N_THREADS=1``, alternately, and reads ``frames`` frames (grab +
    retrieve, as fast as they come). ``first frame after open start`` is
    ``min(grab wall - i / fps) - open start``: the stream's fixed delay plus where in the
    open the PLAY happened, so the difference between the two settings is the decoder's.
    """
    rows = []
    for _ in range(rounds):
        for threads in (0, 1):
            time.sleep(1.5)  # the shared stream stops: the next open starts at frame 0
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 2000]
            if threads:
                params += [cv2.CAP_PROP_N_THREADS, threads]
            previous = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = CAPTURE_OPTIONS
            before = time.time()
            cap = cv2.VideoCapture(server.url, cv2.CAP_FFMPEG, params)
            opened = time.time()
            if previous is None:
                os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
            else:
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = previous
            try:
                offsets, cpu = [], time.process_time()
                for _ in range(frames):
                    if not cap.grab():
                        break
                    wall = time.time()
                    ok, image = cap.retrieve()
                    index = read_counter(np.asarray(image)) if ok else -1
                    if index >= 0:
                        offsets.append(wall - index / FPS - before)
                cpu = time.process_time() - cpu
                used = cap.get(cv2.CAP_PROP_N_THREADS)
            finally:
                cap.release()
            rows.append(
                {
                    "threads_requested": threads or "default",
                    "decoder_threads": used,
                    "open_s": opened - before,
                    "first_frame_after_open_start_s": min(offsets) if offsets else None,
                    "cpu_ms_per_frame": 1000 * cpu / max(1, len(offsets)),
                }
            )
    return rows


def decoder_table(rows: list[dict[str, Any]]) -> list[str]:
    """Decoder delay, one line per open."""
    lines = [
        "| decoder threads | open s | frame i out at T0 + i/fps + ... s (from open start) | "
        "decode+convert CPU ms/frame |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['threads_requested']} ({r['decoder_threads']:.0f}) | {_f(r['open_s'])} | "
            f"{_f(r['first_frame_after_open_start_s'], 3)} | {_f(r['cpu_ms_per_frame'], 1)} |"
        )
    return lines


# 3. The naive loop -----------------------------------------------------------------------


def open_like_agent(url: str) -> Any:
    """``cv2.VideoCapture`` over TCP with the agent's fast-open options and timeouts."""
    from tests.rtsp import open_capture

    cap = open_capture(url)
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {url}")
    return cap


def naive_camera(url: str, app: Any, stop: threading.Event, out: dict[str, Any]) -> None:
    """The loop a user would write: read every frame, ``app.get`` it, as fast as possible."""
    out["open_wall"] = time.time()
    cap = open_like_agent(url)
    unwrap = Unwrapper(round(CPU_CLIP_S * FPS))
    try:
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:
                out["error"] = "read failed"
                break
            faces = app.get(frame)
            index = read_counter(frame)
            if index >= 0:
                out["frames"].append((time.time(), unwrap(index), len(faces)))
    finally:
        cap.release()


def naive_cpu(
    servers: list[Any], apps: list[Any], warmup_s: float, window_s: float
) -> dict[str, Any]:
    """One naive thread per camera; one CPU window after the warm-up."""
    stop = threading.Event()
    outs: list[dict[str, Any]] = [{"frames": []} for _ in servers]
    threads = [
        threading.Thread(
            target=naive_camera, args=(s.url, app, stop, out), name=f"naive-{i}", daemon=True
        )
        for i, (s, app, out) in enumerate(zip(servers, apps, outs, strict=True))
    ]
    pids = [s.pid for s in servers]
    try:
        for thread in threads:
            thread.start()
        time.sleep(warmup_s)
        start = CpuSnapshot.take(pids)
        time.sleep(window_s)
        end = CpuSnapshot.take(pids)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    window = cpu_window(start, end)
    per_cam = []
    for out in outs:
        in_window = [f for f in out["frames"] if start.unix <= f[0] <= end.unix]
        lags = [w - (out["open_wall"] + i / FPS) for w, i, _ in in_window]
        per_cam.append(
            {
                "analysed_per_s": len(in_window) / window["wall_s"],
                "faces_per_frame": statistics.fmean(f[2] for f in in_window) if in_window else 0,
                "lag_start_s": lags[0] if lags else None,
                "lag_end_s": lags[-1] if lags else None,
                "error": out.get("error"),
            }
        )
    n = len(servers)
    return {
        "cameras": n,
        **window,
        "cpu_per_camera_cores": window["process_cores"] / n,
        "per_camera": per_cam,
    }


def load_naive_apps(count: int) -> list[Any]:
    """``count`` FaceAnalysis apps exactly as a user would build them (one per camera)."""
    from insightface.app import FaceAnalysis

    apps = []
    for _ in range(count):
        app = FaceAnalysis(name=str(PACK_DIR), providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_size=(640, 640))
        apps.append(app)
    return apps


# Report ----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, library versions, date, load before the run."""
    import insightface
    import onnxruntime as ort

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu_model = value.strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model,
        "usable_cores": len(os.sched_getaffinity(0)),
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "insightface": insightface.__version__,
        "platform": platform.platform(),
    }


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def latency_tables(runs: list[dict[str, Any]], cfg: Any) -> list[str]:
    """Summary per room kind and run, overall per room kind, and the breakdown medians."""
    k, fps = cfg.recognition.confirm_k, cfg.cameras.analysis_fps
    idle = min(getattr(cfg.cameras, "idle_analysis_fps", fps), fps)
    proc = 0.04
    lines = [
        f"Expected agent part: busy room (runner at {fps:g} analyses/s): the next analysis "
        f"0-{1 / fps:.2f} s after the appearance (+ up to one frame, {1 / FPS:.2f} s: a "
        f"request takes the next grabbed frame) finds the face, k-1 = {k - 1} more "
        f"analysis {1 / fps:.2f} s later confirms it, plus ~{1000 * proc:.0f} ms of analysis: "
        f"{(k - 1) / fps + proc:.2f}-{k / fps + 1 / FPS + proc:.2f} s. Empty room (idle rate "
        f"{idle:g}/s): the first wait is 0-{1 / idle:.2f} s instead: "
        f"{(k - 1) / fps + proc:.2f}-{1 / idle + (k - 1) / fps + 1 / FPS + proc:.2f} s. "
        "Plus, for the total, the stream's own delay (encode, transport, decode).",
        "",
        "| room | run | recognised | latency p50 s | p95 s | min-max s | agent part p50 / p95 s "
        "| analyses to confirm (median, max) | open s | encode+transport+decode s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rooms = list(dict.fromkeys(r["room"] for run in runs for r in run["rows"]))
    for room in rooms:
        every: list[dict[str, Any]] = []
        total = 0
        for run in runs:
            rows = [r for r in run["rows"] if r["room"] == room]
            ok = [r for r in rows if r["recognised"]]
            every.extend(ok)
            total += len(rows)
            lines.append(_latency_row(f"{room} | {run['run'] + 1}", ok, len(rows), run))
        lines.append(_latency_row(f"{room} | all", every, total, None))
    lines += [
        "",
        "| agent part (median / max s) | " + " | ".join(rooms) + " |",
        "|---|" + "---:|" * len(rooms),
    ]
    for key, label in (
        ("wait_first_analysis_s", "appearance -> first analysed frame with the face"),
        ("confirm_span_s", "first analysed frame -> confirming frame"),
        ("grab_to_emit_s", "confirming frame grabbed -> event emitted"),
    ):
        cells = []
        for room in rooms:
            values = [
                r[key]
                for run in runs
                for r in run["rows"]
                if r["room"] == room and r.get(key) is not None
            ]
            cells.append(f"{_f(_pct(values, 50))} / {_f(max(values, default=None))}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _span(rows: list[dict[str, Any]], q: float) -> str:
    low = _pct([r["latency_low_s"] for r in rows], q)
    high = _pct([r["latency_high_s"] for r in rows], q)
    return f"{_f(low)}-{_f(high)}"


def _latency_row(
    label: str, ok: list[dict[str, Any]], total: int, run: dict[str, Any] | None
) -> str:
    agent = [r["latency_counter_s"] for r in ok]
    counts = [r["analyses_to_confirm"] for r in ok]
    lows = [r["latency_low_s"] for r in ok]
    highs = [r["latency_high_s"] for r in ok]
    extra = (
        f"{_f(run['open_s'])} | {_f(run['t0_counter_minus_open_s'] - run['open_s'])}-"
        f"{_f(run['t0_counter_minus_open_s'])}"
        if run
        else "- | -"
    )
    return (
        f"| {label} | {len(ok)}/{total} | {_span(ok, 50)} | {_span(ok, 95)} | "
        f"{_f(min(lows, default=None))}-{_f(max(highs, default=None))} | "
        f"{_f(_pct(agent, 50))} / {_f(_pct(agent, 95))} | "
        f"{_f(statistics.median(counts) if counts else None, 1)}, {max(counts, default=0)} | "
        f"{extra} |"
    )


def pipeline_table(rows: list[dict[str, Any]]) -> list[str]:
    """CPU per camera of the agent's pipeline."""
    lines = [
        "| cameras | CPU per camera (% of a core) | agent total (cores) | readers | inference | "
        "event loop | native (FFmpeg workers) | decoded fps/cam | analysed fps/cam | "
        "faces/analysis | embedded faces/s/cam (unconfirmed + re-check) | detect CPU ms | "
        "embed CPU ms/face | analysis ms p50 / p95 | analysed frame age ms p50 / p95 | "
        "RTSP servers (cores) | other processes (cores) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["by_thread_cores"]
        lines.append(
            f"| {r['cameras']} | {100 * r['cpu_per_camera_cores']:.1f} | "
            f"{r['process_cores']:.2f} | {t['reader']:.2f} | {t['inference']:.2f} | "
            f"{t['loop']:.2f} | {t['native']:.2f} | "
            f"{_f(statistics.fmean(r['frames_read_per_cam_s']), 1)} | "
            f"{_f(statistics.fmean(r['frames_analysed_per_cam_s']), 2)} | "
            f"{r['faces_per_analysis']:.2f} | {r['embedded_per_cam_s']:.2f} "
            f"({r['embedded_unconfirmed_per_cam_s']:.2f} + {r['embedded_recheck_per_cam_s']:.2f})"
            f" | {r['detect_cpu_ms_p50']:.1f} | {r['embed_cpu_ms_per_face']:.1f} | "
            f"{r['analysis_wall_ms_p50']:.0f} / {r['analysis_wall_ms_p95']:.0f} | "
            f"{r['analysed_frame_age_ms_p50']:.0f} / {r['analysed_frame_age_ms_p95']:.0f} | "
            f"{r['servers_cores']:.2f} | {r['other_processes_cores']:.2f} |"
        )
    return lines


def naive_table(rows: list[dict[str, Any]], pipeline: list[dict[str, Any]]) -> list[str]:
    """The naive loop, with the pipeline's CPU per camera alongside."""
    agent_cpu = {r["cameras"]: r["cpu_per_camera_cores"] for r in pipeline}
    lines = [
        "| cameras | naive analysed fps/cam | naive CPU per camera (% of a core) | naive total "
        "(cores) | faces/frame | frame lag at window start -> end (s) | pipeline CPU per "
        "camera (% of a core) | RTSP servers (cores) | other processes (cores) |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        cams = r["per_camera"]
        fps = statistics.fmean(c["analysed_per_s"] for c in cams)
        faces = statistics.fmean(c["faces_per_frame"] for c in cams)
        lag = ", ".join(f"{_f(c['lag_start_s'], 1)} -> {_f(c['lag_end_s'], 1)}" for c in cams)
        mine = agent_cpu.get(r["cameras"])
        lines.append(
            f"| {r['cameras']} | {fps:.2f} | {100 * r['cpu_per_camera_cores']:.1f} | "
            f"{r['process_cores']:.2f} | {faces:.2f} | {lag} | "
            f"{_f(None if mine is None else 100 * mine, 1)} | {r['servers_cores']:.2f} | "
            f"{r['other_processes_cores']:.2f} |"
        )
    return lines


# Main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--latency-runs", type=int, default=2)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--warmup-s", type=float, default=6.0)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--decoder-rounds", type=int, default=1)
    return parser.parse_args(argv)


async def run_agent_parts(
    args: argparse.Namespace,
    agent: Agent,
    latency: tuple[Any, Any, list[Appearance]],
    cpu_servers: list[Any],
) -> dict[str, Any]:
    """Latency runs, then the pipeline CPU windows (one event loop for all)."""
    server, clip, appearances = latency
    out: dict[str, Any] = {"latency": [], "pipeline": []}
    for run in [] if args.skip_latency else range(args.latency_runs):
        await asyncio.sleep(1.5)  # let the server's shared stream stop: next run from frame 0
        result = await latency_run(agent, server, clip, appearances, run)
        out["latency"].append(result)
        progress(f"latency run {run + 1}: {_summary(result)}")
    for n in args.cameras:
        await asyncio.sleep(1.5)
        result = await pipeline_cpu(agent, cpu_servers[:n], args.warmup_s, args.window_s)
        out["pipeline"].append(result)
        progress(
            f"pipeline {n} camera(s): {100 * result['cpu_per_camera_cores']:.1f} % of a core "
            f"per camera, other processes {result['other_processes_cores']:.2f} cores"
        )
    return out


def _summary(run: dict[str, Any]) -> str:
    lat = [r["latency_counter_s"] for r in run["rows"] if r["recognised"]]
    return f"{len(lat)}/{len(run['rows'])} recognised, p50 {_f(_pct(lat, 50))} s"


def progress(message: str) -> None:
    """Progress on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build everything, run the three parts, stop every server and thread."""
    from tests.rtsp import INSTALL_HINT, RtspServer, gst_rtsp_available

    if not gst_rtsp_available():
        raise SystemExit(INSTALL_HINT)
    people = identities()
    agent = build_agent(people)
    started = time.monotonic()
    latency_clip, appearances, cpu_clip = make_clips(workdir, people, agent.engine)
    progress(f"clips written in {time.monotonic() - started:.1f} s")
    servers: list[Any] = []
    results: dict[str, Any] = {"appearances": [a.__dict__ for a in appearances]}
    try:
        lat_server = RtspServer(latency_clip.frames_dir, fps=FPS, width=SIZE[0], height=SIZE[1])
        servers.append(lat_server)
        lat_server.start()
        cpu_servers = []
        for _ in range(max(args.cameras)):
            server = RtspServer(cpu_clip.frames_dir, fps=FPS, width=SIZE[0], height=SIZE[1])
            servers.append(server)
            server.start()
            cpu_servers.append(server)
        results.update(
            asyncio.run(
                run_agent_parts(args, agent, (lat_server, latency_clip, appearances), cpu_servers)
            )
        )
        results["naive"] = [] if args.skip_naive else run_naive(args, cpu_servers)
        results["decoder"] = decoder_delay(lat_server, args.decoder_rounds)
    finally:
        for server in servers:
            server.stop()
    results["config"] = {
        "analysis_fps": agent.cfg.cameras.analysis_fps,
        "idle_analysis_fps": getattr(agent.cfg.cameras, "idle_analysis_fps", None),
        "confirm_k": agent.cfg.recognition.confirm_k,
        "confirm_n": agent.cfg.recognition.confirm_n,
        "reembed_every": agent.cfg.recognition.reembed_every,
        "inference_workers": agent.cfg.runtime.inference_workers,
        "intra_op_threads": agent.cfg.models.intra_op_threads,
    }
    results["_cfg"] = agent.cfg
    return results


def run_naive(args: argparse.Namespace, servers: list[Any]) -> list[dict[str, Any]]:
    """The naive loop for each camera count (apps loaded once, before any clock)."""
    apps = load_naive_apps(max(args.cameras))
    rows = []
    try:
        for n in args.cameras:
            time.sleep(1.5)
            row = naive_cpu(servers[:n], apps[:n], min(args.warmup_s, 5.0), args.window_s)
            rows.append(row)
            fps = statistics.fmean(c["analysed_per_s"] for c in row["per_camera"])
            progress(
                f"naive {n} camera(s): {fps:.2f} fps/cam, "
                f"{100 * row['cpu_per_camera_cores']:.1f} % of a core per camera"
            )
    finally:
        del apps
        gc.collect()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-clips-") as tmp:
        results = run_all(args, Path(tmp))
    cfg = results.pop("_cfg")
    info["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    report: list[str] = [
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores, Python "
        f"{info['python']}, onnxruntime {info['onnxruntime']}, OpenCV {info['opencv']}, "
        f"insightface {info['insightface']}; {info['date']}; load average before "
        f"{info['loadavg_before']}, after {info['loadavg_after']}.",
        "",
        f"Config: {results['config']}",
        "",
    ]
    if results["latency"]:
        report += ["### Latency: face appears -> RECOGNITION event (1 camera)", ""]
        report += [*latency_tables(results["latency"], cfg), ""]
    report += ["### CPU per camera: the agent's pipeline", ""]
    report += [*pipeline_table(results["pipeline"]), ""]
    if results["naive"]:
        report += ["### The naive loop on the same streams", ""]
        report += [*naive_table(results["naive"], results["pipeline"]), ""]
    if results["decoder"]:
        report += ["### Frame delay of OpenCV's FFmpeg decoder (latency clip, 1 reader)", ""]
        report += [*decoder_table(results["decoder"]), ""]
    print("\n".join(report))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, **results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
