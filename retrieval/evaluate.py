"""COLIEE Task 3 evaluation: macro precision / recall / F2 of the selected sets (per query, then
averaged, as COLIEE scores them: `SetP`, `SetR`, `SetF2`), recall at cut-offs (`R@K`) and `AP` of the
full ranking, and TREC-style run files. Names are ir_measures' (`indexes.metrics`); the set metrics carry
its `Set` prefix so that they are never read as the ranking's `P@K` / `R@K`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes.errors import UserError
from indexes.files import atomic_dir, atomic_write_text, check_output, writable_file
from indexes.index import Hit
from indexes.metrics import average_precision, hit_matrix, recall_at_k, set_precision_recall_fbeta
from indexes.runs import trec_lines, write_qrels
from indexes.runtime import resolve_device
from retrieval.base import Retriever, checked_scores, ranked_ids
from retrieval.bm25 import BM25Retriever
from retrieval.coliee import Article, Query, load_coliee
from retrieval.dense import DenseRetriever
from retrieval.fusion import HybridRetriever, PaperRerank, tune_weights
from retrieval.selection import DEFAULT_RATIO, select, tune_ratio

RECALL_KS = (1, 5, 10, 20, 50)
BUILTIN_MODELS = ("bm25", "dense", "hybrid")


def coliee_metrics(scores: np.ndarray, article_ids: Sequence[str], gold: Sequence[Sequence[str]],
                   selected: Sequence[Sequence[str]]) -> dict[str, float]:
    """SetF2, SetP, SetR of the selected sets (macro), R@K and AP of the ranking given by `scores`."""
    precision, recall, f2 = set_precision_recall_fbeta(selected, gold, beta=2.0)
    hits, n_relevant = hit_matrix(ranked_ids(scores, article_ids, len(article_ids)), gold)
    return {
        "SetF2": float(f2.mean()), "SetP": float(precision.mean()), "SetR": float(recall.mean()),
        **{f"R@{k}": float(recall_at_k(hits, n_relevant, k).mean()) for k in RECALL_KS},
        "AP": float(average_precision(hits, n_relevant).mean()),
    }


def run_lines(queries: Sequence[Query], scores: np.ndarray, article_ids: Sequence[str],
              selected: Sequence[Sequence[str]], run_id: str) -> list[str]:
    """COLIEE/TREC submission lines `QID Q0 ARTICLE RANK SCORE RUNID` for each selected article."""
    column = {article_id: j for j, article_id in enumerate(article_ids)}
    hits = [[Hit(a, float(scores[i, column[a]])) for a in chosen] for i, chosen in enumerate(selected)]
    return trec_lines([q.id for q in queries], hits, run_id)


def write_coliee_qrels(data_dir: Path | None, years: Sequence[str], out: Path, topics: Path | None = None) -> dict[str, Any]:
    """The gold articles of `years` as a TREC qrels file (and the questions as a `qid<TAB>text` topics
    file), so any tool can score ragcli's runs and ragcli can score theirs."""
    queries = load_coliee(data_dir).queries(years)
    lines = write_qrels(out, [(q.id, a, 1) for q in queries for a in q.gold])
    if topics is not None:
        atomic_write_text(topics, "".join(f"{q.id}\t{' '.join(q.text.split())}\n" for q in queries))
    return {"qrels": str(out), "judgements": lines, "queries": len(queries), **({"topics": str(topics)} if topics else {})}


def make_retriever(model: str, articles: Sequence[Article], encoder: str | None = None,
                   rerank: Path | None = None, device: str = "auto", fusion: str = "wsum",
                   paper: tuple[int, float] | None = None) -> Retriever:
    """bm25 | dense | hybrid (BM25 + dense, + the `rerank` model's scores, fused by `fusion`) | a trained
    model directory (with `paper` = (top_n, alpha): re-ranking BM25's top_n as its paper does)."""
    texts, ids = [a.search_text for a in articles], [a.id for a in articles]
    device = resolve_device(device)
    if paper is not None and model in BUILTIN_MODELS:
        raise UserError("--paper-rerank re-ranks with a trained model: give --model DIR")
    if model == "hybrid":
        parts = [_builtin(name, texts, ids, encoder, device) for name in ("bm25", "dense")]
        return HybridRetriever(parts + ([_trained(rerank, articles, device)] if rerank else []), fusion=fusion)
    if rerank or fusion != "wsum":
        raise UserError("--rerank and --fusion apply to --model hybrid")
    if model in BUILTIN_MODELS:
        return _builtin(model, texts, ids, encoder, device)
    trained = _trained(Path(model), articles, device)
    return trained if paper is None else PaperRerank(_builtin("bm25", texts, ids, None, device), trained, *paper)


