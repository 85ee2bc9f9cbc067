"""The milvus backend against the real engine (Milvus Lite, a local file): the same hits as FAISS exact
search, the same filters and exclusions, add / remove / reopen, hostile strings kept as data, and the
CLI building, querying and describing a milvus index like a FAISS one."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers import one_line_error, run
from indexes import UserError, open_index
from indexes.backends import build_vectors, load_vectors
from indexes.http import create_app
from indexes.milvus import TOKEN_VARIABLE, connect


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One Milvus Lite file for the module (each test makes its own collections): the server starts once."""
    return str(tmp_path_factory.mktemp("milvus") / "test.db")


def _data(n=240, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    payload = [{"genre": ["drama", "war", 'say "hi" \\ 日本'][i % 3], "year": 1950 + i % 60, "score": i / 7,
                "meta": {"author": "ann" if i < n // 2 else "bob"}} for i in range(n)]
    return vectors, payload


def _pair(uri, ids, kind="flat", metric="cosine", payload=True):
    vectors, rows = _data()
    rows = rows if payload else None
    return (build_vectors(vectors, ids, rows, backend="milvus", uri=uri, kind=kind, metric=metric),
            build_vectors(vectors, ids, rows, kind=kind, metric=metric), vectors)


@pytest.mark.parametrize("kind, metric, id_kind", [
    ("flat", "cosine", "str"), ("flat", "l2", "int"), ("flat", "ip", "int"), ("ivf-flat", "cosine", "int"),
])
def test_same_hits_as_faiss_exact_search(uri, kind, metric, id_kind):
    ids = [f"item-{i}" for i in range(240)] if id_kind == "str" else list(range(1000, 1240))
    milvus, faiss, vectors = _pair(uri, ids, kind, metric, payload=False)
    if kind == "ivf-flat":  # every cell probed: exact on both sides
        milvus.manifest["search_params"]["nprobe"] = faiss._cpu.nlist
        faiss._cpu.nprobe = faiss._cpu.nlist
    queries = vectors[:12] + np.random.default_rng(1).normal(0, 0.3, (12, 16)).astype(np.float32)
    scores_m, ids_m = milvus.search_ids(queries, k=10)
    scores_f, ids_f = faiss.search_ids(queries, k=10)
    assert ids_m.tolist() == ids_f.tolist()
    np.testing.assert_allclose(scores_m, scores_f, rtol=1e-4, atol=1e-4)
    assert milvus.ntotal == faiss.ntotal == 240


@pytest.mark.parametrize("where", [
    ("genre", "==", "war"),
    ("genre", "==", 'say "hi" \\ 日本'),
    ("genre", "in", ["drama", 'say "hi" \\ 日本']),
    ("genre", "not in", ["drama"]),
    {"and": [("year", ">=", 1990), ("meta.author", "==", "bob")]},
    {"or": [("score", "<", 3.0), [("genre", "!=", "war"), ("year", "<=", 1955)]]},
])
def test_payload_filters_and_exclusions_as_faiss(uri, where):
    ids = [f"item-{i}" for i in range(240)]
    milvus, faiss, vectors = _pair(uri, ids)
    exclude = [[ids[j] for j in range(q, q + 40)] for q in range(4)]
    found_m = milvus.search(vectors[:4], k=7, where=where, exclude=exclude)
    found_f = faiss.search(vectors[:4], k=7, where=where, exclude=exclude)
    assert [[h.id for h in hits] for hits in found_m] == [[h.id for h in hits] for hits in found_f]
    assert [h.payload for h in found_m[0]] == [h.payload for h in found_f[0]]
    assert sorted(milvus.ids_where(where).tolist()) == sorted(faiss.ids_where(where).tolist())


def test_add_remove_save_and_reopen(uri, tmp_path):
    vectors, payload = _data()
    index = build_vectors(vectors[:200], list(range(200)), payload[:200], backend="milvus", uri=uri,
                          encoder={"family": "test"})
    index.save(tmp_path / "idx")
    reopened = load_vectors(tmp_path / "idx")
    assert reopened.backend == "milvus" and reopened.ntotal == 200
    reopened.add(vectors[200:], list(range(200, 240)), [{"genre": "new", "extra": 1}] * 40)
    assert reopened.remove([0, 1, 2]) == 3
    reopened.save(tmp_path / "idx")  # saving back where it came from: the manifest follows the collection
    again = load_vectors(tmp_path / "idx")
    assert again.ntotal == 237 and again.info()["rows"] == 237
    assert "extra" in again.info()["payload_columns"]
    assert sorted(again.ids_where(("extra", "==", 1)).tolist()) == list(range(200, 240))
    top = again.search(vectors[0], k=1)[0][0]
    assert top.id != 0  # removed rows are gone from search
    assert again.payloads([5, 230]) == [payload[5], {"genre": "new", "extra": 1}]
    with pytest.raises(UserError, match="unknown ids: 0"):
        again.remove([0])
    with pytest.raises(UserError, match="already in the index: 5"):
        again.add(vectors[:1], [5])
    with pytest.raises(UserError, match="dimension 3"):
        again.add(np.ones((1, 3)), [999])


def test_overwrite_drops_the_replaced_collection(uri, tmp_path):
    vectors, _ = _data()
    first = build_vectors(vectors, backend="milvus", uri=uri)
    first.save(tmp_path / "idx")
    second = build_vectors(vectors[:10], backend="milvus", uri=uri)
    second.save(tmp_path / "idx", overwrite=True)
    client = connect(uri)
    assert not client.has_collection(first.manifest["collection"])
    assert load_vectors(tmp_path / "idx").ntotal == 10


def test_hostile_strings_stay_data(uri):
    vectors, _ = _data()
    ids = [f"item-{i}" for i in range(240)]
    payload = [{"genre": 'x") or (1 == 1'}] + [{"genre": "plain"}] * 239
    index = build_vectors(vectors, ids, payload, backend="milvus", uri=uri)
    assert index.ids_where(("genre", "==", 'x") or (1 == 1')).tolist() == ["item-0"]
    assert index.ids_where(("genre", "==", '") or true or ("')).tolist() == []
    assert index.search(vectors[:1], k=5, exclude=['item-0" or "1"=="1'])[0][0].id == "item-0"
    with pytest.raises(UserError, match="no quotes"):
        build_vectors(vectors[:2], ["a'b", "c"], backend="milvus", uri=uri)
    with pytest.raises(UserError, match="control characters"):
        index.ids_where(("genre", "==", "new\nline"))
    with pytest.raises(UserError, match="unknown filter field"):
        index.ids_where(("genre) or (1", "==", 1))


def test_cli_builds_queries_and_describes_a_milvus_coliee_index(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setenv(TOKEN_VARIABLE, "secret-token")
    db = str(tmp_path / "cli.db")
    common = ["--corpus", "coliee", "--encoder", tiny_encoder, "--json"]
    assert run("index", "build", *common, "--name", "flat").exit_code == 0
    built = run("index", "build", *common, "--name", "mil", "--backend", "milvus", "--uri", db)
    assert built.exit_code == 0, built.output
    info = json.loads(run("index", "info", "mil", "--json").output)
    assert info["backend"] == "milvus" and info["uri"] == db and info["search_device"].startswith("milvus")
    assert "secret-token" not in json.dumps(info)
    question = "Can a minor cancel a contract made without a guardian's consent?"
    for extra in ([], ["--where", '["title", "!=", ""]']):
        hits = [json.loads(run("index", "query", name, question, "-k", "5", "--json", *extra).output)
                for name in ("flat", "mil")]
        assert [h["id"] for h in hits[0]] == [h["id"] for h in hits[1]] and len(hits[0]) == 5
        assert [h["payload"] for h in hits[0]] == [h["payload"] for h in hits[1]]
        np.testing.assert_allclose([h["score"] for h in hits[0]], [h["score"] for h in hits[1]], rtol=1e-5)
    served = TestClient(create_app({"mil": open_index("mil")}))  # `ragcli serve` over the milvus backend
    answer = served.post("/indexes/mil/query", json={"query": {"text": question}, "k": 5}).json()
    assert [h["id"] for h in answer["results"][0]["hits"]] == [h["id"] for h in hits[0]]
    assert served.get("/indexes/mil").json()["backend"] == "milvus"


@pytest.mark.parametrize("uri, message", [
    ("ftp://host/x.db", "bad milvus --uri"),
    ("{tmp}/missing/x.db", "does not exist"),
    ("{tmp}/x.sqlite", "bad milvus --uri"),
    ("http://127.0.0.1:9", "cannot connect to milvus"),
    ("", "needs --uri"),
])
def test_bad_uri_is_exit_2_with_one_line(tmp_path, uri, message):
    result = run("index", "build", "--corpus", "coliee", "--backend", "milvus", "--uri", uri.format(tmp=tmp_path))
    one_line_error(result, message)
    assert not (tmp_path / "ragcli-home" / "indexes" / "coliee").exists()
