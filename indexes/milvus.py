"""`MilvusIndex`: the scale-out backend. Vectors, ids and payload live in one Milvus collection, reached
through pymilvus' `MilvusClient`: a local `*.db` file runs Milvus Lite in-process (what the tests use),
`http(s)://host:19530` a standalone server or a cluster, with the same code. The index directory keeps
the manifest (backend, URI, collection; never the token, which comes from `RAGCLI_MILVUS_TOKEN`) and
whatever the family stores beside the vectors (BM25, models), so engines open it as they open a FAISS one.

The surface is `VectorIndex`'s: build, add, remove, search with k, the structured payload filter
(rendered as a Milvus expression: checked field paths, encoded literals) and per-query exclusions.
Unlike a FAISS index, which changes on disk only when saved, a collection is live: `add` and `remove`
apply at once, and `save` writes the manifest that points at it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from indexes.errors import IndexFormatError, UserError
from indexes.files import atomic_dir, atomic_write_text, expand, recover
from indexes.filters import milvus_expression, milvus_literal
from indexes.index import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    Hit,
    Id,
    ManifestIndex,
    _as_matrix,
    _copy_other_entries,
    _ids_array,
    _normalize,
    checked_rows,
    exclusion_lists,
    ivf_lists,
    pq_subquantizers,
    read_manifest,
)
from indexes.runtime import error_line

TOKEN_VARIABLE = "RAGCLI_MILVUS_TOKEN"
CONNECT_TIMEOUT_S = 20
LITE_ATTEMPTS = 3
MAX_TOP_K = 16_384  # Milvus' limit on k, and on queries per request
MAX_ID_LENGTH = 4096
INSERT_BATCH = 4096
SEARCH_BATCH = 1024
INDEX_TYPES = {"flat": "FLAT", "ivf-flat": "IVF_FLAT", "hnsw": "HNSW", "ivf-pq": "IVF_PQ"}
MILVUS_METRICS = {"cosine": "IP", "ip": "IP", "l2": "L2"}  # cosine: vectors are normalised first, as in FAISS
# Milvus Lite splices primary keys into SQL when deleting: string ids must hold nothing that could escape a literal
_UNSAFE_ID = re.compile(r"['\"\\\x00-\x1f\x7f]")
_SERVER_URI = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?/?")
_clients: dict[str, Any] = {}
_clients_guard = threading.Lock()


def check_uri(uri: str) -> str:
    """A Milvus URI as ragcli records it: an absolute `*.db` path (Milvus Lite) or `http(s)://host[:port]`."""
    if not isinstance(uri, str) or not uri.strip():
        raise UserError("the milvus backend needs --uri: a local *.db file (Milvus Lite) or http://host:19530")
    if _SERVER_URI.fullmatch(uri):
        return uri.rstrip("/")
    if "://" in uri or not uri.endswith(".db"):
        raise UserError(f"bad milvus --uri {uri[:80]!r}: a local *.db file (Milvus Lite) or http(s)://host:port")
    path = expand(uri)
    if not path.parent.is_dir():
        raise UserError(f"bad milvus --uri {uri[:80]!r}: folder {path.parent} does not exist")
    return str(path.parent.resolve() / path.name)


def connect(uri: str) -> Any:
    """One client per URI per process (Milvus Lite runs one server per file); a failure is a UserError."""
    uri = check_uri(uri)
    with _clients_guard:
        if uri not in _clients:
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # failures become one-line UserErrors
            _clients[uri] = _client(uri, attempts=LITE_ATTEMPTS if uri.endswith(".db") else 1)
        return _clients[uri]


def _client(uri: str, attempts: int) -> Any:
    """A MilvusClient for `uri`. Milvus Lite starts its server in a subprocess, which on a loaded machine
    can take longer than pymilvus waits for its socket: a local file gets a few tries."""
    with warnings.catch_warnings():  # milvus-lite imports pkg_resources, which warns
        warnings.simplefilter("ignore", UserWarning)
        from pymilvus import MilvusClient

        for attempt in range(1, attempts + 1):
            try:
                return MilvusClient(uri=uri, token=os.environ.get(TOKEN_VARIABLE, ""), timeout=CONNECT_TIMEOUT_S)
            except Exception as err:  # pymilvus raises its own and grpc's errors  # noqa: BLE001
                if attempt == attempts:
                    raise UserError(f"cannot connect to milvus at {uri}: {_milvus_message(err)}") from None
                time.sleep(attempt)


def _milvus_message(err: BaseException) -> str:
    message = getattr(err, "message", None) or error_line(err)
    return str(message).splitlines()[0][:200] if message else type(err).__name__


def _collection_name(path: Path) -> str:
    """A fresh collection name: Milvus takes letters, digits and underscores only."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", path.name)[:40]
    return f"ragcli_{stem}_{secrets.token_hex(6)}"


