"""Structured payload filters, compiled to parameterised SQL: no string from a caller is ever spliced
into a statement. Field names are checked against the payload's columns and quoted; values are bound.

A filter is a condition, or `and` / `or` of filters:
    {"field": "genre", "op": "==", "value": "Drama"}
    ("year", ">=", 1990)                                   # the same as a tuple (or a JSON list)
    {"and": [("genre", "in", ["Drama", "War"]), {"or": [("year", "<", 1950), ("rating", ">", 4)]}]}
A list of filters means `and`. Nested struct fields are written with dots: "meta.author".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from indexes.errors import UserError

OPERATORS = {"==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "in": "IN", "not in": "NOT IN"}
MAX_DEPTH = 16
MAX_CONDITIONS = 256
Scalar = str | int | float | bool


def quote_identifier(name: str) -> str:
    """A DuckDB identifier in double quotes, inner quotes doubled: safe for any column name."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UserError(f"bad column name {name!r}")
    return '"' + name.replace('"', '""') + '"'


def compile_filter(spec: Any, columns: Sequence[str]) -> tuple[str, list[Any]]:
    """Turn a filter into `(sql_predicate, parameters)` over payload `columns`; bad filters are a UserError."""
    params: list[Any] = []
    counter = [0]
    sql = _compile(spec, set(columns), params, depth=0, counter=counter)
    return sql, params


def _compile(spec: Any, columns: set[str], params: list[Any], depth: int, counter: list[int]) -> str:
    if depth > MAX_DEPTH:
        raise UserError(f"filter nested deeper than {MAX_DEPTH} levels")
    if isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) in ("and", "or"):
        (joiner, parts), = spec.items()
        return _join(joiner, parts, columns, params, depth, counter)
    if isinstance(spec, list) and not _is_triple(spec):
        return _join("and", spec, columns, params, depth, counter)
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise UserError(f"filter has more than {MAX_CONDITIONS} conditions")
    field, op, value = _condition(spec)
    return _predicate(_field_sql(field, columns), op, value, params)


def _join(joiner: str, parts: Any, columns: set[str], params: list[Any], depth: int, counter: list[int]) -> str:
    if not isinstance(parts, list) or not parts:
        raise UserError(f"filter '{joiner}' needs a non-empty list of filters")
    compiled = [_compile(p, columns, params, depth + 1, counter) for p in parts]
    return "(" + f" {joiner.upper()} ".join(compiled) + ")"


def _condition(spec: Any) -> tuple[str, str, Any]:
    if isinstance(spec, Mapping) and set(spec) == {"field", "op", "value"}:
        return spec["field"], spec["op"], spec["value"]
    if _is_triple(spec):
        return tuple(spec)
    raise UserError(f"bad filter {spec!r}: use {{'field': ..., 'op': ..., 'value': ...}}, "
                    "(field, op, value), or {'and'|'or': [...]}")


def _field_sql(field: Any, columns: set[str]) -> str:
    if not isinstance(field, str) or not field:
        raise UserError(f"filter field must be a column name, got {field!r}")
    head, *rest = field.split(".") if field not in columns else [field]
    if head not in columns:
        raise UserError(f"unknown filter field {field!r}; payload columns: {', '.join(sorted(columns)) or 'none'}")
    return ".".join(quote_identifier(part) for part in [head, *rest])


def _predicate(column: str, op: Any, value: Any, params: list[Any]) -> str:
    if not isinstance(op, str) or op not in OPERATORS:
        raise UserError(f"unknown filter operator {op!r}; use one of {', '.join(OPERATORS)}")
    if op in ("in", "not in"):
        if not isinstance(value, (list, tuple)) or not value or not all(_is_scalar(v) for v in value):
            raise UserError(f"'{op}' takes a non-empty list of strings or numbers, got {value!r}")
        params.append(list(value))
        return f"({column} {OPERATORS[op]} (SELECT unnest(?)))"
    if value is None and op in ("==", "!="):
        return f"({column} IS {'NOT ' if op == '!=' else ''}NULL)"
    if not _is_scalar(value):
        raise UserError(f"filter value must be a string, number or boolean, got {value!r}")
    params.append(value)
    return f"({column} {OPERATORS[op]} ?)"


def _is_triple(spec: Any) -> bool:
    """`(field, op, value)`, also as a JSON list `["year", ">=", 1990]`."""
    return isinstance(spec, (tuple, list)) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], str)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (isinstance(value, float) and value != value)
