"""What a user asks of a corpus family: build an index, or query one. The CLI fills these in; each
family's `serve.build_index` / `serve.query_index` reads the fields it needs and ignores the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BuildRequest:
    corpus: str
    data_dir: Path | None = None
    encoder: str | None = None
    model: Path | None = None
    hybrid: Path | None = None
    images: Path | None = None
    condition: str | None = None
    kind: str = "flat"
    metric: str | None = None
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False
    backend: str = "faiss"
    uri: str | None = None
    shard: tuple[int, int] | None = None
    shard_dir: Path | None = None
    from_shards: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def index_options(self, out: Path) -> dict[str, Any]:
        """What `build_vectors` takes from the request: backend, Milvus URI (collection named after `out`),
        index kind, device."""
        return {"backend": self.backend, "uri": self.uri, "name": out.name, "kind": self.kind, "device": self.device}


@dataclass
class QueryRequest:
    text: str | None = None
    history: list[str] | None = None
    image: Path | None = None
    condition: str | None = None
    k: int = 10
    skip_unknown: bool = False
    device: str = "auto"
    sheet: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
