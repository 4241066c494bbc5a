"""``python -m agent demo``: the whole agent on an embedded default, in a few minutes.

It builds a short classroom video from face photos shipped inside installed packages,
serves it as a local RTSP camera (GStreamer's RTSP server, :mod:`agent.devkit.rtsp`),
starts a Mosquitto broker on a free port, a local callback receiver and the agent, and
prints the status page's address; enrolls the demo students through
``embedding/generate``, starts a session over MQTT, prints each recognition as the callback
receives it, stops the session and prints the STOPPED event with the session's summary
(each student's presence verdict). Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import asyncio
import base64
import math
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import cv2
import numpy as np

from agent.app import Agent
from agent.config import AgentConfig, EnrollmentConfig
from agent.devkit.backend import Backend
from agent.devkit.brokers import BrokerError, Mosquitto, amqtt_broker, find_mosquitto
from agent.devkit.callback_receiver import CallbackServer, Received
from agent.devkit.classroom import Box, Person, make_classroom_frames
from agent.devkit.ports import free_port
from agent.devkit.rtsp import INSTALL_HINT, RtspServer, RtspServerError, gst_rtsp_available
from agent.errors import AgentError
from agent.vision.defaultpack import package_dir, sample_photo
from agent.vision.embedding import generate_embedding
from agent.vision.engine import FaceEngine
from agent.vision.faces import Image
from agent.vision.modelpack import select_pack

API_KEY = "demo-key"
FPS = 10
SIZE = (960, 540)


def say(message: str) -> None:
    """A progress line."""
    print(f"[demo] {message}", flush=True)


@dataclass(frozen=True)
class Student:
    """A demo student: an enrollment photo, and where their face is in a source photo
    (what the video shows)."""

    student_id: str
    name: str
    photo: bytes
    source: Path
    face_box: Box


def _crop(image: Image, box: np.ndarray, margin: float) -> Image:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    xa, ya = max(0, int(x1 - w * margin)), max(0, int(y1 - h * margin))
    xb, yb = min(image.shape[1], int(x2 + w * margin)), min(image.shape[0], int(y2 + h * margin))
    return np.ascontiguousarray(image[ya:yb, xa:xb])


def _box(bbox: np.ndarray) -> Box:
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return (x1, y1, x2, y2)


def demo_students(engine: FaceEngine) -> list[Student]:
    """Yao Ming and the astronaut (single-face photos), and three people cut out of the
    group photos t1.jpg and gdp.jpg; the last of them is in the video but not enrolled."""
    students = []
    singles = [("stu-yao", "Yao Ming", sample_photo("yaoming.jpg"))]
    skimage_dir = package_dir("skimage")
    if skimage_dir is not None and (skimage_dir / "data" / "astronaut.png").is_file():
        singles.append(("stu-astro", "The astronaut", skimage_dir / "data" / "astronaut.png"))
    for student_id, name, path in singles:
        image = np.asarray(cv2.imread(str(path), cv2.IMREAD_COLOR), np.uint8)
        (face,) = sorted(engine.detect(image), key=lambda f: -f.area)[:1]
        students.append(Student(student_id, name, path.read_bytes(), path, _box(face.bbox)))
    # Three more people cut out of group photos: the two best for enrollment (pose,
    # sharpness...) are enrolled; the third is a visitor who must never be reported.
    candidates = []
    for photo in ("t1.jpg", "gdp.jpg"):
        group = np.asarray(cv2.imread(str(sample_photo(photo)), cv2.IMREAD_COLOR), np.uint8)
        for face in engine.detect(group):
            _, buf = cv2.imencode(
                ".jpg", _crop(group, face.bbox, 0.5), [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
            try:
                result = generate_embedding(engine, EnrollmentConfig(), photo=buf.tobytes())
            except AgentError:
                continue  # not a usable enrollment photo (a neighbour, a turned head...)
            candidates.append(
                (result.quality.score, buf.tobytes(), sample_photo(photo), _box(face.bbox))
            )
    candidates.sort(key=lambda c: -c[0])
    for index, (_, photo_bytes, source, box) in enumerate(candidates[:3]):
        students.append(
            Student(f"stu-group-{index + 1}", f"Group person {index + 1}", photo_bytes, source, box)
        )
    return students


def classroom_frames(students: list[Student], seconds: float, workdir: Path) -> Path:
    """Writes the JPEG frames ``%04d.jpg`` of a classroom where the students come in one
    after another, each face drifting slowly in its own seat; returns their folder."""
    width, height = SIZE
    seats = [(0.15, 0.45), (0.4, 0.4), (0.65, 0.45), (0.85, 0.5), (0.3, 0.75), (0.6, 0.75)]
    people = [
        Person(
            name=student.student_id,
            photo=student.source,
            enter_s=k * 1.5,
            leave_s=math.inf,
            start_xy=(seats[k][0] * width, seats[k][1] * height),
            velocity_xy=(4.0 if k % 2 else -4.0, 0.0),
            face_width=130,
            face_box=student.face_box,
            margin=0.3,
        )
        for k, student in enumerate(students)
    ]
    return make_classroom_frames(workdir, people, seconds=seconds, fps=FPS, size=SIZE).frames_dir


@asynccontextmanager
async def rtsp_camera(frames_dir: Path) -> AsyncIterator[str]:
    """An RTSP camera looping the JPEG frames of ``frames_dir`` at FPS; yields its URL."""
    if not await asyncio.to_thread(gst_rtsp_available):
        raise SystemExit(f"No RTSP camera for the demo. {INSTALL_HINT}")
    server = RtspServer(frames_dir, fps=FPS, width=SIZE[0], height=SIZE[1])
    try:
        await asyncio.to_thread(server.start)  # blocks until it listens
    except RtspServerError as exc:
        raise SystemExit(f"The demo's RTSP camera did not start: {exc}") from exc
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.stop)


@asynccontextmanager
async def callback_receiver(received: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[str]:
    """The backend's callback receiver, queueing each event's body; yields its URL."""

    def arrived(request: Received) -> None:
        received.put_nowait(request.body)

    server = CallbackServer(on_request=arrived)
    await server.start()
    try:
        yield server.url("/callback")
    finally:
        await server.stop()


@asynccontextmanager
async def embedded_broker(workdir: Path, choice: str) -> AsyncIterator[tuple[int, str]]:
    """Mosquitto when installed (MQTT 5), else amqtt in-process (MQTT 3.1.1)."""
    installed = find_mosquitto() is not None
    if choice == "mosquitto" and not installed:
        raise SystemExit("mosquitto is not installed: `make demo` installs it")
    if installed and choice != "amqtt":
        broker = Mosquitto(workdir / "broker", persistence=False)
        await asyncio.to_thread(broker.start)  # blocks until it listens
        try:
            yield broker.port, "5"
        finally:
            await asyncio.to_thread(broker.stop)
        return
    try:
        async with amqtt_broker() as port:
            yield port, "3.1.1"
    except BrokerError as exc:
        raise SystemExit(
            "No MQTT broker for the demo: install Mosquitto (apt-get install mosquitto) or "
            "amqtt (pip install amqtt)"
        ) from exc


@dataclass(frozen=True)
class _Services:
    """Where the demo's stand-ins listen."""

    broker_port: int
    protocol: str
    camera_url: str
    callback_url: str


