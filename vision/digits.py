"""Coloured digits: a small real labelled benchmark with two factors, `digit` and `colour`, built offline
from scikit-learn's bundled handwritten digits (1,797 8 x 8 grey images, `sklearn.datasets.load_digits`).

Each image is one source digit, upscaled to 3/4 of the side, painted one of `DIGIT_FACTORS["colour"]` on
a dark background and shifted at random. Sources are split between train and test before any is drawn,
so no handwritten digit appears in both; `n` above 1,797 reuses sources with other colours and shifts.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from PIL import Image

from indexes.errors import UserError
from vision.synthetic import (
    ConditionalSet,
    check_request,
    finish,
    paint,
    split_set,
    train_size,
)

DIGIT_FACTORS: dict[str, tuple[str, ...]] = {
    "digit": tuple("0123456789"),
    "colour": ("red", "green", "blue", "yellow", "magenta", "cyan"),
}
DIGIT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "digit": ("focus on the digit", "which digit is written?", "what number is shown?", "read the handwritten digit"),
    "colour": ("focus on the colour", "what colour is the digit?", "which colour is the number painted?",
               "name the digit's hue"),
}
DIGIT_SCALE = 0.75  # side of the drawn digit, as a fraction of the image side
BACKGROUND = 0.08  # grey level of the dark background


def make_digits(n: int = 2000, size: int = 64, seed: int = 0, test_fraction: float = 0.2) -> dict[str, ConditionalSet]:
    """`{"train": ..., "test": ...}`: `n` coloured digits, about `test_fraction` of them (and of the source
    digits) in test; deterministic by seed."""
    check_request(n, size, test_fraction)
    glyphs, digits = source_digits()
    rng = np.random.default_rng(seed)
    train, test = split_sources(len(digits), n, test_fraction, rng)
    sources = np.concatenate([train, test])
    colours = np.asarray(DIGIT_FACTORS["colour"])[rng.integers(0, len(DIGIT_FACTORS["colour"]), n)]
    labels = pl.DataFrame({"digit": digits[sources].astype(str), "colour": colours})
    images = draw_digits(upscale(glyphs, round(size * DIGIT_SCALE))[sources], colours, size, rng)
    return split_set(images, labels, DIGIT_PHRASINGS, len(train))


def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 8, 8) float intensities in [0, 1] and their (1797,) int labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("--source digits needs scikit-learn (pip install scikit-learn)") from None
    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def split_sources(n_sources: int, n: int, test_fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Source indices of the train and test images: the sources are shuffled and split by `test_fraction`
    first, then each split's images cycle through its own sources (each used once before any repeats)."""
    order = rng.permutation(n_sources)
    cut = train_size(n_sources, test_fraction)
    n_train = train_size(n, test_fraction)
    return np.resize(order[:cut], n_train), np.resize(order[cut:], n - n_train)


def upscale(glyphs: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side) bilinear enlargements of (N, h, w) float images in [0, 1]."""
    return np.stack([np.asarray(Image.fromarray(g).resize((side, side), Image.BILINEAR)) for g in glyphs]).clip(0, 1)


def draw_digits(glyphs: np.ndarray, colours: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, size, size, 3): each (side x side) glyph as the alpha of its colour over the dark
    background, at a random offset."""
    n, side = len(glyphs), glyphs.shape[1]
    alpha = np.zeros((n, size, size), np.float32)
    rows = rng.integers(0, size - side + 1, n)[:, None] + np.arange(side)
    cols = rng.integers(0, size - side + 1, n)[:, None] + np.arange(side)
    alpha[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = glyphs
    colour = paint(colours, rng)[:, None, None, :]
    return finish(BACKGROUND + alpha[..., None] * (colour - BACKGROUND), rng)
