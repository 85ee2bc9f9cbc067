"""One training loop for every neural statute retriever (Paraformer, Attentive CNN).

A model maps query features (B, ...) and candidate article features (B, C, ...) to (B, C) relevance
logits; article features with a leading 1 score every query against the same C articles. Training
puts each gold article against hard negatives (mined from BM25 / dense rankings) and random ones
with a softmax cross-entropy, and keeps the epoch with the best validation R@k (recall: `valid_R@k` in the
history, `best_valid_R@k` in the summary). A non-finite loss or validation score stops training with a
UserError (the caller's output directory is then never published).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from indexes.checks import MAX_BATCH_SIZE, MAX_SEED, integer, number
from indexes.errors import UserError
from indexes.metrics import recall_at_k, require_finite
from indexes.distributed import join, rank_device
from indexes.runtime import progress, resolve_device
from retrieval.base import top_k
from retrieval.checks import MAX_EPOCHS, MAX_NEGATIVES, MAX_RANK


@dataclass
class Features:
    """Model inputs for a list of texts: tensors whose first dimension indexes the texts."""

    tensors: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.tensors[0])

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows at `index` (any shape): (B, C) indices give (B, C, ...) tensors."""
        return tuple(t[index] for t in self.tensors)

    def to(self, device: str | torch.device) -> Features:
        return Features(tuple(t.to(device) for t in self.tensors))


@dataclass
class Split:
    """Queries as model features, with the row indices of each query's gold articles."""

    queries: Features
    gold: list[list[int]]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every neural retriever."""

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 32
    negatives: int = 15
    pool_size: int = 50
    hard_fraction: float = 0.5
    patience: int = 4
    recall_k: int = 5
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        """Refuse settings that would hang (10**20 epochs), diverge at once (lr NaN) or crash later."""
        integer("epochs", self.epochs, 1, MAX_EPOCHS)
        integer("patience", self.patience, 1, MAX_EPOCHS)
        integer("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        integer("negatives", self.negatives, 1, MAX_NEGATIVES)
        integer("pool_size", self.pool_size, 0, MAX_RANK)
        integer("recall_k", self.recall_k, 1, MAX_RANK)
        integer("seed", self.seed, 0, MAX_SEED)
        number("lr", self.lr, 0, low_open=True)
        number("weight_decay", self.weight_decay, 0)
        number("hard_fraction", self.hard_fraction, 0, 1)


@dataclass
class TrainResult:
    """What training did: per-epoch loss and validation recall, the best epoch, and seconds spent."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_recall: float = 0.0
    seconds: float = 0.0


def gold_matrix(gold: Sequence[Sequence[int]], n_articles: int) -> torch.Tensor:
    """(Q, A) bool: whether article a is gold for query q."""
    matrix = torch.zeros(len(gold), n_articles, dtype=torch.bool)
    rows = [q for q, g in enumerate(gold) for _ in g]
    matrix[rows, [a for g in gold for a in g]] = True
    return matrix


def hard_negative_pool(rankings: Sequence[np.ndarray], gold: Sequence[Sequence[int]], size: int) -> np.ndarray:
    """(Q, size) article indices: the best-ranked non-gold articles, interleaving the given
    (Q, A) score matrices rank by rank (BM25's first, dense's first, BM25's second, ...)."""
    n_queries, n_articles = rankings[0].shape
    size = min(size, n_articles - max((len(g) for g in gold), default=0))
    order = np.stack([np.argsort(-s, axis=1, kind="stable") for s in rankings], axis=2).reshape(n_queries, -1)
    is_gold = gold_matrix(gold, n_articles).numpy()
    pool = np.empty((n_queries, size), dtype=np.int64)
    for q in range(n_queries):  # once per query before training, not in the training loop
        ranked = order[q][~is_gold[q, order[q]]]
        pool[q] = list(dict.fromkeys(ranked.tolist()))[:size]
    return pool


def score_matrix(model: nn.Module, queries: Features, articles: Features, batch_size: int = 16) -> np.ndarray:
    """(n_queries, n_articles) model scores, every query against every article, in query batches."""
    device = next(model.parameters()).device
    whole = tuple(t[None].to(device) for t in articles.tensors)
    model.eval()
    out = []
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(queries), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(queries)))
            out.append(model(tuple(t.to(device) for t in queries.take(rows)), whole).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(articles)), dtype=np.float32)


