"""Dense bi-encoder retrieval: sentence-transformers embeddings, cosine similarity (default all-MiniLM-L6-v2)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexes.runtime import progress_enabled
from indexes.text_encoder import DEFAULT_TEXT_ENCODER, load_text_encoder


def encode_texts(texts: Sequence[str], encoder: str | None = None, device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """Unit-norm float32 embeddings of `texts` with the sentence-transformers model `encoder`."""
    model = load_text_encoder(encoder or DEFAULT_TEXT_ENCODER, device)
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=progress_enabled(len(texts)))
    return np.asarray(vectors, dtype=np.float32)


class DenseRetriever:
    """Cosine similarity between a query embedding and each article embedding."""

    name = "dense"

    def __init__(self, article_ids: Sequence[str], vectors: np.ndarray, encoder: str | None = None, device: str = "cpu"):
        self.article_ids = list(article_ids)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.encoder = encoder or DEFAULT_TEXT_ENCODER
        self.device = device

    @classmethod
    def build(cls, texts: Sequence[str], article_ids: Sequence[str], encoder: str | None = None, device: str = "cpu") -> DenseRetriever:
        """Embed `texts` (one per article id)."""
        return cls(article_ids, encode_texts(texts, encoder, device), encoder, device)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        return encode_texts(queries, self.encoder, self.device) @ self.vectors.T