def _demo_config(base: AgentConfig, services: _Services, workdir: Path) -> AgentConfig:
    """The agent's configuration for the demo: its broker, state and callback, and the
    status page on a free port of 127.0.0.1 (no password needed there)."""
    data = base.model_dump()
    data["site"]["id"] = "demo-site"
    data["mqtt"]["port"] = services.broker_port
    data["mqtt"]["protocol"] = services.protocol
    data["storage"]["data_dir"] = workdir / "data"
    data["auth"] = {"api_keys": API_KEY}
    data["callback"]["allowed_urls"] = [services.callback_url]
    data["metrics"]["enabled"] = True
    data["metrics"]["host"] = "127.0.0.1"
    data["metrics"]["port"] = free_port()
    data["webui"]["enabled"] = True
    return AgentConfig(**data)


async def run_demo(base: AgentConfig, session_seconds: float, broker: str = "auto") -> int:
    """The demo; returns the exit code (0 when every enrolled student was recognised)."""
    started = time.monotonic()
    say("loading the default model pack ...")
    pack = select_pack(base.models.dir, base.models.pack)
    engine = FaceEngine(pack, base.models, base.recognition)
    say(f"model {pack.name} ready ({engine.embedding_space}, {engine.load_seconds:.2f} s)")
    students = demo_students(engine)
    enrolled = students[:-1]  # the last person in the video is a visitor, not enrolled
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
        workdir = Path(tmp)
        say(f"building a 12 s classroom video with {len(students)} people ...")
        # The visitor walks in second, well before the session ends.
        frames_dir = classroom_frames(
            [enrolled[0], students[-1], *enrolled[1:]], seconds=12, workdir=workdir / "video"
        )
        async with (
            embedded_broker(workdir, broker) as (broker_port, protocol),
            rtsp_camera(frames_dir) as camera_url,
            callback_receiver(received) as callback_url,
        ):
            services = _Services(broker_port, protocol, camera_url, callback_url)
            cfg = _demo_config(base, services, workdir)
            say(
                f"broker on port {broker_port} (MQTT {protocol}), RTSP camera at {camera_url}, "
                f"callback receiver at {callback_url}"
            )
            page = f"http://{cfg.metrics.host}:{cfg.metrics.port}/"
            say(f"status page: {page} (open it in a browser while the demo runs)")
            agent = Agent(cfg)
            stop = asyncio.Event()
            agent_task = asyncio.create_task(agent.run(stop), name="demo-agent")
            try:
                code = await _session(agent, services, enrolled, received, session_seconds)
            finally:
                stop.set()
                await agent_task
                say("agent stopped; nothing left running")
    print(f"({students[-1].name} was in the video as a visitor: not enrolled, so not reported)")
    say(f"done in {time.monotonic() - started:.0f} s")
    return code


