"""Hybrid retrieval: a weighted sum of per-query normalised score matrices from any `Retriever`s
(BM25, dense, a trained neural model), with the weights tuned on a validation year."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from indexes.errors import UserError
from retrieval.base import Retriever, checked_scores


def normalize(scores: np.ndarray) -> np.ndarray:
    """Min-max scale each query's scores to [0, 1], so retrievers on different scales can be added."""
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return np.divide(scores - low, span, out=np.zeros_like(scores, dtype=np.float32), where=span > 0)


def fuse(matrices: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i weights[i] * normalize(matrices[i]); all matrices have the same shape."""
    if len(matrices) != len(weights):
        raise ValueError(f"{len(matrices)} score matrices but {len(weights)} weights")
    return sum(w * normalize(m) for w, m in zip(weights, matrices))


def weight_grid(n: int, step: float = 0.05) -> np.ndarray:
    """Every weight vector of length n with entries on a `step` grid summing to 1: (n_vectors, n)."""
    units = round(1 / step)
    points = [c for c in itertools.product(range(units + 1), repeat=n - 1) if sum(c) <= units]
    return np.asarray([(*c, units - sum(c)) for c in points], dtype=np.float64) / units


def tune_weights(matrices: Sequence[np.ndarray], objective: Callable[[np.ndarray], float],
                 step: float = 0.05) -> tuple[np.ndarray, float]:
    """The grid weights whose fused scores maximise `objective` (e.g. validation F2); ties go to the
    earliest grid point, where the last retriever weighs most. Returns (weights, best objective)."""
    normalized = [normalize(m) for m in matrices]
    grid = weight_grid(len(matrices), step)
    values = [objective(sum(w * m for w, m in zip(weights, normalized))) for weights in grid]
    best = int(np.argmax(values))
    return grid[best], float(values[best])


class HybridRetriever:
    """Fuses its retrievers' scores with fixed weights (equal unless given)."""

    name = "hybrid"

    def __init__(self, retrievers: Sequence[Retriever], weights: Sequence[float] | None = None):
        if not retrievers:
            raise UserError("a hybrid retriever needs at least one retriever")
        ids = retrievers[0].article_ids
        if any(r.article_ids != ids for r in retrievers):
            raise UserError("the fused retrievers must score the same articles in the same order")
        self.retrievers = list(retrievers)
        self.article_ids = list(ids)
        self.weights = np.full(len(retrievers), 1 / len(retrievers)) if weights is None else np.asarray(weights, dtype=np.float64)

    def named_weights(self) -> dict[str, float]:
        """Each fused retriever's weight, by its name."""
        return {r.name: float(w) for r, w in zip(self.retrievers, self.weights)}

    def matrices(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Each retriever's raw scores, all finite (for tuning the weights once, then fusing many times)."""
        return [checked_scores(r, queries) for r in self.retrievers]

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        return fuse(self.matrices(queries), self.weights)
