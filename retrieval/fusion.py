"""Hybrid retrieval: the score matrices of any `Retriever`s (BM25, dense, a trained neural model) fused
by a weighted sum of per-query normalised scores (`wsum`, weights tuned on validation years) or by
reciprocal-rank fusion (`rrf`, Cormack et al. 2009, through ranx: no weights, only ranks), with the
set-selection ratio tuned on validation years, saved as a small recipe (`HybridConfig`) an index serves."""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import softmax

from indexes import checks
from indexes.errors import UserError
from indexes.files import read_json
from retrieval.base import Retriever, checked_scores, top_k
from retrieval.selection import DEFAULT_RATIO

CONFIG_FILE = "config.json"


def normalize(scores: np.ndarray) -> np.ndarray:
    """Min-max scale each query's scores to [0, 1], so retrievers on different scales can be added."""
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return np.divide(scores - low, span, out=np.zeros_like(scores, dtype=np.float32), where=span > 0)


def candidates_on_top(first_stage: np.ndarray, columns: np.ndarray, candidate_scores: np.ndarray) -> np.ndarray:
    """A full (queries, articles) score matrix for a re-ranking: each query's candidate `columns` carry
    `candidate_scores`, and every other article sits below all of them in the first stage's order, so
    ranking metrics over the whole corpus stay meaningful."""
    below = candidate_scores.min(axis=1, keepdims=True) - 2 + normalize(first_stage).astype(np.float64)
    np.put_along_axis(below, columns, candidate_scores, axis=1)
    return below


class PaperRerank:
    """A trained model as its paper runs it (Paraformer's evaluation, Nguyen et al. 2022): BM25's `top_n`
    articles re-scored by `alpha * p + (1 - alpha) * BM25 score`, everything else below them. `p` is the
    model's probability over those candidates (a softmax of its scores: ragcli trains listwise). The
    paper answers with the single best article (`RATIO` 1.0)."""

    RATIO = 1.0

    def __init__(self, bm25: Retriever, model: Retriever, top_n: int = 10, alpha: float = 0.1) -> None:
        checks.integer("--paper-top-n", top_n, 1, 1000)
        checks.number("--paper-alpha", alpha, 0, 1)
        if list(bm25.article_ids) != list(model.article_ids):
            raise UserError("the model and BM25 must score the same articles in the same order")
        self.bm25, self.model, self.top_n, self.alpha = bm25, model, top_n, alpha
        self.article_ids = list(bm25.article_ids)
        self.name = f"{model.name}-paper-bm25top{top_n}-alpha{alpha:g}"  # one word: it is a run file's id

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        lexical = checked_scores(self.bm25, queries).astype(np.float64)
        columns = top_k(lexical, self.top_n)
        neural = np.take_along_axis(checked_scores(self.model, queries).astype(np.float64), columns, axis=1)
        combined = self.alpha * softmax(neural, axis=1) + (1 - self.alpha) * np.take_along_axis(lexical, columns, axis=1)
        return candidates_on_top(lexical, columns, combined)


