"""`ragcli index build --corpus coliee` / `ragcli index query`: articles as dense vectors in FAISS with
their payload in DuckDB, and a BM25 index saved inside the same directory; queries fuse both.

With `--model DIR` (a trained Paraformer or Attentive CNN) the index also holds a copy of the model,
the articles and their model features, and queries fuse its scores too; a Paraformer index explains
each hit with the article sentence the question attended to most.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np

from indexes import BuildRequest, Hit, QueryRequest, UserError, VectorIndex
from indexes.runtime import resolve_device
from retrieval.base import top_k
from retrieval.bm25 import BM25Retriever
from retrieval.coliee import Article, load_coliee
from retrieval.dense import encode_texts
from retrieval.fusion import fuse
from retrieval.models import NeuralRetriever, ParaformerRetriever, load_retriever
from retrieval.text_encoder import DEFAULT_TEXT_ENCODER

BM25_DIR, MODEL_DIR, ARTICLES_FILE, FEATURES_FILE = "bm25", "model", "articles.json", "article_features.safetensors"
# Fusion weights tuned on COLIEE R02 for F2 (bench/coliee_bench.py), without and with a trained model.
DEFAULT_WEIGHTS = {"bm25": 0.6, "dense": 0.4}
MODEL_WEIGHTS = {"paraformer": {"bm25": 0.6, "dense": 0.3, "paraformer": 0.1},
                 "attentive-cnn": {"bm25": 0.35, "dense": 0.35, "attentive-cnn": 0.3}}


def build_index(request: BuildRequest, out: Path) -> VectorIndex:
    """Read the COLIEE folder (default: the bundled sample), embed every article, save the index at `out`
    (with the trained model in `request.model`, its article features computed here, once)."""
    articles = load_coliee(request.data_dir).articles
    ids = [a.id for a in articles]
    texts = [a.search_text for a in articles]
    encoder = request.encoder or DEFAULT_TEXT_ENCODER
    settings = {"family": "retrieval", "name": f"hybrid(bm25, {encoder})", "dense": encoder, "bm25": BM25_DIR,
                "weights": DEFAULT_WEIGHTS}
    extras = {BM25_DIR: BM25Retriever.build(texts, ids).save}
    if request.model is not None:
        model = load_retriever(request.model, articles, request.device)
        settings.update(name=f"hybrid(bm25, {encoder}, {model.name})", model_dir=MODEL_DIR,
                        weights=MODEL_WEIGHTS[model.name])
        extras.update({MODEL_DIR: partial(shutil.copytree, request.model), FEATURES_FILE: model.save_features,
                       ARTICLES_FILE: partial(_save_articles, articles)})
    vectors = encode_texts(texts, encoder, resolve_device(request.device))
    payload = [{"title": a.title, "caption": a.caption, "headings": " / ".join(a.headings), "text": a.text} for a in articles]
    index = VectorIndex.build(vectors, ids, payload, kind=request.kind, metric=request.metric or "cosine",
                              device=request.device, encoder=settings)
    index.save(out, extras=extras)
    return index


def _save_articles(articles: list[Article], path: Path) -> None:
    path.write_text(json.dumps([dataclasses.asdict(a) for a in articles], ensure_ascii=False), encoding="utf-8")


def _load_model(index: VectorIndex, device: str) -> NeuralRetriever:
    """The trained model stored in a coliee index, over the index's articles and their saved features."""
    assert index.path is not None
    records = json.loads((index.path / ARTICLES_FILE).read_text(encoding="utf-8"))
    return load_retriever(index.path / index.encoder["model_dir"], [Article.from_dict(r) for r in records], device,
                          features_file=index.path / FEATURES_FILE)


def query_index(index: VectorIndex, request: QueryRequest) -> list[Hit]:
    """The k best articles for `request.text`: fused dense (FAISS) and BM25 scores, with payload."""
    if not request.text or not request.text.strip():
        raise UserError("the query text is empty")
    settings = index.encoder
    if index.path is None or not (index.path / settings.get("bm25", BM25_DIR)).is_dir():
        raise UserError(f"index {index.path} has no BM25 index beside its vectors; rebuild it")
    bm25 = BM25Retriever.load(index.path / settings.get("bm25", BM25_DIR))
    query = encode_texts([request.text], settings.get("dense"), resolve_device(request.device))
    dense_scores, dense_ids = index.search_ids(query, k=index.ntotal)  # every article, to fuse with BM25
    column = {article_id: j for j, article_id in enumerate(bm25.article_ids)}
    found = [(column[i], s) for i, s in zip(dense_ids[0].tolist(), dense_scores[0].tolist()) if i is not None]
    dense = np.zeros((1, len(column)), dtype=np.float32)  # approximate kinds may miss some: similarity 0
    dense[0, [j for j, _ in found]] = [s for _, s in found]
    weights = settings.get("weights", DEFAULT_WEIGHTS)
    matrices, names = [bm25.scores([request.text]), dense], ["bm25", "dense"]
    model = _load_model(index, request.device) if "model_dir" in settings else None
    if model is not None:
        if model.article_ids != bm25.article_ids:
            raise UserError(f"index {index.path}: its model scores other articles than its BM25 index; rebuild it")
        matrices.append(model.scores([request.text]))
        names.append(model.name)
    fused = fuse(matrices, [weights[n] for n in names])
    best = top_k(fused, request.k)[0]
    best_ids = [bm25.article_ids[j] for j in best]
    rows = index.rows_of(best_ids)
    payload = index.payload_of(rows)
    hits = [Hit(i, float(fused[0, j]), payload[r]) for i, j, r in zip(best_ids, best, rows.tolist())]
    if isinstance(model, ParaformerRetriever):
        for hit, (weight, sentence) in zip(hits, model.explain(request.text, best_ids)):
            hit.payload["explanation"] = f"{sentence} (attention {weight:.2f})"
    return hits
