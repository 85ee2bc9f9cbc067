"""COLIEE Task 3 benchmark: BM25, dense, their hybrid and any trained neural models (alone and fused),
each tuned on the validation year (selection ratio, fusion weights) and scored on the test year.

    .venv/bin/python bench/coliee_bench.py [--data ../shared/data/coliee] [--model paraformer=DIR ...]

Prints a markdown table: macro SetF2 / SetP / SetR of the selected sets, R@K and AP of the rankings,
training time (from a model's training.json), index build time and query time per query.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval.bm25 import BM25Retriever  # noqa: E402
from retrieval.coliee import load_coliee, parse_years  # noqa: E402
from retrieval.evaluate import coliee_metrics, make_retriever, tune_on  # noqa: E402
from retrieval.fusion import HybridRetriever  # noqa: E402
from retrieval.selection import select  # noqa: E402

COLUMNS = ("SetF2", "SetP", "SetR", "R@1", "R@5", "R@10", "R@20", "AP")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - start


def bench_row(name, retriever, build_s, valid, test, train_s=None) -> dict:
    """Tune on `valid`, score `test`; the row of the table."""
    ratio = tune_on(retriever, valid)
    scores, query_s = timed(retriever.scores, [q.text for q in test])
    selected = select(scores, retriever.article_ids, ratio)
    metrics = coliee_metrics(scores, retriever.article_ids, [q.gold for q in test], selected)
    weights = retriever.named_weights() if isinstance(retriever, HybridRetriever) else {}
    return {"system": name, **metrics, "ratio": ratio, "weights": weights, "train_s": train_s,
            "build_s": build_s, "query_ms": 1000 * query_s / len(test)}


def markdown(rows: list[dict]) -> str:
    head = ["system", *COLUMNS, "ratio", "weights", "train s", "index s", "query ms/q"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        weights = ", ".join(f"{k} {v:.2f}" for k, v in r["weights"].items()) or "-"
        train = f"{r['train_s']:.0f}" if r["train_s"] is not None else "-"
        cells = [r["system"], *(f"{r[c]:.4f}" for c in COLUMNS), f"{r['ratio']:.2f}", weights, train,
                 f"{r['build_s']:.1f}", f"{r['query_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "coliee")
    parser.add_argument("--valid-years", default="R02")
    parser.add_argument("--test-years", default="R03")
    parser.add_argument("--encoder", help="dense encoder (default all-MiniLM-L6-v2)")
    parser.add_argument("--encoder-label", default="MiniLM", help="what the dense rows call the encoder")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="a trained model directory (ragcli train paraformer|attentive-cnn); repeatable")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_coliee(args.data)
    valid, test = data.queries(parse_years(args.valid_years)), data.queries(parse_years(args.test_years))
    bm25, bm25_s = timed(make_retriever, "bm25", data.articles)
    dense, dense_s = timed(make_retriever, "dense", data.articles, args.encoder, device=args.device)
    plain, plain_s = timed(BM25Retriever.build, [a.text for a in data.articles], bm25.article_ids)  # no headings
    rows = [bench_row("BM25", bm25, bm25_s, valid, test), bench_row("BM25, article text only", plain, plain_s, valid, test),
            bench_row(f"dense ({args.encoder_label})", dense, dense_s, valid, test),
            bench_row("hybrid: BM25 + dense", HybridRetriever([bm25, dense]), bm25_s + dense_s, valid, test)]
    for spec in args.model:
        name, _, model_dir = spec.partition("=")
        neural, neural_s = timed(make_retriever, model_dir, data.articles, device=args.device)
        summary = Path(model_dir) / "training.json"
        train_s = json.loads(summary.read_text())["train_seconds"] if summary.is_file() else None
        rows.append(bench_row(name, neural, neural_s, valid, test, train_s))
        rows.append(bench_row(f"hybrid: BM25 + dense + {name}", HybridRetriever([bm25, dense, neural]),
                              bm25_s + dense_s + neural_s, valid, test, train_s))
    print(f"COLIEE Task 3, {len(data.articles)} articles; tuned on {args.valid_years} ({len(valid)} queries), "
          f"tested on {args.test_years} ({len(test)} queries)\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
