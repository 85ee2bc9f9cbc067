"""`ragcli index build --corpus coliee` / `ragcli index query`: articles as dense vectors in FAISS with
their payload in DuckDB, and a BM25 index saved inside the same directory; queries fuse both."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexes import BuildRequest, Hit, QueryRequest, UserError, VectorIndex
from indexes.runtime import resolve_device
from retrieval.base import top_k
from retrieval.bm25 import BM25Retriever
from retrieval.coliee import load_coliee
from retrieval.dense import encode_texts
from retrieval.fusion import fuse
from retrieval.text_encoder import DEFAULT_TEXT_ENCODER

BM25_DIR = "bm25"
DEFAULT_WEIGHTS = {"bm25": 0.6, "dense": 0.4}  # tuned on COLIEE R02 for F2 (bench/coliee_bench.py)


def build_index(request: BuildRequest, out: Path) -> VectorIndex:
    """Read the COLIEE folder (default: the bundled sample), embed every article, save the index at `out`."""
    if request.model is not None:
        raise UserError("a coliee index holds BM25 + dense; evaluate a trained model with `ragcli eval coliee --model DIR`")
    articles = load_coliee(request.data_dir).articles
    ids = [a.id for a in articles]
    texts = [a.search_text for a in articles]
    encoder = request.encoder or DEFAULT_TEXT_ENCODER
    vectors = encode_texts(texts, encoder, resolve_device(request.device))
    payload = [{"title": a.title, "caption": a.caption, "headings": " / ".join(a.headings), "text": a.text} for a in articles]
    index = VectorIndex.build(vectors, ids, payload, kind=request.kind, metric=request.metric or "cosine",
                              device=request.device, encoder={
                                  "family": "retrieval", "name": f"hybrid(bm25, {encoder})", "dense": encoder,
                                  "bm25": BM25_DIR, "weights": DEFAULT_WEIGHTS})
    bm25 = BM25Retriever.build(texts, ids)
    index.save(out, extras={BM25_DIR: bm25.save})
    return index


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
    fused = fuse([bm25.scores([request.text]), dense], [weights["bm25"], weights["dense"]])
    best = top_k(fused, request.k)[0]
    best_ids = [bm25.article_ids[j] for j in best]
    rows = index.rows_of(best_ids)
    payload = index.payload_of(rows)
    return [Hit(i, float(fused[0, j]), payload[r]) for i, j, r in zip(best_ids, best, rows.tolist())]
