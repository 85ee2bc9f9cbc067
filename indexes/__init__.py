"""The shared layer: a FAISS + DuckDB vector index (or a Milvus collection), the family registry and warm engines, and what every
family uses (errors, metrics, run-time helpers, the text encoder).

Names are imported on first use (PEP 562), so `import indexes` stays cheap: FAISS, DuckDB and Polars
load only when an index is touched, and `ragcli --help` starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from indexes.errors import IndexFormatError, UserError

_LAZY = {
    "BuildRequest": "indexes.requests",
    "QueryRequest": "indexes.requests",
    "Engine": "indexes.engine",
    "Query": "indexes.engine",
    "Hit": "indexes.index",
    "VectorIndex": "indexes.index",
    "factory_string": "indexes.index",
    "MilvusIndex": "indexes.milvus",
    "build_vectors": "indexes.backends",
    "load_vectors": "indexes.backends",
    "index_path": "indexes.store",
    "list_indexes": "indexes.store",
    "ragcli_home": "indexes.store",
    "Family": "indexes.registry",
    "build_index": "indexes.registry",
    "open_index": "indexes.registry",
    "register_family": "indexes.registry",
    "list_families": "indexes.registry",
    "list_corpora": "indexes.registry",
}

__all__ = ["IndexFormatError", "UserError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'indexes' has no attribute {name!r}")
