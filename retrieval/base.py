"""The retriever protocol every COLIEE scorer implements (BM25, dense, hybrid, Paraformer, Attentive CNN),
and ranking helpers on the score matrices they return."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from indexes.metrics import require_finite


@runtime_checkable
class Retriever(Protocol):
    """Scores every article for each query: higher is better, columns in `article_ids` order."""

    name: str
    article_ids: list[str]

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(n_queries, n_articles) float scores."""
        ...


def checked_scores(retriever: Retriever, queries: Sequence[str]) -> np.ndarray:
    """`retriever.scores(queries)`, refusing NaN or infinity: every comparison with NaN is false, so a
    broken model's scores would rank and select arbitrarily and could even look perfect."""
    scores = retriever.scores(queries)
    require_finite(scores, f"{retriever.name} scores")
    return scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best scores per row, best first: (n_queries, min(k, n_articles))."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ranked_ids(scores: np.ndarray, article_ids: Sequence[str], k: int) -> list[list[str]]:
    """The ids of the k best articles per query, best first."""
    ids = np.asarray(article_ids, dtype=object)
    return ids[top_k(scores, k)].tolist()
