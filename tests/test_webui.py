"""The status page's server side at its seams: the snapshot endpoint (auth, no-store,
404s), the guard (loopback, password, cross-site), the camera test against a real RTSP
camera, the models view, and the status adapter. Served by the real aiohttp app of the
local HTTP endpoint; sessions are built from a real photo and the real detector."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from agent.camera.check import check_camera_url
from agent.camera.reader import CameraReader
from agent.camera.snapshot import RECOGNISED, UNKNOWN, ascii_label, render_snapshot
from agent.camera.urls import CameraUrlError
from agent.camera.view import CameraView, FaceBox
from agent.config import AgentConfig, ConfigError, RecognitionConfig, load_config, masked_dump
from agent.protocol import SessionStart
from agent.session.camera_work import CameraWork
from agent.session.limits import SessionCamera
from agent.session.manager import ActiveSession
from agent.status.metrics import Metrics
from agent.status.models import AgentStatus
from agent.status.view import page_state
from agent.transport.local_http import LocalHttp
from agent.transport.webui import UiSources, WebUi
from agent.vision.engine import FaceEngine
from tests.agent_harness import MODELS_DIR, start_payload
from tests.cli import run_cli
from tests.rtsp import RtspServer

PASSWORD = "correct horse"
CAMERA: dict[str, Any] = {
    "id": "cam-1",
    "name": "Room 1",
    "state": "RECONNECTING",
    "frameAgeSeconds": None,
    "framesRead": 0,
    "framesAnalysed": 0,
    "framesDropped": 0,
    "framesInvalid": 0,
    "reconnects": 0,
    "lastError": None,
    "upSeconds": 0.0,
}
STATUS_DATA: dict[str, Any] = {
    "agent": {"version": "0.1.0", "siteId": "site-1", "state": "RUNNING", "uptimeSeconds": 12.0},
    "model": {
        "loaded": True,
        "pack": "buffalo_sc",
        "embeddingSpace": "arcface-x",
        "embeddingDim": 512,
        "providers": {"detector": ["CPUExecutionProvider"]},
        "warnings": [],
        "loadSeconds": 0.1,
        "keptSpaces": [],
        "reloadError": None,
        "swaps": 1,
    },
    "sessions": [
        {
            "slotId": "slot-1",
            "mode": "ATTENDANCE",
            "students": 1,
            "cameras": [CAMERA],
            "embeddingSpace": "arcface-x",
            "threshold": 0.4,
            "endTime": None,
            "startedAt": "2026-12-04T08:00:00+07:00",
        }
    ],
    "mqtt": {"connected": True, "protocol": "5", "connects": 1},
    "outbox": None,
    "warnings": [],
}
STATUS = AgentStatus.model_validate(STATUS_DATA)


@pytest.fixture(scope="module")
def yao_view(engine: FaceEngine, photos: dict[str, Path]) -> CameraView:
    """The Yao Ming photo as a camera's last analysis: one face, recognised as stu-1."""
    image = cv2.imread(str(photos["yaoming.jpg"]))
    (face,) = engine.detect(image)
    box = FaceBox(tuple(float(v) for v in face.bbox[:4]), "stu-1", 0.8)  # type: ignore[arg-type]
    return CameraView("cam-1", image, 1_700_000_000.0, (box,))


def _session(view: CameraView | None) -> ActiveSession:
    command = SessionStart.model_validate(start_payload("slot-1", [1.0] * 512))
    session = ActiveSession(
        command=command,
        roster=None,  # type: ignore[arg-type]  # not read by the page
        camera_plan=[SessionCamera("cam-1", "Room 1", "rtsp://127.0.0.1:1/room1")],
        embedding_space="arcface-x",
        threshold=0.4,
    )
    if view is not None:  # the camera's work, as the runner leaves it after an analysis
        reader = CameraReader(
            "cam-1",
            "Room 1",
            "rtsp://127.0.0.1:1/room1",
            AgentConfig().cameras,
            asyncio.get_running_loop(),
            on_state=lambda *change: None,
        )
        work = CameraWork.create(reader, RecognitionConfig(), session.threshold)
        work.view = view
        session.cameras = [work]
    return session


