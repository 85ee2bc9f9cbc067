"""A cross-encoder re-ranker for the first stage's best candidates: MiniLM reads a question and an article
together (attention across both texts), where the bi-encoder only compares two vectors made apart.

It is trained with sentence-transformers' own `CrossEncoderTrainer` and `BinaryCrossEntropyLoss` on
(question, article, 1 | 0) pairs: every gold article, and the first stage's best-ranked articles that are
not gold as hard negatives. Its sigmoid is a probability on one scale for every question, so the answer
set is cut at a probability threshold tuned for F2 (`selection.select_by_probability`), and the number of
candidates it reads is the smallest that reaches a recall target on the tuning questions.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from indexes.checks import integer, number
from indexes.errors import UserError
from indexes.files import atomic_dir, check_output
from indexes.metrics import hit_matrix, recall_at_k
from indexes.runtime import progress_enabled, resolve_device, seed_everything
from indexes.text_encoder import DEFAULT_TEXT_ENCODER, open_model
from retrieval.base import ranked_ids, top_k
from retrieval.checks import MAX_EPOCHS, MAX_NEGATIVES, MAX_RANK
from retrieval.coliee import Article, Query
from retrieval.fusion import candidates_on_top
from retrieval.selection import tune_threshold

TRAINING_FILE = "training.json"
DEFAULT_NEGATIVES = 7
MAX_LENGTH = 256  # tokens of question + article (the median pair is about 150; MiniLM's bi-encoder reads 256)
RECALL_TARGET = 0.95
MAX_CANDIDATES = 50


def labelled_pairs(articles: Sequence[Article], queries: Sequence[Query], first_stage: Sequence[np.ndarray],
                   negatives: int = DEFAULT_NEGATIVES) -> list[tuple[str, str, int]]:
    """(question, article search text, 1 | 0): every gold article of every question, and its `negatives`
    best-ranked non-gold articles, taken in turn from each first-stage score matrix (rows: `queries`)."""
    integer("negatives", negatives, 0, MAX_NEGATIVES)
    texts, column = [a.search_text for a in articles], {a.id: j for j, a in enumerate(articles)}
    depth = min(len(articles), negatives + max((len(q.gold) for q in queries), default=0))
    orders = [top_k(m, depth) for m in first_stage] if depth else []
    pairs = []
    for i, query in enumerate(queries):
        gold = sorted({column[g] for g in query.gold if g in column})
        if not gold:
            continue
        pairs += [(query.text, texts[j], 1) for j in gold]
        taken: list[int] = []
        for j in itertools.chain.from_iterable(zip(*(order[i] for order in orders))):
            if len(taken) == negatives:
                break
            if j not in gold and j not in taken:
                taken.append(int(j))
        pairs += [(query.text, texts[j], 0) for j in taken]
    return pairs


def open_cross_encoder(name: str | Path | None = None, device: str = "cpu", max_length: int | None = None,
                       num_labels: int | None = None):
    """A sentence-transformers CrossEncoder from a saved one, or (`num_labels=1`) a new one on a sentence
    encoder's weights (default all-MiniLM-L6-v2) with a fresh head. A folder that cannot be loaded is one
    UserError naming it."""
    from sentence_transformers.cross_encoder import CrossEncoder

    return open_model(CrossEncoder, None if name is None else str(name), "cross-encoder", device,
                      max_length=max_length, num_labels=num_labels)


def train_cross_encoder(encoder: str | Path | None, pairs: Sequence[tuple[str, str, int]], out: str | Path, *,
                        epochs: int = 1, batch_size: int = 16, lr: float = 2e-5, max_length: int = MAX_LENGTH,
                        device: str = "auto", seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune a cross-encoder started from `encoder`'s weights (default all-MiniLM-L6-v2, new one-logit
    head) on labelled (question, article, 1 | 0) `pairs` with binary cross-entropy; save it to `out`
    atomically (safetensors), with training.json (settings, the loss per epoch). Returns that record."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers.trainer_callback import PrinterCallback

    integer("epochs", epochs, 1, MAX_EPOCHS)
    integer("batch_size", batch_size, 1, 4096)
    integer("max_length", max_length, 8, 8192)
    number("lr", lr, 0, low_open=True)
    labels = {label for *_, label in pairs}
    if not labels <= {0, 1} or 1 not in labels:
        raise UserError("cross-encoder training needs (question, article, 1 | 0) pairs with at least one positive")
    check_output(out, overwrite, "cross-encoder directory")
    seed_everything(seed)
    device = resolve_device(device)
    model = open_cross_encoder(encoder, device, max_length, num_labels=1)
    dataset = Dataset.from_dict({"question": [q for q, _, _ in pairs], "article": [a for _, a, _ in pairs],
                                 "label": [float(y) for *_, y in pairs]})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        arguments = CrossEncoderTrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size, learning_rate=lr,
            warmup_steps=0.1, seed=seed, data_seed=seed, logging_strategy="epoch", save_strategy="no",
            report_to="none", use_cpu=not device.startswith("cuda"), disable_tqdm=not progress_enabled(),
            dataloader_drop_last=False)
        trainer = CrossEncoderTrainer(model=model, args=arguments, train_dataset=dataset,
                                      loss=BinaryCrossEntropyLoss(model))
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when bars are off; we keep the history
        trainer.train()
    history = [{"epoch": round(log["epoch"]), "loss": log["loss"]} for log in trainer.state.log_history if "loss" in log]
    record = {"encoder": str(encoder or DEFAULT_TEXT_ENCODER), "pairs": len(pairs),
              "positives": sum(y for *_, y in pairs), "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "max_length": max_length, "seed": seed, "train_seconds": round(time.perf_counter() - started, 1),
              "history": history}
    model.eval()
    with atomic_dir(out, "model", overwrite) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / TRAINING_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return {"out": str(out), **record}


class MemoCrossEncoder:
    """A cross-encoder that scores each (question, article) pair once: under the forward protocol one
    re-ranker may see a question again (a tuning year of one test year is a tuning year of the next)."""

    def __init__(self, model: Any):
        self.model = model
        self._scores: dict[tuple[str, str], float] = {}

    def predict(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
        """`model.predict` of the pairs not seen before (same keyword arguments every call), then all from memory."""
        new = list(dict.fromkeys(p for p in map(tuple, pairs) if p not in self._scores))
        if new:
            self._scores.update(zip(new, np.asarray(self.model.predict(new, **kwargs), dtype=np.float64).tolist()))
        return np.asarray([self._scores[tuple(p)] for p in pairs], dtype=np.float64)


@dataclass(frozen=True)
class Reranked:
    """Each query's candidates as the cross-encoder orders them, best first."""

    columns: np.ndarray  # (n_queries, N) article columns
    probabilities: np.ndarray  # (n_queries, N) sigmoid of the cross-encoder's logits, descending
    scores: np.ndarray  # (n_queries, n_articles): the candidates' logits, every other article below them


