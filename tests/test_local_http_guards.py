"""Guards of the local HTTP endpoint, served for real (aiohttp) and asked over HTTP:

- the camera test never follows an HTTP redirect out of ``[webui]
  camera_test_allowed_urls`` (a real MJPEG camera behind a real redirecting server);
- ``/status`` and ``/metrics`` refuse a request addressed to another host name while the
  endpoint listens on loopback (DNS rebinding), as the page does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.config import AgentConfig
from agent.status.metrics import Metrics
from agent.transport.local_http import LocalHttp
from agent.transport.webui import UiSources, WebUi
from tests.agent_harness import MODELS_DIR
from tests.mjpeg import MjpegServer, jpeg
from tests.test_webui import STATUS

JSON = {"Content-Type": "application/json"}
Serve = Callable[[AgentConfig], Any]


def _config(tmp_path: Path, **sections: dict[str, Any]) -> AgentConfig:
    base: dict[str, Any] = {
        "metrics": {"port": 0},
        "storage": {"data_dir": tmp_path},
        "models": {"dir": MODELS_DIR},
        "cameras": {"open_timeout_s": 2.0, "read_timeout_s": 1.0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return AgentConfig(**base)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(cfg)`` -> base URL of the real local HTTP app (page included)."""
    started: list[tuple[TestServer, LocalHttp]] = []

    async def start(cfg: AgentConfig) -> str:
        sources = UiSources(lambda: STATUS, lambda slot: None)
        http = LocalHttp(cfg.metrics, Metrics(), lambda: STATUS, WebUi(cfg, sources))
        server = TestServer(http.build_app(), host="127.0.0.1")
        await server.start_server()
        started.append((server, http))
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server, http in started:
        await server.close()
        await http.stop()


@pytest.fixture
async def cameras() -> AsyncIterator[tuple[MjpegServer, MjpegServer]]:
    """A camera outside the allowlist, and an allowed server that redirects to it."""
    outside = MjpegServer([(jpeg(320, 240), 1.0)])
    await outside.start()
    redirector = MjpegServer([(jpeg(160, 120), 1.0)], redirect_to=outside.url)
    await redirector.start()
    yield outside, redirector
    await redirector.stop()
    await outside.stop()


async def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as client,
        client.post(url, data=json.dumps(body), headers=JSON) as response,
    ):
        return response.status, await response.json()


async def _get(url: str, **headers: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers) as response:
        return response.status, await response.read()


async def test_camera_test_does_not_follow_a_redirect_out_of_the_allowlist(
    serve: Serve, tmp_path: Path, cameras: tuple[MjpegServer, MjpegServer]
) -> None:
    outside, redirector = cameras
    allowed = f"http://127.0.0.1:{redirector.port}/"
    base = await serve(
        _config(tmp_path, webui={"camera_test_seconds": 0.5, "camera_test_allowed_urls": [allowed]})
    )
    test = f"{base}/ui/api/camera-test"
    # The allowed server's own stream is read: the test can see a working camera.
    status, result = await _post(test, {"url": redirector.url})
    assert status == 200 and result["ok"], result
    assert (result["width"], result["height"]) == (160, 120)
    # The camera outside the allowlist is refused when named ...
    status, result = await _post(test, {"url": outside.url})
    assert (status, result["code"]) == (403, "CAMERA_URL_NOT_ALLOWED"), result
    # ... and not reached through a redirect from an allowed URL either.
    status, result = await _post(test, {"url": redirector.redirect_url})
    assert status == 200 and not result["ok"], result
    assert result["error"]["code"] == "CAMERA_OPEN_FAILED"
    assert "redirect" in result["error"]["message"]
    assert redirector.hits["/redirect"] == 1
    assert outside.hits["/camera"] == 0


async def test_status_and_metrics_refuse_other_host_names_on_loopback(
    serve: Serve, tmp_path: Path
) -> None:
    base = await serve(_config(tmp_path))
    for path in ("/status", "/metrics", "/healthz", "/"):
        status, body = await _get(f"{base}{path}", Host="rebound.example")
        assert status == 403, (path, status)
        assert json.loads(body)["code"] == "REQUEST_FORBIDDEN", path
        for host in ("localhost:9108", "127.0.0.1", "[::1]:9108"):
            assert (await _get(f"{base}{path}", Host=host))[0] == 200, (path, host)


async def test_off_loopback_metrics_answer_any_host_name(serve: Serve, tmp_path: Path) -> None:
    # Listening on the school's network (for a Prometheus server) is a choice the site made:
    # there the host name is whatever the scraper uses.
    base = await serve(_config(tmp_path, metrics={"host": "0.0.0.0"}))
    for path in ("/status", "/metrics", "/healthz"):
        assert (await _get(f"{base}{path}", Host="box.school.lan:9108"))[0] == 200, path
