"""Train, save and load the neural statute retrievers (Paraformer, Attentive CNN) behind one interface.

A model directory holds config.json (the model's settings plus its "architecture"), model.safetensors,
training.json (history and settings), and per architecture a vocab.json (Attentive CNN) or a
fine-tuned encoder/ folder (Paraformer with `finetune_epochs`). `load_retriever` turns one into a
`Retriever` over a list of articles; `train_model` is what `ragcli train paraformer|attentive-cnn` runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from indexes.checks import integer
from indexes.errors import UserError
from indexes.distributed import join, launch_rank, rank_device, writer_dir
from indexes.files import atomic_write_text, check_output, inside, read_json, regular_file
from indexes.runtime import load_pretrained, resolve_device, seed_everything
from indexes.text_encoder import DEFAULT_TEXT_ENCODER
from retrieval.attentive_cnn import AttentiveCNN, TokenFeaturizer, Vocab
from retrieval.bm25 import BM25Retriever
from retrieval.checks import MAX_EPOCHS
from retrieval.coliee import Article, Query, load_coliee, parse_years
from retrieval.dense import DenseRetriever
from retrieval.finetune import finetune_encoder, question_article_pairs
from retrieval.paraformer import Paraformer, SentenceFeaturizer, article_lines
from retrieval.training import Features, Split, TrainConfig, fit, hard_negative_pool, score_matrix

ARCHITECTURES: dict[str, type[nn.Module]] = {"paraformer": Paraformer, "attentive-cnn": AttentiveCNN}
CONFIG_FILE, VOCAB_FILE, ENCODER_DIR, TRAINING_FILE = "config.json", "vocab.json", "encoder", "training.json"
WEIGHTS_FILE = "model.safetensors"


class NeuralRetriever:
    """A trained model as a `Retriever`: article features computed once (or read from a file saved
    with `save_features`, so an index need not re-embed its articles per query), queries per call."""

    def __init__(self, name: str, model: nn.Module, featurizer: Any, articles: Sequence[Article],
                 features: Features | None = None) -> None:
        if not articles:
            raise UserError("no articles to retrieve from")
        self.name, self.model, self.featurizer = name, model.eval(), featurizer
        self.articles = list(articles)
        self.article_ids = [a.id for a in self.articles]
        self.features = featurizer.articles(self.articles) if features is None else features
        if len(self.features) != len(self.articles):
            raise UserError(f"{len(self.features)} article features for {len(self.articles)} articles")

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        return score_matrix(self.model, self.featurizer.queries(list(queries)), self.features)

    def save_features(self, path: Path) -> None:
        """The article features as safetensors (tensor i under the key "i")."""
        save_file({str(i): t.contiguous() for i, t in enumerate(self.features.tensors)}, str(path))


class ParaformerRetriever(NeuralRetriever):
    """Paraformer scores plus its explanation: the sentence of an article the query attends to most."""

    def explain(self, query: str, article_ids: Sequence[str]) -> list[tuple[float, str]]:
        """(attention weight, sentence) of the most attended line of each article, in `article_ids` order."""
        row = {a: i for i, a in enumerate(self.article_ids)}
        unknown = [a for a in article_ids if a not in row]
        if unknown:
            raise UserError(f"unknown article id(s): {', '.join(unknown)}")
        rows = [row[a] for a in article_ids]
        device = next(self.model.parameters()).device
        query_vec = self.featurizer.queries([query]).tensors[0].to(device)
        sentences, mask = (t.to(device) for t in self.features.take(torch.tensor(rows)[None]))
        with torch.inference_mode():
            weight, best = self.model.attention(query_vec, sentences, mask)[0].max(-1)
        return [(float(w), article_lines(self.articles[r])[b]) for w, b, r in zip(weight.tolist(), best.tolist(), rows)]


def load_retriever(model_dir: str | Path, articles: Sequence[Article], device: str = "auto",
                   features_file: Path | None = None) -> NeuralRetriever:
    """The retriever saved in `model_dir` (architecture read from its config.json) over `articles`,
    with their features from `features_file` (written by `save_features`) when given. Everything is
    checked (config types and ranges, every tensor, the vocabulary or encoder folder): a broken
    directory is one UserError, never a model with random weights."""
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).exists():
        raise UserError(f"{model_dir}: not a trained model directory (no {CONFIG_FILE})")
    config = read_json(model_dir / CONFIG_FILE, "model config")
    architecture = config.get("architecture") if isinstance(config, dict) else None
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise UserError(f"{model_dir / CONFIG_FILE}: unknown architecture {architecture!r}; "
                        f"known: {', '.join(ARCHITECTURES)}")
    regular_file(model_dir / WEIGHTS_FILE, "model weights")  # never fall back to a pickled checkpoint
    device = resolve_device(device)
    model = load_pretrained(ARCHITECTURES[architecture], model_dir, map_location=device).to(device)
    features = _read_features(features_file) if features_file is not None else None
    return _retriever(model, _featurizer(model, model_dir, device), articles, features)


def _read_features(path: Path) -> Features:
    """Article features saved by `save_features`: tensors "0", "1", ... with one row per article."""
    from safetensors import SafetensorError

    try:
        stored = load_file(str(regular_file(path, "article features")))
        tensors = tuple(stored[str(i)] for i in range(len(stored)))
    except (SafetensorError, KeyError, OSError) as err:
        raise UserError(f"{path}: unreadable article features ({type(err).__name__})") from None
    if not tensors or len({len(t) for t in tensors}) != 1:
        raise UserError(f"{path}: article features must be tensors with one row per article")
    return Features(tensors)


def _featurizer(model: nn.Module, model_dir: Path, device: str) -> Any:
    """The featurizer a model was trained with: its sentence encoder (the fine-tuned copy in encoder/)
    or its vocabulary, which must have exactly the model's number of word embeddings."""
    if isinstance(model, Paraformer):
        if not model.finetuned_encoder:
            return SentenceFeaturizer(model.encoder, device)
        encoder = inside(model_dir, ENCODER_DIR, "fine-tuned encoder folder")
        if not encoder.is_dir():
            raise UserError(f"{model_dir}: the fine-tuned encoder folder {ENCODER_DIR}/ is missing")
        return SentenceFeaturizer(encoder, device)
    vocab = Vocab.load(model_dir / VOCAB_FILE)
    if len(vocab) != model.embed.num_embeddings:
        raise UserError(f"{model_dir / VOCAB_FILE}: {len(vocab)} words, but the model has "
                        f"{model.embed.num_embeddings} word embeddings")
    return TokenFeaturizer(vocab, model.max_sentences, model.max_words)


