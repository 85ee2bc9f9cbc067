"""Paraformer (Nguyen et al., "Attentive Deep Neural Networks for Legal Document Retrieval").

The query is one sentence embedding; an article is the embeddings of its lines (caption and
sentences). Query-conditioned sparsemax attention pools the article's sentences, so a few sentences
carry the decision (and the top one explains it), and a classifier scores the (query, pooled article)
pair from their interaction features (q * a, |q - a|): without the raw vectors it cannot memorise
which articles were often gold in training (the 4-part [q, a, q * a, |q - a|] input overfit after
one epoch). Sentence embeddings come from a frozen sentence-transformers encoder (all-MiniLM-L6-v2 by
default) and are computed once per corpus; `retrieval.finetune` adapts the encoder first, as an option.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from indexes.checks import boolean, integer, number, text
from indexes.runtime import progress_enabled
from indexes.text_encoder import load_text_encoder
from retrieval.checks import MAX_WIDTH
from retrieval.coliee import Article
from retrieval.sparsemax import sparsemax
from retrieval.training import Features


class Paraformer(nn.Module, PyTorchModelHubMixin):
    """Sparsemax attention of a query over an article's sentence embeddings, then an MLP classifier."""

    architecture = "paraformer"

    def __init__(self, dim: int = 384, hidden: int = 256, dropout: float = 0.1,
                 encoder: str = "all-MiniLM-L6-v2", finetuned_encoder: bool = False) -> None:
        """Settings are validated: they come from a checkpoint's config.json, which may be anything."""
        super().__init__()
        dim, hidden = integer("dim", dim, 1, MAX_WIDTH), integer("hidden", hidden, 1, MAX_WIDTH)
        dropout = number("dropout", dropout, 0, 1, high_open=True)
        self.encoder = text("encoder", encoder, "a sentence encoder name or path")
        self.finetuned_encoder = boolean("finetuned_encoder", finetuned_encoder)
        self.query_proj = nn.Linear(dim, hidden)
        self.key_proj = nn.Linear(dim, hidden)
        self.classifier = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def attention(self, query: torch.Tensor, sentences: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, S) sparsemax weights of query (B, D) over sentences (B|1, C, S, D); padding gets 0."""
        q = self.query_proj(query)[:, None, :, None]  # (B, 1, H, 1)
        logits = (self.key_proj(sentences) @ q).squeeze(-1) / math.sqrt(q.shape[2])
        return sparsemax(logits, mask.expand_as(logits))

    def forward(self, queries: tuple[torch.Tensor, ...], articles: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B, C) relevance logits for query embeddings (B, D) and article sentences (B|1, C, S, D) + mask."""
        (query,), (sentences, mask) = queries, articles
        weights = self.attention(query, sentences, mask)
        pooled = (weights.unsqueeze(-2) @ sentences).squeeze(-2)  # (B, C, D)
        q = query[:, None, :]
        return self.classifier(torch.cat([q * pooled, (q - pooled).abs()], -1)).squeeze(-1)


def article_lines(article: Article) -> list[str]:
    """What Paraformer attends over: the caption (when there is one) and each sentence."""
    return ([f"({article.caption})"] if article.caption else []) + list(article.sentences or (article.text,))


class SentenceFeaturizer:
    """Turns texts into Paraformer inputs with a sentence encoder (L2-normalised embeddings)."""

    def __init__(self, encoder: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        self.encoder_name = str(encoder)
        self.device, self.batch_size = device, batch_size
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) float32 embeddings; each distinct text is encoded once per featurizer."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            model = load_text_encoder(self.encoder_name, self.device)
            vectors = model.encode(missing, batch_size=self.batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=progress_enabled(len(missing)))
            self._cache.update(zip(missing, vectors.astype(np.float32)))
        return torch.from_numpy(np.stack([self._cache[t] for t in texts])) if texts else torch.zeros(0, 0)

    def queries(self, texts: Sequence[str]) -> Features:
        return Features((self.embed(texts),))

    def articles(self, articles: Sequence[Article]) -> Features:
        """Sentence embeddings padded to (A, S, D) with a (A, S) mask."""
        lines = [article_lines(a) for a in articles]
        flat = self.embed([s for doc in lines for s in doc])
        lengths = torch.tensor([len(doc) for doc in lines])
        mask = torch.arange(int(lengths.max())) < lengths[:, None]
        padded = flat.new_zeros(len(lines), mask.shape[1], flat.shape[1])
        padded[mask] = flat
        return Features((padded, mask))


