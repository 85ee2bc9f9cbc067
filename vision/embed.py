"""Embed an image folder / IDX / NPZ dataset to a .npy matrix or an .npz with ids (`ragcli embed images`)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from indexes.errors import UserError
from indexes.files import atomic_write_bytes
from indexes.shards import Shard, shard_slice, write_shard
from vision.datasets import load_images
from vision.encoders import create_encoder

OUT_SUFFIXES = (".npy", ".npz")


def embed_images(images: str | Path, out: str | Path, encoder: str, weights: str | Path | None = None,
                 pooling: str = "default", image_size: int | None = None, batch_size: int = 32,
                 device: str = "auto", shard: Shard | None = None) -> dict[str, Any]:
    """Embed every image under `images` with `encoder` and write the vectors to `out` atomically.
    With `shard` (I, N), only the I-th of N contiguous slices, to an .npz that `index build --from-shards` reads."""
    out = Path(out)
    if out.suffix not in OUT_SUFFIXES or (shard is not None and out.suffix != ".npz"):
        raise UserError(f"--out must end in {' or '.join(OUT_SUFFIXES[1:] if shard else OUT_SUFFIXES)}, got {out.name}")
    dataset = load_images(images)
    rows = slice(None) if shard is None else shard_slice(len(dataset), shard)
    model = create_encoder(encoder, weights=weights, pooling=pooling, image_size=image_size)
    start = time.perf_counter()
    vectors = model.embed(dataset.images[rows], batch_size=batch_size, device=device)
    seconds = time.perf_counter() - start
    if shard is None:
        save_vectors(out, vectors, dataset.ids)
    else:
        write_shard(out, shard, vectors, dataset.ids[rows])
    return {"out": str(out), "images": len(vectors), "dim": model.dim, "seconds": round(seconds, 3),
            "images_per_s": round(len(vectors) / seconds, 2), "encoder": model.describe()}


def save_vectors(out: Path, vectors: np.ndarray, ids: list[str]) -> None:
    """`.npy`: the matrix; `.npz`: `embeddings` and `ids`. Written atomically (through a symlink; a device
    or FIFO there is refused, never replaced)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    if out.suffix == ".npz":
        np.savez(buffer, embeddings=vectors, ids=np.asarray(ids, dtype=str))
    else:
        np.save(buffer, vectors)
    atomic_write_bytes(out, buffer.getvalue())
