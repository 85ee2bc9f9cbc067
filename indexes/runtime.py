"""Run-time helpers every family shares: device choice, seeding, progress bars, atomic writes."""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm.auto import tqdm

from indexes.errors import UserError

T = TypeVar("T")
M = TypeVar("M")
DEVICES = ("auto", "cpu", "cuda")
_progress_enabled = True


def set_progress(enabled: bool) -> None:
    """Turn tqdm bars on or off process-wide (the CLI turns them off under --json)."""
    global _progress_enabled
    _progress_enabled = enabled


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
    """`cls.from_pretrained(path)` for a huggingface_hub `PyTorchModelHubMixin` model, without the status
    line the mixin print()s for local folders: stdout belongs to the results (`--json`)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return cls.from_pretrained(path, **kwargs)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory beside `target`; on success it is renamed into place.

    On any exception the temp directory is removed and `target` is left exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temp file and rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