class MilvusIndex(ManifestIndex):
    """A searchable set of vectors with ids and payload in a Milvus collection. Build with `build`
    (which creates and fills the collection), open with `load`."""

    backend = "milvus"

    def __init__(self, client: Any, manifest: dict[str, Any], path: Path | None = None, device: str = "auto"):
        self._client = client
        self.manifest = manifest
        self.path = path
        self.device = device
        self._ntotal = self._count()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: Any, ids: Sequence[Id] | None = None,
              payload: pl.DataFrame | Sequence[Mapping[str, Any]] | None = None, *, uri: str,
              kind: str = "flat", metric: str = "cosine", encoder: Mapping[str, Any] | None = None,
              device: str = "auto", nprobe: int = 16, ef_search: int = 64, name: str = "index",
              train_size: int | None = None) -> MilvusIndex:
        """Create a collection at `uri` and insert the (n, d) matrix, ids (default 0..n-1) and payload.
        `kind`: flat, ivf-flat, hnsw or ivf-pq, as Milvus index types. `train_size` is FAISS's; Milvus
        trains its IVF kinds on what it holds."""
        del train_size
        x, ids_arr, id_type, frame = checked_rows(vectors, ids, payload)
        n, dim = x.shape
        if n == 0:
            raise UserError("nothing to index: 0 vectors")
        if kind not in INDEX_TYPES:
            raise UserError(f"bad index kind {kind!r} for the milvus backend: use {', '.join(INDEX_TYPES)}")
        if metric not in MILVUS_METRICS:
            raise UserError(f"unknown metric {metric!r}; use one of {', '.join(MILVUS_METRICS)}")
        uri = check_uri(uri)
        client = connect(uri)
        manifest = {
            "format_version": FORMAT_VERSION, "backend": "milvus", "uri": uri,
            "collection": _collection_name(Path(name)), "dim": dim, "metric": metric, "kind": kind, "rows": 0,
            "id_type": id_type, "encoder": dict(encoder or {}), "payload_columns": [],
            "search_params": {"nprobe": nprobe, "efSearch": ef_search},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _create_collection(client, manifest, n)
        self = cls(client, manifest, device=device)
        try:
            self._insert(_normalize(x) if metric == "cosine" else x, ids_arr, frame)
        except BaseException:
            self.drop()
            raise
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> MilvusIndex:
        """Open an index directory whose manifest points at a Milvus collection."""
        recover(path)
        path = Path(path).resolve()
        manifest = read_manifest(path)
        client = connect(manifest["uri"])
        if not client.has_collection(manifest["collection"]):
            raise IndexFormatError(f"{path}: collection {manifest['collection']} is gone from {manifest['uri']}")
        return cls(client, manifest, path=path, device=device)

    def drop(self) -> None:
        """Delete the collection (the index directory, if any, stays)."""
        self._client.drop_collection(self._collection)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def _collection(self) -> str:
        return self.manifest["collection"]

    @property
    def device_info(self) -> str:
        return f"milvus {self.manifest['uri']} ({self._collection})"

    def _count(self) -> int:
        rows = self._client.query(self._collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # ---- mutation -----------------------------------------------------------------------------
    def add(self, vectors: Any, ids: Sequence[Id], payload: pl.DataFrame | Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert rows; ids must be new."""
        x, ids_arr, _, frame = checked_rows(vectors, ids, payload, self.dim, self.manifest["id_type"])
        taken = self._existing(ids_arr.tolist())
        if taken:
            raise UserError(f"ids already in the index: {', '.join(map(str, sorted(taken)[:5]))}")
        self._insert(_normalize(x) if self.metric == "cosine" else x, ids_arr, frame)

    def remove(self, ids: Iterable[Id]) -> int:
        """Delete rows by id; unknown ids are an error. Returns the number removed."""
        ids_arr, _ = _ids_array(list(ids), self.manifest["id_type"])
        wanted = ids_arr.tolist()
        missing = [i for i in wanted if i not in self._existing(wanted)]
        if missing:
            raise UserError(f"unknown ids: {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}")
        self._client.delete(self._collection, filter=self._id_expression(wanted))
        self._after_change()
        return len(wanted)

    def _insert(self, x: np.ndarray, ids: np.ndarray, frame: pl.DataFrame) -> None:
        if self.manifest["id_type"] == "str":
            bad = next((i for i in ids.tolist() if len(i.encode()) > MAX_ID_LENGTH or _UNSAFE_ID.search(i)), None)
            if bad is not None:
                raise UserError(f"bad id {bad[:40]!r} for the milvus backend: at most {MAX_ID_LENGTH} bytes, "
                                "no quotes, backslashes or control characters")
        rows = frame.to_dicts() if frame.width else [{}] * len(x)
        records = [{"id": i, "vector": v, "payload": p} for i, v, p in zip(ids.tolist(), x, rows)]
        try:
            for start in range(0, len(records), INSERT_BATCH):
                self._client.insert(self._collection, records[start:start + INSERT_BATCH])
        except Exception as err:  # noqa: BLE001  (payload values Milvus cannot store as JSON, ...)
            raise UserError(f"milvus refused the rows: {_milvus_message(err)}") from None
        self._client.flush(self._collection)
        known = self.manifest["payload_columns"]
        self.manifest["payload_columns"] = known + [c for c in frame.columns if c not in known]
        self._after_change()

    def _after_change(self) -> None:
        self._ntotal = self.manifest["rows"] = self._count()

    # ---- ids ----------------------------------------------------------------------------------
    def _id_expression(self, ids: Sequence[Id]) -> str:
        """`id in [...]` with every id an encoded literal (pymilvus' own `ids=` splices them unescaped)."""
        return f"id in [{', '.join(milvus_literal(i) for i in ids)}]"

    def _existing(self, ids: Sequence[Id]) -> set[Id]:
        found: set[Id] = set()
        for start in range(0, len(ids), MAX_TOP_K):
            part = ids[start:start + MAX_TOP_K]
            found |= {r["id"] for r in self._client.query(self._collection, filter=self._id_expression(part),
                                                        output_fields=["id"])}
        return found

    def payloads(self, ids: Sequence[Id]) -> list[dict[str, Any]]:
        """The payload of each id, in order; unknown ids are a UserError naming them."""
        ids = list(ids)
        records: dict[Id, dict[str, Any]] = {}
        for start in range(0, len(ids), MAX_TOP_K):
            part = ids[start:start + MAX_TOP_K]
            for r in self._client.query(self._collection, filter=self._id_expression(part), output_fields=["id", "payload"]):
                records[r["id"]] = r.get("payload") or {}
        missing = [i for i in ids if i not in records]
        if missing:
            raise UserError(f"unknown ids: {', '.join(map(str, missing[:10]))}")
        return [dict(records[i]) for i in ids]

    def ids_where(self, where: Any) -> np.ndarray:
        """Ids whose payload passes the structured filter."""
        expression = milvus_expression(where, self.manifest["payload_columns"])
        found: list[Id] = []
        iterator = self._client.query_iterator(self._collection, batch_size=MAX_TOP_K // 4, filter=expression,
                                               output_fields=["id"])
        try:
            while batch := iterator.next():
                found.extend(r["id"] for r in batch)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"bad filter {where!r}: {_milvus_message(err)}") from None
        finally:
            iterator.close()
        return np.asarray(found, dtype=np.int64 if self.manifest["id_type"] == "int" else object)

    # ---- search -------------------------------------------------------------------------------
    def search(self, queries: Any, k: int = 10, *, where: Any = None,
               exclude: Sequence[Id] | Sequence[Sequence[Id]] | None = None,
               with_payload: bool = True) -> list[list[Hit]]:
        """One list of `Hit` per query, best first; `where` and `exclude` as `VectorIndex.search`."""
        return [[Hit(r["id"], float(r["distance"]), (r["entity"].get("payload") or {}) if with_payload else {})
                 for r in found] for found in self._search(queries, k, where, exclude, with_payload)]

    def search_ids(self, queries: Any, k: int = 10, **filters: Any) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), both (Q, k'), as `VectorIndex.search_ids`: -1 / None and -inf (+inf for l2) pad."""
        found = self._search(queries, k, filters.get("where"), filters.get("exclude"), False)
        width = max(1, min(k, self.ntotal))
        is_int = self.manifest["id_type"] == "int"
        ids = np.full((len(found), width), -1 if is_int else None, dtype=np.int64 if is_int else object)
        scores = np.full((len(found), width), np.inf if self.metric == "l2" else -np.inf, dtype=np.float32)
        for q, hits in enumerate(found):
            ids[q, :len(hits)] = [r["id"] for r in hits]
            scores[q, :len(hits)] = [r["distance"] for r in hits]
        return scores, ids

    def _search(self, queries: Any, k: int, where: Any, exclude: Any, with_payload: bool) -> list[list[dict]]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"k must be an integer >= 1, got {k!r}")
        q = _as_matrix(queries, self.dim, "queries")
        if self.metric == "cosine":
            q = _normalize(q)
        dropped = [set(ids) - {None} for ids in exclusion_lists(exclude, len(q), self.manifest["id_type"])]
        k = int(min(k, max(self.ntotal, 1)))
        limit = k + max((len(d) for d in dropped), default=0)
        if limit > MAX_TOP_K:
            raise UserError(f"the milvus backend returns at most {MAX_TOP_K} hits per query (k plus exclusions)")
        expression = "" if where is None else milvus_expression(where, self.manifest["payload_columns"])
        params = self.manifest.get("search_params", {})
        search_params = {"metric_type": MILVUS_METRICS[self.metric],
                         "params": {"nprobe": int(params.get("nprobe", 16)), "ef": max(limit, int(params.get("efSearch", 64)))}}
        results: list[list[dict]] = []
        try:
            for start in range(0, len(q), SEARCH_BATCH):
                results.extend(self._client.search(
                    self._collection, data=q[start:start + SEARCH_BATCH], limit=limit, filter=expression,
                    output_fields=["payload"] if with_payload else [], search_params=search_params))
        except Exception as err:  # noqa: BLE001
            raise UserError(f"milvus search failed: {_milvus_message(err)}") from None
        return [[r for r in hits if r["id"] not in dropped[i]][:k] if dropped else list(hits)[:k]
                for i, hits in enumerate(results)]

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extras: Mapping[str, Callable[[Path], None]] | None = None,
             overwrite: bool = False) -> Path:
        """Write the index directory (manifest + `extras`) atomically; the collection it points at holds
        the vectors. The collection of an index this replaces is dropped once the new one is published."""
        path = Path(path)
        extras = dict(extras or {})
        own = self.path is not None and path.exists() and self.path == path.resolve()
        replaced = _previous_collection(path) if path.exists() and not own else None
        with atomic_dir(path, "index", overwrite or own) as tmp:
            for name, write in extras.items():
                write(tmp / name)
            if own:
                _copy_other_entries(self.path, tmp, keep=set(extras))
            manifest = dict(self.manifest, rows=self.ntotal, search_device=self.device_info)
            atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2, default=str) + "\n")
        if replaced is not None and replaced != (self.manifest["uri"], self._collection):
            connect(replaced[0]).drop_collection(replaced[1])
        self.manifest, self.path = manifest, path.resolve()
        return path

    def info(self) -> dict[str, Any]:
        """Manifest plus where searches run; what `ragcli index info` prints."""
        return {**self.manifest, "rows": self.ntotal, "search_device": self.device_info,
                "payload_columns": list(self.manifest["payload_columns"])}


