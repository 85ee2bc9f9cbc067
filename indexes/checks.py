"""Validators every family uses for its settings, and the limits the families share.

A setting read from a checkpoint's config.json, a training config or a caller is checked where it comes
in: a wrong type or an out-of-range value is one `UserError` naming the setting, never a hang, a huge
allocation or a silently broken model. Each family keeps its own limits (its `checks.py`); the ones
here are the same for all. Light on purpose (no torch): the CLI reads the limits when it starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from indexes.errors import UserError

MAX_BATCH_SIZE = 65_536
MAX_SEED = 2**32 - 1  # what NumPy's seeding accepts
MAX_SHOWN = 80  # characters of a refused value kept in the message (a hostile config may hold megabytes)


def integer(name: str, value: Any, low: int, high: int) -> int:
    """`value` when it is an int (not a bool or a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be an integer in [{low}, {high}], got {_shown(value)}")
    return value


def number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float when it is a finite int or float (not a bool) within the bounds given: [low, high],
    either end open with `low_open` / `high_open`, either end left out when None. NaN and infinity never are."""
    try:
        checked = math.nan if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:  # an int too large for a float
        checked = math.nan
    if not (math.isfinite(checked) and (low is None or (checked > low if low_open else checked >= low))
            and (high is None or (checked < high if high_open else checked <= high))):
        raise UserError(f"{name} must be {_range(low, high, low_open, high_open)}, got {_shown(value)}")
    return checked


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """How `number` words its bounds: 'a number in [0, 1)', 'a finite number > 0', 'a finite number'."""
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    bounds = [f"{'>' if low_open else '>='} {low}" if low is not None else "",
              f"{'<' if high_open else '<='} {high}" if high is not None else ""]
    return " ".join(["a finite number", *filter(None, bounds)])


def choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """`value` when it is one of `choices`, of the same type (1 is not True, 1.0 is not 1)."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise UserError(f"{name} must be one of {', '.join(map(repr, choices))}; got {_shown(value)}")
    return value


def boolean(name: str, value: Any) -> bool:
    """`value` when it is true or false (not 0 or 1, not a string)."""
    if not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {_shown(value)}")
    return value


def text(name: str, value: Any, what: str = "a non-empty string") -> str:
    """`value` when it is a string with something besides white space; `what` says what it names."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{name} must be {what}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """`repr(value)`, cut to MAX_SHOWN characters."""
    try:
        shown = repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        shown = "an integer too large to show"
    return shown if len(shown) <= MAX_SHOWN else shown[:MAX_SHOWN - 3] + "..."
