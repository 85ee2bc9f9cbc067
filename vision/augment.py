"""Condition-aware augmentation for FocalLens training: each training image is transformed only in ways that
keep the answer to the question it is asked with. Asked about the digit, a digit may change colour (which
teaches the digit embedding to ignore colour); asked about the colour, it keeps its colour.

Three transforms, each with the factors it would change, read from a factor's name and answers:
- `colour`: brightness, contrast, saturation and a hue rotation about the grey axis (changes colour factors);
- `crop`: a random zoom-in crop of 80-100% of the side, resized back (changes position and size factors);
- `flip`: a horizontal mirror (changes position / side factors, and digits, letters and text).
A factor whose words name none of these gets all three.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

TRANSFORMS = ("colour", "crop", "flip")
_CHANGED_BY = {
    "colour": {"colour", "color", "hue", "tint", "red", "green", "blue", "yellow", "magenta", "cyan", "white",
               "black", "grey", "gray", "brown", "blond", "purple", "orange", "pink", "pale", "rosy", "makeup",
               "lipstick", "tone", "shade"},
    "crop": {"position", "location", "where", "corner", "quadrant", "top", "bottom", "left", "right", "centre",
             "center", "size", "big", "small", "large", "tiny", "scale", "distance"},
    "flip": {"position", "location", "corner", "quadrant", "left", "right", "side", "direction", "orientation",
             "digit", "number", "letter", "text", "character", "handwritten", "writing"},
}
MIN_CROP = 0.8  # the smallest crop side, as a share of the image side
JITTER = 0.3  # brightness, contrast and saturation factors drawn from [1 - JITTER, 1 + JITTER]


def allowed_transforms(factor: str, answers: Iterable[str]) -> tuple[bool, ...]:
    """For each of `TRANSFORMS`, whether it keeps `factor`'s answer (its name and answers name nothing it changes)."""
    words = set(re.findall(r"[a-z]+", " ".join([factor, *map(str, answers)]).replace("_", " ").lower()))
    return tuple(not (words & _CHANGED_BY[name]) for name in TRANSFORMS)


def augment(images: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, H, W) images -> float (B, 3, H, W) in [0, 255], each image transformed by the transforms its
    row of `allowed` ((B, len(TRANSFORMS)) bool) permits, with random strengths from `generator`."""
    x = images.float() / 255
    use = dict(zip(TRANSFORMS, allowed.T))
    x = _colour(x, use["colour"], generator)
    x = _crop(x, use["crop"], generator)
    x = torch.where(use["flip"][:, None, None, None] & _coin(len(x), generator), x.flip(-1), x)
    return x.clamp(0, 1) * 255


def _coin(n: int, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < 0.5)[:, None, None, None]


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _colour(x: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, then a hue rotation by a random angle (rows where `rows` is True)."""
    n = len(x)
    brightness, contrast, saturation = (_uniform(n, 1 - JITTER, 1 + JITTER, generator)[:, None, None, None]
                                        for _ in range(3))
    angle = _uniform(n, -math.pi, math.pi, generator)
    y = (x * brightness).clamp(0, 1)
    y = ((y - _grey(y).mean((2, 3), keepdim=True)) * contrast + _grey(y).mean((2, 3), keepdim=True)).clamp(0, 1)
    y = ((y - _grey(y)) * saturation + _grey(y)).clamp(0, 1)
    y = torch.einsum("bij,bjhw->bihw", _hue_rotation(angle), y).clamp(0, 1)
    return torch.where(rows[:, None, None, None], y, x)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of (B, 3, H, W) RGB (ITU-R 601 weights)."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations of RGB about the grey axis (1, 1, 1) / sqrt(3) by `angle` (Rodrigues' formula)."""
    axis = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    return cos * torch.eye(3) + sin * cross + (1 - cos) * torch.outer(axis, axis)


def _crop(x: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random square crop of MIN_CROP..1 of the side, anywhere inside the image, resized back (bilinear)."""
    n = len(x)
    scale = torch.where(rows, _uniform(n, MIN_CROP, 1.0, generator), torch.ones(n))
    shift = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.where(rows[:, None, None, None], F.grid_sample(x, grid, align_corners=False), x)


def allowed_table(factors: Sequence[str], answers: Sequence[Iterable[str]]) -> torch.Tensor:
    """(len(factors), len(TRANSFORMS)) bool: `allowed_transforms` of each factor."""
    return torch.tensor([allowed_transforms(f, a) for f, a in zip(factors, answers)], dtype=torch.bool)