def _builtin(model: str, texts: list[str], ids: list[str], encoder: str | None, device: str) -> Retriever:
    return BM25Retriever.build(texts, ids) if model == "bm25" else DenseRetriever.build(texts, ids, encoder, device)


def _trained(model_dir: Path, articles: Sequence[Article], device: str) -> Retriever:
    if not Path(model_dir).is_dir():
        raise UserError(f"unknown model {str(model_dir)!r}: use {', '.join(BUILTIN_MODELS)} or a trained model directory")
    from retrieval.models import load_retriever

    return load_retriever(Path(model_dir), list(articles), device)


def tune_on(retriever: Retriever, queries: Sequence[Query]) -> float:
    """Tune on validation queries: a hybrid's fusion weights (for SetF2; the retriever keeps them),
    then the selection ratio, which is returned."""
    texts, gold = [q.text for q in queries], [q.gold for q in queries]
    ids = retriever.article_ids
    if not isinstance(retriever, HybridRetriever):
        return tune_ratio(checked_scores(retriever, texts), ids, gold)[0]
    matrices = retriever.matrices(texts)
    if retriever.fusion == "wsum":  # rank fusion has no weights to tune
        retriever.weights, _ = tune_weights(matrices, lambda fused: tune_ratio(fused, ids, gold)[1])
    return tune_ratio(retriever.combine(matrices), ids, gold)[0]


def evaluate_coliee(data_dir: Path | None, years: Sequence[str], model: str = "hybrid",
                    valid_years: Sequence[str] = (), encoder: str | None = None, rerank: Path | None = None,
                    device: str = "auto", run: Path | None = None, run_id: str | None = None,
                    save_hybrid: Path | None = None, overwrite: bool = False, fusion: str = "wsum",
                    paper: tuple[int, float] | None = None) -> dict[str, Any]:
    """Score the queries of `years`, tuning on `valid_years` if given (else the 0.9 ratio and equal
    weights); optionally write the run file, and save the (tuned) hybrid's recipe for
    `index build --hybrid`. `paper` = (top_n, alpha): a trained model as its paper runs it (`PaperRerank`:
    BM25's top_n re-ranked, the single best article answered, nothing tuned). Returns the settings and
    the metrics."""
    if run is not None:  # before any work: a writable regular file, and a run id that is one word
        writable_file(run)
        trec_lines([], [], run_id or "check")
    if save_hybrid is not None:
        if model != "hybrid":
            raise UserError("--save-hybrid saves the weights of --model hybrid")
        check_output(save_hybrid, overwrite, "hybrid directory")
    data = load_coliee(data_dir)
    test = data.queries(years)
    valid = data.queries(valid_years) if valid_years else []
    retriever = make_retriever(model, data.articles, encoder, rerank, device, fusion, paper)
    if isinstance(retriever, PaperRerank):
        ratio = PaperRerank.RATIO
    else:
        ratio = tune_on(retriever, valid) if valid else DEFAULT_RATIO
    if save_hybrid is not None:
        retriever.ratio = ratio
        with atomic_dir(save_hybrid, "model", overwrite) as tmp:
            retriever.save_pretrained(tmp)
    scores = checked_scores(retriever, [q.text for q in test])
    selected = select(scores, retriever.article_ids, ratio)
    if run is not None:
        lines = run_lines(test, scores, retriever.article_ids, selected, run_id or retriever.name)
        atomic_write_text(run, "\n".join(lines) + "\n")
    return {
        "model": retriever.name, "years": list(years), "valid_years": list(valid_years), "queries": len(test),
        "ratio": ratio, **(retriever.settings() if isinstance(retriever, HybridRetriever) else {}),
        "metrics": coliee_metrics(scores, retriever.article_ids, [q.gold for q in test], selected),
        **({"run": str(run)} if run is not None else {}),
        **({"hybrid": str(save_hybrid)} if save_hybrid is not None else {}),
    }
