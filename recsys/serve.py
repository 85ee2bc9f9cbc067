"""Serving SASRec through the shared index: item embeddings in an inner-product FAISS index with the
item payload (title, genres) in DuckDB, the model stored inside the index so queries need nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from indexes import BuildRequest, Hit, QueryRequest, UserError, VectorIndex
from recsys.data import read_interactions
from recsys.fetch import resolve_data
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


def build_index(request: BuildRequest, out: Path) -> VectorIndex:
    """Index a trained model's item embeddings (inner product), payload from `request.corpus`'s item table."""
    if request.model is None:
        raise UserError("a recsys index needs --model DIR (a model from `ragcli train sasrec`)")
    recommender = Recommender.from_pretrained(request.model, device=request.device)
    raw = read_interactions(resolve_data(request.corpus, request.data_dir), request.options.get("format", "auto"))
    model = recommender.model
    encoder = {"family": "recsys", "name": "sasrec", "model_dir": MODEL_DIR, "maxlen": model.maxlen,
               "hidden": model.hidden, "n_items": model.n_items}
    index = VectorIndex.build(recommender.item_vectors(), recommender.item_ids,
                              item_payload(raw.items, recommender.item_ids), kind=request.kind,
                              metric=request.metric or "ip", encoder=encoder, device=request.device)
    index.save(out, extras={MODEL_DIR: recommender.save_pretrained})
    return index


def query_index(index: VectorIndex, request: QueryRequest) -> list[Hit]:
    """Encode `request.history` (raw item ids, oldest first) and return the top k unseen items."""
    if not request.history:
        raise UserError("a recsys index is queried with --history ID,ID,...")
    if index.path is None:
        raise UserError("this index has not been saved, so its model cannot be loaded")
    recommender = Recommender.from_pretrained(index.path / index.encoder.get("model_dir", MODEL_DIR),
                                              device=request.device)
    ids = recommender.to_internal(request.history, skip_unknown=request.skip_unknown)
    query = recommender.encode([ids])
    seen = [recommender.item_ids[i - 1] for i in ids]
    return index.search(np.asarray(query), k=request.k, exclude=[seen])[0]
