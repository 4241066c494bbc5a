"""Outbox and callback delivery on a real SQLite file and a real HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import CallbackConfig
from agent.devkit.callback_receiver import CallbackServer
from agent.events.delivery import Delivery, parse_retry_after
from agent.events.event import EventFactory
from agent.events.outbox import Outbox, OutboxFullError
from agent.events.sink import OutboxSink
from agent.events.store import Store
from agent.protocol import SessionStatus
from agent.status.models import wire
from tests.waiting import wait_until

FAST = {
    "timeout_s": 0.5,
    "first_retry_s": 0.05,
    "retry_max_s": 0.3,
    "allowed_urls": ["http://127.0.0.1/"],
}


@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[Store]:
    st = Store(tmp_path / "data")
    yield st
    st.close()


def _events(slot: str, n: int) -> list:  # type: ignore[type-arg]
    factory = EventFactory("site-1", "Asia/Ho_Chi_Minh")
    return [factory.status(slot, SessionStatus.STARTED, message=f"#{i}") for i in range(n)]


async def _settled(outbox: Outbox, delivered: int, timeout: float = 10) -> None:
    """Wait until the outbox has recorded ``delivered`` deliveries (the POST's response
    reaches the agent a moment after the server answered it)."""
    async with asyncio.timeout(timeout):
        while outbox.describe().counts["delivered"] < delivered:
            await asyncio.sleep(0.01)


async def _pipeline(
    store: Store, server: CallbackServer, **cfg: object
) -> tuple[Outbox, Delivery, OutboxSink]:
    outbox = Outbox(store, max_pending=int(cfg.pop("max_pending", 1000)))  # type: ignore[call-overload]
    settings = {**FAST, "allowed_urls": [server.url("/")], **cfg}
    delivery = Delivery(outbox, CallbackConfig(**settings), api_key="cb-key")  # type: ignore[arg-type]
    await delivery.start()
    return outbox, delivery, OutboxSink(outbox, delivery)


async def test_delivery_headers_and_order(store: Store, server: CallbackServer) -> None:
    outbox, delivery, sink = await _pipeline(store, server)
    try:
        events = _events("slot-1", 5)
        for event in events:
            await sink.emit(event, server.url())
        await server.wait_delivered(5)
        await _settled(outbox, 5)
    finally:
        await delivery.close()
    got = server.delivered()
    assert [r.body["eventId"] for r in got] == [e.event_id for e in events]
    assert [int(r.headers["X-Event-Sequence"]) for r in got] == [1, 2, 3, 4, 5]
    assert all(r.headers["X-API-Key"] == "cb-key" for r in got)
    assert all(r.headers["Idempotency-Key"] == r.body["eventId"] for r in got)
    assert got[0].body["type"] == "SESSION_STATUS" and got[0].body["occurredAt"].endswith("+07:00")
    assert outbox.describe().counts == {"pending": 0, "delivered": 5, "dead": 0}


@pytest.mark.slow
async def test_outage_500_then_down_then_hang_then_back(
    store: Store, server: CallbackServer
) -> None:
    outbox, delivery, sink = await _pipeline(store, server)
    timed_out: set[str] = set()
    try:
        server.mode = {"": 500}
        events = _events("slot-a", 4) + _events("slot-b", 4)
        for event in events[:3]:
            await sink.emit(
                event, server.url("/a") if event.slot_id == "slot-a" else server.url("/b")
            )
        await wait_until(lambda: server.received, 10, "a first attempt")
        assert not server.delivered()
        await server.stop()  # not listening
        for event in events[3:6]:
            await sink.emit(
                event, server.url("/a") if event.slot_id == "slot-a" else server.url("/b")
            )
        await asyncio.sleep(0.5)
        server.mode = {"": "hang"}
        server.hang_s = 2.0
        server.on_request = lambda r: timed_out.add(r.body["eventId"])
        await server.start()
        await asyncio.sleep(1.2)
        assert not server.delivered()
        server.on_request = None
        server.mode = {"": "ok"}
        for event in events[6:]:
            await sink.emit(
                event, server.url("/a") if event.slot_id == "slot-a" else server.url("/b")
            )
        await server.wait_delivered(8, timeout=20)
        await _settled(outbox, 8)
    finally:
        await delivery.close()
    for slot, prefix in (("slot-a", "/a"), ("slot-b", "/b")):
        expected = [e.event_id for e in events if e.slot_id == slot]
        ids = server.delivered_ids(prefix)
        # In order per session; a duplicate only for a request that timed out.
        assert list(dict.fromkeys(ids)) == expected
        duplicates = {i for i in ids if ids.count(i) > 1}
        assert duplicates <= timed_out
    assert outbox.describe().counts["delivered"] == 8
    assert outbox.describe().counts["pending"] == 0


async def test_400_is_a_dead_letter_and_retry_requeues(
    store: Store, server: CallbackServer
) -> None:
    outbox, delivery, sink = await _pipeline(store, server)
    try:
        server.mode = {"": 400}
        (event,) = _events("slot-d", 1)
        await sink.emit(event, server.url())
        async with asyncio.timeout(5):
            while outbox.describe().counts["dead"] != 1:
                await asyncio.sleep(0.02)
        assert len(server.received) == 1  # a 400 is not retried
        dead = wire(outbox.describe())["deadLetters"][0]
        assert dead["statusCode"] == 400 and "HTTP 400" in dead["lastError"]
        server.mode = {"": "ok"}
        assert outbox.retry_dead() == 1
        delivery.notify("slot-d")
        await server.wait_delivered(1)
        await _settled(outbox, 1)
    finally:
        await delivery.close()
    assert outbox.describe().counts == {"pending": 0, "delivered": 1, "dead": 0}


async def test_retry_after_is_honoured(store: Store, server: CallbackServer) -> None:
    _, delivery, sink = await _pipeline(store, server, attempts_per_round=1, retry_max_s=5)
    try:
        server.mode = {"": 503}
        server.retry_after = "1"
        await sink.emit(_events("slot-r", 1)[0], server.url())
        await wait_until(
            lambda: [r.answered for r in server.received] == [503], 10, "the first attempt refused"
        )
        server.mode = {"": "ok"}
        await server.wait_delivered(1, timeout=5)
    finally:
        await delivery.close()
    assert len(server.received) == 2
    # The round backoff alone would be ~0.2 s; the server asked for 1 s.
    assert server.received[1].at - server.received[0].at >= 0.95
    assert parse_retry_after("2", 10) == 2
    assert parse_retry_after("999", 10) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 10) == 0
    assert parse_retry_after("soon", 10) is None


async def test_one_dead_callback_does_not_block_another_session(
    store: Store, server: CallbackServer
) -> None:
    outbox, delivery, sink = await _pipeline(store, server)
    try:
        server.mode = {"/dead": 500, "/good": "ok"}
        dead_events = _events("slot-dead", 3)
        good_events = _events("slot-good", 5)
        for dead, good in zip(dead_events, good_events, strict=False):
            await sink.emit(dead, server.url("/dead"))
            await sink.emit(good, server.url("/good"))
        for good in good_events[3:]:
            await sink.emit(good, server.url("/good"))
        await server.wait_delivered(5, path_prefix="/good", timeout=5)
        await _settled(outbox, 5)
    finally:
        await delivery.close()
    assert server.delivered_ids("/good") == [e.event_id for e in good_events]
    assert outbox.describe().counts["pending"] == 3


async def test_outbox_limit_keeps_oldest_and_says_so(store: Store, server: CallbackServer) -> None:
    await server.stop()
    outbox, delivery, sink = await _pipeline(store, server, max_pending=10)
    try:
        events = _events("slot-f", 12)
        for event in events[:10]:
            await sink.emit(event, server.url())
        with pytest.raises(OutboxFullError, match="10 undelivered events"):
            await sink.emit(events[10], server.url())
        stats = wire(outbox.describe())
        assert stats["full"] and stats["refusedSinceStart"] == 1
        assert stats["counts"]["pending"] == 10
        await server.start()
        await server.wait_delivered(10)
        await _settled(outbox, 10)
        await sink.emit(events[11], server.url())  # room again
        await server.wait_delivered(11)
    finally:
        await delivery.close()
    assert server.delivered_ids()[:10] == [e.event_id for e in events[:10]]
    assert outbox.full_reason is None


async def test_full_disk_is_reported(store: Store, server: CallbackServer) -> None:
    outbox, delivery, sink = await _pipeline(store, server)
    try:
        await server.stop()
        # A real SQLITE_FULL: cap the file at its current size.
        pages = store.db.execute("pragma page_count").fetchone()[0]
        store.db.execute(f"pragma max_page_count = {pages}")
        with pytest.raises(OutboxFullError, match="free disk space"):
            for event in _events("slot-disk", 200):
                await sink.emit(event, server.url())
        assert outbox.refused == 1
        assert "cannot grow" in (outbox.full_reason or "")
    finally:
        await delivery.close()


async def test_pending_events_survive_reopen(tmp_path: Path, server: CallbackServer) -> None:
    first = Store(tmp_path / "d")
    _, delivery, sink = await _pipeline(first, server)
    await server.stop()
    events = _events("slot-p", 3)
    for event in events:
        await sink.emit(event, server.url())
    await delivery.close()
    first.close()
    await server.start()
    second = Store(tmp_path / "d")
    try:
        outbox2, delivery2, _ = await _pipeline(second, server)
        try:
            await server.wait_delivered(3, timeout=10)
            await _settled(outbox2, 3)
        finally:
            await delivery2.close()
        assert server.delivered_ids() == [e.event_id for e in events]
        assert outbox2.describe().counts["delivered"] == 3
    finally:
        second.close()


async def test_face_crop_is_kept_only_until_delivered(store: Store, server: CallbackServer) -> None:
    from agent.protocol import RecognitionEvent, SessionMode

    outbox, delivery, sink = await _pipeline(store, server)
    factory = EventFactory("site-1", "Asia/Ho_Chi_Minh")
    event = RecognitionEvent(
        event_id=factory.new_id(),
        slot_id="slot-j",
        site_id="site-1",
        mode=SessionMode.ATTENDANCE,
        student_id="s1",
        confidence=0.8,
        camera_id="c1",
        recognized_at=factory.now(),
        embedding_space="arcface-x",
        face_jpeg="/9j/AAAA",
    )
    try:
        await sink.emit(event, server.url())
        await server.wait_delivered(1)
        await _settled(outbox, 1)
    finally:
        await delivery.close()
    assert server.delivered()[0].body["faceJpeg"] == "/9j/AAAA"
    (row,) = store.db.execute("select body from events").fetchall()
    assert "faceJpeg" not in row[0]


async def test_lost_event_is_logged_not_raised(
    store: Store, server: CallbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.events.event import emit_or_log

    await server.stop()
    _, delivery, sink = await _pipeline(store, server, max_pending=10)
    try:
        events = _events("slot-l", 11)
        assert all([await emit_or_log(sink, e, server.url()) for e in events[:10]])
        assert not await emit_or_log(sink, events[10], server.url())
    finally:
        await delivery.close()
    expected = "EVENT_LOST slot=slot-l type=SESSION_STATUS status=STARTED code=OUTBOX_FULL"
    assert f"{expected} event={events[10].event_id}" in caplog.text
