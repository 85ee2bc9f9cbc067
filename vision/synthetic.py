"""A conditional image retrieval benchmark: images drawn from independent factors (shape, colour, size,
position, background), each factor with several instruction phrasings and answer strings.

The same image is relevant to different neighbours depending on the factor an instruction asks about,
which is what FocalLens embeddings must capture. Everything is vectorised NumPy and deterministic by seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from indexes.errors import UserError
from indexes.files import atomic_dir, check_output, inside, read_json
from vision.celeba import celeba_root, load_celeba
from vision.celeba import phrasings as celeba_phrasings
from vision.datasets import ImageArray, check_memory, load_images, select_columns

FACTORS: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross"),
    "colour": ("red", "green", "blue", "yellow", "magenta"),
    "size": ("small", "large"),
    "position": ("top left", "top right", "bottom left", "bottom right"),
    "background": ("plain", "stripes", "checks"),
}
PHRASINGS: dict[str, tuple[str, ...]] = {
    "shape": ("focus on the shape", "what shape is the object?", "which shape is drawn?",
              "describe the object's outline"),
    "colour": ("focus on the colour", "what colour is the object?", "which colour is the shape painted?",
               "name the object's hue"),
    "size": ("focus on the size", "how big is the object?", "is the shape small or large?", "what size is the object?"),
    "position": ("focus on the position", "where is the object?", "which corner is the shape in?",
                 "locate the object in the frame"),
    "background": ("focus on the background", "what pattern is behind the object?", "describe the backdrop",
                   "which texture fills the background?"),
}
_RGB = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
        "magenta": (210, 50, 200), "cyan": (40, 200, 210)}
_RADIUS = {"small": 0.13, "large": 0.22}  # half-extent of the object, as a fraction of the image side
_CENTRE = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
           "bottom right": (0.73, 0.73)}
CONDITIONS_FILE = "conditions.json"
SPLITS = ("train", "test")
SOURCES = ("shapes", "digits")  # what `generate_dataset` draws: these shapes, or coloured digits (vision.digits)
RENDER_BYTES_PER_PIXEL = 64  # peak memory of `render`: float32 canvases, masks and distances per pixel


@dataclass(frozen=True)
class ConditionalSet:
    """Images (a uint8 (N, H, W[, 3]) array, or PIL images) with one label column per factor, and the
    instructions per factor."""

    images: np.ndarray | Sequence[Image.Image]
    labels: pl.DataFrame
    phrasings: dict[str, tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.images)

    def triples(self) -> pl.DataFrame:
        """Every (image, instruction, answer) triple, with the factor each instruction asks about."""
        frames = [
            pl.DataFrame({"image": np.arange(len(self)), "answer": self.labels[factor].cast(pl.Utf8)})
            .join(pl.DataFrame({"instruction": list(texts)}), how="cross")
            .with_columns(factor=pl.lit(factor))
            for factor, texts in self.phrasings.items()
        ]
        return pl.concat(frames).select("image", "factor", "instruction", "answer")


def render(labels: pl.DataFrame, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one image per label row: a coloured shape over a grey background pattern, lightly jittered."""
    n = len(labels)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    background = {
        "plain": np.full((size, size), 0.5, np.float32),
        "stripes": np.where((y * 8).astype(int) % 2 == 0, 0.32, 0.68).astype(np.float32),
        "checks": np.where(((y * 6).astype(int) + (x * 6).astype(int)) % 2 == 0, 0.32, 0.68).astype(np.float32),
    }
    canvas = np.stack([background[b] for b in labels["background"]])[..., None].repeat(3, axis=-1)
    centres = np.array([_CENTRE[p] for p in labels["position"]], np.float32) + rng.uniform(-0.04, 0.04, (n, 2))
    radius = np.array([_RADIUS[s] for s in labels["size"]], np.float32) * rng.uniform(0.9, 1.1, n)
    dx = (x[None] - centres[:, 0, None, None]) / radius[:, None, None]
    dy = (y[None] - centres[:, 1, None, None]) / radius[:, None, None]
    masks = {
        "circle": dx**2 + dy**2 <= 1.0,
        "square": (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85),
        "triangle": (dy >= -1.0) & (dy <= 0.8) & (np.abs(dx) <= (dy + 1.0) * 0.6),
        "cross": ((np.abs(dx) <= 0.33) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.33) & (np.abs(dx) <= 1.0)),
    }
    shape = labels["shape"].to_numpy()
    mask = np.zeros((n, size, size), bool)
    for name, m in masks.items():
        mask |= m & (shape == name)[:, None, None]
    canvas = np.where(mask[..., None], paint(labels["colour"], rng)[:, None, None, :], canvas)
    return finish(canvas, rng)


