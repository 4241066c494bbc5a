"""The IoU face tracker on its own: association, track life, k-of-n confirmation and when a
track's face must be embedded. Faces are built directly (no detector)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.vision.faces import DetectedFace
from agent.vision.tracker import FaceTracker, Track, iou_matrix

Box = tuple[float, float, float, float]


def face(box: Box) -> DetectedFace:
    """A detected face with this box (landmarks are not used by the tracker)."""
    return DetectedFace(bbox=np.array(box, np.float32), score=0.9, kps=np.zeros((5, 2), np.float32))


def tracker(
    *, iou: float = 0.3, max_missed: int = 2, n: int = 3, reembed_every: int = 5
) -> FaceTracker:
    return FaceTracker(iou=iou, max_missed=max_missed, n=n, reembed_every=reembed_every)


def shifted(box: Box, dx: float) -> Box:
    return (box[0] + dx, box[1], box[2] + dx, box[3])


A: Box = (0, 0, 100, 100)
B: Box = (300, 0, 400, 100)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (A, A, 1.0),
        (A, B, 0.0),
        (A, (50, 0, 150, 100), 1 / 3),  # half of each box overlaps: 5000 / 15000
        (A, (0, 0, 50, 50), 0.25),  # one inside the other: 2500 / 10000
        (A, (100, 0, 200, 100), 0.0),  # touching edges
    ],
)
def test_iou_of_two_boxes(a: Box, b: Box, expected: float) -> None:
    result = iou_matrix(np.array([a], np.float32), np.array([b], np.float32))
    assert result.shape == (1, 1)
    assert result[0, 0] == pytest.approx(expected, abs=1e-6)


def test_iou_matrix_shapes_include_empty_sides() -> None:
    two = np.array([A, B], np.float32)
    none = np.zeros((0, 4), np.float32)
    assert iou_matrix(two, none).shape == (2, 0)
    assert iou_matrix(none, two).shape == (0, 2)
    np.testing.assert_allclose(iou_matrix(two, two), np.eye(2), atol=1e-6)


def test_a_face_that_moves_a_little_keeps_its_track() -> None:
    t = tracker()
    (first,) = t.update([face(A)])
    (second,) = t.update([face(shifted(A, 10))])
    assert second.track_id == first.track_id
    assert second.face.bbox[0] == 10  # the track follows the new box
    assert len(t.tracks) == 1


def test_a_face_that_overlaps_too_little_starts_a_new_track() -> None:
    t = tracker(iou=0.5)
    (first,) = t.update([face(A)])
    (second,) = t.update([face(shifted(A, 50))])  # IoU 1/3 < 0.5
    assert second.track_id != first.track_id
    assert [tr.track_id for tr in t.tracks] == [first.track_id, second.track_id]


def test_new_faces_get_new_increasing_ids() -> None:
    t = tracker()
    ids = [tr.track_id for tr in t.update([face(A), face(B)])]
    assert len(set(ids)) == 2
    (third,) = t.update([face(A), face(B), face((600, 0, 700, 100))])[2:]
    assert third.track_id > max(ids)


def test_association_takes_the_best_overlaps_first() -> None:
    t = tracker(iou=0.04)
    left, right = t.update([face(A), face((150, 0, 250, 100))])
    # X overlaps the old left box 0.05 and the old right one 0.25; Y overlaps the old right
    # box 0.82. Taking faces in order would give X the right track and Y a new one; the
    # best pair (Y, right) goes first, then X gets the left track.
    x, y = t.update([face((90, 0, 190, 100)), face((160, 0, 260, 100))])
    assert (x.track_id, y.track_id) == (left.track_id, right.track_id)


def test_update_returns_only_the_tracks_seen_in_this_analysis() -> None:
    t = tracker()
    t.update([face(A), face(B)])
    seen = t.update([face(B)])
    assert [tr.face.bbox[0] for tr in seen] == [300]
    assert len(t.tracks) == 2  # A's track is missed, not gone


def test_a_missed_track_survives_max_missed_analyses_then_expires() -> None:
    t = tracker(max_missed=2)
    (first,) = t.update([face(A)])
    t.update([])
    t.update([])
    assert [tr.track_id for tr in t.tracks] == [first.track_id]
    assert t.tracks[0].missed == 2
    (back,) = t.update([face(A)])  # back within the allowance: same track, reset
    assert back.track_id == first.track_id and back.missed == 0
    for _ in range(3):
        t.update([])
    assert t.tracks == []
    (again,) = t.update([face(A)])
    assert again.track_id != first.track_id


@pytest.mark.parametrize(
    ("votes", "k", "newly", "confirmed"),
    [
        # (student or None per analysis), k; what each vote returned; confirmed at the end
        (["a"], 2, [None], None),
        (["a", "a"], 2, [None, "a"], "a"),
        (["a", None, "a"], 2, [None, None, "a"], "a"),
        (["a", "b", "a"], 2, [None, None, "a"], "a"),
        (["a", "a", "a"], 2, [None, "a", None], "a"),  # confirmed once, not again
        (["a", "b", "c"], 2, [None, None, None], None),
        (["a", "b", "c", "a"], 2, [None, None, None, None], None),  # only 3 votes kept
        (["a"], 1, ["a"], "a"),
        ([None, None, None], 1, [None, None, None], None),
    ],
)
def test_k_of_n_confirmation(
    votes: list[str | None], k: int, newly: list[str | None], confirmed: str | None
) -> None:
    t = tracker(n=3)
    (track,) = t.update([face(A)])
    returned = [track.vote(v, 0.8, k) for v in votes]
    assert returned == newly
    assert track.confirmed == confirmed


def test_a_tracker_swap_moves_or_drops_the_confirmation() -> None:
    t = tracker(n=3)
    (track,) = t.update([face(A)])
    assert [track.vote(v, 0.8, 2) for v in ("a", "a")] == [None, "a"]
    # The box now holds someone else: b reaches k of the last n, a new confirmation.
    assert [track.vote(v, 0.8, 2) for v in ("b", "b")] == [None, "b"]
    assert track.confirmed == "b"
    # Then nobody: once b has no vote left among the last n, the track is unconfirmed.
    assert [track.vote(None, 0.0, 2) for _ in range(2)] == [None, None]
    assert track.confirmed == "b"
    track.vote(None, 0.0, 2)
    assert track.confirmed is None


def test_best_score_per_student_is_kept() -> None:
    t = tracker()
    (track,) = t.update([face(A)])
    for student, score in (("a", 0.5), ("a", 0.7), ("a", 0.6), ("b", 0.4), (None, 0.9)):
        track.vote(student, score, 3)
    assert track.best_scores == {"a": 0.7, "b": 0.4}


def run_analyses(t: FaceTracker, count: int) -> Track:
    """``count`` more analyses of the same face; returns its track."""
    (track,) = t.update([face(A)])
    for _ in range(count - 1):
        (track,) = t.update([face(A)])
    return track


def test_new_and_uncertain_tracks_are_embedded_every_analysis() -> None:
    t = tracker(n=3, reembed_every=5)
    track = run_analyses(t, 1)
    assert t.needs_embedding(track)  # new
    for vote in ("a", "b", None, "a"):
        track.vote(vote, 0.6, 3)
        (track,) = t.update([face(A)])
        assert t.needs_embedding(track), vote  # not confirmed, not all-unknown


def test_a_confirmed_track_is_embedded_again_every_reembed_every_analyses() -> None:
    t = tracker(n=3, reembed_every=4)
    track = run_analyses(t, 1)
    track.vote("a", 0.9, 1)
    assert track.confirmed == "a"
    needs = []
    for _ in range(6):
        (track,) = t.update([face(A)])
        needs.append(t.needs_embedding(track))
        if needs[-1]:
            track.vote("a", 0.9, 1)  # the pipeline embeds and votes again
    assert needs == [False, False, False, True, False, False]


@pytest.mark.parametrize(
    ("unknown_votes", "settled"),
    [(1, False), (2, False), (3, True), (4, True)],
)
def test_a_face_matching_nobody_n_times_is_settled_as_unknown(
    unknown_votes: int, settled: bool
) -> None:
    t = tracker(n=3, reembed_every=4)
    track = run_analyses(t, 1)
    for _ in range(unknown_votes):
        track.vote(None, 0.1, 2)
    (track,) = t.update([face(A)])
    assert t.needs_embedding(track) is not settled
    if settled:  # re-checked now and then: a student may turn to the camera late
        for _ in range(3):
            (track,) = t.update([face(A)])
        assert t.needs_embedding(track)


@pytest.mark.parametrize(
    ("score", "instant", "confirmed"),
    [(0.65, 0.6, "a"), (0.6, 0.6, "a"), (0.55, 0.6, None), (0.9, 2.0, None)],
)
def test_one_strong_match_confirms_at_once(
    score: float, instant: float, confirmed: str | None
) -> None:
    t = tracker(n=3)
    track = run_analyses(t, 1)
    assert track.vote("a", score, 2, instant) == confirmed
    assert track.confirmed == confirmed


def test_recognised_tracks_are_rechecked_less_often_than_strangers() -> None:
    t = FaceTracker(iou=0.3, max_missed=2, n=2, reembed_every=2, recheck_every=5)
    student, stranger = t.update([face(A), face(B)])
    student.vote("a", 0.9, 1)
    for _ in range(2):
        stranger.vote(None, 0.05, 1)
    due: dict[str, list[int]] = {"student": [], "stranger": []}
    for i in range(1, 7):
        student, stranger = t.update([face(A), face(B)])
        for name, track in (("student", student), ("stranger", stranger)):
            if t.needs_embedding(track):
                due[name].append(i)
                is_student = name == "student"
                track.vote("a" if is_student else None, 0.9 if is_student else 0.05, 1)
    assert due == {"student": [5], "stranger": [2, 4, 6]}


def test_a_face_that_came_close_is_not_settled_as_a_stranger() -> None:
    t = FaceTracker(iou=0.3, max_missed=2, n=3, reembed_every=4, stranger_below=0.3)
    close, far = t.update([face(A), face(B)])
    for _ in range(3):
        close.vote(None, 0.35, 2)  # below the threshold, above the stranger line
        far.vote(None, 0.1, 2)
    close, far = t.update([face(A), face(B)])
    assert not t.settled(close) and t.needs_embedding(close)
    assert t.settled(far) and not t.needs_embedding(far)
