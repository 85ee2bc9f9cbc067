"""Ranking metrics shared by every family, computed on a boolean hit matrix.

A ranking of Q queries is summarised as `hits`, a (Q, K) bool array where `hits[q, r]` says whether the
item ranked r-th (0-based) for query q is relevant, plus `n_relevant`, the (Q,) count of relevant
items per query (which may exceed K). Every function returns one value per query; average it yourself
or call `summarize`. All functions are vectorised over queries.

Names: every family reports metrics by ir_measures' names (what `ragcli eval run` scores), averaged over
queries: `Success@K` (a relevant item in the top K, the "hit rate"), `P@K`, `R@K` (the share of the
relevant items found in the top K), `nDCG@K`, `RR@K` (reciprocal rank), `AP`, and for sets `SetP`,
`SetR` and `SetF2` (F-beta with beta 2, COLIEE's F2: ir_measures' `SetF(beta=4.0)`, trec_eval's beta
being the square of the usual one); plus `mAP@R` (Musgrave et al., 2020), which ir_measures lacks.
Training records carry `valid_<name>` per epoch and `best_valid_<name>`. `RENAMED` lists the names of
earlier releases; `current_names` reads files they wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from indexes.errors import UserError

__all__ = [
    "require_finite",
    "hit_matrix",
    "hit_rate_at_k",
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "mrr_at_k",
    "average_precision",
    "map_at_r",
    "set_precision_recall_fbeta",
    "summarize",
    "RENAMED",
    "current_name",
    "current_names",
]


def require_finite(values, what: str) -> None:
    """Raise a UserError when scores (or a loss) hold NaN or +-infinity. Ranks are counted as "items
    scoring strictly higher" and every comparison with NaN is false, so a broken model would otherwise
    rank every target first and look perfect. Takes NumPy arrays, torch tensors and floats."""
    finite = values.isfinite().all() if hasattr(values, "isfinite") else np.isfinite(np.asarray(values)).all()
    if not bool(finite):
        raise UserError(f"{what} hold NaN or infinite values (a diverged or corrupt model)")


def hit_matrix(ranked: Sequence[Sequence], relevant: Sequence[Iterable]) -> tuple[np.ndarray, np.ndarray]:
    """Build `(hits, n_relevant)` from ranked id lists and the relevant ids of each query.

    Ranked lists may have different lengths; missing ranks count as misses.
    """
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevance sets")
    width = max((len(r) for r in ranked), default=0)
    hits = np.zeros((len(ranked), width), dtype=bool)
    n_relevant = np.zeros(len(ranked), dtype=np.int64)
    for q, (ids, gold) in enumerate(zip(ranked, relevant)):
        gold = set(gold)
        n_relevant[q] = len(gold)
        hits[q, : len(ids)] = [i in gold for i in ids]
    return hits, n_relevant


def _top(hits: np.ndarray, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.asarray(hits, dtype=bool)[:, :k]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 if any relevant item is in the top k: `Success@K` (the hit rate, once called HR@K; equal to R@K
    when a query has one relevant item)."""
    return _top(hits, k).any(axis=1).astype(np.float64)


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Relevant items in the top k, divided by k."""
    return _top(hits, k).sum(axis=1) / float(k)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Relevant items in the top k, divided by all relevant items (0 when a query has none)."""
    return _safe_div(_top(hits, k).sum(axis=1), n_relevant)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-gain `nDCG@K`: DCG = sum 1/log2(rank+2) over hits, over the DCG of a perfect ranking."""
    top = _top(hits, k)
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    dcg = top @ discounts
    ideal_cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal_cum[np.minimum(np.asarray(n_relevant), k)]
    return _safe_div(dcg, idcg)


def mrr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """`RR@K`: reciprocal rank of the first relevant item within the top k, 0 if none."""
    top = _top(hits, k)
    first = top.argmax(axis=1)
    return np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)


def average_precision(hits: np.ndarray, n_relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    """AP over the ranking (cut at k if given): mean of precision@r at each relevant rank r.

    Normalised by min(n_relevant, k) so a perfect truncated ranking scores 1; its mean is MAP, reported
    as `AP` (ir_measures' name, the mean over queries implied). Uncut, it is trec_eval's AP; cut at k it
    differs from trec_eval's `AP@K` (which divides by every relevant item) when n_relevant > k.
    """
    top = np.asarray(hits, dtype=bool) if k is None else _top(hits, k)
    ranks = np.arange(1, top.shape[1] + 1)
    precision_at_hits = np.cumsum(top, axis=1) / ranks * top
    denom = np.asarray(n_relevant) if k is None else np.minimum(n_relevant, k)
    return _safe_div(precision_at_hits.sum(axis=1), denom)


def map_at_r(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """mAP@R (Musgrave et al., 2020): AP within the top R, R = the query's number of relevant items.

    `hits` must have at least max(n_relevant) columns.
    """
    n_relevant = np.asarray(n_relevant)
    top = np.asarray(hits, dtype=bool)
    if n_relevant.size and top.shape[1] < n_relevant.max():
        raise ValueError(f"mAP@R needs {n_relevant.max()} ranks, got {top.shape[1]}")
    ranks = np.arange(1, top.shape[1] + 1)
    within_r = ranks[None, :] <= n_relevant[:, None]
    counted = top & within_r
    precision_at_hits = np.cumsum(counted, axis=1) / ranks * counted
    return _safe_div(precision_at_hits.sum(axis=1), n_relevant)


def set_precision_recall_fbeta(
    predicted: Sequence[Iterable], gold: Sequence[Iterable], beta: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query precision, recall and F-beta of predicted sets against gold sets (`SetP`, `SetR`,
    `SetF2` for beta 2).

    COLIEE Task 3 reports the mean of each over queries (macro average); an empty prediction
    scores precision 0.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions but {len(gold)} gold sets")
    correct, n_pred, n_gold = (np.zeros(len(gold)) for _ in range(3))
    for q, (p, g) in enumerate(zip(predicted, gold)):
        p, g = set(p), set(g)
        correct[q], n_pred[q], n_gold[q] = len(p & g), len(p), len(g)
    precision = _safe_div(correct, n_pred)
    recall = _safe_div(correct, n_gold)
    b2 = beta * beta
    fbeta = _safe_div((1 + b2) * precision * recall, b2 * precision + recall)
    return precision, recall, fbeta


_AT_K = {
    "Success": lambda hits, n_rel, k: hit_rate_at_k(hits, k),
    "P": lambda hits, n_rel, k: precision_at_k(hits, k),
    "R": recall_at_k,
    "nDCG": ndcg_at_k,
    "RR": lambda hits, n_rel, k: mrr_at_k(hits, k),
    "AP": average_precision,
}


def summarize(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int], metrics: Sequence[str] = ("Success", "nDCG", "RR")
) -> dict[str, float]:
    """Mean of each metric at each k, keyed like `"nDCG@10"`; metric names are those of `_AT_K`."""
    unknown = set(metrics) - set(_AT_K)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {sorted(_AT_K)}")
    return {f"{m}@{k}": float(_AT_K[m](hits, n_relevant, k).mean()) if len(hits) else 0.0 for m in metrics for k in ks}


# Deprecated: the names earlier releases wrote, and what each is called now. Nothing writes them any more;
# `current_names` reads files they wrote (training.json histories, saved results) for one more release.
# A name ending in "@" renames every cut-off. Vision's old "R@K" is not here: it was a hit rate, now
# `Success@K`, and R@K now means recall, so an old vision result cannot be read by name.
RENAMED = {
    "HR@": "Success@", "NDCG@": "nDCG@", "MRR@": "RR@", "Recall@": "R@", "MAP": "AP",
    "P": "SetP", "R": "SetR", "F2": "SetF2", "F2_interval": "SetF2_interval", "bm25_F2": "bm25_SetF2",
    "mean_year_F2": "mean_year_SetF2",
    "valid_ndcg10": "valid_nDCG@10", "best_valid_ndcg10": "best_valid_nDCG@10", "valid_recall@": "valid_R@",
}


def current_name(name: str) -> str:
    """The current name of a metric key written by an earlier release (`RENAMED`); any other key as it is."""
    for old, new in RENAMED.items():
        if name == old or (old.endswith("@") and name.startswith(old)):
            return new + name[len(old):]
    return name


def current_names(record: dict) -> dict:
    """`record` (one flat dict of metric values, e.g. a history row) with every old key renamed."""
    return {current_name(key): value for key, value in record.items()}


def bootstrap_interval(values: Sequence[float], baseline: Sequence[float] | None = None, confidence: float = 0.95,
                       resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-query `values`, or, with `baseline` (the same
    queries under another system), of the mean paired difference: so a gain is read with its noise."""
    from scipy.stats import bootstrap

    sample = np.asarray(values, dtype=np.float64)
    if baseline is not None:
        sample = sample - np.asarray(baseline, dtype=np.float64)
    if len(sample) < 2 or np.ptp(sample) == 0:  # nothing to resample: the interval is the mean itself
        return float(sample.mean()), float(sample.mean())
    found = bootstrap((sample,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                      rng=np.random.default_rng(seed))
    return float(found.confidence_interval.low), float(found.confidence_interval.high)
