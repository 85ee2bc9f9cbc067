"""Ranking evaluation of next-item predictions, batched and vectorised.

- `full`: rank the target among all items; the user's history is excluded unless `keep_seen`
  (the target keeps its own score even when it repeats a history item).
- `sampled100`: the SASRec paper's protocol: rank the target among 100 items drawn uniformly from those
  the user never interacted with. Kept for comparison with published numbers; it overstates quality.
A target's rank is the number of candidates scoring strictly higher; metrics come from `indexes.metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexes import UserError
from indexes.files import atomic_write_text
from indexes.metrics import require_finite, summarize
from recsys.checks import MAX_CUTOFF
from recsys.data import EvalCase, LeaveOneOut, load_sequences, ragged
from recsys.model import SASRec
from recsys.recommender import STATE_FILE, Recommender, read_training_state

PROTOCOLS = ("full", "sampled100")
N_SAMPLED = 100


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Success@K, nDCG@K, RR@K from each query's 0-based target rank (one relevant item per query)."""
    width = min(max(ks), int(ranks.max(initial=0)) + 1)  # no rank reaches past the last item
    hits = ranks[:, None] == np.arange(width)[None, :]
    return summarize(hits, np.ones(len(ranks), dtype=np.int64), ks)


@torch.no_grad()
def target_ranks(model: SASRec, case: EvalCase, protocol: str = "full", keep_seen: bool = False,
                 batch_size: int = 1024, seed: int = 0) -> np.ndarray:
    """The 0-based rank of each query's target under `protocol`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    model.eval()
    device = model.item_weight.device
    rng = np.random.default_rng(seed)
    ranks = []
    for lo in range(0, len(case), batch_size):
        part = slice(lo, lo + batch_size)
        states = model.encode(case.inputs[part].to(device))
        targets = torch.from_numpy(case.targets[part]).to(device)
        if protocol == "full":
            ranks.append(_full_ranks(model, states, targets, case, part, keep_seen))
        else:
            negatives = torch.from_numpy(sample_unseen(case, part, model.n_items, rng)).to(device)
            ranks.append(_sampled_ranks(model, states, targets, negatives))
    return torch.cat(ranks).cpu().numpy()


def _full_ranks(model: SASRec, states: torch.Tensor, targets: torch.Tensor, case: EvalCase, part: slice,
                keep_seen: bool) -> torch.Tensor:
    scores = states @ model.item_weight[1:].T
    require_finite(scores, "item scores")  # before seen items are masked with -inf
    target_scores = scores.gather(1, (targets - 1).unsqueeze(1))
    if not keep_seen:
        rows, items = ragged(case.items, case.starts[part], case.ends[part])
        scores[torch.from_numpy(rows).to(scores.device), torch.from_numpy(items - 1).to(scores.device)] = float("-inf")
    return (scores > target_scores).sum(1)


def _sampled_ranks(model: SASRec, states: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    weight = model.item_weight
    target_scores = (states * weight[targets]).sum(-1, keepdim=True)
    negative_scores = torch.einsum("bh,bnh->bn", states, weight[negatives])
    require_finite(target_scores, "item scores")
    require_finite(negative_scores, "item scores")
    return (negative_scores > target_scores).sum(1)


def sample_unseen(case: EvalCase, part: slice, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """(batch, 100) items drawn uniformly (with replacement) among those each user never interacted with;
    draws that hit a seen item are redrawn, all at once, until none is left."""
    starts, ends = case.starts[part], case.seen_ends[part]
    rows, items = ragged(case.items, starts, ends)
    seen = np.unique(rows * (n_items + 1) + items)
    n = len(starts)
    if (np.bincount(seen // (n_items + 1), minlength=n) >= n_items).any():
        raise ValueError("a user has seen every item; nothing to sample")
    draws = rng.integers(1, n_items + 1, size=(n, N_SAMPLED))
    bad = np.isin(np.arange(n)[:, None] * (n_items + 1) + draws, seen)
    while bad.any():
        draws[bad] = rng.integers(1, n_items + 1, size=int(bad.sum()))
        bad = np.isin(np.arange(n)[:, None] * (n_items + 1) + draws, seen)
    return draws


def evaluate_model(data: str | Path, model_dir: str | Path, fmt: str = "auto", protocol: str = "full",
                   ks: Sequence[int] = (1, 5, 10, 20), keep_seen: bool = False, out: str | Path | None = None,
                   device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Test-set metrics of a trained model directory on a dataset, split as in training (same k-core and
    minimum length, the model's item ids); with `out`, also written there as JSON."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if not ks or not all(type(k) is int and 1 <= k <= MAX_CUTOFF for k in ks):
        raise UserError(f"--k needs one or more cut-offs in [1, {MAX_CUTOFF}], e.g. 1,5,10,20")
    recommender = Recommender.from_pretrained(model_dir, device=device)
    trained = read_training_state(model_dir)["config"] if (Path(model_dir) / STATE_FILE).is_file() else {}
    seqs = load_sequences(data, fmt, k=trained.get("k_core", 0), min_len=trained.get("min_len", 1),
                          item_ids=recommender.item_ids)
    case = LeaveOneOut(seqs, recommender.model.maxlen).case("test")
    result = {"data": str(data), "model": str(model_dir), "protocol": protocol, "keep_seen": keep_seen,
              "users": len(case), "metrics": evaluate(recommender.model, case, protocol, ks, keep_seen, seed=seed)}
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def evaluate(model: SASRec, case: EvalCase, protocol: str = "full", ks: Sequence[int] = (1, 5, 10, 20),
             keep_seen: bool = False, batch_size: int = 1024, seed: int = 0) -> dict[str, float]:
    """Success@K, nDCG@K and RR@K of `model` on one stage of a split."""
    return metrics_from_ranks(target_ranks(model, case, protocol, keep_seen, batch_size, seed), ks)