def _create_collection(client: Any, manifest: dict[str, Any], n: int) -> None:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    if manifest["id_type"] == "int":
        schema.add_field("id", DataType.INT64, is_primary=True)
    else:
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=manifest["dim"])
    schema.add_field("payload", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index("vector", index_type=INDEX_TYPES[manifest["kind"]], metric_type=MILVUS_METRICS[manifest["metric"]],
                    params=_index_params(manifest["kind"], n, manifest["dim"]))
    try:
        client.create_collection(manifest["collection"], schema=schema, index_params=index, consistency_level="Strong")
    except Exception as err:  # noqa: BLE001
        raise UserError(f"milvus cannot create the collection: {_milvus_message(err)}") from None


def _index_params(kind: str, n: int, dim: int) -> dict[str, int]:
    """Sizes as FAISS's `factory_string` picks them for n rows."""
    if kind == "ivf-flat":
        return {"nlist": ivf_lists(n)}
    if kind == "ivf-pq":
        return {"nlist": ivf_lists(n), "m": pq_subquantizers(dim), "nbits": 8}
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 40}
    return {}


def _previous_collection(path: Path) -> tuple[str, str] | None:
    """(uri, collection) of the milvus index now at `path`, if that is what it is."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("backend") == "milvus":
        return manifest.get("uri"), manifest.get("collection")
    return None
