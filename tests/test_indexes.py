"""VectorIndex: build / save / load / search for every kind and metric, payload, add / remove,
filters, atomic writes and the errors users meet."""

import json

import faiss
import numpy as np
import pytest

from indexes import IndexFormatError, UserError, VectorIndex, factory_string, index_path, list_indexes
from indexes.searchers import TorchExactSearcher

KINDS = ["flat", "hnsw", "ivf-flat", "ivf-pq"]
METRICS = ["ip", "l2", "cosine"]


@pytest.fixture(scope="module")
def vectors():
    return np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)


def ids_for(n):
    return [f"doc-{i}" for i in range(n)]


def payload_for(n):
    return [{"title": f"title {i}", "group": i % 4, "meta": {"even": i % 2 == 0}} for i in range(n)]


def exact_top(vectors, query, metric, k):
    if metric == "l2":
        return np.argsort(((vectors - query) ** 2).sum(1), kind="stable")[:k]
    if metric == "cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.argsort(-(vectors @ query), kind="stable")[:k]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_every_kind_and_metric(tmp_path, vectors, kind, metric):
    idx = VectorIndex.build(vectors, ids_for(len(vectors)), payload_for(len(vectors)), kind=kind, metric=metric,
                            encoder={"family": "test", "name": "random"}, device="cpu", nprobe=64)
    before = idx.search(vectors[:5], k=5)
    idx.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix", device="cpu")
    after = loaded.search(vectors[:5], k=5)
    assert [[h.id for h in q] for q in before] == [[h.id for h in q] for q in after]
    assert loaded.manifest["kind"] == factory_string(kind, len(vectors), 16)
    assert loaded.ntotal == len(vectors) and loaded.dim == 16 and loaded.metric == metric
    if metric != "ip":  # each query finds itself first (PQ is lossy: only require it in the top 5)
        for q, hits in enumerate(after):
            found = [h.id for h in hits]
            assert found[0] == f"doc-{q}" if kind != "ivf-pq" else f"doc-{q}" in found
    if kind in ("flat", "ivf-flat"):  # exact here (ivf with nprobe >= nlist): matches brute force
        for q in range(5):
            expected = [f"doc-{i}" for i in exact_top(vectors, vectors[q], metric, 5)]
            assert [h.id for h in after[q]] == expected


def test_payload_joined_with_results_and_int_ids(vectors):
    idx = VectorIndex.build(vectors, list(range(100, 500)), payload_for(400), device="cpu")
    hit = idx.search(vectors[7], k=1)[0][0]
    assert hit.id == 107 and isinstance(hit.id, int)
    assert hit.payload == {"title": "title 7", "group": 3, "meta": {"even": False}}
    assert hit.score == pytest.approx(1.0, abs=1e-5)  # cosine with itself


@pytest.mark.parametrize("kind", KINDS)
def test_add_and_remove_by_id(tmp_path, vectors, kind):
    idx = VectorIndex.build(vectors[:300], ids_for(300), payload_for(300), kind=kind, device="cpu", nprobe=64)
    idx.remove(["doc-3", "doc-10"])
    assert idx.ntotal == 298
    found = {h.id for h in idx.search(vectors[3], k=20)[0]}
    assert "doc-3" not in found and "doc-10" not in found
    idx.add(vectors[300:302], ["new-a", "new-b"], [{"title": "A", "group": 9, "meta": {"even": True}}] * 2)
    assert "new-b" in [h.id for h in idx.search(vectors[301], k=1 if kind != "ivf-pq" else 10)[0]]
    idx.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix", device="cpu")
    assert loaded.ntotal == 300
    assert "doc-3" not in {h.id for h in loaded.search(vectors[3], k=20)[0]}
    assert loaded.payload_of(loaded.rows_of(["new-a"]))[300]["title"] == "A"
    if kind != "ivf-pq":  # after a removal, the remaining rows keep their own ids (no shifted mapping)
        assert loaded.search(vectors[4], k=1)[0][0].id == "doc-4"


