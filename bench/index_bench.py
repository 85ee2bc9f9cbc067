"""ragcli's index engine against raw FAISS on the same vectors: build time, QPS, recall@10, overhead.

    .venv/bin/python bench/index_bench.py --n 1000000 --dim 128 --kinds flat,hnsw,ivf-pq
    .venv/bin/python bench/index_bench.py --n 100000 --dim 128 --kinds flat,ivf-flat,hnsw --milvus

Both sides build the same FAISS factory string on the same vectors (the engine adds ids and a DuckDB
payload). Search times are paired: each batch runs through the engine and raw FAISS back to back
(alternating which goes first), so load from other processes hits both alike. "engine" is `VectorIndex.search_ids` (validation, id mapping); "+payload" is
`VectorIndex.search`, which also joins each hit with its DuckDB row. Recall@10 is against exact search.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from indexes import VectorIndex, factory_string  # noqa: E402
from indexes.backends import build_vectors  # noqa: E402
from indexes.index import training_sample  # noqa: E402


def clustered_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian blobs around 1000 centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.4 * rng.normal(size=(n, dim)).astype(np.float32)
    return x.astype(np.float32)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def paired_seconds(fns: list, queries: np.ndarray, batch: int, budget_s: float) -> tuple[np.ndarray, int]:
    """Mean seconds per batch of each of `fns` on the same batches, run back to back (order
    alternating) so that load from other processes hits them alike; and the number of batches."""
    totals = np.zeros(len(fns))
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < budget_s or step == 0:
        b = (step * batch) % len(queries)
        chunk = queries[b : b + batch]
        order = range(len(fns)) if step % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            totals[i] += timed(fns[i], chunk)
        step += 1
    return totals / step, step


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


def bench_kind(kind: str, x: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> list[dict]:
    factory = factory_string(kind, len(x), x.shape[1])
    raw = faiss.index_factory(x.shape[1], factory if factory.startswith("IVF") else f"IDMap2,{factory}")
    raw_build = timed(lambda: (raw.train(training_sample(x, args.train_size)),
                               raw.add_with_ids(x, np.arange(len(x), dtype=np.int64))))
    start = time.perf_counter()
    engine = VectorIndex.build(x, payload=[{"title": f"row {i}"} for i in range(len(x))] if args.payload else None,
                               kind=kind, metric="l2", device="cpu", nprobe=args.nprobe, ef_search=args.ef_search,
                               train_size=args.train_size)
    engine_build = time.perf_counter() - start
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(raw).nprobe = args.nprobe
    elif "HNSW" in factory:
        faiss.downcast_index(raw.index).hnsw.efSearch = args.ef_search
    with tempfile.TemporaryDirectory() as tmp:
        save_s = timed(engine.save, Path(tmp) / "ix")
    rows = []
    for batch in args.batches:
        fns = [lambda q: engine.search_ids(q, 10), lambda q: raw.search(q, 10)]
        if args.payload:
            fns.append(lambda q: engine.search(q, 10))
        seconds, steps = paired_seconds(fns, queries, batch, args.budget)
        per_second = min(batch, len(queries)) / seconds
        rows.append({
            "kind": factory, "batch": batch, "build_raw_s": raw_build, "build_engine_s": engine_build,
            "save_s": save_s, "qps_engine": per_second[0], "qps_raw": per_second[1],
            "qps_payload": per_second[2] if args.payload else float("nan"),
            "overhead": seconds[0] / seconds[1] - 1, "steps": steps,
            "recall_raw": recall_at_10(raw.search(queries, 10)[1], truth),
            "recall_engine": recall_at_10(engine.search_ids(queries, 10)[1], truth),
        })
    return rows


def bench_backends(kind: str, x: np.ndarray, queries: np.ndarray, truth: np.ndarray, args, db: Path) -> list[dict]:
    """The embedded default (FAISS + DuckDB) and a Milvus Lite collection, built from the same vectors and
    payload with the same kind, searched through the same `search_ids` surface (batches paired as above)."""
    payload = [{"title": f"row {i}"} for i in range(len(x))]
    options = dict(kind=kind, metric="l2", nprobe=args.nprobe, ef_search=args.ef_search)
    built, seconds = {}, {}
    for backend in ("faiss", "milvus"):
        start = time.perf_counter()
        built[backend] = build_vectors(x, payload=payload, backend=backend, uri=str(db) if backend == "milvus" else None,
                                       train_size=args.train_size if backend == "faiss" else None, **options)
        seconds[backend] = time.perf_counter() - start
    rows = []
    for batch in args.batches:
        fns = [lambda q, b=b: built[b].search_ids(q, 10) for b in ("faiss", "milvus")]
        for fn in fns:  # the first search picks the searcher (and loads what it needs): not part of the rate
            fn(queries[:batch])
        timing, steps = paired_seconds(fns, queries, batch, args.budget)
        qps = min(batch, len(queries)) / timing
        for i, backend in enumerate(("faiss", "milvus")):
            rows.append({"backend": backend, "kind": kind, "batch": batch, "build_s": seconds[backend], "qps": qps[i],
                         "steps": steps, "recall": recall_at_10(built[backend].search_ids(queries, 10)[1], truth)})
    built["milvus"].drop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--kinds", default="flat,hnsw,ivf-pq")
    parser.add_argument("--batches", default="1,1024", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of paired timing per kind and batch")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=200_000, help="rows IVF / PQ train on")
    parser.add_argument("--payload", action="store_true", help="store a title per row and time search() too")
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--milvus", action="store_true",
                        help="instead: FAISS + DuckDB against a Milvus Lite collection (kinds flat, ivf-flat, hnsw)")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    x = clustered_vectors(args.n + args.queries, args.dim, args.seed)
    x, queries = x[: args.n], x[args.n :]
    exact = faiss.IndexFlatL2(args.dim)
    exact.add(x)
    truth = exact.search(queries, 10)[1]
    print(f"{args.n:,} x {args.dim} clustered vectors, {args.queries} queries, L2, {faiss.omp_get_max_threads()} threads")
    if args.milvus:
        print("| backend | kind | batch | build s | QPS | recall@10 |\n| --- | --- | ---: | ---: | ---: | ---: |")
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.kinds.split(","):
                for r in bench_backends(kind, x, queries, truth, args, Path(tmp) / "bench.db"):
                    print(f"| {r['backend']} | {r['kind']} | {r['batch']} | {r['build_s']:.1f} | {r['qps']:,.0f} | "
                          f"{r['recall']:.3f} |", flush=True)
        return
    print("| kind | batch | build raw s | build engine s | save s | QPS raw | QPS engine | QPS +payload | overhead | recall@10 raw | recall@10 engine |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in args.kinds.split(","):
        for r in bench_kind(kind, x, queries, truth, args):
            print(f"| {r['kind']} | {r['batch']} | {r['build_raw_s']:.1f} | {r['build_engine_s']:.1f} | {r['save_s']:.1f} | "
                  f"{r['qps_raw']:,.0f} | {r['qps_engine']:,.0f} | {r['qps_payload']:,.0f} | {100 * r['overhead']:+.1f}% | "
                  f"{r['recall_raw']:.3f} | {r['recall_engine']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
