"""`VectorIndex`: FAISS vectors + external ids + a DuckDB payload table, saved as one directory.

The FAISS index stores internal row numbers (IVF kinds natively, others through an `IDMap2`); DuckDB maps
row numbers to the caller's ids and payload columns and is the truth of which rows are live. Search
goes to a GPU replica when FAISS has GPUs, to a torch matrix product when only torch sees CUDA (exact
indexes), else to the CPU index.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np
import polars as pl

from indexes.errors import IndexFormatError, UserError
from indexes.files import MARKER_FILE, atomic_dir, atomic_write_text, recover
from indexes.filters import compile_filter
from indexes.searchers import FaissSearcher, Searcher, choose_searcher, inner_index

FORMAT_VERSION = 1
FAISS_FILE = "index.faiss"
PAYLOAD_FILE = "payload.duckdb"
MANIFEST_FILE = "manifest.json"
METRICS = ("ip", "l2", "cosine")
RESERVED_COLUMNS = ("_row", "id")
KIND_ALIASES = ("flat", "hnsw", "ivf-flat", "ivf-pq")
_FACTORY = re.compile(r"[A-Za-z][A-Za-z0-9_,.]{0,199}")
ROWS_TABLE = {"int": "CREATE TABLE rows (_row BIGINT PRIMARY KEY, id BIGINT UNIQUE)",
              "str": "CREATE TABLE rows (_row BIGINT PRIMARY KEY, id VARCHAR UNIQUE)"}
LOCKED_DUCKDB = {"enable_external_access": False, "lock_configuration": True, "threads": 1}

Id = int | str


@dataclass(frozen=True)
class Hit:
    """One search result: the caller's id, the score (similarity for ip/cosine, squared distance for l2)
    and the payload columns of the row."""

    id: Id
    score: float
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, **({"payload": self.payload} if self.payload else {})}


def factory_string(kind: str, n: int, dim: int) -> str:
    """Turn a friendly kind (flat, hnsw, ivf-flat, ivf-pq) into a FAISS factory string sized for n rows.

    Anything else is taken to be a FAISS factory string already (e.g. "IVF1024,PQ32", "HNSW64").
    """
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return "HNSW32"
    if kind == "ivf-flat":
        return f"IVF{ivf_lists(n)},Flat"
    if kind == "ivf-pq":
        nbits = max(1, min(8, int(math.log2(max(n // 4, 2)))))  # >= 4 training points per code
        return f"IVF{ivf_lists(n)},PQ{pq_subquantizers(dim)}x{nbits}"
    return kind


def ivf_lists(n: int) -> int:
    """IVF cells for n rows: about 4 sqrt(n), with at least 39 training points per cell."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39 if n >= 39 else 1))


def pq_subquantizers(dim: int) -> int:
    """PQ sub-vectors: the most (up to 64) that divide dim with at least 4 dimensions each."""
    return next(m for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1) if dim % m == 0 and dim // m >= 4 or m == 1)


def _new_faiss_index(factory: str, dim: int, metric: str) -> faiss.Index:
    """An empty FAISS index from a factory string checked first: FAISS accepts some strings (a zero
    size such as "HNSW0") that crash the process later, so every number in it must be >= 1."""
    numbers = [int(n) for n in re.findall(r"\d+", factory)]
    if not _FACTORY.fullmatch(factory) or any(n < 1 or n > 1 << 24 for n in numbers):
        raise UserError(f"bad index kind {factory!r}: use {', '.join(KIND_ALIASES)} or a FAISS factory string")
    # IVF keeps ids itself (and an IDMap over it would renumber wrongly on removal)
    wrapped = factory if factory.startswith("IVF") else f"IDMap2,{factory}"
    try:
        return faiss.index_factory(dim, wrapped, _faiss_metric(metric))
    except RuntimeError as err:
        raise UserError(f"FAISS cannot make an index of kind {factory!r}: {_faiss_message(err)}") from None