def test_add_and_remove_reject_bad_ids(vectors):
    idx = VectorIndex.build(vectors[:10], ids_for(10), device="cpu")
    with pytest.raises(UserError, match="already in the index"):
        idx.add(vectors[:1], ["doc-1"])
    with pytest.raises(UserError, match="unknown ids: nope"):
        idx.remove(["nope"])
    with pytest.raises(UserError, match="unique"):
        VectorIndex.build(vectors[:2], ["a", "a"])
    with pytest.raises(UserError, match=">= 0"):
        VectorIndex.build(vectors[:2], [3, -1])
    with pytest.raises(UserError, match="integer ids"):
        VectorIndex.build(vectors[:2], [3, 4]).add(vectors[:1], ["x"])


def test_filter_on_payload_and_per_query_exclusion(vectors):
    idx = VectorIndex.build(vectors, ids_for(400), payload_for(400), kind="hnsw", device="cpu")
    hits = idx.search(vectors[:3], k=10, where=("group", "==", 2))
    assert all(h.payload["group"] == 2 for q in hits for h in q) and all(len(q) == 10 for q in hits)
    nested = idx.search(vectors[:1], k=5, where={"field": "meta.even", "op": "==", "value": True})
    assert all(h.payload["meta"]["even"] for h in nested[0])
    plain = idx.search(vectors[:2], k=5)
    seen = [[plain[0][0].id, plain[0][1].id], [plain[1][2].id]]
    excluded = idx.search(vectors[:2], k=5, exclude=seen)
    assert [h.id for h in excluded[0]] == [h.id for h in plain[0][2:]] + [excluded[0][3].id, excluded[0][4].id]
    assert seen[1][0] not in [h.id for h in excluded[1]] and len(excluded[1]) == 5
    with pytest.raises(UserError, match="unknown filter field"):
        idx.search(vectors[:1], k=5, where=("no_such_column", "==", 1))
    with pytest.raises(UserError, match="bad filter"):
        idx.search(vectors[:1], k=5, where="\"group\" = 2")  # SQL text is not a filter


def test_search_validates_queries(vectors):
    idx = VectorIndex.build(vectors, device="cpu")
    with pytest.raises(UserError, match="dimension 8, but the index has dimension 16"):
        idx.search(np.zeros((2, 8), np.float32))
    with pytest.raises(UserError, match="NaN"):
        idx.search(np.full(16, np.nan))
    with pytest.raises(UserError, match="k must be"):
        idx.search(vectors[0], k=0)
    assert len(idx.search(vectors[0], k=1000)[0]) == 400  # k beyond the rows: everything, no padding


def test_crash_mid_save_leaves_previous_index_intact(tmp_path, vectors):
    target = tmp_path / "ix"
    VectorIndex.build(vectors[:50], ids_for(50), device="cpu").save(target)
    original = json.loads((target / "manifest.json").read_text())

    def crash(_path):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        VectorIndex.build(vectors, ids_for(400), device="cpu").save(target, extras={"model": crash}, overwrite=True)
    assert json.loads((target / "manifest.json").read_text()) == original
    assert VectorIndex.load(target).ntotal == 50
    names = sorted(p.name for p in tmp_path.iterdir())  # no temp directories left behind
    assert names == [target.resolve().name, "ix"]  # the failed version is gone, the live one stays

    with pytest.raises(RuntimeError):
        VectorIndex.build(vectors, device="cpu").save(tmp_path / "fresh", extras={"model": crash})
    assert not (tmp_path / "fresh").exists()


