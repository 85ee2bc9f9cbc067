"""Embedding a corpus across processes or machines: shard I of N embeds the I-th contiguous slice of the
corpus (in the corpus's own order) and writes its vectors and ids to one `.npz` file; assembling reads
every shard of a folder, checks that they are all there and that their ids are the corpus's, in order,
and hands the concatenated vectors to the index build, so N shards give the index one pass gives.

    ragcli index build --corpus coliee --shard 0/2 --shard-dir shards/     # on machine (or process) 0
    ragcli index build --corpus coliee --shard 1/2 --shard-dir shards/     # on machine 1
    ragcli index build --corpus coliee --from-shards shards/ --name coliee
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexes.errors import UserError
from indexes.files import atomic_write_bytes, regular_file

Shard = tuple[int, int]
MAX_SHARDS = 100_000
_SPEC = re.compile(r"(\d{1,6})/(\d{1,6})")


def parse_shard(text: str) -> Shard:
    """`I/N` (0 <= I < N) as (I, N)."""
    match = _SPEC.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match or not 0 <= int(match[1]) < int(match[2]) <= MAX_SHARDS:
        raise UserError(f"bad shard {str(text)[:40]!r}: use I/N with 0 <= I < N, e.g. 0/4")
    return int(match[1]), int(match[2])


def shard_slice(n: int, shard: Shard) -> slice:
    """The contiguous rows of shard (I, N) among n: sizes differ by at most one."""
    index, count = shard
    return slice(index * n // count, (index + 1) * n // count)


def shard_path(folder: str | Path, shard: Shard) -> Path:
    return Path(folder) / f"shard-{shard[0]:05d}-of-{shard[1]:05d}.npz"


def write_shard(out: str | Path, shard: Shard, vectors: np.ndarray, ids: Sequence[Any]) -> Path:
    """Write one shard's vectors, ids and (I, N) to `out` (a .npz file), atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=np.asarray(vectors, dtype=np.float32), ids=np.asarray([str(i) for i in ids], dtype=str),
             shard=np.asarray(shard, dtype=np.int64))
    atomic_write_bytes(out, buffer.getvalue())
    return out


def read_shards(folder: str | Path) -> tuple[np.ndarray, list[str]]:
    """The vectors and ids of every shard file in `folder`, in shard order; a missing, repeated or
    inconsistent shard is a UserError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no shard folder {folder}")
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    counts = set()
    for file in sorted(folder.glob("*.npz")):
        index, count, vectors, ids = _read_shard(file)
        if index in parts:
            raise UserError(f"{folder} holds shard {index}/{count} twice ({file.name})")
        parts[index] = (vectors, ids)
        counts.add(count)
    if not parts:
        raise UserError(f"{folder} holds no shard files (*.npz written with --shard I/N)")
    if len(counts) != 1:
        raise UserError(f"{folder} mixes shards of different runs: N = {sorted(counts)}")
    count = counts.pop()
    missing = sorted(set(range(count)) - set(parts))
    if missing:
        raise UserError(f"{folder} lacks shards {', '.join(f'{i}/{count}' for i in missing[:10])}")
    dims = {v.shape[1] for v, _ in parts.values()}
    if len(dims) != 1:
        raise UserError(f"{folder}: shards have different dimensions {sorted(dims)}")
    ordered = [parts[i] for i in range(count)]
    return np.concatenate([v for v, _ in ordered]), [str(i) for _, ids in ordered for i in ids.tolist()]


def _read_shard(file: Path) -> tuple[int, int, np.ndarray, np.ndarray]:
    try:
        with np.load(regular_file(file, "shard file"), allow_pickle=False) as archive:
            vectors, ids, shard = archive["embeddings"], archive["ids"], archive["shard"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{file} is not a shard file (embeddings, ids, shard): {str(err).splitlines()[0][:120]}") from None
    if vectors.ndim != 2 or len(vectors) != len(ids) or shard.shape != (2,):
        raise UserError(f"{file} is not a shard file: {len(vectors)} vectors for {len(ids)} ids")
    index, count = (int(x) for x in shard)
    if not 0 <= index < count <= MAX_SHARDS:
        raise UserError(f"{file}: bad shard number {index}/{count}")
    return index, count, vectors.astype(np.float32, copy=False), ids


def corpus_vectors(request: Any, ids: Sequence[Any], embed: Callable[[slice], np.ndarray]) -> np.ndarray | None:
    """The corpus's vectors for an index build: `embed(slice)` embeds those rows of the corpus.

    With `request.shard`, embeds only that shard, writes it into `request.shard_dir` and returns None
    (the build stops there); with `request.from_shards`, reads the vectors the shards wrote and checks
    they belong to these ids, in this order; else embeds everything."""
    if request.shard is not None:
        rows = shard_slice(len(ids), request.shard)
        write_shard(shard_path(request.shard_dir, request.shard), request.shard, embed(rows), list(ids)[rows])
        return None
    if request.from_shards is not None:
        vectors, shard_ids = read_shards(request.from_shards)
        if shard_ids != [str(i) for i in ids]:
            first = next((j for j, (a, b) in enumerate(zip(shard_ids, map(str, ids))) if a != b), min(len(shard_ids), len(ids)))
            raise UserError(f"the shards in {request.from_shards} hold {len(shard_ids)} rows that are not this corpus's "
                            f"{len(ids)} (first difference at row {first}): embed them from the same corpus")
        return vectors
    return embed(slice(None))
