"""Attentive CNN (Nguyen et al., "Attentive Deep Neural Networks for Legal Document Retrieval").

Word embeddings -> a 1-D CNN -> word-level attention pools each sentence into a vector -> sparsemax
attention over the sentences pools a text into one vector. Queries and articles share the encoder and
are scored by a dot product, so article vectors can be precomputed. Trains from scratch on the CPU
with a vocabulary built from the corpus.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from indexes.checks import integer, number
from indexes.errors import UserError
from indexes.files import read_json
from retrieval.checks import MAX_EMBEDDING_PARAMETERS, MAX_VOCAB, MAX_WIDTH
from retrieval.coliee import Article
from retrieval.sparsemax import sparsemax
from retrieval.training import Features

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+(?:-[0-9]+)*")
_SENTENCE_END = re.compile(r"(?<=[.?!;])\s+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; article numbers like 398-2 stay one token."""
    return _WORD.findall(text.lower())


class Vocab:
    """Word <-> id map; id 0 pads, id 1 is every unknown word. Saved as a JSON list of words."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
            raise UserError("a vocabulary must be a list of words")
        if list(tokens[:2]) != [PAD, UNK]:
            raise UserError(f"a vocabulary must start with {PAD!r}, {UNK!r}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise UserError("a vocabulary must not list a word twice")

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Vocab:
        counts = Counter(w for text in texts for w in words(text))
        return cls([PAD, UNK] + sorted(w for w, c in counts.items() if c >= min_count))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 1) for w in words(text)]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.tokens, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        """The vocabulary saved at `path`; a missing or malformed file is a UserError naming it."""
        tokens = read_json(path, "vocabulary")
        try:
            return cls(tokens)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None


class TokenFeaturizer:
    """Texts -> (N, S, W) word-id tensors: up to `max_sentences` sentences of `max_words` words."""

    def __init__(self, vocab: Vocab, max_sentences: int = 16, max_words: int = 64) -> None:
        self.vocab, self.max_sentences, self.max_words = vocab, max_sentences, max_words

    def encode(self, docs: Sequence[Sequence[str]]) -> Features:
        """Each doc is a list of sentences; empty sentences are dropped, long ones truncated."""
        ids = [[s for s in (self.vocab.encode(x)[: self.max_words] for x in doc) if s][: self.max_sentences]
               for doc in docs]
        n_sent = max((len(d) for d in ids), default=1) or 1
        n_word = max((len(s) for d in ids for s in d), default=1)
        tokens = torch.zeros(len(ids), n_sent, n_word, dtype=torch.long)
        for i, doc in enumerate(ids):  # padding once per corpus, not in the training loop
            for j, sentence in enumerate(doc):
                tokens[i, j, : len(sentence)] = torch.tensor(sentence)
        return Features((tokens,))

    def queries(self, texts: Sequence[str]) -> Features:
        return self.encode([_SENTENCE_END.split(t) for t in texts])

    def articles(self, articles: Sequence[Article]) -> Features:
        return self.encode([([a.caption] if a.caption else []) + list(a.sentences or (a.text,)) for a in articles])


class AttentiveCNN(nn.Module, PyTorchModelHubMixin):
    """Hierarchical text encoder (CNN + word attention, sparsemax sentence attention); dot-product scores."""

    architecture = "attentive-cnn"

    def __init__(self, vocab_size: int, embed_dim: int = 100, filters: int = 128, kernel: int = 3,
                 attention_dim: int = 64, dropout: float = 0.1, max_sentences: int = 16, max_words: int = 64) -> None:
        """Settings are validated: they come from a checkpoint's config.json, which may be anything."""
        super().__init__()
        vocab_size, kernel = integer("vocab_size", vocab_size, 2, MAX_VOCAB), integer("kernel", kernel, 1, 31)
        embed_dim, filters, attention_dim, max_sentences, max_words = (
            integer(name, value, 1, MAX_WIDTH) for name, value in (
                ("embed_dim", embed_dim), ("filters", filters), ("attention_dim", attention_dim),
                ("max_sentences", max_sentences), ("max_words", max_words)))
        dropout = number("dropout", dropout, 0, 1, high_open=True)
        if kernel % 2 == 0:
            raise UserError(f"kernel must be odd (the convolution keeps the sentence length), got {kernel}")
        if vocab_size * embed_dim > MAX_EMBEDDING_PARAMETERS:
            raise UserError(f"vocab_size x embed_dim = {vocab_size * embed_dim} word-embedding weights is too many "
                            f"(at most {MAX_EMBEDDING_PARAMETERS})")
        self.max_sentences, self.max_words = max_sentences, max_words
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.conv = nn.Conv1d(embed_dim, filters, kernel, padding=kernel // 2)
        self.dropout = nn.Dropout(dropout)
        self.word_attention = nn.Sequential(nn.Linear(filters, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))
        self.sentence_attention = nn.Sequential(nn.Linear(filters, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))

    def sentence_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, W) word ids of non-empty sentences -> (N, F): CNN features pooled by softmax word attention."""
        mask = tokens != 0
        hidden = torch.tanh(self.conv(self.dropout(self.embed(tokens)).transpose(1, 2))).transpose(1, 2)
        logits = self.word_attention(hidden).squeeze(-1).masked_fill(~mask, float("-inf"))
        return (logits.softmax(-1).unsqueeze(1) @ hidden).squeeze(1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., S, W) word ids -> (..., F) text vectors; only real sentences go through the CNN."""
        *lead, n_sent, n_word = tokens.shape
        flat = tokens.reshape(-1, n_word)
        present = (flat != 0).any(-1)
        found = self.sentence_vectors(flat[present])
        vectors = found.new_zeros(flat.shape[0], found.shape[-1])
        vectors[present] = found
        vectors = vectors.reshape(*lead, n_sent, -1)
        weights = sparsemax(self.sentence_attention(vectors).squeeze(-1), present.reshape(*lead, n_sent))
        return (weights.unsqueeze(-2) @ vectors).squeeze(-2)

    def forward(self, queries: tuple[torch.Tensor, ...], articles: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B, C) dot products of query texts (B, S, W) with article texts (B|1, C, S, W)."""
        (query,), (article,) = queries, articles
        return (self.encode(article) * self.encode(query)[:, None, :]).sum(-1)