def rerank(model: Any, questions: Sequence[str], article_texts: Sequence[str], first_stage: np.ndarray,
           candidates: int, batch_size: int = 32) -> Reranked:
    """Re-score the `candidates` best articles of each question under `first_stage` with the cross-encoder
    `model`. The full score matrix keeps ranking metrics meaningful: candidates on top in the
    cross-encoder's order, the rest below in the first stage's order."""
    import torch

    integer("candidates", candidates, 1, MAX_RANK)
    columns = top_k(first_stage, candidates)
    pairs = [(q, article_texts[j]) for q, row in zip(questions, columns) for j in row]
    logits = np.asarray(model.predict(pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(),
                                      show_progress_bar=progress_enabled(len(pairs)), convert_to_numpy=True),
                        dtype=np.float64).reshape(columns.shape)
    order = np.argsort(-logits, axis=1, kind="stable")
    columns, logits = np.take_along_axis(columns, order, axis=1), np.take_along_axis(logits, order, axis=1)
    return Reranked(columns, expit(logits), candidates_on_top(first_stage, columns, logits))


def recall_at(scores: np.ndarray, article_ids: Sequence[str], gold: Sequence[Sequence[str]], k: int) -> float:
    """Macro recall of the gold articles among the k best of `scores` (what a re-ranker of k can find)."""
    hits, n_relevant = hit_matrix(ranked_ids(scores, article_ids, k), gold)
    return float(recall_at_k(hits, n_relevant, k).mean())


def choose_candidates(scores: np.ndarray, article_ids: Sequence[str], gold: Sequence[Sequence[str]],
                      target: float = RECALL_TARGET, cap: int = MAX_CANDIDATES) -> tuple[int, float]:
    """The smallest N whose Recall@N on these (tuning) queries reaches `target`, else `cap`: the fewest
    candidates to re-score that lose little. Returns (N, Recall@N)."""
    number("recall target", target, 0, 1)
    cap = min(integer("candidate cap", cap, 1, MAX_RANK), len(article_ids))
    hits, n_relevant = hit_matrix(ranked_ids(scores, article_ids, cap), gold)
    recall = [float(recall_at_k(hits, n_relevant, k).mean()) for k in range(1, cap + 1)]
    n = next((k for k, r in enumerate(recall, 1) if r >= target), cap)
    return n, recall[n - 1]


def tune_reranker(model: Any, first_stage: np.ndarray, queries: Sequence[Query], articles: Sequence[Article],
                  target: float = RECALL_TARGET, cap: int = MAX_CANDIDATES) -> dict[str, Any]:
    """On tuning `queries` (rows of `first_stage`): the candidate count N by recall, then the probability
    threshold with the best macro F2 among those N."""
    ids, gold = [a.id for a in articles], [q.gold for q in queries]
    candidates, recall = choose_candidates(first_stage, ids, gold, target, cap)
    reranked = rerank(model, [q.text for q in queries], [a.search_text for a in articles], first_stage, candidates)
    threshold, f2 = tune_threshold(reranked.probabilities, np.asarray(ids, dtype=object)[reranked.columns], gold)
    return {"candidates": candidates, "tune_recall": recall, "threshold": threshold, "tune_SetF2": f2}
