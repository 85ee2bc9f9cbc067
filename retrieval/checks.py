"""Ranges of the neural retrievers' settings, checked where they come in: a checkpoint's config.json
(through the model constructors), a training config, a CLI option. A value of the wrong type or out of
range is one UserError naming the setting, never a hang, a huge allocation or a silently broken model.
Light on purpose (no torch): the CLI reads the limits when it starts."""

from __future__ import annotations

import math
from typing import Any

from indexes.errors import UserError

MAX_EPOCHS = 10_000
MAX_NEGATIVES = 1_000
MAX_RANK = 10_000  # a count of top-ranked articles: the hard-negative pool, Recall@k
MAX_BATCH_SIZE = 65_536
MAX_SEED = 2**32 - 1  # what NumPy's seeding accepts
MAX_WIDTH = 8_192  # one layer's width: a hostile config must not allocate tens of GB before its weights load
MAX_VOCAB = 4_000_000
MAX_EMBEDDING_PARAMETERS = 1 << 28  # vocabulary x embedding width (1 GiB of float32)


def integer(name: str, value: Any, low: int = 1, high: int = MAX_WIDTH) -> int:
    """`value` when it is an int (not a bool or a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def fraction(name: str, value: Any, closed: bool = False) -> float:
    """`value` when it is a number in [0, 1) (or [0, 1] when `closed`); NaN is not."""
    number = _number(value)
    if number is None or not (0 <= number <= 1 if closed else 0 <= number < 1):
        raise UserError(f"{name} must be a number in [0, 1{']' if closed else ')'}, got {value!r}")
    return number


def finite(name: str, value: Any, positive: bool = False) -> float:
    """`value` when it is a finite number >= 0 (> 0 when `positive`)."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise UserError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return number


def _number(value: Any) -> float | None:
    return None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
