"""Do the explanations point at the object? On the generated conditional benchmark (whose objects are the
only coloured pixels on a grey background), each test query is explained against its nearest neighbour
under each condition; the pointing game (is the map's maximum on the object?) and the share of heat on
the object are averaged over queries and over both images of each pair.

    .venv/bin/python bench/focallens_bench.py --n 10000 --size 32 --epochs 16 --out /tmp/focallens-bench
    .venv/bin/python bench/explain_bench.py --models /tmp/focallens-bench --n 10000 --size 32 --queries 200

The models are the ones focallens_bench.py trained (FocalLens and the unconditional baseline); the test
split is regenerated with the same --n, --size and --seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from indexes.runtime import load_pretrained  # noqa: E402
from vision.explain import explain_pair, heat_on_object, pointing_hit  # noqa: E402
from vision.focallens import FocalLens  # noqa: E402
from vision.synthetic import make_conditional  # noqa: E402

SATURATION = 60  # the objects are saturated colours; the background is grey (equal channels) plus noise


def object_mask(image: np.ndarray) -> np.ndarray:
    """True where the pixel belongs to the coloured object."""
    pixels = image.astype(np.int16)
    return (pixels.max(-1) - pixels.min(-1)) > SATURATION


def score(model: FocalLens, images: np.ndarray, condition: str, queries: int) -> tuple[float, float]:
    """(pointing accuracy, mean share of heat on the object) over each query and its nearest neighbour."""
    embeddings = model.embed(images, condition if model.conditional else None, batch_size=256, device="cpu")
    hits, shares = [], []
    for q in range(queries):
        similarity = embeddings @ embeddings[q]
        similarity[q] = -np.inf
        n = int(np.argmax(similarity))
        maps = explain_pair(model, Image.fromarray(images[q]), Image.fromarray(images[n]), condition)
        for heat, i in zip(maps, (q, n)):
            mask = object_mask(images[i])
            hits.append(pointing_hit(heat, mask))
            shares.append(heat_on_object(heat, mask))
    return float(np.mean(hits)), float(np.mean(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="focallens_bench.py's --out")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    test = make_conditional(n=args.n, size=args.size, seed=args.seed)["test"]
    area = float(np.mean([object_mask(image).mean() for image in test.images]))
    print(f"{len(test)} test images; objects cover {area:.1%} of an image on average (a map's chance level)")
    print("| condition | model | pointing game | heat on object |\n| --- | --- | ---: | ---: |")
    for name in ("focallens", "focallens-unconditional"):
        model = load_pretrained(FocalLens, args.models / name).eval()
        started = time.perf_counter()
        for factor, phrasings in test.phrasings.items():
            pointing, share = score(model, test.images, phrasings[0], args.queries)
            print(f"| {factor} | {name} | {pointing:.3f} | {share:.3f} |", flush=True)
        print(f"<!-- {name}: {time.perf_counter() - started:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
