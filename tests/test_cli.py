"""The CLI's own plumbing: corpus / query dispatch, --json shapes, exit codes, nothing written on failure.

A throw-away family ("fakefam", registered for each test) stands in for the real ones so these tests exercise only cli.py
and the index engine.
"""

import json

import numpy as np
import pytest

from helpers import run
from indexes import Family, UserError, VectorIndex
from indexes.engine import Engine

ARTICLES = {"a1": "the cat sat", "a2": "dogs bark loudly", "a3": "a cat and a dog"}


def _vector(text: str) -> np.ndarray:
    return np.array([text.count("cat"), text.count("dog"), len(text) / 100], dtype=np.float32) + 1e-3


def _build(request, out):
    ids = list(ARTICLES)
    idx = VectorIndex.build(np.stack([_vector(ARTICLES[i]) for i in ids]), ids,
                            [{"title": ARTICLES[i]} for i in ids], encoder={"family": "fakefam", "name": "counts"})
    idx.save(out, overwrite=request.overwrite)
    return idx


class FakeEngine(Engine):
    family, field = "fakefam", "text"

    def search(self, queries, k, where, exclude):
        if any(q.text == "boom" for q in queries):
            raise UserError("the fake family refuses 'boom'")
        return self.index.search(np.stack([_vector(q.text) for q in queries]), k=k, where=where, exclude=exclude)


@pytest.fixture(autouse=True)
def fake_family(monkeypatch):
    from indexes import registry

    registry._families()  # the real families first, so the fake one is added beside them
    monkeypatch.setitem(registry._FAMILIES, "fakefam", Family("fakefam", {"fake": _build}, lambda index, device: FakeEngine(index)))


def test_version_and_help():
    assert run("--version").output.startswith("ragcli, version")
    result = run("--help")
    assert result.exit_code == 0 and "index" in result.output and "train" in result.output


def test_build_info_list_query_json_shapes(tmp_path):
    built = run("index", "build", "--corpus", "fake", "--name", "demo", "--json")
    assert built.exit_code == 0, built.output
    info = json.loads(built.output)
    assert info["rows"] == 3 and info["dim"] == 3 and info["encoder"]["family"] == "fakefam"
    assert info["path"] == str(tmp_path / "ragcli-home" / "indexes" / "demo")

    listed = json.loads(run("index", "list", "--json").output)
    assert [row["name"] for row in listed] == ["demo"]
    assert json.loads(run("index", "info", "demo", "--json").output)["sha256"].keys() == {"index.faiss", "payload.duckdb"}

    result = run("index", "query", "demo", "a cat", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["rank"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"rank", "id", "score", "payload"} and rows[0]["payload"]["title"]
    assert rows[0]["id"] in {"a1", "a3"}


def test_text_output_lists_ranked_rows():
    run("index", "build", "--corpus", "fake", "--name", "demo")
    result = run("index", "query", "demo", "dog", "-k", "3")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 0 and len(lines) == 3
    assert lines[0].lstrip().startswith("1.") and "dog" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["index", "build", "--corpus", "nope"], "unknown corpus 'nope'"),
    (["index", "query", "missing", "text"], "no index at"),
    (["index", "query", "demo", "   "], "query text is empty"),
    (["index", "query", "demo", "cat", "--history", "1,2"], "exactly one of"),
    (["index", "query", "demo", "--history", " , "], "--history is empty"),
    (["index", "query", "demo", "boom"], "refuses 'boom'"),
    (["index", "build", "--corpus", "fake", "--name", "demo"], "exists; pass --overwrite"),
    (["index", "build", "--corpus", "fake", "--name", "bad name!"], "bad index name"),
])
def test_user_mistakes_exit_2_with_one_line(args, message):
    assert run("index", "build", "--corpus", "fake", "--name", "demo").exit_code == 0
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output


def test_corrupt_index_is_a_user_error(tmp_path):
    run("index", "build", "--corpus", "fake", "--name", "demo")
    (tmp_path / "ragcli-home" / "indexes" / "demo" / "index.faiss").write_bytes(b"garbage")
    result = run("index", "query", "demo", "cat")
    assert result.exit_code == 2 and "corrupt" in result.output


def test_failed_build_writes_nothing(tmp_path, monkeypatch):
    from indexes import registry

    def failing(request, out):
        VectorIndex.build(np.ones((2, 3), np.float32)).save(out, extras={"model": lambda p: 1 / 0})

    monkeypatch.setitem(registry._FAMILIES, "fakefam", Family("fakefam", {"fake": failing}, FakeEngine))
    result = run("index", "build", "--corpus", "fake", "--name", "broken")
    assert result.exit_code == 1 and "internal error: ZeroDivisionError" in result.output
    home = tmp_path / "ragcli-home" / "indexes"
    assert not home.exists() or list(home.iterdir()) == []


def test_unknown_family_in_manifest(tmp_path):
    VectorIndex.build(np.ones((2, 3), np.float32), encoder={"family": "martian"}).save(tmp_path / "ix")
    result = run("index", "query", str(tmp_path / "ix"), "cat")
    assert result.exit_code == 2 and "unknown family 'martian'" in result.output
