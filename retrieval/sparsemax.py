"""Sparsemax (Martins & Astudillo, 2016): the Euclidean projection of logits onto the probability simplex.

Like softmax it returns weights that sum to 1, but low-scoring entries get exactly 0, so an attention
layer built on it picks a few sentences and ignores the rest (which makes its weights an explanation).
"""

from __future__ import annotations

import torch


def sparsemax(logits: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """Sparsemax of `logits` along `dim`; entries where `mask` is False get weight 0.

    Sort-based exact projection: with z sorted in decreasing order, the support is the largest k with
    1 + k z_k > sum_{j<=k} z_j, the threshold tau = (sum_{j<=k} z_j - 1) / k, and p = max(z - tau, 0).
    Autograd through this formula gives sparsemax's Jacobian. A fully masked row returns all zeros.
    """
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    logits = logits.transpose(dim, -1)
    ranked = logits.sort(dim=-1, descending=True).values
    n = logits.shape[-1]
    k = torch.arange(1, n + 1, device=logits.device, dtype=logits.dtype)
    n_valid = torch.isfinite(ranked).sum(dim=-1, keepdim=True)
    valid = k <= n_valid
    ranked = ranked.masked_fill(~valid, 0.0)
    cumulative = ranked.cumsum(dim=-1)
    support = (1 + k * ranked > cumulative) & valid
    size = support.sum(dim=-1, keepdim=True).clamp(min=1)
    tau = (cumulative.gather(-1, size - 1) - 1) / size.to(logits.dtype)
    return (logits - tau).clamp(min=0).transpose(dim, -1)
