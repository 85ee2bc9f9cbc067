"""Batch queries in, run files out: query files (one per line, TSV `qid<TAB>query`, or JSONL), TREC run
files and qrels in the formats every IR tool reads, and run scoring with ir_measures (the field's
standard: trec_eval's measures by name, e.g. "nDCG@10", "R@100", "AP")."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from indexes.engine import Query
from indexes.errors import UserError
from indexes.files import atomic_write_text, regular_file
from indexes.index import Hit

MAX_QUERY_FILE_BYTES = 1 << 30


def read_query_file(path: str | os.PathLike, field: str) -> list[Query]:
    """Queries from a file: JSONL objects (`{"qid", "text" | "history" | "image", "condition"}`), TSV
    `qid<TAB>query`, or one query per line (qid = line number). A plain or TSV query fills `field`;
    a history is comma-separated ids."""
    file = regular_file(path, "query file")
    if file.stat().st_size > MAX_QUERY_FILE_BYTES:
        raise UserError(f"query file {path} is larger than 1 GiB")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"query file {path} is not UTF-8 text") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise UserError(f"query file {path} holds no queries")
    jsonl = file.suffix == ".jsonl" or numbered[0][1].lstrip().startswith("{")
    queries = [_json_query(line, n, path) if jsonl else _text_query(line, n, field) for n, line in numbered]
    qids = [q.qid for q in queries]
    if len(set(qids)) != len(qids):
        raise UserError(f"query file {path} repeats a qid")
    return queries


def _json_query(line: str, number: int, path: Any) -> Query:
    try:
        record = json.loads(line)
    except ValueError as err:
        raise UserError(f"{path}, line {number}: not JSON ({err})") from None
    try:
        return Query.from_record(record, qid=str(number))
    except UserError as err:
        raise UserError(f"{path}, line {number}: {err}") from None


def _text_query(line: str, number: int, field: str) -> Query:
    qid, tab, rest = line.partition("\t")
    qid, value = (qid.strip(), rest.strip()) if tab else (str(number), line.strip())
    if field == "history":
        return Query(qid=qid, history=[i.strip() for i in value.split(",") if i.strip()])
    return Query(qid=qid, **{field: value})


def trec_lines(qids: Sequence[str], hits: Sequence[Sequence[Hit]], run_id: str) -> list[str]:
    """`QID Q0 DOCID RANK SCORE RUNID` per hit (the TREC / COLIEE run format)."""
    if not run_id or any(c.isspace() for c in run_id):
        raise UserError(f"a run id (--run-id) is one word without spaces, got {run_id!r}")
    return [f"{_one_word(qid)} Q0 {_one_word(hit.id)} {rank} {hit.score:.6f} {run_id}"
            for qid, ranked in zip(qids, hits) for rank, hit in enumerate(ranked, 1)]


def _one_word(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise UserError(f"id {text!r} cannot be written to a TREC file (empty, or it holds spaces)")
    return text


def write_run(path: str | os.PathLike, qids: Sequence[str], hits: Sequence[Sequence[Hit]], run_id: str) -> None:
    """A TREC run file, or JSONL (one `{"qid", "hits": [...]}` per query) when `path` ends in .jsonl."""
    if Path(path).suffix == ".jsonl":
        text = "".join(json.dumps({"qid": q, "hits": [h.to_dict() for h in ranked]}, default=str, ensure_ascii=False)
                       + "\n" for q, ranked in zip(qids, hits))
    else:
        text = "\n".join(trec_lines(qids, hits, run_id)) + "\n"
    atomic_write_text(path, text)


def write_qrels(path: str | os.PathLike, judgements: Iterable[tuple[str, str, int]]) -> int:
    """A TREC qrels file (`QID 0 DOCID REL`); returns the number of lines."""
    lines = [f"{qid} 0 {_one_word(doc)} {int(rel)}" for qid, doc, rel in judgements]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def score_run(run: str | os.PathLike, qrels: str | os.PathLike, measures: str) -> dict[str, Any]:
    """Mean and per-query values of `measures` (comma-separated ir_measures names) for a TREC run."""
    import ir_measures

    try:
        parsed = [ir_measures.parse_measure(m.strip()) for m in measures.split(",") if m.strip()]
    except (ValueError, NameError, SyntaxError, TypeError, AttributeError) as err:
        raise UserError(f"unknown measure in {measures!r}: {err}") from None
    if not parsed:
        raise UserError("give at least one measure, e.g. 'nDCG@10,R@100,AP'")
    qrels_rows = _read_trec(qrels, "qrels", 4)
    run_rows = _read_trec(run, "run", 6)
    judged = [ir_measures.Qrel(q, d, int(r)) for q, _, d, r in qrels_rows]
    scored = [ir_measures.ScoredDoc(q, d, float(s)) for q, _, d, _, s, _ in run_rows]
    per_query: dict[str, dict[str, float]] = {}
    try:
        for metric in ir_measures.iter_calc(parsed, judged, scored):
            per_query.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
        means = {str(k): float(v) for k, v in ir_measures.calc_aggregate(parsed, judged, scored).items()}
    except (AssertionError, ValueError, TypeError) as err:  # ir_measures checks parameters with assert
        raise UserError(f"cannot compute {measures!r}: {err}") from None
    return {"measures": means, "queries": len(per_query), "per_query": per_query}


def _read_trec(path: str | os.PathLike, what: str, columns: int) -> list[list[str]]:
    file = regular_file(path, f"{what} file")
    rows = []
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} file {path} is not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            raise UserError(f"{path}, line {number}: a {what} line has {columns} columns, found {len(parts)}")
        try:
            float(parts[-2]) if what == "run" else int(parts[-1])
        except ValueError:
            raise UserError(f"{path}, line {number}: not a number where the {what} format has one") from None
        rows.append(parts)
    if not rows:
        raise UserError(f"{what} file {path} is empty")
    return rows
