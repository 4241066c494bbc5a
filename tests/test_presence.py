"""The presence book and the face-width counts on their own, and the state file keeping
the book."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.events.store import Store
from agent.protocol import PresenceStatus
from agent.session.placement import LABELS, FaceWidthCounts
from agent.session.presence import PresenceBook


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def test_verdicts_follow_the_evidence() -> None:
    book = PresenceBook(["a", "b", "c"])
    assert book.counts().not_seen == 3 and book.missing() == 3
    book.seen("a", 100.0, 0.7)  # seen as confirmed before the event was stored
    book.recognised("a", 101.0, "cam-1", 0.72)
    book.seen("a", 130.0, 0.9)
    book.near("b", "cam-2", 0.33)
    book.near("b", "cam-1", 0.37)
    book.near("b", "cam-2", 0.31)
    book.near("zz", "cam-1", 0.39)  # not on the roster: ignored
    counts = book.counts()
    assert (counts.present, counts.uncertain, counts.not_seen) == (1, 1, 1)
    assert book.missing() == 2
    a, b, c = book.entries(at)
    assert a.status is PresenceStatus.PRESENT
    assert a.first_seen_at == at(101.0) and a.last_seen_at == at(130.0)
    assert (a.camera_id, a.best_score, a.sightings) == ("cam-1", 0.9, 3)
    assert b.status is PresenceStatus.UNCERTAIN
    assert (b.first_seen_at, b.last_seen_at) == (None, None)
    assert (b.camera_id, b.best_score, b.sightings) == ("cam-1", 0.37, 3)
    assert c.status is PresenceStatus.NOT_SEEN
    assert (c.camera_id, c.best_score, c.sightings) == (None, None, 0)


def test_a_recognised_student_is_present_even_after_close_matches() -> None:
    book = PresenceBook(["a"])
    book.near("a", "cam-1", 0.35)
    book.recognised("a", 5.0, "cam-2", 0.61)
    book.recognised("a", 9.0, "cam-1", 0.99)  # a second RECOGNITION changes nothing
    (entry,) = book.entries(at)
    assert entry.status is PresenceStatus.PRESENT
    assert entry.camera_id == "cam-2" and entry.first_seen_at == at(5.0)


def test_the_state_file_keeps_the_book(tmp_path: Path) -> None:
    book = PresenceBook(["a", "b", "c"])
    book.recognised("a", 10.0, "cam-1", 0.8)
    book.near("b", "cam-1", 0.34)
    store = Store(tmp_path / "data")
    try:
        store.record_recognition("slot-1", "a", book.to_json(), once=True)
        assert store.recognized("slot-1") == {"a"}
        restored = PresenceBook(["a", "b", "c", "d"])  # a roster read back from the row
        restored.restore(store.presence("slot-1"))
        assert restored.entries(at)[:3] == book.entries(at)
        assert restored.status("d") is PresenceStatus.NOT_SEEN
        store.delete_session("slot-1")
        assert store.presence("slot-1") is None
    finally:
        store.close()


def test_a_damaged_or_foreign_book_is_ignored() -> None:
    book = PresenceBook(["a"])
    book.restore({"v": 99, "students": {"a": {"recognised_at": 1.0}}})
    book.restore({"v": 1, "students": {"a": "nonsense", "b": {"recognised_at": 1.0}}})
    book.restore(None)
    assert book.status("a") is PresenceStatus.NOT_SEEN


def test_face_widths_and_the_placement_hint() -> None:
    counts = FaceWidthCounts()
    assert counts.bucket(15.9) == 0 and counts.bucket(16) == 1 and counts.bucket(200) == 6
    counts.add([30, 50, 90], [50])
    status = counts.status()
    assert status.buckets == list(LABELS)
    assert status.seen == [0, 0, 0, 1, 0, 1, 1] and status.recognised == [0, 0, 0, 0, 0, 1, 0]
    assert counts.hint() is None  # too few faces to judge
    counts.add([18, 19, 21, 22, 23, 17], [])
    hint = counts.hint()
    assert hint is not None and "24 px" in hint and "67%" in hint
    counts.add([60] * 10, [])
    assert counts.hint() is None  # most faces are large enough now
