"""The forward protocol, the way COLIEE is judged: each test year is answered by a system whose every
choice (fusion weights, selection ratio) was made on earlier exam years only, never on the year scored.

Tuning pools the `tune_years` years before the test year (several years, so that one odd year does not
pick the settings), and every year is compared with BM25 tuned the same way: a paired bootstrap on
per-question F2 (`SetF2`) says whether a gain is larger than the noise of a 100-question exam.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes.errors import UserError
from indexes.files import atomic_dir, check_output
from indexes.metrics import bootstrap_interval, set_precision_recall_fbeta
from indexes.text_encoder import DEFAULT_TEXT_ENCODER
from retrieval.base import Retriever, checked_scores
from retrieval.coliee import Article, Coliee, Query, load_coliee
from retrieval.evaluate import coliee_metrics, make_retriever, tune_on
from retrieval.finetune import finetune_encoder, question_article_pairs
from retrieval.fusion import HybridRetriever
from retrieval.rerank import (DEFAULT_NEGATIVES, MAX_CANDIDATES, MemoCrossEncoder, labelled_pairs, open_cross_encoder,
                              recall_at, rerank, train_cross_encoder, tune_reranker)
from retrieval.selection import select, select_by_probability

DEFAULT_TUNE_YEARS = 3
PIPELINE_FILE, PIPELINE_ENCODER = "pipeline.json", "encoder"


def tuning_years(years: Sequence[str], test_year: str | None, count: int = DEFAULT_TUNE_YEARS) -> list[str]:
    """The `count` exam years just before `test_year` in `years` (in exam order); with `test_year` None,
    the last `count` years: the next, unseen exam's."""
    earlier = list(years)[: list(years).index(test_year)] if test_year is not None else list(years)
    if not earlier:
        raise UserError(f"no exam year before {test_year} to tune on; the forward protocol needs one")
    return earlier[-count:]


def plan_years(years: Sequence[str], test_year: str | None, count: int = DEFAULT_TUNE_YEARS) -> tuple[list[str], list[str]]:
    """(training years, tuning years) of the system that answers `test_year` (None: the next exam):
    tuning on the `count` years before it, training on every year before those."""
    tune = tuning_years(years, test_year, count)
    trained_on = list(years)[: list(years).index(tune[0])]
    if {test_year, *tune} & set(trained_on):
        raise ValueError("a tuning or test year is among the training years")
    return trained_on, tune


def score_year(retriever: Retriever, tune: Sequence[Query], test: Sequence[Query]) -> dict[str, Any]:
    """Tune `retriever` on `tune` (weights and ratio), then score `test`: metrics and per-question F2."""
    if {q.year for q in tune} & {q.year for q in test}:
        raise ValueError("a test year is among the tuning years")
    ratio = tune_on(retriever, tune)
    scores = checked_scores(retriever, [q.text for q in test])
    selected = select(scores, retriever.article_ids, ratio)
    return {"ratio": ratio, **(retriever.settings() if isinstance(retriever, HybridRetriever) else {}),
            **_scored(scores, retriever.article_ids, [q.gold for q in test], selected)}


def _scored(scores: np.ndarray, article_ids: Sequence[str], gold: Sequence[Sequence[str]],
            selected: Sequence[Sequence[str]]) -> dict[str, Any]:
    """A test year's metrics, and its per-question F2 for the bootstrap."""
    return {"metrics": coliee_metrics(scores, article_ids, gold, selected),
            "f2": set_precision_recall_fbeta(selected, gold, beta=2.0)[2].tolist()}


