"""ragcli's index engine against raw FAISS on the same vectors: build time, QPS, recall@10, overhead.

    .venv/bin/python bench/index_bench.py --n 1000000 --dim 128 --kinds flat,hnsw,ivf-pq

Both sides build the same FAISS factory string on the same vectors (the engine adds ids and a DuckDB
payload). Search QPS is the median of interleaved rounds (engine, raw, engine, raw, ...) so machine
noise hits both alike. "engine" is `VectorIndex.search_ids` (validation, id mapping); "+payload" is
`VectorIndex.search`, which also joins each hit with its DuckDB row. Recall@10 is against exact search.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from indexes import VectorIndex, factory_string  # noqa: E402
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


def qps(fn, queries: np.ndarray, batch: int, budget_s: float) -> float:
    """Queries per second of `fn` over `queries` in batches, running for about budget_s."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s or done == 0:
        for b in range(0, len(queries), batch):
            fn(queries[b : b + batch])
            done += len(queries[b : b + batch])
            if time.perf_counter() - start >= budget_s:
                break
    return done / (time.perf_counter() - start)


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
        engine_qps, raw_qps, payload_qps = [], [], []
        for _ in range(args.rounds):
            engine_qps.append(qps(lambda q: engine.search_ids(q, 10), queries, batch, args.budget))
            raw_qps.append(qps(lambda q: raw.search(q, 10), queries, batch, args.budget))
            if args.payload:
                payload_qps.append(qps(lambda q: engine.search(q, 10), queries, batch, args.budget))
        e, r = statistics.median(engine_qps), statistics.median(raw_qps)
        rows.append({
            "kind": factory, "batch": batch, "build_raw_s": raw_build, "build_engine_s": engine_build,
            "save_s": save_s, "qps_raw": r, "qps_engine": e,
            "qps_payload": statistics.median(payload_qps) if payload_qps else float("nan"),
            "overhead": r / e - 1,
            "recall_raw": recall_at_10(raw.search(queries, 10)[1], truth),
            "recall_engine": recall_at_10(engine.search_ids(queries, 10)[1], truth),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--kinds", default="flat,hnsw,ivf-pq")
    parser.add_argument("--batches", default="1,1024", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per QPS measurement")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=200_000, help="rows IVF / PQ train on")
    parser.add_argument("--payload", action="store_true", help="store a title per row and time search() too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x = clustered_vectors(args.n + args.queries, args.dim, args.seed)
    x, queries = x[: args.n], x[args.n :]
    exact = faiss.IndexFlatL2(args.dim)
    exact.add(x)
    truth = exact.search(queries, 10)[1]
    print(f"{args.n:,} x {args.dim} clustered vectors, {args.queries} queries, L2, {faiss.omp_get_max_threads()} threads")
    print("| kind | batch | build raw s | build engine s | save s | QPS raw | QPS engine | QPS +payload | overhead | recall@10 raw | recall@10 engine |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in args.kinds.split(","):
        for r in bench_kind(kind, x, queries, truth, args):
            print(f"| {r['kind']} | {r['batch']} | {r['build_raw_s']:.1f} | {r['build_engine_s']:.1f} | {r['save_s']:.1f} | "
                  f"{r['qps_raw']:,.0f} | {r['qps_engine']:,.0f} | {r['qps_payload']:,.0f} | {100 * r['overhead']:+.1f}% | "
                  f"{r['recall_raw']:.3f} | {r['recall_engine']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
