"""``python -m agent demo``: the whole agent on an embedded default, in a few minutes.

It builds a short classroom video from face photos shipped inside installed packages,
serves it as a local MJPEG camera, starts a Mosquitto broker on a free port, a local
callback receiver and the agent; enrolls the demo students through ``embedding/generate``,
starts a session over MQTT, prints each recognition as the callback receives it, stops the
session and prints a summary. Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import cv2
import numpy as np
from aiohttp import web
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.app import Agent
from agent.config import AgentConfig, EnrollmentConfig
from agent.defaultpack import package_dir, sample_photo
from agent.embedding import generate_embedding
from agent.engine import FaceEngine, Image
from agent.errors import AgentError
from agent.modelpack import select_pack

API_KEY = "demo-key"
FPS = 10
SIZE = (960, 540)


def say(message: str) -> None:
    """A progress line."""
    print(f"[demo] {message}", flush=True)


@dataclass(frozen=True)
class Student:
    """A demo student: an enrollment photo, and a face to paste into the video."""

    student_id: str
    name: str
    photo: bytes
    face: Image
    in_video: bool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _crop(image: Image, box: np.ndarray, margin: float) -> Image:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    xa, ya = max(0, int(x1 - w * margin)), max(0, int(y1 - h * margin))
    xb, yb = min(image.shape[1], int(x2 + w * margin)), min(image.shape[0], int(y2 + h * margin))
    return np.ascontiguousarray(image[ya:yb, xa:xb])


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
        students.append(
            Student(student_id, name, path.read_bytes(), _crop(image, face.bbox, 0.3), True)
        )
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
            candidates.append((result.quality.score, buf.tobytes(), _crop(group, face.bbox, 0.3)))
    candidates.sort(key=lambda c: -c[0])
    for index, (_, photo_bytes, face_image) in enumerate(candidates[:3]):
        students.append(
            Student(
                f"stu-group-{index + 1}", f"Group person {index + 1}", photo_bytes, face_image, True
            )
        )
    return students


def classroom_frames(students: list[Student], seconds: float) -> list[bytes]:
    """JPEG frames: a plain classroom, each face drifting slowly in its own seat."""
    width, height = SIZE
    background = np.zeros((height, width, 3), np.uint8)
    background[:] = np.linspace(70, 150, width, dtype=np.uint8)[None, :, None]
    cv2.rectangle(background, (40, 20), (width - 40, 110), (40, 70, 40), -1)  # the board
    frames = []
    seats = [(0.15, 0.45), (0.4, 0.4), (0.65, 0.45), (0.85, 0.5), (0.3, 0.75), (0.6, 0.75)]
    for i in range(int(seconds * FPS)):
        frame = background.copy()
        for k, student in enumerate(students):
            if i < k * 1.5 * FPS:
                continue  # people come in one after another
            scale = 130 / student.face.shape[1]
            face = cv2.resize(student.face, (130, int(student.face.shape[0] * scale)))
            cx = int(seats[k][0] * width + 20 * np.sin(i / 15 + k))
            cy = int(seats[k][1] * height)
            x, y = max(0, cx - face.shape[1] // 2), max(0, cy - face.shape[0] // 2)
            h, w = min(face.shape[0], height - y), min(face.shape[1], width - x)
            frame[y : y + h, x : x + w] = face[:h, :w]
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        assert ok
        frames.append(buf.tobytes())
    return frames


@asynccontextmanager
async def http_services(
    frames: list[bytes], received: asyncio.Queue[dict[str, Any]]
) -> AsyncIterator[int]:
    """The MJPEG camera (``/camera``) and the callback receiver (``/callback``)."""

    async def camera(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"}
        )
        await response.prepare(request)
        index = 0
        try:
            while True:
                frame = frames[index % len(frames)]
                await response.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(frame)).encode()
                    + b"\r\n\r\n"
                    + frame
                    + b"\r\n"
                )
                index += 1
                await asyncio.sleep(1 / FPS)
        except (ConnectionResetError, asyncio.CancelledError):
            return response

    async def callback(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/camera", camera)
    app.router.add_post("/callback", callback)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@asynccontextmanager
async def mosquitto(workdir: Path, binary: str) -> AsyncIterator[int]:
    """A Mosquitto broker process on a free port."""
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "set_tcp_nodelay true\nlog_dest none\n"
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - starts instantly; waited for below
        [binary, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@asynccontextmanager
async def amqtt_broker() -> AsyncIterator[int]:
    """An in-process amqtt broker (MQTT 3.1.1 only), for machines without Mosquitto."""
    try:
        from amqtt.broker import Broker
    except ImportError as exc:
        raise SystemExit(
            "No MQTT broker for the demo: install Mosquitto (apt-get install mosquitto) or "
            "amqtt (pip install amqtt)"
        ) from exc

    port = _free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield port
    finally:
        await broker.shutdown()


@asynccontextmanager
async def embedded_broker(workdir: Path, choice: str) -> AsyncIterator[tuple[int, str]]:
    """Mosquitto when installed (MQTT 5), else amqtt in-process (MQTT 3.1.1)."""
    binary = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    if choice == "mosquitto" and binary is None:
        raise SystemExit("mosquitto is not installed: `make demo` installs it")
    if binary is not None and choice != "amqtt":
        async with mosquitto(workdir, binary) as port:
            yield port, "5"
    else:
        async with amqtt_broker() as port:
            yield port, "3.1.1"


class Backend:
    """The backend's MQTT side. With MQTT 5 replies come to a response topic; with 3.1.1
    to the site's reply topic. Either way they are matched by requestId."""

    def __init__(self, client: aiomqtt.Client, protocol: str) -> None:
        self.client = client
        self.v5 = protocol == "5"
        self.topic = f"demo-backend/{uuid.uuid4().hex}" if self.v5 else "attendance/demo-site/reply"
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def listen(self) -> None:
        await self.client.subscribe(self.topic, qos=1)
        async for message in self.client.messages:
            reply = json.loads(bytes(message.payload))
            future = self._waiting.pop(str(reply.get("requestId")), None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def send(self, command: str, payload: dict[str, Any]) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        body = {**payload, "requestId": request_id}
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.topic
            props.CorrelationData = request_id.encode()
            props.UserProperty = [("x-api-key", API_KEY)]
        else:
            body["apiKey"] = API_KEY  # MQTT 3.1.1 has no user properties
        await self.client.publish(
            f"attendance/demo-site/cmd/{command}",
            json.dumps(body).encode(),
            qos=1,
            properties=props,
        )
        async with asyncio.timeout(60):
            return await future


async def run_demo(base: AgentConfig, session_seconds: float, broker: str = "auto") -> int:
    """The demo; returns the exit code (0 when every enrolled student was recognised)."""
    started = time.monotonic()
    say("loading the default model pack ...")
    pack = select_pack(base.models.dir, base.models.pack)
    engine = FaceEngine(pack, base.models, base.recognition)
    say(f"model {pack.name} ready ({engine.embedding_space}, {engine.load_seconds:.2f} s)")
    students = demo_students(engine)
    enrolled = students[:-1]  # the last person in the video is a visitor, not enrolled
    say(f"building a 12 s classroom video with {len(students)} people ...")
    # The visitor walks in second, well before the session ends.
    frames = classroom_frames([enrolled[0], students[-1], *enrolled[1:]], seconds=12)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
        workdir = Path(tmp)
        async with (
            embedded_broker(workdir, broker) as (broker_port, protocol),
            http_services(frames, received) as http_port,
        ):
            data = base.model_dump()
            data["site"]["id"] = "demo-site"
            data["mqtt"]["port"] = broker_port
            data["mqtt"]["protocol"] = protocol
            data["storage"]["data_dir"] = workdir / "data"
            data["auth"] = {"api_keys": API_KEY}
            data["callback"]["allowed_urls"] = [f"http://127.0.0.1:{http_port}/"]
            data["metrics"]["port"] = 0
            cfg = AgentConfig(**data)
            say(
                f"broker on port {broker_port} (MQTT {protocol}), camera and callback receiver "
                f"on port {http_port}"
            )
            agent = Agent(cfg)
            stop = asyncio.Event()
            agent_task = asyncio.create_task(agent.run(stop), name="demo-agent")
            try:
                return await _session(
                    agent,
                    broker_port,
                    protocol,
                    http_port,
                    enrolled,
                    students,
                    received,
                    session_seconds,
                    started,
                )
            finally:
                stop.set()
                await agent_task
                say("agent stopped; nothing left running")


async def _session(
    agent: Agent,
    broker_port: int,
    protocol: str,
    http_port: int,
    enrolled: list[Student],
    students: list[Student],
    received: asyncio.Queue[dict[str, Any]],
    session_seconds: float,
    started: float,
) -> int:
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client("127.0.0.1", broker_port, protocol=version) as client:
        backend = Backend(client, protocol)
        listener = asyncio.create_task(backend.listen(), name="demo-backend")
        try:
            while agent.link is None or not agent.link.connected:
                await asyncio.sleep(0.05)
            roster = []
            for student in enrolled:
                reply = await backend.send(
                    "embedding/generate",
                    {
                        "submissionId": student.student_id,
                        "photo": base64.b64encode(student.photo).decode(),
                    },
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
            reply = await backend.send(
                "session/start",
                {
                    "slotId": "demo-slot",
                    "mode": "ATTENDANCE",
                    "callbackUrl": f"http://127.0.0.1:{http_port}/callback",
                    "cameras": [
                        {
                            "id": "cam-1",
                            "name": "Demo classroom",
                            "rtspUrl": f"http://127.0.0.1:{http_port}/camera",
                        }
                    ],
                    "students": roster,
                },
            )
            if reply["status"] != 200:
                say(f"session/start failed: {reply['code']} {reply['message']}")
                return 1
            say(f"session started with {len(roster)} students; watching the camera ...")
            seen = await _watch(received, {s["id"] for s in roster}, session_seconds)
            await backend.send("session/stop", {"slotId": "demo-slot"})
            await asyncio.sleep(0.5)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    names = {s.student_id: s.name for s in students}
    print("\nSummary")
    print(f"{'student':<16} {'recognised at':<34} {'camera':<16} confidence")
    for student_id in (s["id"] for s in roster):
        event = seen.get(student_id)
        if event is None:
            print(f"{names[student_id]:<16} {'not seen':<34}")
        else:
            print(
                f"{names[student_id]:<16} {event['recognizedAt']:<34} "
                f"{event['cameraName']:<16} {event['confidence']:.2f}"
            )
    print(f"({students[-1].name} was in the video as a visitor: not enrolled, so not reported)")
    say(f"done in {time.monotonic() - started:.0f} s")
    return 0 if len(seen) == len(roster) else 1


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