def _config(tmp_path: Path, **sections: dict[str, Any]) -> AgentConfig:
    base: dict[str, Any] = {
        "metrics": {"port": 0},
        "storage": {"data_dir": tmp_path},
        "models": {"dir": MODELS_DIR},
        "cameras": {"registry": [{"id": "cam-1", "name": "Room 1", "url": "rtsp://127.0.0.1:1/x"}]},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return AgentConfig(**base)


Serve = Callable[..., Any]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """``await serve(cfg, session)`` -> base URL of the local HTTP app with the page."""
    started: list[tuple[TestServer, LocalHttp]] = []

    async def start(cfg: AgentConfig, session: ActiveSession | None) -> str:
        sources = UiSources(lambda: STATUS, lambda slot: session if slot == "slot-1" else None)
        http = LocalHttp(cfg.metrics, Metrics(), lambda: STATUS, WebUi(cfg, sources))
        server = TestServer(http.build_app(), host="127.0.0.1")
        await server.start_server()
        started.append((server, http))
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server, http in started:
        await server.close()
        await http.stop()


def _basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"tech:{password}".encode()).decode()}


async def _get(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as client, client.get(url, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


async def test_snapshot_needs_the_password_and_is_never_cached(
    serve: Serve, tmp_path: Path, yao_view: CameraView
) -> None:
    cfg = _config(tmp_path, webui={"password": PASSWORD})
    base = await serve(cfg, _session(yao_view))
    url = f"{base}/ui/api/snapshot?slot=slot-1&camera=cam-1"
    for headers in ({}, _basic("wrong"), {"Authorization": "Bearer wrong"}, _basic("")):
        status, got, body = await _get(url, headers=headers)
        assert status == 401, headers
        assert got["Cache-Control"] == "no-store"
        assert got["WWW-Authenticate"].startswith("Basic")
        assert json.loads(body)["code"] == "UNAUTHORIZED"
        assert PASSWORD.encode() not in body
    for headers in (_basic(PASSWORD), {"Authorization": f"Bearer {PASSWORD}"}):
        status, got, body = await _get(url, headers=headers)
        assert status == 200
        assert got["Content-Type"] == "image/jpeg"
        assert got["Cache-Control"] == "no-store"
        assert got["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in got["Content-Security-Policy"]
        assert got["X-Face-Count"] == "1"
        assert json.loads(unquote(got["X-Face-Labels"])) == ["stu-1"]
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[1] <= cfg.webui.snapshot_max_width
    # The page itself needs it too; the Prometheus and status endpoints do not (unchanged).
    assert (await _get(f"{base}/"))[0] == 401
    assert (await _get(f"{base}/", headers=_basic(PASSWORD)))[0] == 200
    status, got, _ = await _get(f"{base}/metrics")
    assert status == 200 and got["Cache-Control"] == "no-store"


async def test_snapshot_404s_name_what_is_unknown(
    serve: Serve, tmp_path: Path, yao_view: CameraView
) -> None:
    base = await serve(_config(tmp_path), _session(yao_view))
    cases = {
        "slot=slot-9&camera=cam-1": (404, "SESSION_NOT_FOUND"),
        "camera=cam-1": (404, "SESSION_NOT_FOUND"),
        "slot=slot-1&camera=cam-9": (404, "CAMERA_NOT_FOUND"),
        "slot=slot-1": (404, "CAMERA_NOT_FOUND"),
    }
    for query, (want, code) in cases.items():
        status, got, body = await _get(f"{base}/ui/api/snapshot?{query}")
        assert (status, json.loads(body)["code"]) == (want, code), query
        assert got["Cache-Control"] == "no-store"
    status, got, _ = await _get(f"{base}/ui/api/no-such-route")
    assert status == 404 and got["Cache-Control"] == "no-store"


async def test_snapshot_before_the_first_analysis(serve: Serve, tmp_path: Path) -> None:
    base = await serve(_config(tmp_path), _session(None))
    status, got, body = await _get(f"{base}/ui/api/snapshot?slot=slot-1&camera=cam-1")
    assert status == 503 and json.loads(body)["code"] == "SNAPSHOT_NOT_READY"
    assert got["Cache-Control"] == "no-store" and got["Retry-After"]


async def test_snapshot_labels_follow_config(
    serve: Serve, tmp_path: Path, yao_view: CameraView
) -> None:
    base = await serve(_config(tmp_path, webui={"face_labels": "code"}), _session(yao_view))
    _, got, _ = await _get(f"{base}/ui/api/snapshot?slot=slot-1&camera=cam-1")
    assert json.loads(unquote(got["X-Face-Labels"])) == ["S001"]  # the roster's code


def test_render_snapshot_draws_boxes_on_a_copy(yao_view: CameraView) -> None:
    before = yao_view.image.copy()
    unknown = CameraView("cam-1", yao_view.image, 0.0, (FaceBox((10, 150, 60, 200), None, 0.0),))
    for view, labels, colour in ((yao_view, ["stu-1"], RECOGNISED), (unknown, [None], UNKNOWN)):
        jpeg = render_snapshot(view, labels, max_width=4000, quality=95)
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        x1, _, _, y2 = (round(v) for v in view.faces[0].bbox)
        edge = image[y2, x1 + 5 : x1 + 30].mean(axis=0)
        assert np.abs(edge - np.array(colour)).max() < 40, (edge, colour)
    assert np.array_equal(yao_view.image, before)  # the pipeline's frame is untouched
    assert ascii_label("Nguyễn Văn Đức") == "Nguyen Van Duc"


async def test_off_loopback_without_password_is_refused(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="agent.transport.webui")
    base = await serve(_config(tmp_path, metrics={"host": "0.0.0.0"}), _session(None))
    for path in ("/", "/ui/api/state", "/ui/api/snapshot?slot=slot-1&camera=cam-1"):
        status, got, body = await _get(base + path)
        assert status == 403 and json.loads(body)["code"] == "WEBUI_PASSWORD_REQUIRED"
        assert "password_file" in json.loads(body)["message"]
        assert got["Cache-Control"] == "no-store"
    assert "WEBUI_PASSWORD_REQUIRED" in caplog.text
    assert (await _get(f"{base}/healthz"))[0] == 200  # the rest of the endpoint still serves
    secret = tmp_path / "webui_password"
    secret.write_text(PASSWORD + "\n")
    cfg = _config(tmp_path, metrics={"host": "0.0.0.0"}, webui={"password_file": secret})
    base = await serve(cfg, _session(None))
    assert (await _get(f"{base}/"))[0] == 401
    assert (await _get(f"{base}/", headers=_basic(PASSWORD)))[0] == 200


async def test_loopback_page_refuses_other_host_names(serve: Serve, tmp_path: Path) -> None:
    base = await serve(_config(tmp_path), _session(None))
    status, _, body = await _get(f"{base}/ui/api/state", headers={"Host": "rebound.example"})
    assert status == 403 and json.loads(body)["code"] == "REQUEST_FORBIDDEN"
    for host in ("localhost:9108", "127.0.0.1", "[::1]:9108"):
        assert (await _get(f"{base}/ui/api/state", headers={"Host": host}))[0] == 200, host


async def test_state_adapts_the_status(serve: Serve, tmp_path: Path) -> None:
    base = await serve(_config(tmp_path), _session(None))
    status, got, body = await _get(f"{base}/ui/api/state")
    state = json.loads(body)
    assert status == 200 and got["Cache-Control"] == "no-store"
    (cam,) = state["sessions"][0]["cameras"]
    assert cam["display"] == "RECONNECTING" and "analysisRate" not in cam
    assert state["registry"] == [
        {"id": "cam-1", "name": "Room 1", "url": "rtsp://127.0.0.1:1/x", "slots": ["slot-1"]}
    ]
    richer = json.loads(json.dumps(STATUS_DATA))
    richer["sessions"][0]["cameras"][0].update(
        state="LIVE", analysisRate=4.1, decodeMode="KEYFRAMES", decoder="pyav", analysesShed=3
    )
    richer["outbox"] = {
        "counts": {"pending": 2, "delivered": 5, "dead": 1},
        "oldestPending": {
            "eventId": "e",
            "slotId": "slot-1",
            "type": "RECOGNITION",
            "createdAt": 1.0,
            "attempts": 3,
            "lastError": "HTTP 500",
            "ageSeconds": 42.0,
        },
        "deadLetters": [],
        "maxPending": 100,
        "refusedSinceStart": 0,
        "full": None,
    }
    outbox = page_state(AgentStatus.model_validate(richer))["outbox"]
    assert (outbox["pending"], outbox["dead"]) == (2, 1)
    assert outbox["oldestPending"] == {
        "ageSeconds": 42.0,
        "type": "RECOGNITION",
        "slotId": "slot-1",
        "attempts": 3,
    }
    (cam,) = page_state(AgentStatus.model_validate(richer))["sessions"][0]["cameras"]
    assert (cam["display"], cam["analysisRate"], cam["decodeMode"], cam["analysesShed"]) == (
        "LIVE",
        4.1,
        "KEYFRAMES",
        3,
    )
    assert cam["decoder"] == "pyav"
    status, _, body = await _get(f"{base}/")
    assert status == 200 and b'src="/ui/app.js"' in body
    assert (await _get(f"{base}/ui/app.js"))[1]["Content-Type"].startswith("text/javascript")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("rtsp://192.0.2.10:554/stream1", True),
        ("rtsp://admin:pw@192.0.2.10/stream1", True),  # credentials are the user's; port 554
        ("RTSP://192.0.2.10:554/", True),
        ("rtsp://192.0.2.10:8554/stream1", False),
        ("rtsp://192.0.2.11:554/stream1", False),
        ("http://192.0.2.10:554/stream1", False),
        ("rtsp://192.0.2.10:554/../etc", False),
        ("rtsp://192.0.2.10:554/a b", False),
        ("rtsp://192.0.2.10:99999/x", False),
        ("rtsp://cams.example/site-1/door", True),
        ("rtsp://cams.example/site-10/door", False),  # whole segments
        ("not a url", False),
    ],
)
def test_camera_test_allowlist(url: str, allowed: bool) -> None:
    rules = ["rtsp://192.0.2.10/", "rtsp://cams.example:554/site-1"]
    if allowed:
        check_camera_url(url, rules)
    else:
        with pytest.raises(CameraUrlError):
            check_camera_url(url, rules)


async def _post(url: str, body: object, **headers: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as client,
        client.post(url, data=json.dumps(body), headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_camera_test_refusals(serve: Serve, tmp_path: Path) -> None:
    base = await serve(_config(tmp_path), _session(None))
    url = f"{base}/ui/api/camera-test"
    json_type = {"Content-Type": "application/json"}
    status, body = await _post(url, {"url": "rtsp://admin:hunter2@198.51.100.7/live"}, **json_type)
    assert (status, body["code"]) == (403, "CAMERA_URL_NOT_ALLOWED")
    assert "hunter2" not in body["message"] and "admin" not in body["message"]
    status, body = await _post(url, {"camera": "cam-9"}, **json_type)
    assert (status, body["code"]) == (404, "CAMERA_NOT_FOUND")
    status, body = await _post(url, {}, **json_type)
    assert (status, body["code"]) == (422, "VALIDATION_ERROR")
    status, body = await _post(url, {"camera": "cam-1"}, **{"Content-Type": "text/plain"})
    assert (status, body["code"]) == (415, "VALIDATION_ERROR")
    status, body = await _post(url, {"camera": "cam-1"}, Origin="http://evil.example", **json_type)
    assert (status, body["code"]) == (403, "REQUEST_FORBIDDEN")


async def test_camera_test_on_a_real_camera(
    serve: Serve, tmp_path: Path, yao_camera: RtspServer
) -> None:
    cfg = _config(
        tmp_path,
        cameras={
            "open_timeout_s": 2.0,
            "registry": [{"id": "cam-1", "url": yao_camera.url}],
        },
        webui={"camera_test_seconds": 1.5, "camera_test_allowed_urls": ["rtsp://127.0.0.1:1/"]},
    )
    base = await serve(cfg, _session(None))
    json_type = {"Content-Type": "application/json"}
    status, result = await _post(f"{base}/ui/api/camera-test", {"camera": "cam-1"}, **json_type)
    assert status == 200 and result["ok"], result
    assert (result["width"], result["height"]) == (640, 480)
    assert 5 <= result["fps"] <= 15  # the server sends 10 fps
    frame = base64.b64decode(result["frame"].removeprefix("data:image/jpeg;base64,"))
    image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (480, 640, 3)
    # Nothing listens on port 1: allowed by the allowlist, then refused by the network.
    status, result = await _post(
        f"{base}/ui/api/camera-test", {"url": "rtsp://u:secret@127.0.0.1:1/x"}, **json_type
    )
    assert status == 200 and not result["ok"]
    assert result["error"]["code"] == "CAMERA_OPEN_FAILED"
    assert "secret" not in json.dumps(result) and result["frame"] is None


async def test_models_view_prints_what_models_verify_prints(serve: Serve, tmp_path: Path) -> None:
    base = await serve(_config(tmp_path), _session(None))
    status, _, body = await _get(f"{base}/ui/api/models")
    data = json.loads(body)
    assert status == 200
    (pack,) = [p for p in data["packs"] if p["folder"] == "buffalo_sc"]
    assert pack["ok"] and pack["line"].startswith("OK buffalo_sc: space arcface-")
    assert data["active"]["pack"] == "buffalo_sc"
    env = {**os.environ, "AGENT_MODELS__DIR": str(MODELS_DIR)}
    cli = await asyncio.to_thread(run_cli, "models", "verify", env=env)
    assert cli.stdout.splitlines() == [p["line"] for p in data["packs"]]


async def test_wrong_passwords_are_throttled(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.transport.webui")
    base = await serve(_config(tmp_path, webui={"password": PASSWORD}), _session(None))
    for _ in range(10):
        assert (await _get(f"{base}/ui/api/state", headers=_basic("guess")))[0] == 401
    status, got, body = await _get(f"{base}/ui/api/state", headers=_basic(PASSWORD))
    assert status == 429 and json.loads(body)["code"] == "LIMIT_EXCEEDED"
    assert got["Retry-After"] == "1" and got["Cache-Control"] == "no-store"
    assert "WEBUI_AUTH_THROTTLED" in caplog.text and PASSWORD not in caplog.text
    # The technician who mistyped gets in a second later, not a minute.
    await asyncio.sleep(1.1)
    assert (await _get(f"{base}/ui/api/state", headers=_basic(PASSWORD)))[0] == 200
    assert (await _get(f"{base}/ui/api/state", headers=_basic("guess")))[0] == 401  # afresh


async def test_the_camera_test_leaves_a_camera_a_session_reads_alone(
    tmp_path: Path, serve: Serve
) -> None:
    """With sharing off, the page's camera test refuses a camera a session reads, however
    its URL is spelled (localhost for 127.0.0.1, the default port written out)."""
    cfg = _config(
        tmp_path,
        cameras={"allow_shared": False},
        webui={"camera_test_allowed_urls": ["rtsp://127.0.0.1:554/"]},
    )
    reading = [("slot-1", "rtsp://user:pw@localhost:1/x"), ("slot-2", "rtsp://[::ffff:7f00:1]/y")]
    sources = UiSources(lambda: STATUS, lambda slot: None, lambda: reading)
    http = LocalHttp(cfg.metrics, Metrics(), lambda: STATUS, WebUi(cfg, sources))
    server = TestServer(http.build_app(), host="127.0.0.1")
    await server.start_server()
    try:
        url = f"http://127.0.0.1:{server.port}/ui/api/camera-test"
        async with aiohttp.ClientSession() as client:
            for body, slot in (
                ({"camera": "cam-1"}, "slot-1"),
                ({"url": "rtsp://127.0.0.1:554/y"}, "slot-2"),
            ):
                async with client.post(url, json=body) as response:
                    reply = await response.json()
                    assert response.status == 409, (body, reply)
                    assert reply["code"] == "CAMERA_IN_USE" and slot in reply["message"]
    finally:
        await server.close()
        await http.stop()


def test_config_keeps_secrets_and_credentials_out(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[webui]\npassword = "in-the-file"\n')
    with pytest.raises(ConfigError, match="AGENT_WEBUI__PASSWORD"):
        load_config(path)
    with pytest.raises(ValueError, match="without user:password@"):
        AgentConfig(webui={"camera_test_allowed_urls": ["rtsp://admin:pw@192.0.2.10/"]})
    masked = masked_dump(AgentConfig(webui={"password": PASSWORD}))
    assert masked["webui"]["password"] == "***"


async def test_one_camera_test_at_a_time(serve: Serve, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never answers: a hung camera
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        cfg = _config(
            tmp_path,
            cameras={"open_timeout_s": 1.0, "read_timeout_s": 1.0},
            webui={"camera_test_allowed_urls": [f"rtsp://127.0.0.1:{port}/"]},
        )
        base = await serve(cfg, _session(None))
        body = {"url": f"rtsp://127.0.0.1:{port}/stream"}
        json_type = {"Content-Type": "application/json"}
        results = await asyncio.gather(
            _post(f"{base}/ui/api/camera-test", body, **json_type),
            _post(f"{base}/ui/api/camera-test", body, **json_type),
        )
    by_status = dict(results)
    assert set(by_status) == {200, 429}, results
    assert by_status[429]["code"] == "LIMIT_EXCEEDED"
    hung = by_status[200]
    assert not hung["ok"] and hung["error"]["code"] == "CAMERA_OPEN_FAILED"
    assert "open_timeout_s" in hung["error"]["message"]  # says what to check


def test_state_shows_coverage_presence_and_the_placement_hint() -> None:
    data = json.loads(json.dumps(STATUS_DATA))
    data["sessions"][0]["presenceCounts"] = {"present": 14, "uncertain": 1, "notSeen": 5}
    data["sessions"][0]["cameras"][0].update(
        state="LIVE",
        coverage={
            "fineDetectCores": 0.012,
            "sweeps": 3,
            "regions": 120,
            "faceWidths": {
                "buckets": ["<16", "16-20", "20-24", "24-32", "32-48", "48-80", "80+"],
                "seen": [0, 6, 5, 2, 1, 0, 0],
                "recognised": [0, 4, 5, 2, 1, 0, 0],
            },
            "placementHint": "79% of the faces this camera sees are under 24 px wide: ...",
        },
    )
    (session,) = page_state(AgentStatus.model_validate(data))["sessions"]
    assert session["presence"] == {"present": 14, "uncertain": 1, "notSeen": 5}
    coverage = session["cameras"][0]["coverage"]
    assert (coverage["fineDetectCores"], coverage["sweeps"], coverage["regions"]) == (0.012, 3, 120)
    assert coverage["widths"] == [  # empty ranges are left out
        {"range": "16-20", "seen": 6, "recognised": 4},
        {"range": "20-24", "seen": 5, "recognised": 5},
        {"range": "24-32", "seen": 2, "recognised": 2},
        {"range": "32-48", "seen": 1, "recognised": 1},
    ]
    assert coverage["placementHint"].startswith("79% of the faces")


async def test_the_page_says_it_is_plain_http_off_loopback(serve: Serve, tmp_path: Path) -> None:
    """Basic auth over plain HTTP: the page tells whoever opens it off loopback."""
    base = await serve(_config(tmp_path), _session(None))
    state = json.loads((await _get(f"{base}/ui/api/state"))[2])
    assert state["page"]["plainHttp"] is False
    exposed = _config(tmp_path, metrics={"host": "0.0.0.0"}, webui={"password": PASSWORD})
    base = await serve(exposed, _session(None))
    status, _, body = await _get(f"{base}/ui/api/state", headers=_basic(PASSWORD))
    assert status == 200 and json.loads(body)["page"]["plainHttp"] is True
    script = (await _get(f"{base}/ui/app.js", headers=_basic(PASSWORD)))[2].decode()
    assert "state.page.plainHttp" in script and "SSH tunnel" in script
