"""Run-time helpers every family shares: device choice, seeding, progress bars, strict checkpoint loading."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

from indexes.errors import UserError

T = TypeVar("T")
M = TypeVar("M")
DEVICES = ("auto", "cpu", "cuda")
MAX_DETAIL = 300  # characters of a loading error kept in its one-line message
KEYS_SHOWN = 3  # tensor names shown per kind of mismatch
_progress_enabled = True


def set_progress(enabled: bool) -> None:
    """Turn tqdm bars on or off process-wide (the CLI turns them off under --json)."""
    global _progress_enabled
    _progress_enabled = enabled


LONG_WORK = 512  # items (texts to embed, ...) from which a library's own bar is worth showing


def progress_enabled(items: int | None = None) -> bool:
    """Whether bars are on (for libraries that draw their own: sentence-transformers' encode and
    trainer); with `items`, also whether that much work is long enough to deserve one."""
    return _progress_enabled and (items is None or items >= LONG_WORK)


def progress(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr that honours `set_progress`; pass-through otherwise."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    disable = kwargs.pop("disable", False)  # popped first: `or` would skip the pop when bars are off
    return tqdm(iterable, disable=not _progress_enabled or disable, **kwargs)


def resolve_device(device: str = "auto") -> str:
    """Map `auto|cpu|cuda[:N]` to a concrete torch device string; `auto` picks CUDA when present."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but torch sees no CUDA GPU")
        return device
    raise UserError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so runs repeat."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_pretrained(cls: type[M], path: str | os.PathLike, **kwargs) -> M:
    """`cls.from_pretrained(path)` for a huggingface_hub `PyTorchModelHubMixin` model, strictly: every tensor
    present and no stray one, a config the constructor accepts (it validates types and ranges), finite
    weights. A broken checkpoint is one UserError naming the directory, never random weights.

    Also keeps the status line the mixin print()s for local folders off stdout (it belongs to `--json`)."""
    from safetensors import SafetensorError

    from indexes.files import read_json

    if os.path.isdir(path):
        config = read_json(os.path.join(path, "config.json"), "model config")
        if not isinstance(config, dict):
            raise UserError(f"{path}: config.json must hold a JSON object")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = cls.from_pretrained(path, strict=True, **kwargs)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except (TypeError, ValueError, RuntimeError, KeyError, OSError, SafetensorError) as err:
        raise UserError(f"{path} is not a valid {cls.__name__} checkpoint: {error_line(err)}") from None
    require_finite_parameters(model, path)
    return model


def load_weights(model, file: str | os.PathLike, where: str | os.PathLike) -> None:
    """Load a safetensors file into every tensor of `model` (a torch module), strictly: none missing, none
    left over, every shape right; refuses non-finite weights. For models that are not hub-mixin ones."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from indexes.files import regular_file

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


def require_finite_parameters(model, where: str | os.PathLike) -> None:
    """A checkpoint whose weights hold NaN or infinity scores every item NaN; refuse it by name."""
    import torch

    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise UserError(f"{where}: weights hold NaN or infinite values ({', '.join(bad[:3])}"
                        f"{' ...' if len(bad) > 3 else ''})")
