"""Structured payload filters, parsed once and rendered for each backend without ever splicing a caller's
string into a statement: for DuckDB as parameterised SQL (names quoted, values bound), for Milvus as a
boolean expression whose field names are checked identifiers and whose values are encoded literals.

A filter is a condition, or `and` / `or` of filters:
    {"field": "genre", "op": "==", "value": "Drama"}
    ("year", ">=", 1990)                                   # the same as a tuple (or a JSON list)
    {"and": [("genre", "in", ["Drama", "War"]), {"or": [("year", "<", 1950), ("rating", ">", 4)]}]}
A list of filters means `and`. Nested struct fields are written with dots: "meta.author".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from indexes.errors import UserError

OPERATORS = {"==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "in": "IN", "not in": "NOT IN"}
MAX_DEPTH = 16
MAX_CONDITIONS = 256
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    """`path op value`: path is the column name, then struct fields."""

    path: tuple[str, ...]
    op: str
    value: Any


@dataclass(frozen=True)
class Junction:
    """`and` / `or` of at least one filter."""

    joiner: str
    parts: tuple[Condition | Junction, ...]


Filter = Condition | Junction


def parse_filter(spec: Any, columns: Sequence[str]) -> Filter:
    """Check a filter against the payload `columns` and return its tree; bad filters are a UserError."""
    return _parse(spec, set(columns), depth=0, counter=[0])


def quote_identifier(name: str) -> str:
    """A DuckDB identifier in double quotes, inner quotes doubled: safe for any column name."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UserError(f"bad column name {name!r}")
    return '"' + name.replace('"', '""') + '"'


def compile_filter(spec: Any, columns: Sequence[str]) -> tuple[str, list[Any]]:
    """Turn a filter into `(sql_predicate, parameters)` over payload `columns` (DuckDB)."""
    params: list[Any] = []
    return _sql(parse_filter(spec, columns), params), params


def milvus_expression(spec: Any, columns: Sequence[str], field: str = "payload") -> str:
    """Turn a filter into a Milvus boolean expression over the JSON field `field` holding the payload."""
    return _milvus(parse_filter(spec, columns), field)


# ---- parsing --------------------------------------------------------------------------------------
def _parse(spec: Any, columns: set[str], depth: int, counter: list[int]) -> Filter:
    if depth > MAX_DEPTH:
        raise UserError(f"filter nested deeper than {MAX_DEPTH} levels")
    if isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) in ("and", "or"):
        (joiner, parts), = spec.items()
        return _junction(joiner, parts, columns, depth, counter)
    if isinstance(spec, list) and not _is_triple(spec):
        return _junction("and", spec, columns, depth, counter)
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise UserError(f"filter has more than {MAX_CONDITIONS} conditions")
    field, op, value = _condition(spec)
    return Condition(_path(field, columns), *_checked(op, value))


def _junction(joiner: str, parts: Any, columns: set[str], depth: int, counter: list[int]) -> Junction:
    if not isinstance(parts, list) or not parts:
        raise UserError(f"filter '{joiner}' needs a non-empty list of filters")
    return Junction(joiner, tuple(_parse(p, columns, depth + 1, counter) for p in parts))


def _condition(spec: Any) -> tuple[str, str, Any]:
    if isinstance(spec, Mapping) and set(spec) == {"field", "op", "value"}:
        return spec["field"], spec["op"], spec["value"]
    if _is_triple(spec):
        return tuple(spec)
    raise UserError(f"bad filter {spec!r}: use {{'field': ..., 'op': ..., 'value': ...}}, "
                    "(field, op, value), or {'and'|'or': [...]}")


def _path(field: Any, columns: set[str]) -> tuple[str, ...]:
    if not isinstance(field, str) or not field:
        raise UserError(f"filter field must be a column name, got {field!r}")
    head, *rest = field.split(".") if field not in columns else [field]
    if head not in columns:
        raise UserError(f"unknown filter field {field!r}; payload columns: {', '.join(sorted(columns)) or 'none'}")
    return (head, *rest)


def _checked(op: Any, value: Any) -> tuple[str, Any]:
    if not isinstance(op, str) or op not in OPERATORS:
        raise UserError(f"unknown filter operator {op!r}; use one of {', '.join(OPERATORS)}")
    if op in ("in", "not in"):
        if not isinstance(value, (list, tuple)) or not value or not all(_is_scalar(v) for v in value):
            raise UserError(f"'{op}' takes a non-empty list of strings or numbers, got {value!r}")
        return op, tuple(value)
    if value is None and op in ("==", "!="):
        return op, None
    if not _is_scalar(value):
        raise UserError(f"filter value must be a string, number or boolean, got {value!r}")
    return op, value


def _is_triple(spec: Any) -> bool:
    """`(field, op, value)`, also as a JSON list `["year", ">=", 1990]`."""
    return isinstance(spec, (tuple, list)) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], str)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (isinstance(value, float) and not math.isfinite(value))


# ---- DuckDB: quoted names, bound values -----------------------------------------------------------
def _sql(node: Filter, params: list[Any]) -> str:
    if isinstance(node, Junction):
        return "(" + f" {node.joiner.upper()} ".join(_sql(p, params) for p in node.parts) + ")"
    column = ".".join(quote_identifier(part) for part in node.path)
    if node.op in ("in", "not in"):
        params.append(list(node.value))
        return f"({column} {OPERATORS[node.op]} (SELECT unnest(?)))"
    if node.value is None:
        return f"({column} IS {'NOT ' if node.op == '!=' else ''}NULL)"
    params.append(node.value)
    return f"({column} {OPERATORS[node.op]} ?)"


# ---- Milvus: checked names, encoded literals ------------------------------------------------------
def _milvus(node: Filter, field: str) -> str:
    if isinstance(node, Junction):
        return "(" + f" {node.joiner} ".join(_milvus(p, field) for p in node.parts) + ")"
    target = field + "".join(f"[{milvus_literal(part)}]" for part in node.path)
    if node.value is None:
        raise UserError("the milvus backend cannot compare with null")
    if node.op in ("in", "not in"):
        if len({type(v) for v in node.value}) > 1:
            raise UserError(f"the milvus backend needs one value type in an '{node.op}' list, got {list(node.value)!r}")
        return f"({target} {node.op} [{', '.join(milvus_literal(v) for v in node.value)}])"
    return f"({target} {node.op} {milvus_literal(node.value)})"


def milvus_literal(value: Scalar) -> str:
    """A value as a Milvus literal: strings JSON-quoted (quotes and backslashes escaped; Milvus reads
    no control-character escapes, so those are refused), booleans lower-case, numbers by repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"the milvus backend cannot filter on strings with control characters: {value[:40]!r}")
    return json.dumps(value, ensure_ascii=False)