def paint(colours: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """(N, 3) float RGB in [0, 1] of each named colour, lightly jittered per image."""
    return np.array([_RGB[c] for c in colours], np.float32) / 255 + rng.uniform(-0.06, 0.06, (len(colours), 3))


def finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float (N, H, W, 3) canvases with light pixel noise -> uint8 images."""
    canvas = canvas + rng.normal(0.0, 0.02, canvas.shape).astype(np.float32)
    return (np.clip(canvas, 0.0, 1.0) * 255).round().astype(np.uint8)


def make_conditional(n: int = 2000, size: int = 64, seed: int = 0, test_fraction: float = 0.2) -> dict[str, ConditionalSet]:
    """`{"train": ..., "test": ...}`: `n` images with independently uniform factors, split by `test_fraction`."""
    check_request(n, size, test_fraction)
    rng = np.random.default_rng(seed)
    labels = pl.DataFrame({f: np.asarray(values)[rng.integers(0, len(values), n)] for f, values in FACTORS.items()})
    return split_set(render(labels, size, rng), labels, PHRASINGS, train_size(n, test_fraction))


def check_request(n: int, size: int, test_fraction: float) -> None:
    """A generator's arguments: at least 2 images of 16 px or more, a test fraction in (0, 1), memory to draw them."""
    if n < 2 or size < 16:
        raise UserError(f"need n >= 2 images of size >= 16 px, got n={n}, size={size}")
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test fraction must be in (0, 1), got {test_fraction}")
    check_memory(n * size * size * RENDER_BYTES_PER_PIXEL, f"rendering {n:,} images of {size} x {size} pixels")


def train_size(n: int, test_fraction: float) -> int:
    """How many of `n` rows go to train when `test_fraction` go to test; neither split is empty."""
    return n - min(n - 1, max(1, round(n * test_fraction)))


def split_set(images: np.ndarray, labels: pl.DataFrame, phrasings: dict[str, tuple[str, ...]],
              cut: int) -> dict[str, ConditionalSet]:
    """The first `cut` rows as "train", the rest as "test"."""
    return {
        "train": ConditionalSet(images[:cut], labels[:cut], phrasings),
        "test": ConditionalSet(images[cut:], labels[cut:], phrasings),
    }


def write_conditional(splits: dict[str, ConditionalSet], out: str | Path, overwrite: bool = False) -> Path:
    """Write each split as `<split>.npz` (`images` + one label array per factor, what `load_images` reads)
    and the phrasings per factor as conditions.json."""
    with atomic_dir(out, "dataset", overwrite) as tmp:
        for name, split in splits.items():
            labels = {c: split.labels[c].to_numpy().astype(str) for c in split.labels.columns}
            np.savez_compressed(tmp / f"{name}.npz", images=split.images, **labels)
        phrasings = next(iter(splits.values())).phrasings
        (tmp / CONDITIONS_FILE).write_text(json.dumps({f: list(p) for f, p in phrasings.items()}, indent=2) + "\n")
    return Path(out)


def generate_dataset(out: str | Path, n: int = 2000, size: int = 64, seed: int = 0, test_fraction: float = 0.2,
                     overwrite: bool = False, source: str = "shapes") -> dict:
    """Generate the benchmark (`source`: "shapes", or "digits": scikit-learn's digits, coloured) and write
    it to `out`; returns what was written (for the CLI)."""
    # imported here, not above: vision.digits builds on this module
    from vision.digits import DIGIT_FACTORS, make_digits

    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    check_output(out, overwrite, "dataset directory")
    make, factors = (make_conditional, FACTORS) if source == "shapes" else (make_digits, DIGIT_FACTORS)
    splits = make(n, size, seed, test_fraction)
    write_conditional(splits, out, overwrite)
    return {"path": str(out), "source": source, "size": size, "seed": seed,
            "splits": {k: len(v) for k, v in splits.items()}, "factors": {f: list(v) for f, v in factors.items()}}


def load_split(data: str | Path, split: str = "test", image_size: int = 32, seed: int = 0,
               attributes: Sequence[str] | None = None) -> ConditionalSet:
    """A split of a `data make-conditional` directory, a fresh 10,000-image benchmark for 'generated', a
    CelebA folder (`vision.celeba`), or any labelled image dataset `load_images` reads (one "focus on the
    <column>" instruction per label column); conditioned on `attributes` only when given."""
    if str(data) == "generated":
        if split not in SPLITS:
            raise UserError(f"the generated benchmark has the splits {', '.join(SPLITS)}, not {split!r}")
        return _select(make_conditional(10_000, image_size, seed)[split], attributes, data)
    if (root := celeba_root(data)) is not None:  # only the chosen attributes' labels are built
        faces = load_celeba(root, split, attributes)
        labels = faces.labels.drop("id")
        return ConditionalSet(faces.images, labels, {a: celeba_phrasings(a) for a in labels.columns})
    return _select(_load_labelled(Path(data), split), attributes, data)


def _select(data: ConditionalSet, attributes: Sequence[str] | None, where: str | Path) -> ConditionalSet:
    """`data` instructed about `attributes` alone (their phrasings); every factor for None."""
    if attributes is None:
        return data
    chosen = select_columns(list(data.phrasings), attributes, where)
    return ConditionalSet(data.images, data.labels, {f: data.phrasings[f] for f in chosen})


def _load_labelled(data: Path, split: str) -> ConditionalSet:
    """A `data make-conditional` directory's split, or the labelled images `load_images` reads at `data`."""
    path = data
    if (path / CONDITIONS_FILE).exists():
        phrasings = read_phrasings(path / CONDITIONS_FILE)
        split_file = inside(path, f"{split}.npz", "split")
        if not split_file.is_file():
            raise UserError(f"{path} has no {split!r} split ({split}.npz)")
        path = split_file
    else:
        phrasings = None
    images = load_images(path)
    labels = images.labels.drop("id")
    if phrasings is None:
        phrasings = {c: (f"focus on the {c}",) for c in labels.columns}
    if not phrasings:
        raise UserError(f"{data} has no label columns to condition on")
    pixels = images.images.array if isinstance(images.images, ImageArray) else images.images
    return ConditionalSet(pixels, labels, phrasings)


def read_phrasings(path: Path) -> dict[str, tuple[str, ...]]:
    """conditions.json: each factor -> its non-empty list of instruction phrasings."""
    phrasings = read_json(path, "conditions file")
    valid = isinstance(phrasings, dict) and all(
        isinstance(texts, list) and texts and all(isinstance(t, str) and t.strip() for t in texts)
        for texts in phrasings.values())
    if not valid:
        raise UserError(f"{path} must map each factor to a non-empty list of instruction strings")
    return {factor: tuple(texts) for factor, texts in phrasings.items()}
