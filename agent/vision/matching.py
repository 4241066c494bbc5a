"""Matching faces against a session's roster: one matrix product, best student, margin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.errors import AgentError, ErrorCode
from agent.vision.faces import FloatArray


@dataclass(frozen=True)
class Match:
    """The best student for one face."""

    student_index: int
    student_id: str
    score: float  # cosine similarity with the student's closest embedding
    margin: float  # score minus the second-best student's score (or minus 0 if alone)

    def accepted(self, threshold: float, margin: float) -> bool:
        """Whether the match passes both the threshold and the margin."""
        return self.score >= threshold and self.margin >= margin


class Roster:
    """The students of a session as one matrix of L2-normalised embeddings.

    Several embeddings per student are allowed; rows of one student are contiguous, so
    per-student maxima are one ``np.maximum.reduceat``.
    """

    def __init__(self, student_ids: Sequence[str], embeddings: Sequence[FloatArray]) -> None:
        if len(student_ids) != len(embeddings):
            raise ValueError("one embedding matrix per student is required")
        if len(set(student_ids)) != len(student_ids):
            raise ValueError("student ids must be unique")
        self.student_ids = list(student_ids)
        rows = [np.atleast_2d(np.asarray(e, dtype=np.float32)) for e in embeddings]
        self.dim = rows[0].shape[1] if rows else 0
        self._starts = np.cumsum([0] + [r.shape[0] for r in rows[:-1]]).astype(np.intp)
        matrix = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True) if rows else None
        self.matrix = matrix / np.maximum(norms, 1e-12) if norms is not None else matrix

    @classmethod
    def validated(
        cls, students: Sequence[tuple[str, Sequence[Sequence[float]]]], dim: int
    ) -> Roster:
        """Build a roster from raw lists, rejecting wrong sizes and non-finite values."""
        ids, mats = [], []
        for student_id, vectors in students:
            mat = np.asarray(vectors, dtype=np.float32)
            if mat.ndim != 2 or mat.shape[0] == 0 or mat.shape[1] != dim:
                raise AgentError(
                    ErrorCode.INVALID_EMBEDDING,
                    f"Student {student_id!r}: each embedding must have {dim} numbers "
                    f"(got shape {list(mat.shape)}).",
                )
            if not np.all(np.isfinite(mat)) or np.any(np.linalg.norm(mat, axis=1) < 1e-6):
                raise AgentError(
                    ErrorCode.INVALID_EMBEDDING,
                    f"Student {student_id!r}: embeddings must be finite and non-zero.",
                )
            ids.append(student_id)
            mats.append(mat)
        return cls(ids, mats)

    def __len__(self) -> int:
        return len(self.student_ids)

    def match(self, faces: FloatArray) -> list[Match]:
        """Best student, score and margin for each row of ``faces`` (normalised)."""
        if len(self) == 0 or faces.shape[0] == 0:
            return []
        sims = faces @ self.matrix.T  # (faces, embeddings)
        per_student = np.maximum.reduceat(sims, self._starts, axis=1)  # (faces, students)
        best = np.argmax(per_student, axis=1)
        results = []
        for row, idx in enumerate(best):
            score = float(per_student[row, idx])
            if per_student.shape[1] > 1:
                others = np.delete(per_student[row], idx)
                second = max(0.0, float(others.max()))
            else:
                second = 0.0
            results.append(Match(int(idx), self.student_ids[idx], score, score - second))
        return results
