"""The forward protocol, the way COLIEE is judged: each test year is answered by a system whose every
choice (fusion weights, selection ratio) was made on earlier exam years only, never on the year scored.

Tuning pools the `tune_years` years before the test year (several years, so that one odd year does not
pick the settings), and every year is compared with BM25 tuned the same way: a paired bootstrap on
per-question F2 (`SetF2`) says whether a gain is larger than the noise of a 100-question exam.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes.errors import UserError
from indexes.metrics import bootstrap_interval, set_precision_recall_fbeta
from retrieval.base import Retriever, checked_scores
from retrieval.coliee import Coliee, Query, load_coliee
from retrieval.evaluate import coliee_metrics, make_retriever, tune_on
from retrieval.finetune import finetune_encoder, question_article_pairs
from retrieval.fusion import HybridRetriever
from retrieval.selection import select

DEFAULT_TUNE_YEARS = 3


def tuning_years(years: Sequence[str], test_year: str, count: int = DEFAULT_TUNE_YEARS) -> list[str]:
    """The `count` exam years just before `test_year` in `years` (in exam order)."""
    earlier = list(years)[: list(years).index(test_year)]
    if not earlier:
        raise UserError(f"no exam year before {test_year} to tune on; the forward protocol needs one")
    return earlier[-count:]


def score_year(retriever: Retriever, tune: Sequence[Query], test: Sequence[Query]) -> dict[str, Any]:
    """Tune `retriever` on `tune` (weights and ratio), then score `test`: metrics and per-question F2."""
    if {q.year for q in tune} & {q.year for q in test}:
        raise ValueError("a test year is among the tuning years")
    ratio = tune_on(retriever, tune)
    scores = checked_scores(retriever, [q.text for q in test])
    selected = select(scores, retriever.article_ids, ratio)
    gold = [q.gold for q in test]
    return {"ratio": ratio, **(retriever.settings() if isinstance(retriever, HybridRetriever) else {}),
            "metrics": coliee_metrics(scores, retriever.article_ids, gold, selected),
            "f2": set_precision_recall_fbeta(selected, gold, beta=2.0)[2].tolist()}


def forward_evaluate(data_dir: Path | None, years: Sequence[str], model: str = "hybrid",
                     tune_years: int = DEFAULT_TUNE_YEARS, encoder: str | None = None, device: str = "auto",
                     finetune_epochs: int = 0, seed: int = 0, data: Coliee | None = None,
                     fusion: str = "wsum") -> dict[str, Any]:
    """Score each of `years` under the forward protocol, with `model` (bm25 | dense | hybrid) and BM25
    beside it; per year and pooled: macro F2 (`SetF2`) with a 95% bootstrap interval, and the paired interval of
    the difference to BM25. With `finetune_epochs`, each test year gets its own encoder, fine-tuned on
    the years before its tuning years."""
    data = data or load_coliee(data_dir)
    missing = [y for y in years if y not in data.years]
    if missing:
        raise UserError(f"no query file for {', '.join(missing)}; available years: {', '.join(data.years)}")
    if model not in ("bm25", "dense", "hybrid") or (finetune_epochs and model == "bm25"):
        raise UserError(f"--protocol forward scores bm25, dense or hybrid (fine-tuning: dense or hybrid), got {model!r}")
    baseline = make_retriever("bm25", data.articles)
    fixed = None if finetune_epochs else make_retriever(model, data.articles, encoder, device=device, fusion=fusion)
    rows = []
    for year in years:
        tune = tuning_years(data.years, year, tune_years)
        with tempfile.TemporaryDirectory() as scratch:
            system, trained_on = fixed, []
            if finetune_epochs:
                trained_on = data.years[: data.years.index(tune[0])]
                system = make_retriever(model, data.articles, _finetuned(data, trained_on, Path(scratch), encoder,
                                                                         finetune_epochs, device, seed),
                                        device=device, fusion=fusion)
            tune_queries, test = data.queries(tune), data.queries([year])
            ours, bm25 = score_year(system, tune_queries, test), score_year(baseline, tune_queries, test)
        rows.append({"year": year, "tuned_on": tune, **({"trained_on": trained_on} if finetune_epochs else {}),
                     "queries": len(test), **ours, "bm25_SetF2": bm25["metrics"]["SetF2"], "bm25_f2": bm25["f2"]})
    name = system.name + (" (rrf)" if fusion == "rrf" else "") + (
        f" (encoder fine-tuned {finetune_epochs} epochs per year)" if finetune_epochs else "")
    return {"model": name, "protocol": "forward", "tune_years": tune_years,
            "years": [_summary(row) for row in rows], "pooled": _pooled(rows)}


def _finetuned(data: Coliee, years: Sequence[str], scratch: Path, encoder: str | None, epochs: int, device: str,
               seed: int) -> str:
    """An encoder fine-tuned on the questions of `years` (in `scratch`), for one test year."""
    if not years:
        raise UserError("no exam year before the tuning years to fine-tune the encoder on; test a later year "
                        "or tune on fewer years (--tune-years)")
    out = scratch / "encoder"
    finetune_encoder(encoder, question_article_pairs(data.articles, data.queries(years)), out,
                     corpus=[a.search_text for a in data.articles], epochs=epochs, device=device, seed=seed)
    return str(out)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """A year's row without the per-question lists, plus its intervals."""
    f2, bm25 = row["f2"], row["bm25_f2"]
    return {**{k: v for k, v in row.items() if k not in ("f2", "bm25_f2")},
            "SetF2_interval": bootstrap_interval(f2), "gain_over_bm25": float(np.mean(f2) - np.mean(bm25)),
            "gain_interval": bootstrap_interval(f2, bm25)}


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every test question of every year together; also the mean of the years' macro F2."""
    f2 = [v for row in rows for v in row["f2"]]
    bm25 = [v for row in rows for v in row["bm25_f2"]]
    return {"queries": len(f2), "mean_year_SetF2": float(np.mean([row["metrics"]["SetF2"] for row in rows])),
            "SetF2": float(np.mean(f2)), "SetF2_interval": bootstrap_interval(f2), "bm25_SetF2": float(np.mean(bm25)),
            "gain_over_bm25": float(np.mean(f2) - np.mean(bm25)), "gain_interval": bootstrap_interval(f2, bm25)}