def test_extras_are_saved_and_kept_when_resaving(tmp_path, vectors):
    idx = VectorIndex.build(vectors[:20], device="cpu")
    idx.save(tmp_path / "ix", extras={"model": lambda p: (p.mkdir(), (p / "w.txt").write_text("weights"))})
    loaded = VectorIndex.load(tmp_path / "ix")
    loaded.add(vectors[20:21], [20])
    loaded.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "model" / "w.txt").read_text() == "weights"
    assert VectorIndex.load(tmp_path / "ix").ntotal == 21


def test_corrupt_files_and_format_errors(tmp_path, vectors):
    path = tmp_path / "ix"
    VectorIndex.build(vectors[:20], device="cpu").save(path)
    blob = bytearray((path / "index.faiss").read_bytes())
    blob[-5] ^= 0xFF
    (path / "index.faiss").write_bytes(bytes(blob))
    with pytest.raises(IndexFormatError, match="corrupt"):
        VectorIndex.load(path)

    VectorIndex.build(vectors[:20], device="cpu").save(path, overwrite=True)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="unknown index format version 99"):
        VectorIndex.load(path)

    (path / "manifest.json").write_text(json.dumps({**manifest, "dim": 32}))
    with pytest.raises(IndexFormatError, match="dimension 16, manifest says 32"):
        VectorIndex.load(path)

    (path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        VectorIndex.load(path)
    with pytest.raises(UserError, match="no index at"):
        VectorIndex.load(tmp_path / "missing")


def test_build_rejects_bad_input(vectors):
    with pytest.raises(UserError, match="payload has 3 rows for 400 vectors"):
        VectorIndex.build(vectors, payload=[{"a": 1}] * 3)
    with pytest.raises(UserError, match="reserved"):
        VectorIndex.build(vectors[:1], payload=[{"id": 1}])
    with pytest.raises(UserError, match="unknown metric"):
        VectorIndex.build(vectors, metric="hamming")
    with pytest.raises(UserError, match="cannot make an index"):
        VectorIndex.build(vectors, kind="NoSuchKind")
    with pytest.raises(UserError, match="matrix"):
        VectorIndex.build(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("metric", METRICS)
def test_torch_exact_search_matches_faiss(vectors, metric):
    """The CUDA fallback path (run here on the CPU) ranks exactly like FAISS Flat."""
    idx = VectorIndex.build(vectors, metric=metric, device="cpu")
    queries = vectors[:7] if metric != "cosine" else vectors[:7] / np.linalg.norm(vectors[:7], axis=1, keepdims=True)
    faiss_scores, faiss_rows = idx._cpu.search(queries, 10)
    torch_scores, torch_rows = TorchExactSearcher(idx._cpu, metric, "cpu", batch=3).search(queries, 10)
    np.testing.assert_array_equal(torch_rows, faiss_rows)
    np.testing.assert_allclose(torch_scores, faiss_scores, rtol=1e-4, atol=1e-4)


def test_auto_device_falls_back_to_cpu_without_gpu(vectors):
    idx = VectorIndex.build(vectors[:10], device="auto")
    assert faiss.get_num_gpus() > 0 or idx.device_info == "cpu"


def test_named_indexes_live_under_home(tmp_path, vectors):
    path = index_path("mine")
    assert path == tmp_path / "ragcli-home" / "indexes" / "mine"
    VectorIndex.build(vectors[:5], encoder={"family": "test", "name": "rand"}, device="cpu").save(path)
    assert list_indexes() == [{"name": "mine", "rows": 5, "kind": "Flat", "metric": "cosine", "encoder": "rand"}]
    assert index_path("some/where") == tmp_path.__class__("some/where")
    with pytest.raises(UserError, match="bad index name"):
        index_path("bad name!")


def test_training_on_a_sample_still_indexes_every_row(vectors):
    idx = VectorIndex.build(vectors, ids_for(400), kind="ivf-flat", metric="l2", device="cpu", nprobe=64, train_size=100)
    assert idx.ntotal == 400
    assert [h.id for h in idx.search(vectors[:3], k=1) for h in h] == ["doc-0", "doc-1", "doc-2"]
