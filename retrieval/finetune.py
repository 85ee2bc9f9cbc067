"""Fine-tuning the sentence encoder on (question, gold article) pairs with sentence-transformers' own
trainer: MultipleNegativesRankingLoss over in-batch negatives and mined hard negatives, in batches
without duplicate texts (a popular article twice in a batch would be its own negative).

The result is a sentence-transformers folder: dense retrieval, hybrids, indexes (`--encoder DIR`) and
Paraformer load it by path.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indexes.checks import integer, number
from indexes.errors import UserError
from indexes.files import atomic_dir, check_output
from indexes.runtime import progress_enabled, resolve_device, seed_everything
from indexes.text_encoder import DEFAULT_TEXT_ENCODER, open_text_encoder
from retrieval.checks import MAX_EPOCHS
from retrieval.coliee import Article, Query, load_coliee

TRAINING_FILE = "training.json"


def question_article_pairs(articles: Sequence[Article], queries: Sequence[Query]) -> list[tuple[str, str]]:
    """(question, gold article's search text) for every gold article of every question."""
    by_id = {a.id: a for a in articles}
    return [(q.text, by_id[g].search_text) for q in queries for g in q.gold if g in by_id]


def finetune_encoder(encoder: str | Path | None, pairs: Sequence[tuple[str, str]], out: str | Path, *,
                     corpus: Sequence[str] = (), hard_negatives: int = 1, epochs: int = 2, batch_size: int = 16,
                     lr: float = 2e-5, device: str = "auto", seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune `encoder` (default all-MiniLM-L6-v2) on (query, positive) `pairs`, with
    `hard_negatives` per pair mined from `corpus` by the encoder itself (none without a corpus); save
    it to `out` atomically, with training.json (settings and the loss per epoch). Returns that record."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers.trainer_callback import PrinterCallback

    integer("epochs", epochs, 1, MAX_EPOCHS)
    integer("batch_size", batch_size, 2, 4096)
    integer("hard_negatives", hard_negatives, 0, 32)
    number("lr", lr, 0, low_open=True)
    if not pairs:
        raise UserError("no (question, gold article) pairs to fine-tune on")
    check_output(out, overwrite, "encoder directory")
    seed_everything(seed)
    device = resolve_device(device)
    model = open_text_encoder(str(encoder) if encoder else DEFAULT_TEXT_ENCODER, device)
    dataset = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    if hard_negatives and corpus:
        dataset = _with_hard_negatives(dataset, model, list(corpus), pairs, hard_negatives)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size, learning_rate=lr,
            warmup_steps=0.1, seed=seed, data_seed=seed, batch_sampler="no_duplicates", logging_strategy="epoch",
            save_strategy="no", report_to="none", use_cpu=not device.startswith("cuda"),
            disable_tqdm=not progress_enabled(), dataloader_drop_last=False)
        trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model))
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when bars are off; we keep the history
        trainer.train()
    history = [{"epoch": round(log["epoch"]), "loss": log["loss"]} for log in trainer.state.log_history if "loss" in log]
    record = {"encoder": str(encoder or DEFAULT_TEXT_ENCODER), "pairs": len(pairs), "rows": len(dataset),
              "hard_negatives": hard_negatives if corpus else 0, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "seed": seed, "train_seconds": round(time.perf_counter() - started, 1), "history": history}
    model.eval()
    with atomic_dir(out, "model", overwrite) as tmp:
        model.save(str(tmp))
        (tmp / TRAINING_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return {"out": str(out), **record}


def _with_hard_negatives(dataset: Any, model: Any, corpus: list[str], pairs: Sequence[tuple[str, str]],
                         count: int) -> Any:
    """(anchor, positive, negative) rows: each pair's best-scoring corpus texts that are none of its
    question's gold texts (a question may have several) and score below 95% of the positive."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    gold: dict[str, set[str]] = {}
    for question, positive in pairs:
        gold.setdefault(question, set()).add(positive)
    mined = mine_hard_negatives(dataset, model, corpus=corpus, num_negatives=count + 2, range_max=20,
                                relative_margin=0.05, sampling_strategy="top", output_format="n-tuple",
                                batch_size=64, verbose=False)
    negatives = [c for c in mined.column_names if c.startswith("negative")]
    rows = {"anchor": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(count)}}
    for row in mined:
        kept = [row[c] for c in negatives if row[c] not in gold[row["anchor"]]][:count]
        if len(kept) == count:
            rows["anchor"].append(row["anchor"])
            rows["positive"].append(row["positive"])
            for i, text in enumerate(kept):
                rows[f"negative_{i + 1}"].append(text)
    return Dataset.from_dict(rows) if rows["anchor"] else dataset


def train_bi_encoder(data_dir: str | Path | None, train_years: Sequence[str], out: str | Path,
                     encoder: str | None = None, **settings: Any) -> dict[str, Any]:
    """`finetune_encoder` on the COLIEE questions of `train_years` (default data: the bundled sample),
    hard negatives mined from the civil code's articles."""
    data = load_coliee(data_dir)
    return {"train_years": list(train_years),
            **finetune_encoder(encoder, question_article_pairs(data.articles, data.queries(train_years)), out,
                               corpus=[a.search_text for a in data.articles], **settings)}
