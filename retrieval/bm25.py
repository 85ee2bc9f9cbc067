"""BM25 over articles with English stemming and stop words (bm25s + PyStemmer), saved as a folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexes.errors import IndexFormatError

CONFIG_FILE = "retriever.json"
STEMMER = "english"  # PyStemmer's Snowball stemmer
STOPWORDS = "en"  # bm25s's English stop-word list


class BM25Retriever:
    """Lucene-style BM25; query terms are stemmed and stop words dropped exactly as for the articles."""

    name = "bm25"

    def __init__(self, model, article_ids: Sequence[str], k1: float = 1.5, b: float = 0.75):
        import Stemmer

        self.model = model
        self.article_ids = list(article_ids)
        self.k1, self.b = k1, b
        self._stemmer = Stemmer.Stemmer(STEMMER)

    @classmethod
    def build(cls, texts: Sequence[str], article_ids: Sequence[str], k1: float = 1.5, b: float = 0.75) -> BM25Retriever:
        """Index `texts` (one per article id)."""
        import bm25s

        self = cls(bm25s.BM25(k1=k1, b=b), article_ids, k1, b)
        self.model.index(self._tokenize(texts, return_ids=True), show_progress=False)
        return self

    def _tokenize(self, texts: Sequence[str], return_ids: bool):
        import bm25s

        return bm25s.tokenize(list(texts), stopwords=STOPWORDS, stemmer=self._stemmer,
                              return_ids=return_ids, show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        n = len(self.article_ids)
        docs, values = self.model.retrieve(self._tokenize(queries, return_ids=False), k=n, show_progress=False)
        out = np.zeros((len(queries), n), dtype=np.float32)
        np.put_along_axis(out, np.asarray(docs, dtype=np.int64), np.asarray(values, dtype=np.float32), axis=1)
        return out

    def save(self, path: Path) -> None:
        """Write the BM25 matrices and a config (ids, k1, b) into the folder `path`."""
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(str(path), show_progress=False)
        config = {"article_ids": self.article_ids, "k1": self.k1, "b": self.b, "stemmer": STEMMER, "stopwords": STOPWORDS}
        (path / CONFIG_FILE).write_text(json.dumps(config) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> BM25Retriever:
        import bm25s

        try:
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            model = bm25s.BM25.load(str(path), show_progress=False, verbosity=0)
        except (OSError, ValueError, KeyError) as err:
            raise IndexFormatError(f"{path}: unreadable BM25 index ({err})") from None
        return cls(model, config["article_ids"], config["k1"], config["b"])