def _faiss_message(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return next((line.strip() for line in lines if line.strip().startswith("Error")), lines[0] if lines else "")[:200]


def memory_db() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that cannot touch files (external access off, configuration locked): even a
    bug in a query cannot read or write outside the index."""
    return duckdb.connect(":memory:", config=LOCKED_DUCKDB)


def _faiss_metric(metric: str) -> int:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _as_matrix(vectors: Any, dim: int | None, what: str) -> np.ndarray:
    """Validate an (n, d) float matrix (a single vector becomes one row) and return it as float32."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise UserError(f"{what} must be an (n, d) matrix, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise UserError(f"{what} have dimension {x.shape[1]}, but the index has dimension {dim}")
    if not np.isfinite(x).all():
        raise UserError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(x)


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _ids_array(ids: Sequence[Id], id_type: str | None) -> tuple[np.ndarray, str]:
    """External ids as int64 (all ints) or object-str array; reject duplicates and mixed types."""
    values = list(ids)
    kind = id_type or ("int" if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values) else "str")
    if kind == "int":
        try:
            arr = np.asarray(values, dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise UserError(f"this index has integer ids; got {err}") from None
        if (arr < 0).any():
            raise UserError("integer ids must be >= 0")
    else:
        arr = np.asarray([str(v) for v in values], dtype=object)
    if len(np.unique(arr)) != len(arr):
        raise UserError("ids must be unique")
    return arr, kind


def _payload_frame(payload: pl.DataFrame | Sequence[Mapping[str, Any]] | None, n: int) -> pl.DataFrame:
    if payload is None:
        return pl.DataFrame(schema={})
    frame = payload if isinstance(payload, pl.DataFrame) else pl.DataFrame(list(payload))
    if frame.width and frame.height != n:
        raise UserError(f"payload has {frame.height} rows for {n} vectors")
    clash = set(frame.columns) & set(RESERVED_COLUMNS)
    if clash:
        raise UserError(f"payload columns {sorted(clash)} are reserved")
    for name in frame.columns:
        if not name or len(name) > 256 or "\x00" in name:
            raise UserError(f"bad payload column name {name[:40]!r}: 1 to 256 characters, no NUL")
    return frame


def checked_rows(vectors: Any, ids: Sequence[Id] | None, payload: pl.DataFrame | Sequence[Mapping[str, Any]] | None,
                 dim: int | None = None, id_type: str | None = None) -> tuple[np.ndarray, np.ndarray, str, pl.DataFrame]:
    """Rows to index, validated as every backend needs them: a float32 (n, d) matrix (d = `dim` when the
    index has one), ids of one type (`id_type` when the index has one; 0..n-1 when None), one per vector,
    and the payload frame. Returns (matrix, ids, id type, payload)."""
    x = _as_matrix(vectors, dim, "vectors")
    ids_arr, id_type = _ids_array(range(len(x)) if ids is None else ids, id_type)
    if len(ids_arr) != len(x):
        raise UserError(f"{len(ids_arr)} ids for {len(x)} vectors")
    return x, ids_arr, id_type, _payload_frame(payload, len(x))


def training_sample(x: np.ndarray, size: int | None, seed: int = 0) -> np.ndarray:
    """`size` rows of x drawn without replacement (seeded), or all of x."""
    if size is None or size >= len(x):
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), size, replace=False))]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ManifestIndex:
    """What every backend shares: dimension, metric and encoder from the manifest, and the live row count.
    Backends (`VectorIndex`, `indexes.milvus.MilvusIndex`) add build / load / add / remove / search /
    ids_where / payloads / save / info with the same signatures."""

    backend: str
    manifest: dict[str, Any]
    path: Path | None
    _ntotal: int

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    @property
    def ntotal(self) -> int:
        """Live rows (deleted rows excluded); counted when the rows change, not on every search."""
        return self._ntotal

    @property
    def encoder(self) -> dict[str, Any]:
        return dict(self.manifest.get("encoder", {}))