async def _enroll(backend: Backend, enrolled: list[Student]) -> list[dict[str, Any]]:
    """Enrolls the students through ``embedding/generate``; returns the session's roster."""
    roster = []
    for student in enrolled:
        reply = await backend.send(
            "embedding/generate",
            {
                "submissionId": student.student_id,
                "photo": base64.b64encode(student.photo).decode(),
            },
            timeout=60,
        )
        if reply["status"] != 200:
            say(f"enrolling {student.name} failed: {reply['code']} {reply['message']}")
            continue
        roster.append(
            {
                "id": student.student_id,
                "name": student.name,
                "embeddings": [reply["data"]["embedding"]],
                "embeddingSpace": reply["data"]["embeddingSpace"],
            }
        )
        say(f"enrolled {student.name} (quality {reply['data']['quality']['score']})")
    return roster


async def _session(
    agent: Agent,
    services: _Services,
    enrolled: list[Student],
    received: asyncio.Queue[dict[str, Any]],
    session_seconds: float,
) -> int:
    """Enroll, run the session until everyone is recognised (or time is up), stop it and
    print what the backend got; returns the exit code."""
    v5 = services.protocol == "5"
    version = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    async with (
        aiomqtt.Client("127.0.0.1", services.broker_port, protocol=version) as client,
        Backend(
            client,
            site="demo-site",
            api_key=API_KEY,
            protocol=services.protocol,
            reply_prefix="demo-backend",
        ) as backend,
    ):
        while agent.link is None or not agent.link.connected:
            await asyncio.sleep(0.05)
        roster = await _enroll(backend, enrolled)
        camera = {"id": "cam-1", "name": "Demo classroom", "rtspUrl": services.camera_url}
        reply = await backend.send(
            "session/start",
            {
                "slotId": "demo-slot",
                "mode": "ATTENDANCE",
                "callbackUrl": services.callback_url,
                "cameras": [camera],
                "students": roster,
            },
            timeout=60,
        )
        if reply["status"] != 200:
            say(f"session/start failed: {reply['code']} {reply['message']}")
            return 1
        say(f"session started with {len(roster)} students; watching the camera ...")
        seen = await _watch(received, {s["id"] for s in roster}, session_seconds)
        say("stopping the session (session/stop) ...")
        stopped = await backend.send("session/stop", {"slotId": "demo-slot"}, timeout=60)
        if stopped["status"] != 200:
            say(f"session/stop failed: {stopped['code']} {stopped['message']}")
            return 1
        event = await _stopped_event(received, seen)
    names = {s.student_id: s.name for s in enrolled}
    _print_recognitions(names, [s["id"] for s in roster], seen)
    if event is None:
        say("no STOPPED event reached the callback receiver")
        return 1
    _print_stopped(event, stopped["data"], names)
    return 0 if len(seen) == len(roster) else 1


