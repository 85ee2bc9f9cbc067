"""Set selection: COLIEE scores the returned set, so each query keeps its best article plus every
article scoring within a relative margin of it (capped), with the margin tuned on validation for F2."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexes.metrics import set_precision_recall_fbeta
from retrieval.base import top_k

DEFAULT_RATIO = 0.9
MAX_SELECTED = 5


def select(scores: np.ndarray, article_ids: Sequence[str], ratio: float = DEFAULT_RATIO,
           max_k: int = MAX_SELECTED) -> list[list[str]]:
    """Per query: the top article, plus those scoring >= top - (1 - ratio) * |top| among the best max_k."""
    order = top_k(scores, max_k)
    best = np.take_along_axis(scores, order, axis=1)
    keep = best >= (best[:, :1] - (1 - ratio) * np.abs(best[:, :1]))
    keep[:, 0] = True
    ids = np.asarray(article_ids, dtype=object)[order]
    return [row[mask].tolist() for row, mask in zip(ids, keep)]


def tune_ratio(scores: np.ndarray, article_ids: Sequence[str], gold: Sequence[Sequence[str]],
               grid: Sequence[float] = tuple(np.round(np.arange(0.5, 1.0001, 0.01), 2)),
               max_k: int = MAX_SELECTED) -> tuple[float, float]:
    """The ratio in `grid` with the best macro F2 on these queries (ties: the highest ratio, the
    smallest sets). Returns (ratio, F2)."""
    f2 = [set_precision_recall_fbeta(select(scores, article_ids, r, max_k), gold)[2].mean() for r in grid]
    best = len(f2) - 1 - int(np.argmax(f2[::-1]))
    return float(grid[best]), float(f2[best])


PROBABILITY_GRID = tuple(np.round(np.arange(0.05, 0.951, 0.01), 2))


def select_by_probability(probabilities: np.ndarray, candidate_ids: Sequence[Sequence[str]], threshold: float,
                          max_k: int = MAX_SELECTED) -> list[list[str]]:
    """Per query: its most probable candidate, plus every candidate (of the best max_k) whose probability
    is >= `threshold`; a re-ranker's probabilities are on one scale for every query, so the cut is absolute."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :max_k]
    best = np.take_along_axis(probabilities, order, axis=1)
    keep = best >= threshold
    keep[:, 0] = True
    ids = np.asarray(candidate_ids, dtype=object)
    return [row[columns][mask].tolist() for row, columns, mask in zip(ids, order, keep)]


def tune_threshold(probabilities: np.ndarray, candidate_ids: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                   grid: Sequence[float] = PROBABILITY_GRID, max_k: int = MAX_SELECTED) -> tuple[float, float]:
    """The threshold in `grid` with the best macro F2 on these queries (ties: the highest threshold, the
    smallest sets). Returns (threshold, F2)."""
    f2 = [set_precision_recall_fbeta(select_by_probability(probabilities, candidate_ids, t, max_k), gold)[2].mean()
          for t in grid]
    best = len(f2) - 1 - int(np.argmax(f2[::-1]))
    return float(grid[best]), float(f2[best])
