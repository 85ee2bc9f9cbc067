"""Serving SASRec through the shared index: item embeddings in an inner-product FAISS index with the
item payload (title, genres) in DuckDB, the model stored inside the index so queries need nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from indexes import BuildRequest, Hit, UserError
from indexes.backends import build_vectors
from indexes.engine import Engine, Query
from indexes.files import inside
from indexes.index import ManifestIndex
from indexes.registry import Family, register_family
from indexes.shards import corpus_vectors
from recsys.data import read_interactions
from recsys.fetch import DATASETS, SAMPLE, resolve_data
from recsys.recommender import Recommender

MODEL_DIR = "model"


def item_payload(items: pl.DataFrame | None, item_ids: list[str]) -> pl.DataFrame | None:
    """Payload rows in `item_ids` order from the data's item table (missing items get nulls)."""
    if items is None:
        return None
    columns = [c for c in ("title", "genres") if c in items.columns]
    if not columns:
        return None
    table = items.select("item", *[pl.col(c).cast(pl.String) for c in columns]).unique("item", keep="first")
    return pl.DataFrame({"item": item_ids}).join(table, on="item", how="left", maintain_order="left").drop("item")


def build_index(request: BuildRequest, out: Path) -> ManifestIndex | None:
    """Index a trained model's item embeddings (inner product), payload from `request.corpus`'s item table."""
    if request.model is None:
        raise UserError("a recsys index needs --model DIR (a model from `ragcli train sasrec`)")
    recommender = Recommender.from_pretrained(request.model, device=request.device)
    raw = read_interactions(resolve_data(request.corpus, request.data_dir), request.options.get("format", "auto"))
    model = recommender.model
    encoder = {"family": "recsys", "name": "sasrec", "model_dir": MODEL_DIR, "maxlen": model.maxlen,
               "hidden": model.hidden, "n_items": model.n_items}
    vectors = corpus_vectors(request, recommender.item_ids, lambda rows: recommender.item_vectors()[rows])
    if vectors is None:  # one shard written (indexes.shards)
        return None
    index = build_vectors(vectors, recommender.item_ids, item_payload(raw.items, recommender.item_ids),
                          metric=request.metric or "ip", encoder=encoder, **request.index_options(out))
    index.save(out, extras={MODEL_DIR: recommender.save_pretrained}, overwrite=request.overwrite)
    return index


class RecommendationEngine(Engine):
    """Encodes item histories (raw ids, oldest first) with the SASRec model stored in the index, loaded
    once, and returns the best items the user has not seen."""

    family, field = "recsys", "history"
    options = frozenset({"skip_unknown"})

    def __init__(self, index: ManifestIndex, device: str = "auto"):
        super().__init__(index)
        model_dir = inside(index.path, index.encoder.get("model_dir", MODEL_DIR), "model_dir")
        self.recommender = Recommender.from_pretrained(model_dir, device=device)

    def search(self, queries: list[Query], k: int, where: Any, exclude: Sequence[Sequence[Any]] | None,
               skip_unknown: bool = False) -> list[list[Hit]]:
        if any(not q.history for q in queries):
            raise UserError("a recsys index is queried with a history of item ids (--history ID,ID,...)")
        histories = [self.recommender.to_internal(q.history, skip_unknown=skip_unknown) for q in queries]
        vectors = np.asarray(self.recommender.encode(histories))
        seen = [[self.recommender.item_ids[i - 1] for i in ids] + [str(e) for e in (exclude[n] if exclude else [])]
                for n, ids in enumerate(histories)]
        return self.index.search(vectors, k=k, where=where, exclude=seen)


FAMILY = register_family(Family(
    name="recsys", corpora={name: build_index for name in (*DATASETS, SAMPLE)}, opener=RecommendationEngine,
    build_options=frozenset({"data_dir", "model", "options"}), accepts_path=True,
))
