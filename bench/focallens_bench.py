"""Conditional retrieval on the generated benchmark: an unconditional encoder vs FocalLens, same images,
same network, same training loop and budget; per-condition mAP@R and Success@1 on the test split.

    .venv/bin/python bench/focallens_bench.py --n 10000 --size 32 --epochs 16 --out /tmp/focallens-bench

Each test image queries all other test images; relevance = same value of the conditioned factor. Each
condition is asked with the first phrasing of its factor. Writes the trained models and one contact
sheet per condition (the same query image under each instruction) to --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from indexes.runtime import seed_everything  # noqa: E402
from vision.evaluate import evaluate_focallens  # noqa: E402
from vision.focallens import FocalLens  # noqa: E402
from vision.sheet import write_contact_sheet  # noqa: E402
from vision.synthetic import make_conditional  # noqa: E402
from vision.train_focallens import TrainSettings, save_model, train_focallens  # noqa: E402


def run(conditional: bool, splits, args) -> tuple[FocalLens, dict, dict]:
    seed_everything(args.seed)  # the initial weights too
    model = FocalLens(image_size=args.size, patch_size=args.patch, embed_dim=args.dim, depth=args.depth,
                      num_heads=args.heads, conditional=conditional)
    log = train_focallens(model, splits["train"], TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                                                                lr=args.lr, seed=args.seed, device="cpu"))
    test = splits["test"]
    conditions = {f: p[0] for f, p in test.phrasings.items()}
    results = evaluate_focallens(model, test, conditions, batch_size=256, device="cpu")
    save_model(model, Path(args.out) / model.name)
    print(f"{model.name}: {log['steps']} steps in {log['seconds']} s, loss {log['loss'][0]:.3f} -> {log['loss'][-1]:.3f}", flush=True)
    return model, log, results


def sheets(model: FocalLens, test, out: Path, query: int = 0, k: int = 6) -> None:
    """One contact sheet per condition for the same query image: its k nearest test images."""
    for factor, phrasings in test.phrasings.items():
        emb = model.embed(test.images, phrasings[0], batch_size=256, device="cpu")
        scores = emb @ emb[query]
        scores[query] = -np.inf
        top = np.argsort(-scores)[:k]
        neighbours = [(Image.fromarray(test.images[i]), f"{i} {test.labels[factor][int(i)]}", float(scores[i])) for i in top]
        write_contact_sheet(out / f"sheet-{factor}.png", Image.fromarray(test.images[query]), neighbours,
                            title=f"{factor}: {test.labels[factor][query]}", thumb=96)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000, help="images generated (80%% train, 20%% test)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--out", default="/tmp/focallens-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = make_conditional(args.n, args.size, args.seed)
    _, base_log, base = run(False, splits, args)
    model, lens_log, lens = run(True, splits, args)
    sheets(model, splits["test"], Path(args.out))
    print(f"\n{len(splits['train'])} train / {len(splits['test'])} test images of {args.size}x{args.size}; "
          f"ViT patch {args.patch}, dim {args.dim}, depth {args.depth}; {lens_log['steps']} steps of batch {args.batch_size} each; "
          f"training time unconditional {base_log['seconds']} s, FocalLens {lens_log['seconds']} s\n")
    print("| condition | unconditional mAP@R | unconditional Success@1 | FocalLens mAP@R | FocalLens Success@1 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for factor in lens:
        print(f"| {factor} | {base[factor]['mAP@R']:.3f} | {base[factor]['Success@1']:.3f} | {lens[factor]['mAP@R']:.3f} "
              f"| {lens[factor]['Success@1']:.3f} |")


if __name__ == "__main__":
    main()
