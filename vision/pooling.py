"""Pooling heads: (B, N, C) backbone tokens -> (B, C) image embeddings.

Every head takes the token sequence with its `num_prefix_tokens` (class / register tokens first);
CNN feature maps arrive flattened to tokens with no prefix. `create_pooling` picks one by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from indexes.errors import UserError


class MeanPool(nn.Module):
    """Average of the patch tokens (prefix tokens left out)."""

    def __init__(self, dim: int, num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.num_prefix_tokens:].mean(dim=1)


class ClsPool(nn.Module):
    """The class token (the first prefix token)."""

    def __init__(self, dim: int, num_prefix_tokens: int = 0) -> None:
        super().__init__()
        if num_prefix_tokens < 1:
            raise UserError("CLS pooling needs a backbone with a class token; use mean, gem or attentive")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


class GeMPool(nn.Module):
    """Generalised mean of the patch tokens, (mean x^p)^(1/p), with a learnable p (Radenovic et al.)."""

    def __init__(self, dim: int, num_prefix_tokens: int = 0, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.num_prefix_tokens:].clamp(min=self.eps)
        return patches.pow(self.p).mean(dim=1).pow(1.0 / self.p)


class AttentivePool(nn.Module):
    """Attentive probing: a few learned queries cross-attend over the patch tokens.

    Multi-query, multi-head cross-attention in the lightweight form of "Attention, Please! Revisiting
    Attentive Probing" (2025): keys are the normalised tokens themselves (no key projection), values get
    one projection, and the query outputs are averaged. Few parameters, so it trains on frozen features.
    """

    def __init__(self, dim: int, num_prefix_tokens: int = 0, num_queries: int = 4, num_heads: int | None = None) -> None:
        super().__init__()
        num_heads = num_heads or next(h for h in (8, 4, 2, 1) if dim % h == 0)
        if dim % num_heads:
            raise UserError(f"attentive pooling: {num_heads} heads do not divide dimension {dim}")
        self.num_prefix_tokens = num_prefix_tokens
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * dim ** -0.5)
        self.value = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens[:, self.num_prefix_tokens:])
        q = self._heads(self.queries.expand(x.shape[0], -1, -1))
        out = F.scaled_dot_product_attention(q, self._heads(x), self._heads(self.value(x)))
        return out.transpose(1, 2).flatten(2).mean(dim=1)


POOLINGS: dict[str, type[nn.Module]] = {"mean": MeanPool, "cls": ClsPool, "gem": GeMPool, "attentive": AttentivePool}


def create_pooling(name: str, dim: int, num_prefix_tokens: int = 0) -> nn.Module:
    """The pooling head called `name` for `dim`-wide tokens."""
    if name not in POOLINGS:
        raise UserError(f"unknown pooling {name!r}: use default or one of {', '.join(POOLINGS)}")
    return POOLINGS[name](dim, num_prefix_tokens)
