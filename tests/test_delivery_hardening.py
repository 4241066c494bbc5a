"""Callback delivery under hostile or broken backends: redirects, allowlist tricks, URLs
removed from the allowlist, and backends that refuse every event (real agent, real HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.allowlist import CallbackUrlError, check_callback_url, is_allowed
from agent.app import Agent
from agent.devkit.brokers import Mosquitto
from agent.devkit.callback_receiver import CallbackServer
from agent.status.models import wire
from tests.agent_harness import (
    agent_config,
    backend,
    running_agent,
    scrape_metrics,
    start_payload,
)
from tests.waiting import wait_until

FAST = {"timeout_s": 0.5, "first_retry_s": 0.05, "retry_max_s": 0.3}


def _cfg(tmp_path: Path, broker: Mosquitto, allowed: list[str], **callback: Any) -> Any:
    return agent_config(
        tmp_path / "agent",
        broker,
        callback={"allowed_urls": allowed, "api_key": "cb-secret", **FAST, **callback},
    )


def _start(slot: str, yao_embedding: list[float], url: str) -> dict[str, Any]:
    cameras = [{"id": "c1", "rtspUrl": "rtsp://127.0.0.1:1/c1"}]
    return start_payload(slot, yao_embedding, callbackUrl=url, cameras=cameras)


ALLOWED = ["http://127.0.0.1:8080/cb", "https://backend.example/api/"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/cb", True),
        ("http://127.0.0.1:8080/cb/", True),
        ("http://127.0.0.1:8080/cb/slot/1?token=x", True),
        ("http://127.0.0.1:8080/CB", False),
        ("http://127.0.0.1:8080/cb-evil", False),
        ("http://127.0.0.1:8080/cbx/y", False),
        ("http://127.0.0.1:8080/cb/../../admin", False),
        ("http://127.0.0.1:8080/cb/%2e%2e/admin", False),
        ("http://127.0.0.1:8080/cb/%2E%2E/admin", False),
        ("http://127.0.0.1:8080/cb/.%2e/admin", False),
        ("http://127.0.0.1:8080/cb%2f..%2fadmin", False),
        ("http://127.0.0.1:8080/cb/..\\admin", False),
        ("http://127.0.0.1:8080/cb/./x", False),
        ("http://@127.0.0.1:8080/cb", False),
        ("http://user:pw@127.0.0.1:8080/cb", False),
        ("http://evil.example@127.0.0.1:8080/cb", False),
        ("http://127.0.0.1:8081/cb", False),
        ("https://127.0.0.1:8080/cb", False),
        ("http://127.0.0.1:8080/cb\n/x", False),
        ("http://127.0.0.1:99999/cb", False),
        ("ftp://127.0.0.1:8080/cb", False),
        ("https://backend.example/api/events", True),
        ("https://BACKEND.example:443/api/events", True),
        ("https://backend.example/apix", False),
        ("https://backend.example/api", True),
    ],
)
def test_allowlist_table(url: str, allowed: bool) -> None:
    assert is_allowed(url, ALLOWED) is allowed
    if not allowed:
        with pytest.raises(CallbackUrlError):
            check_callback_url(url, ALLOWED)


@pytest.mark.parametrize(
    "path",
    ["/cb-evil", "/cb/../../admin", "/cb/%2e%2e/admin", "@"],
)
async def test_start_refuses_tricky_callback_urls(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float], path: str
) -> None:
    url = f"http://@127.0.0.1:{server.port}/cb" if path == "@" else server.url(path)
    cfg = _cfg(tmp_path, broker, [server.url("/cb")])
    async with running_agent(cfg, outbox=True), backend(broker) as b:
        reply = await b.send("session/start", _start("slot-x", yao_embedding, url))
    assert (reply["status"], reply["code"]) == (400, "CALLBACK_URL_NOT_ALLOWED")
    assert "allowed_urls" in reply["message"]
    assert server.received == []


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_never_followed(
    broker: Mosquitto, tmp_path: Path, yao_embedding: list[float], status: int
) -> None:
    elsewhere = CallbackServer()
    redirecting = CallbackServer(mode={"": status}, location=elsewhere.url("/steal?token=t0p"))
    await elsewhere.start()
    await redirecting.start()
    try:
        cfg = _cfg(tmp_path, broker, [redirecting.url("/")], autostop_failures=0)
        async with running_agent(cfg, outbox=True) as agent, backend(broker) as b:
            reply = await b.send(
                "session/start", _start("slot-r", yao_embedding, redirecting.url())
            )
            assert reply["status"] == 200
            outbox = agent.outbox
            assert outbox is not None
            await wait_until(lambda: outbox.describe().counts["dead"] == 1, what="dead letter")
            stats = wire(outbox.describe())
            status_reply = await b.send("status", {})
    finally:
        await redirecting.stop()
        await elsewhere.stop()
    assert elsewhere.received == []  # neither the API key nor the event went there
    assert len(redirecting.received) == 1  # one POST, not retried, not followed
    assert stats["counts"]["delivered"] == 0
    (dead,) = stats["deadLetters"]
    assert dead["statusCode"] == status
    assert f"redirect to http://127.0.0.1:{elsewhere.port}/steal?***" in dead["lastError"]
    assert "t0p" not in dead["lastError"]
    warnings = status_reply["data"]["warnings"]
    assert any(w.startswith("CALLBACK_DEAD_LETTERS: 1 event") for w in warnings), warnings


async def test_url_removed_from_allowlist_gets_nothing_more(
    broker: Mosquitto, server: CallbackServer, tmp_path: Path, yao_embedding: list[float]
) -> None:
    server.mode = {"": 503}  # events stay pending while the first agent runs
    cfg = _cfg(tmp_path, broker, [server.url("/old/")], autostop_failures=0)
    async with running_agent(cfg, outbox=True) as agent, backend(broker) as b:
        reply = await b.send(
            "session/start", _start("slot-o", yao_embedding, server.url("/old/cb"))
        )
        assert reply["status"] == 200
        await wait_until(lambda: len(server.received) >= 1, what="first attempt")
    # The site removes /old/ from its allowlist and restarts the agent.
    server.mode = {"": "ok"}
    tried = len(server.received)
    cfg = _cfg(tmp_path, broker, [server.url("/new/")])
    async with running_agent(cfg, outbox=True) as agent:
        outbox = agent.outbox
        assert outbox is not None
        await wait_until(lambda: outbox.describe().counts["pending"] == 0, what="outbox settled")
        stats = wire(outbox.describe())
    assert len(server.received) == tried  # nothing sent to the removed URL
    assert stats["counts"]["delivered"] == 0
    assert stats["counts"]["dead"] >= 1
    assert all("allowlist" in d["lastError"] for d in stats["deadLetters"])


@pytest.mark.slow
@pytest.mark.parametrize("refusal", [401, 403, 404, 413])
async def test_a_backend_refusing_everything_is_seen_and_stops_the_session(
    broker: Mosquitto,
    server: CallbackServer,
    tmp_path: Path,
    yao_embedding: list[float],
    refusal: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.mode = {"": refusal}
    cfg = _cfg(tmp_path, broker, [server.url("/")], autostop_failures=0, autostop_seconds=1)
    async with running_agent(cfg, outbox=True) as agent, backend(broker) as b:
        reply = await b.send("session/start", _start("slot-d", yao_embedding, server.url()))
        assert reply["status"] == 200
        sessions = agent.sessions
        assert sessions is not None
        # STARTED is refused; the first dead letter is visible at once...
        await wait_until(lambda: _dead(agent) >= 1, what="first dead letter")
        status = (await b.send("status", {}))["data"]
        metrics = await scrape_metrics(agent)
        # ...and the session stops by itself: its STOPPED event is the second refusal.
        await wait_until(lambda: sessions.get("slot-d") is None, what="auto-stop")
        await wait_until(lambda: _dead(agent) >= 2, what="STOPPED dead-lettered")
    assert any(w.startswith("CALLBACK_DEAD_LETTERS") for w in status["warnings"])
    assert status["outbox"]["counts"]["dead"] >= 1
    assert 'edge_agent_callback_attempts_total{result="dead"}' in metrics
    assert any(
        "CALLBACK_DEAD_LETTER" in r.getMessage() and f"status={refusal}" in r.getMessage()
        for r in caplog.records
    )
    stopped = [r.body for r in server.received if r.body.get("status") == "STOPPED"]
    assert stopped and stopped[0]["reason"] == "BACKEND_REJECTED"


def _dead(agent: Agent) -> int:
    assert agent.outbox is not None
    return int(agent.outbox.describe().counts["dead"])