def rerank_year(system: Retriever, cross_encoder: Any, tune: Sequence[Query], test: Sequence[Query],
                articles: Sequence[Article], cap: int = MAX_CANDIDATES) -> dict[str, Any]:
    """Tune the re-ranker's candidate count and probability threshold on `tune`, over the first stage
    `system` (already tuned on the same questions by `score_year`); score `test`: metrics, per-question F2,
    and the settings."""
    if {q.year for q in tune} & {q.year for q in test}:
        raise ValueError("a test year is among the tuning years")
    settings = tune_reranker(cross_encoder, checked_scores(system, [q.text for q in tune]), tune, articles, cap=cap)
    first_stage, gold = checked_scores(system, [q.text for q in test]), [q.gold for q in test]
    reranked = rerank(cross_encoder, [q.text for q in test], [a.search_text for a in articles], first_stage,
                      settings["candidates"])
    ids = system.article_ids
    selected = select_by_probability(reranked.probabilities, np.asarray(ids, dtype=object)[reranked.columns],
                                     settings["threshold"])
    return {**settings, "test_recall": recall_at(first_stage, ids, gold, settings["candidates"]),
            **_scored(reranked.scores, ids, gold, selected)}


def forward_evaluate(data_dir: Path | None, years: Sequence[str], model: str = "hybrid",
                     tune_years: int = DEFAULT_TUNE_YEARS, encoder: str | None = None, device: str = "auto",
                     finetune_epochs: int = 0, seed: int = 0, data: Coliee | None = None,
                     fusion: str = "wsum", rerank_epochs: int = 0, rerank_negatives: int = DEFAULT_NEGATIVES,
                     rerank_once: bool = False, rerank_candidates: int = MAX_CANDIDATES,
                     save_pipeline: Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Score each of `years` under the forward protocol, with `model` (bm25 | dense | hybrid) and BM25
    beside it; per year and pooled: macro F2 (`SetF2`) with a 95% bootstrap interval, and the paired interval of
    the difference to BM25. With `finetune_epochs`, each test year gets its own encoder, fine-tuned on
    the years before its tuning years. With `rerank_epochs`, a cross-encoder trained on those same years
    re-ranks the first stage's best candidates (at most `rerank_candidates`) and picks the set by
    probability; `rerank_once` trains one for the first test year and keeps it for the later ones (their
    allowed training years include its own), a third of the CPU time. With `save_pipeline`, the same
    recipe is then fitted for the next, unseen exam and saved there (`fit_pipeline`)."""
    if save_pipeline is not None:
        if model != "hybrid" or rerank_epochs:
            raise UserError("--save-pipeline saves a --model hybrid (the statute index serves a hybrid, "
                            "without a cross-encoder)")
        check_output(save_pipeline, overwrite, "pipeline directory")
    data = data or load_coliee(data_dir)
    missing = [y for y in years if y not in data.years]
    if missing:
        raise UserError(f"no query file for {', '.join(missing)}; available years: {', '.join(data.years)}")
    if model not in ("bm25", "dense", "hybrid") or (finetune_epochs and model == "bm25"):
        raise UserError(f"--protocol forward scores bm25, dense or hybrid (fine-tuning: dense or hybrid), got {model!r}")
    baseline = make_retriever("bm25", data.articles)
    fixed = None if finetune_epochs else make_retriever(model, data.articles, encoder, device=device, fusion=fusion)
    rows, kept = [], None  # kept: (training years, cross-encoder) under rerank_once
    with tempfile.TemporaryDirectory() as keep_dir:
        for year in years:
            trained_on, tune = plan_years(data.years, year, tune_years)
            with tempfile.TemporaryDirectory() as scratch:
                system = fixed if fixed is not None else make_retriever(model, data.articles, _finetuned(
                    data, trained_on, Path(scratch) / "encoder", encoder, finetune_epochs, device, seed),
                    device=device, fusion=fusion)
                tune_queries, test = data.queries(tune), data.queries([year])
                ours, bm25 = score_year(system, tune_queries, test), score_year(baseline, tune_queries, test)
                row = {"year": year, "tuned_on": tune,
                       **({"trained_on": trained_on} if finetune_epochs or rerank_epochs else {}),
                       "queries": len(test), **ours, "bm25_SetF2": bm25["metrics"]["SetF2"], "bm25_f2": bm25["f2"]}
                if rerank_epochs:
                    if kept is None or not rerank_once:
                        trained = _cross_encoder(data, system, baseline, trained_on,
                                                 Path(keep_dir if rerank_once else scratch) / year, encoder,
                                                 rerank_epochs, rerank_negatives, device, seed)
                        kept = (trained_on, MemoCrossEncoder(open_cross_encoder(trained["out"], device)), trained)
                    reranker_years, cross_encoder, trained = kept
                    if {year, *tune} & set(reranker_years):
                        raise ValueError("a tuning or test year is among the cross-encoder's training years")
                    reranked = rerank_year(system, cross_encoder, tune_queries, test, data.articles, rerank_candidates)
                    row = {**row, "first_stage": {k: ours[k] for k in ("ratio", "weights", "metrics") if k in ours},
                           "first_stage_f2": ours["f2"], "metrics": reranked["metrics"], "f2": reranked["f2"],
                           "rerank": {"trained_on": reranker_years, "pairs": trained["pairs"],
                                      "train_seconds": trained["train_seconds"],
                                      **{k: v for k, v in reranked.items() if k not in ("metrics", "f2")}}}
            rows.append(row)
    name = system.name + (" (rrf)" if fusion == "rrf" else "") + (
        f" (encoder fine-tuned {finetune_epochs} epochs per year)" if finetune_epochs else "") + (
        f" + cross-encoder re-rank ({rerank_epochs} epochs, {rerank_negatives} negatives, "
        f"{'trained once' if rerank_once else 'trained per year'})" if rerank_epochs else "")
    result = {"model": name, "protocol": "forward", "tune_years": tune_years,
              "years": [_summary(row) for row in rows], "pooled": _pooled(rows)}
    if save_pipeline is not None:
        result["pipeline"] = fit_pipeline(data, save_pipeline, tune_years, encoder, device, finetune_epochs, seed,
                                          fusion, overwrite, measured=result)
    return result


def fit_pipeline(data: Coliee, out: Path, tune_years: int = DEFAULT_TUNE_YEARS, encoder: str | None = None,
                 device: str = "auto", finetune_epochs: int = 0, seed: int = 0, fusion: str = "wsum",
                 overwrite: bool = False, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hybrid the forward protocol fields for the next, unseen exam, by the same steps it scores each
    test year with: the encoder fine-tuned on every year but the last `tune_years` (with
    `finetune_epochs`), the weights and ratio tuned on those last years. Saved in `out` for
    `index build --corpus coliee --hybrid out`: the recipe (config.json), the encoder (encoder/) and
    pipeline.json (how it was made, the years each stage saw, and the `measured` forward scores)."""
    trained_on, tune = plan_years(data.years, None, tune_years)
    started = time.perf_counter()
    with atomic_dir(out, "model", overwrite) as tmp:
        dense = _finetuned(data, trained_on, tmp / PIPELINE_ENCODER, encoder, finetune_epochs, device, seed) \
            if finetune_epochs else encoder
        system = make_retriever("hybrid", data.articles, dense, device=device, fusion=fusion)
        system.ratio = tune_on(system, data.queries(tune))
        system.save_pretrained(tmp)
        record = {"model": "hybrid", "fusion": fusion, "weights": system.named_weights(), "ratio": system.ratio,
                  "tuned_on": tune, "trained_on": trained_on if finetune_epochs else [],
                  "base_encoder": encoder or DEFAULT_TEXT_ENCODER, "finetune_epochs": finetune_epochs, "seed": seed,
                  **({"encoder_dir": PIPELINE_ENCODER} if finetune_epochs else {}),
                  "train_seconds": round(time.perf_counter() - started, 1),
                  **({"forward": _measured(measured)} if measured else {})}
        (tmp / PIPELINE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {"out": str(out), **record}


def _measured(result: dict[str, Any]) -> dict[str, Any]:
    """The forward protocol's scores, as a pipeline records them: per year and pooled SetF2 with intervals."""
    keys = ("SetF2_interval", "bm25_SetF2", "gain_over_bm25", "gain_interval")
    return {"years": {r["year"]: {"SetF2": r["metrics"]["SetF2"], **{k: r[k] for k in keys}} for r in result["years"]},
            "pooled": {k: result["pooled"][k] for k in ("queries", "mean_year_SetF2", "SetF2", *keys)}}


def _cross_encoder(data: Coliee, system: Retriever, baseline: Retriever, years: Sequence[str], out: Path,
                   encoder: str | None, epochs: int, negatives: int, device: str, seed: int) -> dict[str, Any]:
    """A cross-encoder trained on the questions of `years` (saved in `out`), its hard negatives the best
    non-gold articles of BM25 and of the first stage's dense part (the system itself when it has none)."""
    if not years:
        raise UserError("no exam year before the tuning years to train the cross-encoder on; test a later year "
                        "or tune on fewer years (--tune-years)")
    queries = data.queries(years)
    texts = [q.text for q in queries]
    sources = [r for r in (system.retrievers if isinstance(system, HybridRetriever) else [system])
               if r.name != "bm25"]
    matrices = [checked_scores(r, texts) for r in [baseline, *sources]]
    return train_cross_encoder(encoder, labelled_pairs(data.articles, queries, matrices, negatives), out,
                               epochs=epochs, device=device, seed=seed)


def _finetuned(data: Coliee, years: Sequence[str], out: Path, encoder: str | None, epochs: int, device: str,
               seed: int) -> str:
    """An encoder fine-tuned on the questions of `years`, saved in `out`, for one test year."""
    if not years:
        raise UserError("no exam year before the tuning years to fine-tune the encoder on; test a later year "
                        "or tune on fewer years (--tune-years)")
    finetune_encoder(encoder, question_article_pairs(data.articles, data.queries(years)), out,
                     corpus=[a.search_text for a in data.articles], epochs=epochs, device=device, seed=seed)
    return str(out)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """A year's row without the per-question lists, plus its intervals."""
    f2, bm25 = row["f2"], row["bm25_f2"]
    return {**{k: v for k, v in row.items() if k not in ("f2", "bm25_f2", "first_stage_f2")},
            "SetF2_interval": bootstrap_interval(f2), "gain_over_bm25": float(np.mean(f2) - np.mean(bm25)),
            "gain_interval": bootstrap_interval(f2, bm25), **_over_first_stage(f2, row.get("first_stage_f2"))}


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every test question of every year together; also the mean of the years' macro F2."""
    f2 = [v for row in rows for v in row["f2"]]
    bm25 = [v for row in rows for v in row["bm25_f2"]]
    first = [v for row in rows for v in row["first_stage_f2"]] if all("first_stage_f2" in r for r in rows) else None
    return {"queries": len(f2), "mean_year_SetF2": float(np.mean([row["metrics"]["SetF2"] for row in rows])),
            "SetF2": float(np.mean(f2)), "SetF2_interval": bootstrap_interval(f2), "bm25_SetF2": float(np.mean(bm25)),
            "gain_over_bm25": float(np.mean(f2) - np.mean(bm25)), "gain_interval": bootstrap_interval(f2, bm25),
            **({"mean_year_first_stage_SetF2": float(np.mean([r["first_stage"]["metrics"]["SetF2"] for r in rows]))}
               if first else {}), **_over_first_stage(f2, first)}


def _over_first_stage(f2: Sequence[float], first: Sequence[float] | None) -> dict[str, Any]:
    """With a re-ranker: the first stage's F2 and the paired interval of the re-ranker's gain over it."""
    if first is None:
        return {}
    return {"first_stage_SetF2": float(np.mean(first)), "gain_over_first_stage": float(np.mean(f2) - np.mean(first)),
            "gain_over_first_stage_interval": bootstrap_interval(f2, first)}
