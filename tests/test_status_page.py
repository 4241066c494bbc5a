"""The technician's status page end to end: a real agent reading a real RTSP camera for a
session started over MQTT, the page loaded in headless Chromium (Debian's package).

Set ``UPDATE_SCREENSHOTS=1`` to write the screenshot the README shows
(``docs/status-page.png``); otherwise it goes to the test's temporary folder.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
from PIL import Image

from agent.devkit.brokers import Mosquitto
from tests.agent_harness import ROOT, agent_config, backend, running_agent, start_payload
from tests.chromium import INSTALL_HINT, Chromium, chromium_path
from tests.rtsp import RtspServer

FAST_CAMERAS = {
    "open_timeout_s": 1.0,
    "read_timeout_s": 1.0,
    "max_frame_age_s": 1.5,
    "reconnect_attempts": 100,  # the killed camera stays RECONNECTING (the session goes on)
    "reconnect_interval_s": 0.5,
    "probe_min_s": 0.5,
    "probe_max_s": 1.0,
    "analysis_fps": 5.0,
}
CARD = 'document.querySelector(\'article.camera[data-camera-id="cam-101"][data-slot="slot-page"]\')'
CARD_STATE = f"""(() => {{
  const card = {CARD};
  if (!card) return null;
  const img = card.querySelector("img.snapshot");
  return {{
    state: card.dataset.state,
    badge: card.querySelector(".badge").textContent,
    loaded: img.complete && img.naturalWidth > 0 && !img.hidden,
    faces: Number(img.dataset.faces || 0),
    labels: img.dataset.labels || "",
    alt: img.alt,
    stale: img.classList.contains("stale"),
    text: card.textContent,
  }};
}})()"""
MAX_SCREENSHOT_BYTES = 300_000


def _small_png(png: bytes) -> bytes:
    """The screenshot with a 256-colour palette: a third of the size, fine for the docs."""
    with Image.open(io.BytesIO(png)) as image:
        out = io.BytesIO()
        image.convert("RGB").quantize(colors=256).save(out, format="PNG", optimize=True)
    return out.getvalue()


@pytest.mark.slow
async def test_page_shows_live_camera_with_faces_then_disconnected(
    broker: Mosquitto, yao_camera: RtspServer, tmp_path: Path, yao_embedding: list[float]
) -> None:
    if chromium_path() is None:
        pytest.fail(INSTALL_HINT)
    registry = [{"id": "cam-101", "name": "Room 101", "url": yao_camera.url}]
    cfg = agent_config(tmp_path, broker, cameras={**FAST_CAMERAS, "registry": registry})
    async with (
        running_agent(cfg, cameras=True) as agent,
        backend(broker) as b,
        Chromium(tmp_path / "chromium", width=1000) as browser,
    ):
        assert agent.http is not None and agent.http.port
        payload = start_payload("slot-page", yao_embedding, cameras=[{"id": "cam-101"}])
        assert (await b.send("session/start", payload))["status"] == 200
        await browser.navigate(f"http://127.0.0.1:{agent.http.port}/")
        live = await browser.wait_for(
            f"(() => {{ const s = {CARD_STATE}; return s && s.state === 'LIVE' && s.loaded "
            "&& s.faces >= 1 && s.labels.includes('stu-1') ? s : null; })()",
            timeout=60,
            what="camera card LIVE with a snapshot showing the recognised student",
        )
        assert live["badge"] == "LIVE"
        assert "stu-1" in live["alt"]  # the snapshot's text alternative names the faces
        assert await browser.evaluate("document.getElementById('connection').textContent")
        # The camera test, as a technician runs it from the card.
        await browser.evaluate(f"{CARD}.querySelector('.actions button').click()")
        tested = await browser.wait_for(
            "(() => { const r = document.getElementById('test-result'); "
            "const img = r.querySelector('img'); return img && img.complete && "
            "img.naturalWidth > 0 ? r.textContent : null; })()",
            timeout=30,
            what="camera test result with a frame",
        )
        assert "DELIVERS FRAMES" in tested and "640 × 480" in tested
        png = await browser.screenshot()
        await browser.evaluate("window.notReloaded = true")

        yao_camera.kill()
        gone = await browser.wait_for(
            f"(() => {{ const s = {CARD_STATE}; "
            "return s && s.state === 'RECONNECTING' && s.text.includes('Next retry') "
            "? s : null; })()",
            timeout=30,
            what="camera card RECONNECTING after the camera was killed",
        )
        assert gone["badge"] == "RECONNECTING"
        # The card says why in words (no Python exception) and greys the old snapshot.
        assert "refused: the camera is off" in gone["text"], gone["text"]
        assert "Errno" not in gone["text"] and "Error:" not in gone["text"]
        assert gone["stale"] is True
        assert (await b.send("session/stop", {"slotId": "slot-page"}))["status"] == 200
        ended = await browser.wait_for(
            "(() => { const t = document.getElementById('recent-sessions').textContent; "
            "return t.includes('slot-page') ? t : null; })()",
            timeout=10,
            what="the stopped session under Ended sessions",
        )
        assert "stopped by the backend (REQUESTED)" in ended
        assert await browser.evaluate("window.notReloaded === true")  # updated in place

        await browser.resize(390, 844, mobile=True)  # a phone: nothing wider than the screen
        await browser.wait_for(
            "document.documentElement.scrollWidth <= 390", timeout=10, what="no sideways scroll"
        )

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 800 and height >= 600
    png = _small_png(png)
    assert len(png) < MAX_SCREENSHOT_BYTES, f"screenshot is {len(png)} bytes"
    target = (
        ROOT / "docs" / "status-page.png"
        if os.environ.get("UPDATE_SCREENSHOTS") == "1"
        else tmp_path / "status-page.png"
    )
    target.write_bytes(png)