def _retriever(model: nn.Module, featurizer: Any, articles: Sequence[Article],
               features: Features | None) -> NeuralRetriever:
    kind = ParaformerRetriever if isinstance(model, Paraformer) else NeuralRetriever
    return kind(model.architecture, model, featurizer, articles, features)


def train_model(architecture: str, data_dir: str | Path | None, train_years: str, valid_years: str,
                out: str | Path, config: TrainConfig, overwrite: bool = False, **model_options: Any) -> dict[str, Any]:
    """Read a COLIEE folder, train `architecture` on `train_years`, early-stop on `valid_years`, save to `out`
    (replacing a model ragcli wrote there only with `overwrite`)."""
    if launch_rank() == 0:
        check_output(out, overwrite, "model directory")
    train_years, valid_years = parse_years(train_years), parse_years(valid_years)
    data = load_coliee(data_dir)
    train_queries, valid_queries = data.queries(train_years), data.queries(valid_years)
    return train(architecture, data.articles, train_queries, valid_queries, out, config, overwrite=overwrite,
                 **model_options)


def train(architecture: str, articles: Sequence[Article], train_queries: Sequence[Query],
          valid_queries: Sequence[Query], out: str | Path, config: TrainConfig,
          mining_encoder: str | None = None, finetune_epochs: int = 0, overwrite: bool = False,
          **model_options: Any) -> dict[str, Any]:
    """Train one model and save it atomically to `out`; returns a summary (also saved as training.json).

    `mining_encoder` is the sentence encoder of the dense hard-negative miner (default: the Paraformer's
    encoder, else all-MiniLM-L6-v2); `finetune_epochs` > 0 first fine-tunes the Paraformer's encoder.
    """
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    integer("finetune_epochs", finetune_epochs, 0, MAX_EPOCHS)
    if finetune_epochs and architecture != "paraformer":
        raise UserError("only Paraformer has a sentence encoder to fine-tune")
    ranks = join()
    if finetune_epochs and ranks.world > 1:
        raise UserError("--finetune-epochs runs in one process: fine-tune with `train bi-encoder`, then pass --encoder")
    seed_everything(config.seed)
    started = time.perf_counter()
    device = rank_device(resolve_device(config.device), ranks)
    row = {a.id: i for i, a in enumerate(articles)}
    train_gold, valid_gold = _gold_rows(train_queries, row, "training"), _gold_rows(valid_queries, row, "validation")
    train_queries = [q for q, g in zip(train_queries, train_gold) if g]
    valid_queries = [q for q, g in zip(valid_queries, valid_gold) if g]
    train_gold, valid_gold = [g for g in train_gold if g], [g for g in valid_gold if g]
    with writer_dir(out, "model", overwrite) as tmp:  # under torchrun, rank 0 writes
        model, featurizer = _new_model(architecture, articles, train_queries, tmp, device,
                                       finetune_epochs, config.seed, model_options)
        miners = _miners(articles, mining_encoder or getattr(model, "encoder", DEFAULT_TEXT_ENCODER), device)
        texts = [q.text for q in train_queries]
        pool = hard_negative_pool([m.scores(texts) for m in miners], train_gold, config.pool_size)
        features = featurizer.articles(articles)
        result = fit(model, features, Split(featurizer.queries(texts), train_gold),
                     Split(featurizer.queries([q.text for q in valid_queries]), valid_gold), pool, config)
        model.cpu().save_pretrained(tmp, config={**model._hub_mixin_config, "architecture": architecture})
        summary = {"architecture": architecture, "out": str(out), "train_queries": len(train_queries),
                   "valid_queries": len(valid_queries), "articles": len(articles), "best_epoch": result.best_epoch,
                   f"best_valid_R@{config.recall_k}": result.best_recall, "train_seconds": round(result.seconds, 1),
                   "prepare_seconds": round(time.perf_counter() - started - result.seconds, 1),
                   "negative_miners": [m.name for m in miners], "config": dataclasses.asdict(config),
                   "finetune_epochs": finetune_epochs, "history": result.history}
        atomic_write_text(tmp / TRAINING_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _gold_rows(queries: Sequence[Query], row: dict[str, int], split: str) -> list[list[int]]:
    """Each query's gold articles as row indices (ids missing from the corpus dropped); none at all is an error."""
    gold = [[row[a] for a in q.gold if a in row] for q in queries]
    if not any(gold):
        raise UserError(f"no {split} query has a gold article in the corpus")
    return gold


def _new_model(architecture: str, articles: Sequence[Article], train_queries: Sequence[Query], workdir: Path, device: str, finetune_epochs: int, seed: int,
               options: dict[str, Any]) -> tuple[nn.Module, Any]:
    """A freshly initialised model and its featurizer (building the vocabulary or tuning the encoder)."""
    if architecture == "attentive-cnn":
        vocab = Vocab.build([a.text for a in articles] + [q.text for q in train_queries])
        vocab.save(workdir / VOCAB_FILE)
        model = AttentiveCNN(len(vocab), **options)
        return model, TokenFeaturizer(vocab, model.max_sentences, model.max_words)
    encoder = options.pop("encoder", DEFAULT_TEXT_ENCODER)
    source = encoder
    if finetune_epochs:
        source = workdir / ENCODER_DIR
        finetune_encoder(encoder, question_article_pairs(articles, train_queries), source,
                         corpus=[a.search_text for a in articles], epochs=finetune_epochs, device=device, seed=seed)
    featurizer = SentenceFeaturizer(source, device)
    dim = featurizer.embed([articles[0].text]).shape[1]
    return Paraformer(dim=dim, encoder=encoder, finetuned_encoder=bool(finetune_epochs), **options), featurizer


def _miners(articles: Sequence[Article], encoder: str, device: str) -> list:
    """BM25 and dense retrievers over the articles, whose top non-gold articles are the hard negatives."""
    texts, ids = [a.search_text for a in articles], [a.id for a in articles]
    return [BM25Retriever.build(texts, ids), DenseRetriever.build(texts, ids, encoder, device)]