class VectorIndex(ManifestIndex):
    """A searchable set of vectors with ids and payload in FAISS + DuckDB. Build with `build`, open with `load`."""

    backend = "faiss"

    def __init__(self, cpu_index: faiss.Index, db: duckdb.DuckDBPyConnection, manifest: dict[str, Any],
                 path: Path | None = None, device: str = "auto", shard: bool = False):
        self._cpu = cpu_index
        self._db = db
        self._lock = threading.RLock()  # one DuckDB connection, used from server threads too
        self._payload_cache: tuple[pl.DataFrame, np.ndarray] | None = None
        self.manifest = manifest
        self.path = path
        self.device = device
        self.shard = shard
        self._searcher: Searcher | None = None
        self._reload_ids()
        self._apply_search_params()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        vectors: Any,
        ids: Sequence[Id] | None = None,
        payload: pl.DataFrame | Sequence[Mapping[str, Any]] | None = None,
        *,
        kind: str = "flat",
        metric: str = "cosine",
        encoder: Mapping[str, Any] | None = None,
        device: str = "auto",
        nprobe: int = 16,
        ef_search: int = 64,
        train_size: int | None = None,
    ) -> VectorIndex:
        """Index an (n, d) float matrix; ids default to 0..n-1; `encoder` describes what made the vectors.

        Kinds that need training (IVF, PQ) train on all rows, or on `train_size` rows drawn with a fixed seed.
        """
        x, ids_arr, id_type, frame = checked_rows(vectors, ids, payload)
        n, dim = x.shape
        if n == 0:
            raise UserError("nothing to index: 0 vectors")
        factory = factory_string(kind, n, dim)
        index = _new_faiss_index(factory, dim, metric)
        if metric == "cosine":
            x = _normalize(x)
        if not index.is_trained:
            try:
                index.train(training_sample(x, train_size))
            except RuntimeError as err:
                raise UserError(f"FAISS cannot train {factory} on {n} vectors: {_faiss_message(err)}") from None
        db = memory_db()
        manifest = {
            "format_version": FORMAT_VERSION,
            "dim": dim,
            "metric": metric,
            "kind": factory,
            "rows": 0,
            "id_type": id_type,
            "encoder": dict(encoder or {}),
            "search_params": {"nprobe": nprobe, "efSearch": ef_search},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        db.execute(ROWS_TABLE[id_type])
        self = cls(index, db, manifest, device=device)
        self._append(x, ids_arr, frame)
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", shard: bool = False) -> VectorIndex:
        """Open an index directory, verifying its manifest, format version and checksums.

        `device`: auto | cpu | cuda; with several GPUs the index is replicated, or split with `shard`.
        A name published by `save` is a symlink onto one version: everything is read from the version it
        points to now, so a concurrent replace never mixes two versions."""
        recover(path)
        path = Path(path).resolve()
        manifest = read_manifest(path)
        for name, expected in manifest["sha256"].items():
            if not (path / name).is_file():
                raise IndexFormatError(f"{path}: {name} is missing")
            if sha256_file(path / name) != expected:
                raise IndexFormatError(f"{path}: {name} is corrupt (checksum mismatch)")
        try:
            index = faiss.read_index(str(path / FAISS_FILE))
        except RuntimeError:
            raise IndexFormatError(f"{path}: {FAISS_FILE} is not a readable FAISS index") from None
        if index.d != manifest["dim"]:
            raise IndexFormatError(f"{path}: FAISS index has dimension {index.d}, manifest says {manifest['dim']}")
        db = memory_db()
        try:
            with duckdb.connect(str(path / PAYLOAD_FILE), read_only=True, config=LOCKED_DUCKDB) as src:
                table = src.sql("SELECT * FROM rows").to_arrow_table()
            if not {"_row", "id"} <= set(table.column_names):
                raise IndexFormatError(f"{path}: payload store lacks the _row / id columns")
            db.register("_loaded", table)
            db.execute("CREATE TABLE rows AS SELECT * FROM _loaded")
            db.unregister("_loaded")
        except duckdb.Error as err:
            raise IndexFormatError(f"{path}: payload store unreadable: {str(err).splitlines()[0]}") from None
        self = cls(index, db, manifest, path=path, device=device, shard=shard)
        if self.ntotal != manifest["rows"]:
            raise IndexFormatError(f"{path}: {self.ntotal} live rows, manifest says {manifest['rows']}")
        return self

    # ---- properties ---------------------------------------------------------------------------
    @property
    def device_info(self) -> str:
        """Where searches run, e.g. 'cpu', 'faiss-gpu x2 (replicated)', 'torch cuda (exact)'."""
        return self._get_searcher().description

    # ---- mutation -----------------------------------------------------------------------------
    def add(self, vectors: Any, ids: Sequence[Id], payload: pl.DataFrame | Sequence[Mapping[str, Any]] | None = None) -> None:
        """Append rows; ids must be new."""
        x, ids_arr, _, frame = checked_rows(vectors, ids, payload, self.dim, self.manifest["id_type"])
        taken = self._known(ids_arr)
        if taken.any():
            raise UserError(f"ids already in the index: {', '.join(map(str, ids_arr[taken][:5]))}")
        self._append(_normalize(x) if self.metric == "cosine" else x, ids_arr, frame)

    def remove(self, ids: Iterable[Id]) -> int:
        """Delete rows by id; unknown ids are an error. Returns the number removed."""
        ids_arr, _ = _ids_array(list(ids), self.manifest["id_type"])
        rows = self.rows_of(ids_arr)
        try:
            self._cpu.remove_ids(faiss.IDSelectorBatch(rows))
        except RuntimeError:  # kinds without removal (HNSW): the row stays in FAISS as a tombstone
            self._tombstones = np.union1d(self._tombstones, rows)
        with self._lock:
            self._db.execute("DELETE FROM rows WHERE _row IN (SELECT unnest(?))", [rows.tolist()])
        self._after_change()
        return len(rows)

    def _append(self, x: np.ndarray, ids: np.ndarray, frame: pl.DataFrame) -> None:
        rows = np.arange(self._next_row, self._next_row + len(x), dtype=np.int64)
        table = pl.DataFrame({"_row": rows, "id": ids.tolist()})
        if frame.width:
            table = table.hstack(frame)
        try:  # union by name: new payload columns widen the table, no column name or type written as SQL
            with self._lock:
                self._db.register("_new_rows", table.to_arrow())
                self._db.execute("CREATE OR REPLACE TABLE rows AS SELECT * FROM rows UNION ALL BY NAME SELECT * FROM _new_rows")
                self._db.unregister("_new_rows")
        except duckdb.Error as err:
            raise UserError(f"payload does not fit the index's columns: {str(err).splitlines()[0]}") from None
        self._cpu.add_with_ids(x, rows)
        self._after_change()

    def _after_change(self) -> None:
        self._reload_ids()
        self.manifest["rows"] = self.ntotal
        self._searcher = None
        self._payload_cache = None

    # ---- id bookkeeping -----------------------------------------------------------------------
    def _reload_ids(self) -> None:
        """Rebuild row -> id lookup and the tombstone set from DuckDB and FAISS."""
        with self._lock:
            rows, ids = self._db.execute("SELECT _row, id FROM rows ORDER BY _row").fetchnumpy().values()
        # rows still in FAISS but not in DuckDB are tombstones (only IDMap kinds that cannot remove)
        faiss_rows = faiss.vector_to_array(self._cpu.id_map) if hasattr(self._cpu, "id_map") else rows
        self._next_row = int(max(faiss_rows.max(initial=-1), rows.max(initial=-1)) + 1)
        is_int = self.manifest["id_type"] == "int"
        self._ids = np.full(self._next_row, -1 if is_int else None, dtype=np.int64 if is_int else object)
        self._ids[rows] = ids if is_int else ids.astype(object)
        self._row_of: dict[Id, int] | None = None
        self._tombstones = np.setdiff1d(faiss_rows, rows)
        self._ntotal = len(rows)

    def _id_lookup(self) -> dict[Id, int]:
        if self._row_of is None:
            live = np.flatnonzero(self._ids != (-1 if self.manifest["id_type"] == "int" else None))
            self._row_of = dict(zip(self._ids[live].tolist(), live.tolist()))
        return self._row_of

    def _known(self, ids: np.ndarray) -> np.ndarray:
        lookup = self._id_lookup()
        return np.fromiter((i in lookup for i in ids.tolist()), dtype=bool, count=len(ids))

    def rows_of(self, ids: Iterable[Id]) -> np.ndarray:
        """Internal row numbers of external ids; unknown ids are a UserError naming them."""
        lookup = self._id_lookup()
        ids = list(ids)
        missing = [i for i in ids if i not in lookup]
        if missing:
            raise UserError(f"unknown ids: {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}")
        return np.asarray([lookup[i] for i in ids], dtype=np.int64)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """External ids of row numbers (same shape); -1 rows map to -1 (int ids) or None (str ids)."""
        if not len(self._ids):
            return np.full(np.shape(rows), -1 if self.manifest["id_type"] == "int" else None)
        ids = self._ids.take(rows, mode="clip")
        empty = rows < 0
        if empty.any():
            ids[empty] = -1 if self.manifest["id_type"] == "int" else None
        return ids

    # ---- search -------------------------------------------------------------------------------
    def _apply_search_params(self) -> None:
        params = self.manifest.get("search_params", {})
        inner = inner_index(self._cpu)
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = int(params.get("nprobe", 16))
        elif isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = int(params.get("efSearch", 64))

    def _get_searcher(self) -> Searcher:
        if self._searcher is None:
            self._searcher = choose_searcher(self._cpu, self.device, self.metric, shard=self.shard)
        return self._searcher

    def search_rows(self, queries: Any, k: int = 10, *, where: Any = None,
                    exclude: Sequence[Id] | Sequence[Sequence[Id]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: (scores, rows), both (Q, k'); rows are internal row numbers, -1 where fewer than k.
        k' is k clamped to the live rows (at least 1), so a huge k costs no memory.

        `where` is a structured filter on payload columns (see `indexes.filters`), e.g.
        `("genre", "==", "Drama")`; `exclude` is one id list for every query or one list per query
        (e.g. each user's seen items).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"k must be an integer >= 1, got {k!r}")
        k = int(min(k, max(self.ntotal, 1)))
        q = _as_matrix(queries, self.dim, "queries")
        if self.metric == "cosine":
            q = _normalize(q)
        excluded = self._excluded_rows(exclude, len(q))
        extra = (excluded[1] if excluded else 0) + len(self._tombstones)  # over-fetch for rows we drop
        if where is None:
            scores, rows = self._get_searcher().search(q, k + extra)
        else:
            scores, rows = FaissSearcher(self._cpu).search(q, k + extra, allowed=self.rows_where(where))
        if not extra:
            return scores, rows
        drop = np.isin(rows, self._tombstones) if len(self._tombstones) else np.zeros(rows.shape, bool)
        if excluded:
            keys = np.arange(len(q))[:, None] * self._next_row + rows
            drop |= np.isin(keys, excluded[0]) & (rows >= 0)
        return _compact(scores, rows, drop, k, self.metric)

    def search_ids(self, queries: Any, k: int = 10, **filters: Any) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (Q, k), without payload: the fast path. Filters as in `search_rows`."""
        scores, rows = self.search_rows(queries, k, **filters)
        return scores, self.ids_of(rows)

    def search(self, queries: Any, k: int = 10, *, where: Any = None,
               exclude: Sequence[Id] | Sequence[Sequence[Id]] | None = None,
               with_payload: bool = True) -> list[list[Hit]]:
        """Search and join each result with its payload: one list of `Hit` per query, best first."""
        scores, rows = self.search_rows(queries, k, where=where, exclude=exclude)
        payload = self.payload_of(np.unique(rows[rows >= 0])) if with_payload else {}
        ids = self.ids_of(rows)
        return [
            [Hit(i, float(s), payload.get(int(r), {})) for i, s, r in zip(ids_q.tolist(), scores_q.tolist(), rows_q) if r >= 0]
            for ids_q, scores_q, rows_q in zip(ids, scores, rows)
        ]

    def payload_of(self, rows: np.ndarray) -> dict[int, dict[str, Any]]:
        """Payload columns of the given rows, keyed by row number: a gather from an in-memory copy of the
        payload (built on first use, dropped on change), so a search pays microseconds, not a query."""
        if not len(rows):
            return {}
        frame, position = self._payload_table()
        rows = np.asarray(rows, dtype=np.int64)
        if not frame.width:
            return {row: {} for row in rows.tolist()}
        return dict(zip(rows.tolist(), frame[position[rows].tolist()].to_dicts()))

    def _payload_table(self) -> tuple[pl.DataFrame, np.ndarray]:
        with self._lock:
            if self._payload_cache is None:
                frame = pl.from_arrow(self._db.sql("SELECT * EXCLUDE (id) FROM rows ORDER BY _row").to_arrow_table())
                position = np.full(self._next_row, -1, dtype=np.int64)
                position[frame["_row"].to_numpy()] = np.arange(frame.height)
                self._payload_cache = (frame.drop("_row"), position)
            return self._payload_cache

    def ids_where(self, where: Any) -> np.ndarray:
        """Ids whose payload passes the structured filter."""
        return self.ids_of(self.rows_where(where))

    def payloads(self, ids: Sequence[Id]) -> list[dict[str, Any]]:
        """The payload of each id, in order; unknown ids are a UserError naming them."""
        rows = self.rows_of(ids)
        found = self.payload_of(np.unique(rows))
        return [dict(found[int(r)]) for r in rows]

    def rows_where(self, where: Any) -> np.ndarray:
        """Rows whose payload passes the structured filter (compiled to a parameterised query)."""
        # the predicate holds only quoted column names, fixed operators and `?` placeholders; values are bound
        predicate, params = compile_filter(where, self._payload_columns())
        try:
            with self._lock:
                found = self._db.execute(f"SELECT _row FROM rows WHERE {predicate}", params).fetchnumpy()
        except duckdb.Error as err:
            raise UserError(f"bad filter {where!r}: {str(err).splitlines()[0]}") from None
        return found["_row"].astype(np.int64)

    def _excluded_rows(self, exclude: Any, n_queries: int) -> tuple[np.ndarray, int] | None:
        """Encode (query, row) pairs to drop as int keys; returns (keys, longest list) or None."""
        lists = exclusion_lists(exclude, n_queries, self.manifest["id_type"])
        if not lists:
            return None
        lookup = self._id_lookup()
        rows = [[lookup.get(i) for i in ids] for ids in lists]
        keys = [q * self._next_row + r for q, found in enumerate(rows) for r in found if r is not None]
        return np.asarray(keys, dtype=np.int64), max(len(ids) for ids in lists)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extras: Mapping[str, Callable[[Path], None]] | None = None,
             overwrite: bool = False) -> Path:
        """Write the index directory atomically (see `indexes.files.atomic_dir`). `extras` maps a name to
        a function writing it into the new directory (e.g. a BM25 index or the model that encodes queries).
        Replacing an existing index needs `overwrite`, except saving back over the index this one was
        loaded from, which keeps that directory's other files."""
        path = Path(path)
        extras = dict(extras or {})
        own = self.path is not None and path.exists() and self.path == path.resolve()
        with atomic_dir(path, "index", overwrite or own) as tmp:
            faiss.write_index(self._cpu, str(tmp / FAISS_FILE))
            with self._lock:
                table = self._db.sql("SELECT * FROM rows").to_arrow_table()
            with duckdb.connect(str(tmp / PAYLOAD_FILE), config=LOCKED_DUCKDB) as dst:
                dst.register("_rows", table)
                dst.execute("CREATE TABLE rows AS SELECT * FROM _rows")
            for name, write in extras.items():
                write(tmp / name)
            if own:
                _copy_other_entries(self.path, tmp, keep=set(extras))
            manifest = dict(self.manifest, rows=self.ntotal, search_device=self.device_info, sha256={
                FAISS_FILE: sha256_file(tmp / FAISS_FILE), PAYLOAD_FILE: sha256_file(tmp / PAYLOAD_FILE)})
            atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2, default=str) + "\n")
        self.manifest, self.path = manifest, path.resolve()
        return path

    def info(self) -> dict[str, Any]:
        """Manifest plus where searches run; what `ragcli index info` prints."""
        return {**self.manifest, "rows": self.ntotal, "search_device": self.device_info,
                "payload_columns": self._payload_columns()}

    def _payload_columns(self) -> list[str]:
        with self._lock:
            cols = [r[0] for r in self._db.execute("DESCRIBE rows").fetchall()]
        return [c for c in cols if c not in RESERVED_COLUMNS]


def exclusion_lists(exclude: Any, n_queries: int, id_type: str) -> list[list[Id | None]]:
    """One list of ids to drop per query (`exclude` is one list for all, or one per query); [] for none.
    Ids from JSON or a shell are text: int indexes read them as ints (None where not a number)."""
    if exclude is None or len(exclude) == 0:
        return []
    per_query = isinstance(exclude[0], (list, tuple, np.ndarray, set))
    lists = list(exclude) if per_query else [exclude] * n_queries
    if len(lists) != n_queries:
        raise UserError(f"{len(lists)} exclusion lists for {n_queries} queries")
    as_id = _int_or_none if id_type == "int" else str
    return [[as_id(i) for i in ids] for ids in lists]


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _compact(scores: np.ndarray, rows: np.ndarray, drop: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Move dropped and empty slots to the end of each row (order kept), cut to k, mark empties -1."""
    drop = drop | (rows < 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(rows, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    empty = np.take_along_axis(drop, order, axis=1)
    rows[empty] = -1
    scores[empty] = np.inf if metric == "l2" else -np.inf
    return scores, rows


def _copy_other_entries(src: Path, dst: Path, keep: set[str]) -> None:
    for entry in src.iterdir():
        if entry.name in {FAISS_FILE, PAYLOAD_FILE, MANIFEST_FILE, MARKER_FILE} | keep:
            continue
        target = dst / entry.name
        shutil.copytree(entry, target) if entry.is_dir() else shutil.copy2(entry, target)


def read_manifest(path: Path) -> dict[str, Any]:
    """Read an index manifest and check it against the schema: a manifest is input like any other, so
    its types, ranges and the files it names (only the index's own) are verified before use."""
    file = Path(path) / MANIFEST_FILE
    if not Path(path).is_dir():
        raise UserError(f"no index at {path}")
    if not file.is_file():
        raise IndexFormatError(f"{path}: {MANIFEST_FILE} is missing (not an index, or a broken one)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise IndexFormatError(f"{path}: {MANIFEST_FILE} is not valid JSON ({str(err).splitlines()[0]})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: unknown index format version {version!r} (this ragcli reads {FORMAT_VERSION})")
    problem = _manifest_problem(manifest)
    if problem:
        raise IndexFormatError(f"{path}: bad manifest: {problem}")
    return manifest


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's fields, or None."""
    checks = {
        "dim": lambda v: _is_int(v, 1, 1 << 20),
        "rows": lambda v: _is_int(v, 0, 1 << 48),
        "metric": lambda v: v in METRICS,
        "id_type": lambda v: v in ("int", "str"),
        "kind": lambda v: isinstance(v, str) and bool(_FACTORY.fullmatch(v)),
        "encoder": lambda v: isinstance(v, dict),
        "search_params": lambda v: isinstance(v, dict) and all(_is_int(x, 1, 1 << 20) for x in v.values()),
    }
    if manifest.get("backend", "faiss") == "faiss":
        checks["sha256"] = lambda v: isinstance(v, dict) and set(v) == {FAISS_FILE, PAYLOAD_FILE} and all(
            isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x) for x in v.values())
    elif manifest["backend"] == "milvus":
        checks.update(uri=lambda v: isinstance(v, str) and 0 < len(v) <= 4096,
                      collection=lambda v: isinstance(v, str) and bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", v)),
                      payload_columns=lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v))
    else:
        return f"unknown backend {str(manifest['backend'])[:40]!r}"
    for key, valid in checks.items():
        if key not in manifest:
            if key in ("encoder", "search_params"):  # optional
                continue
            return f"{key!r} is missing"
        if not valid(manifest[key]):
            return f"{key!r} has a bad value {str(manifest[key])[:80]!r}"
    return None