def fuse(matrices: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_i weights[i] * normalize(matrices[i]); all matrices have the same shape."""
    if len(matrices) != len(weights):
        raise ValueError(f"{len(matrices)} score matrices but {len(weights)} weights")
    return sum(w * normalize(m) for w, m in zip(weights, matrices))


FUSIONS = ("wsum", "rrf")
RRF_K = 60  # the constant of Cormack et al. and ranx's default


def reciprocal_rank_fusion(matrices: Sequence[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """sum_i 1 / (k + rank_i) of every article under each retriever's ranking (ranx's `rrf`), as a
    (queries, articles) matrix."""
    from ranx import Run
    from ranx import fuse as ranx_fuse

    n_queries, n_articles = matrices[0].shape
    runs = [Run.from_dict({str(q): {str(a): float(s) for a, s in enumerate(row)} for q, row in enumerate(m)})
            for m in matrices]
    with warnings.catch_warnings():  # numba's note on a uint64 -> int64 cast of ranx's own run sizes
        warnings.filterwarnings("ignore", message="unsafe cast from uint64 to int64")
        fused = ranx_fuse(runs=runs, method="rrf", params={"k": k}).to_dict()
    out = np.zeros((n_queries, n_articles), dtype=np.float32)
    for query, scores in fused.items():
        out[int(query), [int(a) for a in scores]] = list(scores.values())
    return out


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


@dataclass(frozen=True)
class HybridConfig:
    """What a hybrid is, apart from its retrievers: their names in order, their weights and the
    set-selection ratio. `save` / `load` keep it as config.json in a directory."""

    retrievers: tuple[str, ...]
    weights: tuple[float, ...]
    ratio: float = DEFAULT_RATIO
    fusion: str = "wsum"

    @classmethod
    def equal(cls, names: Sequence[str]) -> HybridConfig:
        """Equal weights and the default ratio: what transferred best to unseen exam years (issue #13)."""
        return cls(tuple(names), tuple(1 / len(names) for _ in names))

    def __post_init__(self) -> None:
        names = [checks.text("hybrid retriever name", n) for n in self.retrievers]
        if not names or len(set(names)) != len(names) or len(self.weights) != len(names):
            raise UserError(f"a hybrid names distinct retrievers, one weight each; got {list(self.retrievers)}, "
                            f"{list(self.weights)}")
        weights = [checks.number("hybrid weight", w, 0, 1) for w in self.weights]
        if sum(weights) <= 0:
            raise UserError("a hybrid's weights cannot all be 0")
        checks.number("selection ratio", self.ratio, 0, 1)
        checks.choice("fusion", self.fusion, FUSIONS)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / CONFIG_FILE).write_text(json.dumps({"architecture": "hybrid", **asdict(self)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> HybridConfig:
        config = read_json(Path(path) / CONFIG_FILE, "hybrid config")
        if not isinstance(config, dict) or config.get("architecture") != "hybrid" \
                or not all(isinstance(config.get(k), list) for k in ("retrievers", "weights")):
            raise UserError(f"{path} is not a saved hybrid (config.json with architecture 'hybrid')")
        return cls(tuple(config["retrievers"]), tuple(config["weights"]), config.get("ratio", DEFAULT_RATIO),
                   config.get("fusion", "wsum"))


class HybridRetriever:
    """Fuses its retrievers' scores with fixed weights (equal unless given), or by their ranks alone
    (`fusion="rrf"`); `ratio` is the set-selection ratio that goes with them."""

    name = "hybrid"

    def __init__(self, retrievers: Sequence[Retriever], weights: Sequence[float] | None = None,
                 ratio: float = DEFAULT_RATIO, fusion: str = "wsum"):
        if not retrievers:
            raise UserError("a hybrid retriever needs at least one retriever")
        ids = retrievers[0].article_ids
        if any(r.article_ids != ids for r in retrievers):
            raise UserError("the fused retrievers must score the same articles in the same order")
        self.retrievers = list(retrievers)
        self.article_ids = list(ids)
        self.weights = np.full(len(retrievers), 1 / len(retrievers)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.ratio = ratio
        self.fusion = checks.choice("fusion", fusion, FUSIONS)

    @property
    def config(self) -> HybridConfig:
        return HybridConfig(tuple(r.name for r in self.retrievers), tuple(float(w) for w in self.weights), self.ratio,
                            self.fusion)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the recipe (names, weights, ratio); the retrievers are stored by whoever owns them."""
        self.config.save(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, retrievers: Mapping[str, Retriever]) -> HybridRetriever:
        """The hybrid saved in `path` over `retrievers` (by name); a name it fuses must be among them."""
        config = HybridConfig.load(path)
        missing = [n for n in config.retrievers if n not in retrievers]
        if missing:
            raise UserError(f"{path}: the hybrid fuses {', '.join(missing)}, which this corpus does not have "
                            f"(it has {', '.join(retrievers)})")
        return cls([retrievers[n] for n in config.retrievers], config.weights, config.ratio, config.fusion)

    def settings(self) -> dict[str, object]:
        """How it fuses, for reports: the method, and the weights by retriever where it has any."""
        return {"fusion": self.fusion, **({"weights": self.named_weights()} if self.fusion == "wsum" else {})}

    def named_weights(self) -> dict[str, float]:
        """Each fused retriever's weight, by its name."""
        return {r.name: float(w) for r, w in zip(self.retrievers, self.weights)}

    def matrices(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Each retriever's raw scores, all finite (for tuning the weights once, then fusing many times)."""
        return [checked_scores(r, queries) for r in self.retrievers]

    def combine(self, matrices: Sequence[np.ndarray]) -> np.ndarray:
        """The fused scores of the retrievers' `matrices`."""
        return reciprocal_rank_fusion(matrices) if self.fusion == "rrf" else fuse(matrices, self.weights)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        return self.combine(self.matrices(queries))
