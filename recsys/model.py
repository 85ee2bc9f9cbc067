"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over a user's item sequence.

Item embeddings are shared with the output layer (score of item i = hidden state . embedding of i),
positions are learned, and each block is attention + a position-wise feed-forward network with
residuals, in pre-LN order (x + f(LayerNorm(x)), the paper's equations) or post-LN order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from recsys.checks import check_architecture


class Dropout(nn.Dropout):
    """Dropout drawing its mask as `uniform >= p`: the same distribution as nn.Dropout, but about twice
    as fast on CPU as the bernoulli kernel behind it (dropout is a third of a small SASRec's step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1 / (1 - self.p))


class CausalBlock(nn.Module):
    """Multi-head causal self-attention + feed-forward, each with dropout and a residual."""

    def __init__(self, hidden: int, heads: int, dropout: float, pre_ln: bool):
        super().__init__()
        self.heads, self.dropout, self.pre_ln = heads, dropout, pre_ln
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), Dropout(dropout), nn.Linear(hidden, hidden))
        self.norm_attn, self.norm_ffn = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.drop = Dropout(dropout)

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, hidden = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, length, hidden))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.drop(self.attend(self.norm_attn(x), mask))
            return x + self.drop(self.ffn(self.norm_ffn(x)))
        x = self.norm_attn(x + self.drop(self.attend(x, mask)))
        return self.norm_ffn(x + self.drop(self.ffn(x)))


class SASRec(nn.Module, PyTorchModelHubMixin):
    """Next-item model over left-padded sequences of item ids 1..n_items (0 = padding).

    `save_pretrained(dir)` / `SASRec.from_pretrained(dir)` store config.json + model.safetensors.
    """

    def __init__(self, n_items: int, maxlen: int = 50, hidden: int = 64, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2, pre_ln: bool = True):
        super().__init__()
        check_architecture(n_items, maxlen, hidden, blocks, heads, dropout, pre_ln)
        self.n_items, self.maxlen, self.hidden = n_items, maxlen, hidden
        self.architecture = dict(maxlen=maxlen, hidden=hidden, blocks=blocks, heads=heads, dropout=dropout, pre_ln=pre_ln)
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen, hidden)
        self.emb_drop = Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(hidden, heads, dropout, pre_ln) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(hidden) if pre_ln else nn.Identity()
        self.register_buffer("causal", torch.ones(maxlen, maxlen, dtype=torch.bool).tril(), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.xavier_normal_(module.weight)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    @property
    def item_weight(self) -> torch.Tensor:
        """(n_items + 1, hidden) item embeddings; row 0 is padding. Also the output layer."""
        return self.item_emb.weight

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, length <= maxlen) item ids -> (batch, length, hidden) states; position t sees items <= t."""
        length = seq.shape[1]
        valid = seq > 0
        x = self.item_emb(seq) * math.sqrt(self.hidden) + self.pos_emb.weight[-length:]
        x = self.emb_drop(x) * valid.unsqueeze(-1)
        # causal, and never attend to padding (a position may always see itself, so no row is empty)
        diagonal = torch.eye(length, dtype=torch.bool, device=seq.device)
        mask = (self.causal[:length, :length] & (valid.unsqueeze(1) | diagonal)).unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, maxlen) left-padded histories -> (batch, hidden): the state at the last position."""
        return self.forward(seq)[:, -1]

    def score_all(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, n_items) scores of items 1..n_items (column j is item j + 1)."""
        return self.encode(seq) @ self.item_weight[1:].T
