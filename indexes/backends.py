"""The backend seam: FAISS + DuckDB files (the embedded default) or a Milvus collection (Lite, server or
cluster), behind one surface. Families build through `build_vectors` and engines open through
`load_vectors`; both read which backend from the request or the manifest."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexes.errors import UserError

if TYPE_CHECKING:
    from indexes.index import Id, VectorIndex
    from indexes.milvus import MilvusIndex

BACKENDS = ("faiss", "milvus")


def check_backend(backend: str, uri: str | None) -> None:
    """Refuse a bad backend or URI (and an unreachable Milvus) before any corpus is encoded."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "faiss" and uri is not None:
        raise UserError("--uri is for --backend milvus")
    if backend == "milvus":
        from indexes.milvus import connect

        connect(uri or "")


def build_vectors(vectors: Any, ids: Sequence[Id] | None = None, payload: Any = None, *, backend: str = "faiss",
                  uri: str | None = None, name: str = "index", **options: Any) -> VectorIndex | MilvusIndex:
    """Index vectors on `backend`; `uri` is Milvus's (a *.db file or http://host:19530), `name` names its
    collection. `options` are `VectorIndex.build`'s (kind, metric, encoder, device, ...)."""
    check_backend(backend, uri)
    if backend == "faiss":
        from indexes.index import VectorIndex

        return VectorIndex.build(vectors, ids, payload, **options)
    from indexes.milvus import MilvusIndex

    return MilvusIndex.build(vectors, ids, payload, uri=uri or "", name=name, **options)


def load_vectors(path: str | os.PathLike, device: str = "auto", shard: bool = False) -> VectorIndex | MilvusIndex:
    """Open a saved index, whichever backend its manifest names."""
    from indexes.files import recover
    from indexes.index import VectorIndex, read_manifest

    recover(path)
    manifest: Mapping[str, Any] = read_manifest(Path(path).resolve())
    if manifest.get("backend", "faiss") == "milvus":
        from indexes.milvus import MilvusIndex

        return MilvusIndex.load(path, device=device)
    return VectorIndex.load(path, device=device, shard=shard)
