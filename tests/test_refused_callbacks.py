"""Callbacks answering 401, 403 or 404 (a key being rotated, a route being deployed): the
event is tried again for [callback] refused_rounds rounds before it is a dead letter (real
state file, real outbox and delivery, real HTTP callback server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import CallbackConfig
from agent.devkit.callback_receiver import CallbackServer
from agent.events.delivery import Delivery
from agent.events.event import EventFactory
from agent.events.migrations import MIGRATIONS
from agent.events.outbox import Outbox
from agent.events.sink import OutboxSink
from agent.events.store import Store
from agent.protocol import SessionStatus
from agent.status.models import wire
from tests.waiting import wait_until

FAST = {"timeout_s": 0.5, "first_retry_s": 0.05, "retry_max_s": 0.3}


@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[Store]:
    st = Store(tmp_path / "data")
    yield st
    st.close()


async def _pipeline(
    store: Store, server: CallbackServer, **cfg: object
) -> tuple[Outbox, Delivery, OutboxSink]:
    outbox = Outbox(store, max_pending=1000)
    settings = {**FAST, "allowed_urls": [server.url("/")], **cfg}
    delivery = Delivery(outbox, CallbackConfig(**settings), api_key="cb-key")  # type: ignore[arg-type]
    await delivery.start()
    return outbox, delivery, OutboxSink(outbox, delivery)


def _event(slot: str):  # type: ignore[no-untyped-def]
    return EventFactory("site-1", "UTC").status(slot, SessionStatus.STARTED)


@pytest.mark.parametrize("refusal", [401, 403, 404])
async def test_a_refusal_that_passes_is_delivered_not_dead_lettered(
    store: Store, server: CallbackServer, refusal: int
) -> None:
    outbox, delivery, sink = await _pipeline(store, server)
    try:
        server.mode = {"": refusal}
        event = _event("slot-k")
        await sink.emit(event, server.url())
        await wait_until(lambda: [r.answered for r in server.received] == [refusal], 5, "refusal")
        server.mode = {"": "ok"}  # the new key is in place, the route deployed
        await server.wait_delivered(1, timeout=10)
        await wait_until(lambda: outbox.describe().counts["delivered"] == 1, 5, "recorded")
    finally:
        await delivery.close()
    assert outbox.describe().counts == {"pending": 0, "delivered": 1, "dead": 0}
    assert server.delivered_ids() == [event.event_id]
    # A refusal ends its round: one POST, then the next round (not 1 s later in the same).
    assert [r.answered for r in server.received] == [refusal, 200]


@pytest.mark.parametrize("rounds", [1, 3])
async def test_a_lasting_404_is_dead_lettered_after_the_configured_rounds(
    store: Store, server: CallbackServer, rounds: int
) -> None:
    outbox, delivery, sink = await _pipeline(store, server, refused_rounds=rounds)
    try:
        server.mode = {"": 404}
        await sink.emit(_event("slot-404"), server.url())
        await wait_until(lambda: outbox.describe().counts["dead"] == 1, 10, "a dead letter")
        stats = wire(outbox.describe())
    finally:
        await delivery.close()
    assert len(server.received) == rounds  # one POST a round, no more after the last
    (dead,) = stats["deadLetters"]
    assert dead["statusCode"] == 404 and dead["attempts"] == rounds
    suffix = "round" if rounds == 1 else "rounds"
    assert dead["lastError"].startswith("HTTP 404")
    assert dead["lastError"].endswith(f"(refused in {rounds} {suffix})")


async def test_requeued_dead_letters_get_their_refused_rounds_again(
    store: Store, server: CallbackServer
) -> None:
    outbox, delivery, sink = await _pipeline(store, server, refused_rounds=2)
    try:
        server.mode = {"": 401}
        await sink.emit(_event("slot-r"), server.url())
        await wait_until(lambda: outbox.describe().counts["dead"] == 1, 10, "a dead letter")
        assert outbox.retry_dead() == 1  # `python -m agent outbox retry`
        delivery.notify("slot-r")
        await wait_until(lambda: outbox.describe().counts["dead"] == 1, 10, "dead again")
    finally:
        await delivery.close()
    assert len(server.received) == 4  # two rounds before, two after the re-queue


def test_refused_rounds_is_bounded() -> None:
    assert CallbackConfig().refused_rounds == 3
    for bad in (0, 101):
        with pytest.raises(ValidationError):
            CallbackConfig(refused_rounds=bad)


def test_outbox_retry_works_on_a_file_not_yet_upgraded(tmp_path: Path) -> None:
    # The agent was upgraded but not restarted yet: `outbox retry` amends the old file.
    old = Store(tmp_path / "data", [m for m in MIGRATIONS if m[0] != "011_refused_rounds"])
    with old.write() as db:
        db.execute(
            "insert into events (event_id, slot_id, seq, type, body, callback_url, created_at, "
            "state) values ('e1', 'slot-1', 1, 'SESSION_STATUS', '{}', 'http://x/', 0, 'dead')"
        )
    old.close()
    store = Store(tmp_path / "data", mode="rw")
    try:
        assert Outbox(store, max_pending=10).retry_dead() == 1
    finally:
        store.close()
