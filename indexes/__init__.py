"""The shared layer: a FAISS + DuckDB vector index, and what every family uses (errors, metrics, run-time helpers)."""

from indexes.errors import IndexFormatError, UserError
from indexes.index import Hit, VectorIndex, factory_string
from indexes.requests import BuildRequest, QueryRequest
from indexes.store import index_path, list_indexes, ragcli_home

__all__ = [
    "BuildRequest",
    "Hit",
    "IndexFormatError",
    "QueryRequest",
    "UserError",
    "VectorIndex",
    "factory_string",
    "index_path",
    "list_indexes",
    "ragcli_home",
]