def recall_at(scores: np.ndarray, gold: Sequence[Sequence[int]], k: int) -> float:
    """Mean R@k (the share of each query's gold articles in its top k) of the rankings given by `scores` (Q, A)."""
    top = top_k(scores, k)
    hits = np.take_along_axis(gold_matrix(gold, scores.shape[1]).numpy(), top, axis=1)
    return float(recall_at_k(hits, np.array([len(g) for g in gold]), top.shape[1]).mean())


def fit(model: nn.Module, articles: Features, train: Split, valid: Split, pool: np.ndarray,
        config: TrainConfig) -> TrainResult:
    """Train `model` in place and leave it at its best validation epoch (early stopping).

    Under torchrun every rank draws the same batches and negatives and takes its share of each batch's
    queries (`indexes.distributed`); the averaged gradient is the single-process one."""
    ranks = join()
    device = rank_device(resolve_device(config.device), ranks)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    net = ranks.wrap(model)
    articles_on = articles.to(device)
    queries_on = train.queries.to(device)
    pairs = torch.tensor([(q, a) for q, g in enumerate(train.gold) for a in g], dtype=torch.long)
    is_gold = gold_matrix(train.gold, len(articles))
    pool_t = torch.as_tensor(pool, dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result, best_state, stale, started = TrainResult(best_recall=-1.0), None, 0, time.perf_counter()
    epochs = progress(range(1, config.epochs + 1), desc="epochs", disable=not ranks.writer)
    for epoch in epochs:
        model.train()
        losses = []
        for batch in progress(torch.randperm(len(pairs), generator=generator).split(config.batch_size),
                              desc=f"epoch {epoch}", disable=not ranks.writer):
            query, positive = pairs[batch].T
            candidates = torch.cat([positive[:, None], _negatives(query, pool_t, len(articles), config, generator)], 1)
            mine = ranks.share(torch.arange(len(batch)))
            query, candidates = query[mine], candidates[mine]
            with _autocast(device):
                logits = net(tuple(t[query.to(device)] for t in queries_on.tensors),
                             articles_on.take(candidates.to(device))).float()
            other_gold = is_gold[query[:, None], candidates]
            other_gold[:, 0] = False  # the positive stays; other gold articles are not negatives
            loss = F.cross_entropy(logits.masked_fill(other_gold.to(device), float("-inf")),
                                   torch.zeros(len(query), dtype=torch.long, device=device))
            loss = loss * ranks.weight(len(mine), len(batch))
            losses.append(ranks.mean(loss.detach().clone()).item())  # the batch's mean, alike on every rank
            stop_if_diverged(losses[-1], "the loss", epoch, config.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scores = score_matrix(model, valid.queries, articles)
        stop_if_diverged(scores, "validation scores", epoch, config.lr)
        recall = recall_at(scores, valid.gold, config.recall_k)
        result.history.append({"epoch": epoch, "loss": float(np.mean(losses)), f"valid_R@{config.recall_k}": recall})
        epochs.set_postfix(loss=f"{result.history[-1]['loss']:.3f}", recall=f"{recall:.3f}")
        if recall > result.best_recall:
            result.best_epoch, result.best_recall, stale = epoch, recall, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    return result


def stop_if_diverged(values: Any, what: str, epoch: int, lr: float) -> None:
    """Stop training when `values` (a loss, validation scores) hold NaN or infinity: it diverged, and
    going on would only save a broken model."""
    try:
        require_finite(values, what)
    except UserError:
        raise UserError(f"training diverged in epoch {epoch} ({what} not finite); nothing was saved: "
                        f"try a learning rate below {lr:g}") from None


def _negatives(query: torch.Tensor, pool: torch.Tensor, n_articles: int, config: TrainConfig,
               generator: torch.Generator) -> torch.Tensor:
    """(B, negatives) article indices: a `hard_fraction` share drawn from each query's hard pool,
    the rest uniformly from all articles (gold ones are masked out of the loss later)."""
    n_hard = round(config.negatives * config.hard_fraction) if pool.shape[1] else 0
    hard = pool[query[:, None], torch.randint(pool.shape[1] or 1, (len(query), n_hard), generator=generator)]
    rand = torch.randint(n_articles, (len(query), config.negatives - n_hard), generator=generator)
    return torch.cat([hard, rand], 1)


def _autocast(device: str | torch.device):
    """bf16 autocast on CUDA, a no-op elsewhere."""
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=device_type == "cuda")
