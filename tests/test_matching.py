"""Roster matching: one matrix product, per-student maxima, margins, input validation."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import AgentError, ErrorCode
from agent.vision.matching import Roster


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_best_student_score_and_margin() -> None:
    roster = Roster(["a", "b"], [np.stack([_unit(1, 0, 0)]), np.stack([_unit(0, 1, 0)])])
    (match,) = roster.match(np.stack([_unit(1, 0.2, 0)]))
    assert match.student_id == "a"
    assert match.score == pytest.approx(float(_unit(1, 0.2, 0) @ _unit(1, 0, 0)), abs=1e-6)
    assert match.margin == pytest.approx(
        match.score - float(_unit(1, 0.2, 0) @ _unit(0, 1, 0)), abs=1e-6
    )


def test_several_embeddings_per_student_take_the_closest() -> None:
    roster = Roster(
        ["a", "b", "c"],
        [
            np.stack([_unit(1, 0, 0), _unit(0, 0, 1)]),
            np.stack([_unit(0, 1, 0)]),
            np.stack([_unit(1, 1, 0)]),
        ],
    )
    (match,) = roster.match(np.stack([_unit(0, 0.1, 1)]))
    assert match.student_id == "a"
    assert match.score > 0.99


def test_margin_rejects_lookalikes() -> None:
    roster = Roster(["a", "b"], [np.stack([_unit(1, 0.05, 0)]), np.stack([_unit(1, -0.05, 0)])])
    (match,) = roster.match(np.stack([_unit(1, 0, 0)]))
    assert match.score > 0.99
    assert not match.accepted(threshold=0.4, margin=0.05)


def test_single_student_margin_is_against_zero() -> None:
    roster = Roster(["a"], [np.stack([_unit(1, 0)])])
    (match,) = roster.match(np.stack([_unit(1, 1)]))
    assert match.margin == pytest.approx(match.score)


def test_empty_inputs() -> None:
    assert Roster([], []).match(np.zeros((2, 3), np.float32)) == []
    assert Roster(["a"], [np.stack([_unit(1, 0)])]).match(np.zeros((0, 2), np.float32)) == []


@pytest.mark.parametrize(
    "vectors",
    [[[1.0, 0.0]], [[float("nan"), 1.0, 0.0]], [[0.0, 0.0, 0.0]], [], [[float("inf"), 0, 0]]],
)
def test_validated_rejects_bad_embeddings(vectors: list[list[float]]) -> None:
    with pytest.raises(AgentError) as info:
        Roster.validated([("s1", vectors)], dim=3)
    assert info.value.code is ErrorCode.INVALID_EMBEDDING
    assert "s1" in info.value.message


def test_duplicate_student_ids_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        Roster(["a", "a"], [np.ones((1, 2)), np.ones((1, 2))])
