"""Conditional image retrieval metrics: every image queries all the others; under a condition, an image
is relevant when it shares the value of the conditioned factor (e.g. the same colour).

Success@K is 1 when a relevant image is in the top K (what metric-learning papers, after Musgrave et al.,
2020, call Recall@K; ir_measures' and ragcli's R@K is the share of the relevant images found). P@K is
precision in the top K; mAP@R is AP within the top R, R = the number of relevant images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from indexes import metrics
from indexes.errors import UserError
from vision.focallens import FocalLens, load_focallens
from vision.synthetic import ConditionalSet, load_split


def ranked_hits(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hits, n_relevant) of each image querying all others by cosine similarity, itself excluded."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :-1]  # the last column is the query itself
    labels = np.asarray(labels)
    hits = labels[order] == labels[:, None]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return hits, counts[inverse] - 1


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean Success@K, P@K and mAP@R over all images as queries."""
    if len(embeddings) != len(labels):
        raise UserError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if len(labels) < 2:
        raise UserError("need at least 2 images to evaluate retrieval")
    metrics.require_finite(embeddings, "the image embeddings")  # NaN similarities would rank every image first
    hits, n_relevant = ranked_hits(embeddings, labels)
    ks = [k for k in ks if k <= hits.shape[1]]
    out = {f"Success@{k}": float(metrics.hit_rate_at_k(hits, k).mean()) for k in ks}
    out |= {f"P@{k}": float(metrics.precision_at_k(hits, k).mean()) for k in ks}
    out["mAP@R"] = float(metrics.map_at_r(hits, n_relevant).mean())
    return out


def evaluate_conditions(
    embed: Callable[[str | None], np.ndarray],
    labels: pl.DataFrame,
    conditions: Mapping[str, str | None],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Metrics per factor (embedding the images with `embed(instruction)`), plus their `"mean"`.

    `conditions` maps a label column to the instruction for it (None for an unconditional encoder);
    embeddings are computed once per distinct instruction."""
    if unknown := [f for f in conditions if f not in labels.columns]:
        raise UserError(f"no label column for {unknown}; the data has {labels.columns}")
    cache: dict[str | None, np.ndarray] = {}
    results = {}
    for factor, instruction in conditions.items():
        if instruction not in cache:
            cache[instruction] = embed(instruction)
        results[factor] = retrieval_metrics(cache[instruction], labels[factor].to_numpy(), ks)
    results["mean"] = {m: float(np.mean([r[m] for r in results.values()])) for m in next(iter(results.values()))}
    return results


def parse_conditions(specs: Sequence[str], phrasings: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """`FACTOR` or `FACTOR=INSTRUCTION` -> {factor: instruction}; a bare factor takes its first phrasing.

    No specs: every factor with phrasings."""
    if not specs:
        return {f: p[0] for f, p in phrasings.items()}
    out = {}
    for spec in specs:
        factor, sep, text = (part.strip() for part in spec.partition("="))
        if factor not in phrasings:
            raise UserError(f"unknown condition factor {factor!r}; the data has {', '.join(phrasings)}")
        if sep and not text:
            raise UserError(f"the condition for {factor!r} is empty")
        out[factor] = text if sep else phrasings[factor][0]
    return out


def evaluate_focallens(model: FocalLens, data: ConditionalSet, conditions: Mapping[str, str], batch_size: int = 64,
                       device: str = "auto") -> dict[str, dict[str, float]]:
    """`evaluate_conditions` for a FocalLens model; an unconditional one embeds the images once."""
    return evaluate_conditions(lambda c: model.embed(data.images, c, batch_size, device), data.labels,
                               conditions if model.conditional else dict.fromkeys(conditions))


def evaluate_images(data: str | Path, split: str = "test", encoder: str | None = None, model: str | Path | None = None,
                    conditions: Sequence[str] = (), batch_size: int = 64, device: str = "auto",
                    weights: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Per-condition and mean retrieval metrics of a FocalLens model (`model`) or an unconditional encoder
    (`encoder` spec, with `weights`) on a labelled split."""
    if (encoder is None) == (model is None):
        raise UserError("give exactly one of --encoder or --model")
    if weights is not None and encoder is None:
        raise UserError("--weights go with --encoder; a FocalLens --model carries its own")
    dataset = load_split(data, split)
    wanted = parse_conditions(conditions, dataset.phrasings)
    if model is not None:
        return evaluate_focallens(load_focallens(model), dataset, wanted, batch_size, device)
    from vision.datasets import ImageArray
    from vision.encoders import create_encoder

    images = ImageArray(dataset.images) if isinstance(dataset.images, np.ndarray) else dataset.images
    embedder = create_encoder(encoder, weights=weights)
    return evaluate_conditions(lambda _: embedder.embed(images, batch_size, device), dataset.labels, dict.fromkeys(wanted))
