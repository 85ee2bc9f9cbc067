"""Strict weights and validated settings, shared by the image encoders and FocalLens.

A weights file must fill every tensor of the model, with nothing left over and every shape right;
a setting read from a config (or given by a caller) must have its type and range. Both failures are
one-line `UserError`s, never a model that silently keeps random weights.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from safetensors import SafetensorError
from safetensors.torch import load_model
from torch import nn

from indexes.errors import UserError
from indexes.files import regular_file
from indexes.runtime import require_finite_parameters

MAX_DETAIL = 300  # characters of a loading error kept in its one-line message
KEYS_SHOWN = 3  # tensor names shown per kind of mismatch


def load_weights(model: nn.Module, file: str | Path, where: str | Path) -> None:
    """Load a safetensors file into every tensor of `model`, strictly; refuses non-finite weights."""
    try:
        load_model(model, str(regular_file(file, "weights file")), strict=True)
    except (OSError, SafetensorError) as err:
        raise UserError(f"{where}: cannot read {Path(file).name}: {error_line(err)}") from None
    except RuntimeError as err:
        raise UserError(f"{where}: {Path(file).name} does not fit the model: {error_line(err)}") from None
    require_finite_parameters(model, where)


def error_line(err: BaseException) -> str:
    """One line from an exception. torch's and safetensors' "Error(s) in loading state_dict" put the
    missing, unexpected and misshapen tensors on the following lines: those are kept, a few names each."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = ["; ".join(_few_keys(line) for line in lines[1:])]
    detail = lines[0] if lines else type(err).__name__
    return detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL - 3] + "..."


def _few_keys(line: str, keep: int = KEYS_SHOWN) -> str:
    """'Missing key(s) in state_dict: "a", "b", ...' -> its first `keep` names and how many more."""
    head, _, rest = line.partition(": ")
    names = re.findall(r'"([^"]*)"', rest)
    if "key(s)" not in head or not names:
        return line
    more = f" (+{len(names) - keep} more)" if len(names) > keep else ""
    return f"{head}: {', '.join(names[:keep])}{more}"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Keep transformers' loading reports (missing / unexpected tensor tables, progress bars) off the
    terminal: ragcli turns a mismatch into its own one-line error."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def announce_random_weights(spec: str) -> None:
    """Say on stderr (one line, whichever command embeds) that an encoder's embeddings come from random weights."""
    click.echo(f"warning: {spec} has random weights (no --weights given); its embeddings are not meaningful", err=True)


def check_int(value: Any, name: str, low: int, high: int) -> int:
    """`value` if it is an integer (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_float(value: Any, name: str, low: float, high: float, *, open_low: bool = False) -> float:
    """`value` as a float if it is a finite number in [low, high] (or (low, high] with `open_low`)."""
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or number > high or number < low or (open_low and number == low):
        raise UserError(f"{name} must be a number in {'(' if open_low else '['}{low}, {high}], got {value!r}")
    return number


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    """`value` if it is one of `choices`."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise UserError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value
