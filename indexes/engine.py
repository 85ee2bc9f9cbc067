"""A warm engine: a loaded index plus everything its family needs to answer (models, BM25, encoders),
loaded once. Python (`open_index(...).query`), the shell (`index query`, `--queries FILE`) and HTTP
(`ragcli serve`) all call `query_batch`, so they return the same hits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from indexes.errors import UserError
from indexes.index import Hit, ManifestIndex

MAX_BATCH = 100_000


@dataclass
class Query:
    """One query as a batch file or an HTTP request gives it; a family reads the field it answers."""

    qid: str = ""
    text: str | None = None
    history: list[str] | None = None
    image: Any = None
    condition: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any], qid: str = "") -> Query:
        """From a JSON object (`{"qid", "text" | "history" | "image", "condition"}`); unknown keys are refused."""
        if not isinstance(record, Mapping):
            raise UserError(f"a query must be a JSON object, got {type(record).__name__}")
        unknown = set(record) - {"qid", "text", "history", "image", "condition"}
        if unknown:
            raise UserError(f"unknown query fields: {', '.join(sorted(map(str, unknown)))}")
        history = record.get("history")
        if history is not None and (not isinstance(history, list) or not all(_is_id(h) for h in history)):
            raise UserError("'history' must be a list of item ids (strings or integers)")
        for key in ("text", "image", "condition"):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise UserError(f"'{key}' must be a string")
        if record.get("qid") is not None and not _is_id(record["qid"]):
            raise UserError("'qid' must be a string or an integer")
        return cls(qid=str(record.get("qid", qid)), text=record.get("text"), image=record.get("image"),
                   history=None if history is None else [str(h) for h in history], condition=record.get("condition"))


class Engine(ABC):
    """Answers queries against one index. Subclasses say which `Query` field they read (`field`) and
    implement `search`, which gets every query of a batch at once (one encoder pass)."""

    family: ClassVar[str]
    field: ClassVar[str]  # "text" | "history" | "image"
    options: ClassVar[frozenset[str]] = frozenset()  # keyword options `search` takes (e.g. skip_unknown)

    def __init__(self, index: ManifestIndex):
        if index.path is None:  # models, BM25 and recipes are loaded from the index directory
            raise UserError("an engine answers from a saved index; save it first")
        self.index = index
        self.name = index.path.name

    def query(self, query: Any, k: int = 10, *, where: Any = None, exclude: Sequence[Any] | None = None,
              **options: Any) -> list[Hit]:
        """The k best hits for one query: a text, an item history, an image (path or PIL image), or a `Query`."""
        return self.query_batch([query], k, where=where, exclude=None if exclude is None else [exclude], **options)[0]

    def query_batch(self, queries: Sequence[Any], k: int = 10, *, where: Any = None,
                    exclude: Sequence[Sequence[Any]] | None = None, **options: Any) -> list[list[Hit]]:
        """The k best hits for each query, in order. `where` filters on payload (`indexes.filters`);
        `exclude` is one id list per query; `options` are the family's own (refused when it has none)."""
        refused = set(options) - self.options
        if refused:
            raise UserError(f"a {self.family} index does not take {', '.join(sorted(refused))}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"k must be an integer >= 1, got {k!r}")
        if not 0 < len(queries) <= MAX_BATCH:
            raise UserError(f"a batch holds 1 to {MAX_BATCH} queries, got {len(queries)}")
        if exclude is not None and len(exclude) != len(queries):
            raise UserError(f"{len(exclude)} exclusion lists for {len(queries)} queries")
        queries = [self.as_query(q) for q in queries]
        return self.search(queries, min(k, max(self.index.ntotal, 1)), where, exclude, **options)

    def as_query(self, query: Any) -> Query:
        """Wrap a bare text / history / image as a `Query` of this engine's field, and check it is there."""
        if isinstance(query, Mapping):
            query = Query.from_record(query)
        if not isinstance(query, Query):
            if self.field == "history" and isinstance(query, str):
                raise UserError("a history is a list of item ids, not one string (e.g. ['12', '40', '7'])")
            query = Query(**{self.field: query})
        if getattr(query, self.field) is None:
            raise UserError(f"a {self.family} index is queried with '{self.field}'")
        return query

    @abstractmethod
    def search(self, queries: list[Query], k: int, where: Any, exclude: Sequence[Sequence[Any]] | None,
               **options: Any) -> list[list[Hit]]:
        """Encode the whole batch once and search."""

    def info(self) -> dict[str, Any]:
        """What `index info` and `GET /indexes/{name}` show."""
        return {"name": self.name, "family": self.family, "field": self.field, **self.index.info()}


def _is_id(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)
