"""The statutes family: `index build --corpus coliee` puts the articles' dense vectors in FAISS with
their payload in DuckDB, and a BM25 index beside them in the same directory; its engine fuses both
(and a trained Paraformer / Attentive CNN, with `--model DIR`) through `HybridRetriever`.

A Paraformer index explains each hit with the article sentence the question attended to most.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from indexes import BuildRequest, Hit, UserError, checks
from indexes.backends import build_vectors
from indexes.engine import Engine, Query
from indexes.files import inside, read_json
from indexes.index import ManifestIndex
from indexes.registry import Family, register_family
from indexes.runtime import resolve_device
from indexes.shards import corpus_vectors
from indexes.text_encoder import DEFAULT_TEXT_ENCODER
from retrieval.base import checked_scores, top_k
from retrieval.bm25 import BM25Retriever
from retrieval.coliee import Article, load_coliee
from retrieval.dense import encode_texts
from retrieval.fusion import HybridConfig, HybridRetriever
from retrieval.models import NeuralRetriever, ParaformerRetriever, load_retriever
from retrieval.protocol import PIPELINE_FILE
from retrieval.selection import select

BM25_DIR, MODEL_DIR, HYBRID_DIR, ENCODER_DIR = "bm25", "model", "hybrid", "encoder"
ARTICLES_FILE, FEATURES_FILE = "articles.json", "article_features.safetensors"


def build_index(request: BuildRequest, out: Path) -> ManifestIndex | None:
    """Read the COLIEE folder (default: the bundled sample), embed every article, save the index at `out`
    (with the trained model in `request.model`, its article features computed here, once). The fusion
    recipe (weights, selection ratio) is `request.hybrid`, a hybrid saved by `eval coliee --save-hybrid`
    or a pipeline saved by `--protocol forward --save-pipeline` (with its fine-tuned encoder), or equal
    weights; it is saved in the index (`hybrid/`, and `pipeline.json`) and served as it is."""
    articles = load_coliee(request.data_dir).articles
    ids = [a.id for a in articles]
    texts = [a.search_text for a in articles]
    pipeline = _pipeline(request.hybrid, request.encoder) if request.hybrid is not None else None
    encoder = pipeline["encoder_path"] if pipeline else request.encoder or DEFAULT_TEXT_ENCODER
    device = resolve_device(request.device)
    vectors = corpus_vectors(request, ids, lambda rows: encode_texts(texts[rows], encoder, device))
    if vectors is None:  # one shard embedded (indexes.shards)
        return None
    parts = ["bm25", "dense"]
    settings: dict[str, Any] = {"family": "retrieval", "dense": encoder, "bm25": BM25_DIR}
    extras = {BM25_DIR: BM25Retriever.build(texts, ids).save}
    if Path(encoder).expanduser().is_dir():  # a local encoder (say, fine-tuned) travels inside the index
        encoder = str(Path(encoder).expanduser())
        settings.update(dense=Path(encoder).name, dense_dir=ENCODER_DIR)
        extras[ENCODER_DIR] = partial(shutil.copytree, encoder)
    if request.model is not None:
        model = load_retriever(request.model, articles, request.device)
        parts.append(model.name)
        settings["model_dir"] = MODEL_DIR
        extras.update({MODEL_DIR: partial(shutil.copytree, request.model), FEATURES_FILE: model.save_features,
                       ARTICLES_FILE: partial(_save_articles, articles)})
    hybrid = HybridConfig.load(request.hybrid) if request.hybrid is not None else HybridConfig.equal(parts)
    if set(hybrid.retrievers) - set(parts):
        raise UserError(f"the hybrid in {request.hybrid} fuses {', '.join(hybrid.retrievers)}; this index has "
                        f"{', '.join(parts)} (give the same --model)")
    settings.update(name=f"hybrid({', '.join(hybrid.retrievers)})", hybrid=HYBRID_DIR)
    extras[HYBRID_DIR] = hybrid.save
    if pipeline is not None:  # how the recipe was made, and what the forward protocol measured, travel along
        settings["pipeline"] = PIPELINE_FILE
        extras[PIPELINE_FILE] = partial(shutil.copyfile, Path(request.hybrid) / PIPELINE_FILE)
    payload = [{"title": a.title, "caption": a.caption, "headings": " / ".join(a.headings), "text": a.text} for a in articles]
    index = build_vectors(vectors, ids, payload, metric=request.metric or "cosine", encoder=settings,
                          **request.index_options(out))
    index.save(out, extras=extras, overwrite=request.overwrite)
    return index


def _pipeline(recipe: Path, encoder: str | None) -> dict[str, Any] | None:
    """pipeline.json of a recipe saved by `eval coliee --protocol forward --save-pipeline` (None for a plain
    `--save-hybrid` recipe), with `encoder_path`: its fine-tuned encoder, which the index must embed with."""
    if not (Path(recipe) / PIPELINE_FILE).is_file():
        return None
    record = read_json(Path(recipe) / PIPELINE_FILE, "pipeline record")
    if not isinstance(record, dict):
        raise UserError(f"{recipe}/{PIPELINE_FILE} must hold a JSON object")
    if "encoder_dir" in record:
        inside(recipe, record["encoder_dir"], "encoder_dir")  # refuses a path out of the pipeline
        own = str(Path(recipe) / record["encoder_dir"])  # unresolved: the index names it "encoder"
    else:
        own = checks.text("pipeline base_encoder", record.get("base_encoder"))
    if encoder is not None and Path(encoder).expanduser().resolve() != Path(own).expanduser().resolve():
        kind = "its fine-tuned encoder" if "encoder_dir" in record else f"the encoder {own}"
        raise UserError(f"the pipeline in {recipe} was tuned with {kind}; drop --encoder")
    return {**record, "encoder_path": own}


def _save_articles(articles: list[Article], path: Path) -> None:
    path.write_text(json.dumps([dataclasses.asdict(a) for a in articles], ensure_ascii=False), encoding="utf-8")


class IndexedDense:
    """The dense retriever over the index's own vectors: every article's cosine similarity, from FAISS."""

    name = "dense"

    def __init__(self, index: ManifestIndex, article_ids: Sequence[str], encoder: str, device: str):
        self.index, self.article_ids, self.encoder, self.device = index, list(article_ids), encoder, device
        self._column = {article_id: j for j, article_id in enumerate(self.article_ids)}

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        found_scores, found_ids = self.index.search_ids(encode_texts(queries, self.encoder, self.device),
                                                        k=self.index.ntotal)
        dense = np.zeros((len(queries), len(self.article_ids)), dtype=np.float32)  # approximate kinds may miss some
        for row, (ids, scores) in enumerate(zip(found_ids.tolist(), found_scores.tolist())):
            columns = [(self._column[i], s) for i, s in zip(ids, scores) if i in self._column]
            dense[row, [j for j, _ in columns]] = [s for _, s in columns]
        return dense


class StatuteEngine(Engine):
    """Answers questions with the fused BM25 + dense (+ trained model) scores of every article; each hit's
    `selected` says whether it is in the answer set the recipe's selection ratio picks (what COLIEE scores)."""

    family, field = "retrieval", "text"

    def __init__(self, index: ManifestIndex, device: str = "auto"):
        super().__init__(index)
        settings = index.encoder
        if not inside(index.path, settings.get("bm25", BM25_DIR), "bm25").is_dir():
            raise UserError(f"index {index.path} has no BM25 index beside its vectors; rebuild it")
        device = resolve_device(device)
        bm25 = BM25Retriever.load(inside(index.path, settings.get("bm25", BM25_DIR), "bm25"))
        dense = str(inside(index.path, settings["dense_dir"], "dense_dir")) if "dense_dir" in settings else settings.get("dense")
        retrievers: list[Any] = [bm25, IndexedDense(index, bm25.article_ids, dense, device)]
        self.model = _load_model(index, device) if "model_dir" in settings else None
        if self.model is not None:
            if self.model.article_ids != bm25.article_ids:
                raise UserError(f"index {index.path}: its model scores other articles than its BM25 index; rebuild it")
            retrievers.append(self.model)
        self.hybrid = self._hybrid(index, {r.name: r for r in retrievers})

    @staticmethod
    def _hybrid(index: ManifestIndex, retrievers: dict[str, Any]) -> HybridRetriever:
        """The recipe saved in the index; indexes built before recipes were saved kept their weights in
        the manifest."""
        settings = index.encoder
        if "hybrid" in settings:
            return HybridRetriever.from_pretrained(inside(index.path, settings["hybrid"], "hybrid"), retrievers)
        weights = settings.get("weights")
        if not isinstance(weights, dict) or set(weights) != set(retrievers):
            raise UserError(f"index {index.path} has no fusion recipe for its retrievers; rebuild it")
        config = HybridConfig(tuple(retrievers), tuple(weights[name] for name in retrievers))
        return HybridRetriever(list(retrievers.values()), config.weights, config.ratio)

    def search(self, queries: list[Query], k: int, where: Any, exclude: Sequence[Sequence[Any]] | None) -> list[list[Hit]]:
        texts = [q.text for q in queries]
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise UserError("the query text is empty")
        fused = checked_scores(self.hybrid, texts).astype(np.float64)
        ids = self.hybrid.article_ids
        if where is not None:
            allowed = set(self.index.ids_where(where).tolist())
            fused[:, [j for j, i in enumerate(ids) if i not in allowed]] = -np.inf
        for row, excluded in enumerate(exclude or []):
            dropped = set(map(str, excluded))
            fused[row, [j for j, i in enumerate(ids) if i in dropped]] = -np.inf
        best = top_k(fused, k)
        kept = [[j for j in best[q] if np.isfinite(fused[q, j])] for q in range(len(texts))]
        wanted = sorted({ids[j] for row in kept for j in row})
        payload = dict(zip(wanted, self.index.payloads(wanted)))
        answers = [set(chosen) for chosen in select(fused, ids, self.hybrid.ratio)]  # COLIEE's answer set
        hits = [[Hit(ids[j], float(fused[q, j]), {**payload[ids[j]], "selected": ids[j] in answers[q]}) for j in row]
                for q, row in enumerate(kept)]
        if isinstance(self.model, ParaformerRetriever):
            for text, ranked in zip(texts, hits):
                for hit, (weight, sentence) in zip(ranked, self.model.explain(text, [h.id for h in ranked])):
                    hit.payload["explanation"] = f"{sentence} (attention {weight:.2f})"
        return hits


def _load_model(index: ManifestIndex, device: str) -> NeuralRetriever:
    """The trained model stored in a coliee index, over the index's articles and their saved features."""
    records = read_json(inside(index.path, ARTICLES_FILE), "article list")
    if not isinstance(records, list):
        raise UserError(f"index {index.path}: {ARTICLES_FILE} must hold a list of articles")
    try:
        articles = [Article.from_dict(r) for r in records]
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"index {index.path}: {ARTICLES_FILE} holds a malformed article") from None
    return load_retriever(inside(index.path, index.encoder["model_dir"], "model_dir"), articles, device,
                          features_file=inside(index.path, FEATURES_FILE))


FAMILY = register_family(Family(
    name="retrieval", corpora={"coliee": build_index}, opener=StatuteEngine,
    build_options=frozenset({"data_dir", "encoder", "model", "hybrid"}),
))
