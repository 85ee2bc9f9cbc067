"""SASRec benchmark: train on a dataset with one loss, then test under both protocols (run by hand).

    python bench/recsys_bench.py run --dataset games --loss bce     # one run, results JSON in --out
    python bench/recsys_bench.py table                              # markdown table of every finished run

Reports HR@10 / NDCG@10 (full ranking and sampled100) on the leave-one-out test items, seconds per
epoch (mean over the epochs run), epochs to the best validation NDCG@10, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data import LeaveOneOut, load_sequences  # noqa: E402
from recsys.evaluate import evaluate  # noqa: E402
from recsys.recommender import Recommender  # noqa: E402
from recsys.train import TrainConfig, train_sasrec  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "recsys"
# The SASRec paper's settings: Games (sparse) with maxlen 50 and dropout 0.5, MovieLens (dense) with 200 / 0.2.
DATASETS = {
    "games": {"path": DATA / "amazon-games.txt", "maxlen": 50, "dropout": 0.5},
    "ml-100k": {"path": DATA / "ml-100k", "maxlen": 200, "dropout": 0.2},
}


def run(args: argparse.Namespace) -> None:
    spec = DATASETS[args.dataset]
    torch.set_num_threads(args.threads)
    seqs = load_sequences(args.data or spec["path"])
    config = TrainConfig(loss=args.loss, epochs=args.epochs, batch_size=128, maxlen=spec["maxlen"], hidden=50,
                         blocks=2, heads=1, dropout=spec["dropout"], lr=1e-3, patience=args.patience,
                         eval_every=args.eval_every, device="cpu", seed=0)
    name = f"{args.dataset}-{args.loss}"
    summary = train_sasrec(seqs, args.out / name / "model", config)
    model = Recommender.from_pretrained(args.out / name / "model", device="cpu").model
    test = LeaveOneOut(seqs, config.maxlen).case("test")
    result = {
        "dataset": args.dataset, "loss": args.loss, "users": seqs.n_users, "items": seqs.n_items,
        "threads": args.threads, "full": evaluate(model, test, "full", ks=(10,)),
        "sampled100": evaluate(model, test, "sampled100", ks=(10,)),
        **{k: summary[k] for k in ("epochs_run", "best_epoch", "best_valid_ndcg10", "seconds_per_epoch", "peak_memory_mb")},
    }
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def table(args: argparse.Namespace) -> None:
    print("| dataset | loss | HR@10 full | NDCG@10 full | HR@10 sampled100 | NDCG@10 sampled100 "
          "| s/epoch | epochs to best (run) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for file in sorted(args.out.glob("*.json")):
        r = json.loads(file.read_text())
        print(f"| {r['dataset']} | {r['loss']} | {r['full']['HR@10']:.4f} | {r['full']['NDCG@10']:.4f} "
              f"| {r['sampled100']['HR@10']:.4f} | {r['sampled100']['NDCG@10']:.4f} | {r['seconds_per_epoch']:.1f} "
              f"| {r['best_epoch']} ({r['epochs_run']}) | {r['peak_memory_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "recsys")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--dataset", choices=DATASETS, required=True)
    one.add_argument("--data", type=Path, help="Override the dataset path.")
    one.add_argument("--loss", default="ce")
    one.add_argument("--epochs", type=int, default=200)
    one.add_argument("--patience", type=int, default=5, help="In evaluations, not epochs.")
    one.add_argument("--eval-every", type=int, default=1)
    one.add_argument("--threads", type=int, default=1,
                     help="torch threads; 1 because the 2 cores are shared (2 threads spin-wait when contended).")
    sub.add_parser("table")
    args = parser.parse_args()
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