def _print_recognitions(
    names: dict[str, str], roster: list[str], seen: dict[str, dict[str, Any]]
) -> None:
    """The first recognition of each roster student, or ``not seen``."""
    print("\nSummary")
    print(f"{'student':<16} {'recognised at':<34} {'camera':<16} confidence")
    for student_id in roster:
        event = seen.get(student_id)
        if event is None:
            print(f"{names[student_id]:<16} {'not seen':<34}")
        else:
            print(
                f"{names[student_id]:<16} {event['recognizedAt']:<34} "
                f"{event['cameraName']:<16} {event['confidence']:.2f}"
            )


def _print_stopped(event: dict[str, Any], summary: dict[str, Any], names: dict[str, str]) -> None:
    """The STOPPED event as the backend received it (reason, cameras' up-time, the presence
    verdict on every roster student) and the session's summary from the stop reply."""
    print(f"\nSESSION_STATUS STOPPED  reason {event['reason']}  at {event['occurredAt']}")
    counts = summary.get("presenceCounts") or {}
    print(
        f"  session {summary['slotId']} ({summary['mode']}), {summary['students']} students, "
        f"started {summary['startedAt']}: present {counts.get('present')}, uncertain "
        f"{counts.get('uncertain')}, not seen {counts.get('notSeen')}"
    )
    for camera in event.get("cameras") or []:
        print(
            f"  camera {camera['cameraId']} ({camera.get('cameraName')}): up "
            f"{camera['upSeconds']:.0f} s of {camera['sessionSeconds']:.0f} s"
        )
    print(f"  presence ({len(event.get('presence') or [])} students):")
    print(f"  {'student':<16} {'verdict':<10} {'best score':<11} {'sightings':<10} first seen")
    for entry in event.get("presence") or []:
        score = entry.get("bestScore")
        print(
            f"  {names.get(entry['studentId'], entry['studentId']):<16} {entry['status']:<10} "
            f"{'-' if score is None else f'{score:.2f}':<11} {entry['sightings']:<10} "
            f"{entry.get('firstSeenAt') or '-'}"
        )


async def _stopped_event(
    received: asyncio.Queue[dict[str, Any]], seen: dict[str, dict[str, Any]], timeout: float = 30
) -> dict[str, Any] | None:
    """Waits for the session's STOPPED event at the callback receiver (recognitions that
    arrive meanwhile are kept); None if it does not come within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                event = await received.get()
        except TimeoutError:
            return None
        if event["type"] == "RECOGNITION":
            seen.setdefault(event["studentId"], event)
        elif event.get("status") == "STOPPED":
            return event
    return None


async def _watch(
    received: asyncio.Queue[dict[str, Any]], expected: set[str], seconds: float
) -> dict[str, dict[str, Any]]:
    """Print events as they arrive until every expected student is seen or time is up."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + seconds
    last_progress = 0.0
    while len(seen) < len(expected) and time.monotonic() < deadline:
        try:
            async with asyncio.timeout(1.0):
                event = await received.get()
        except TimeoutError:
            if time.monotonic() - last_progress > 5:
                last_progress = time.monotonic()
                say(f"session running: {len(seen)}/{len(expected)} recognised")
            continue
        if event["type"] == "RECOGNITION":
            seen[event["studentId"]] = event
            say(
                f"RECOGNITION {event['studentId']} on {event['cameraName']} "
                f"(confidence {event['confidence']:.2f}) at {event['recognizedAt']}"
            )
        else:
            say(f"SESSION_STATUS {event['status']}")
    return seen


def main(cfg: AgentConfig, session_seconds: float = 90.0, broker: str = "auto") -> int:
    """Run the demo (blocking)."""
    try:
        return asyncio.run(run_demo(cfg, session_seconds, broker))
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout.flush()
