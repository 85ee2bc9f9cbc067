"""`ragcli serve` under load, and the warm engine in-process: QPS and latency percentiles.

    .venv/bin/python bench/serve_bench.py prepare            # builds the three indexes under bench/out/home
    .venv/bin/python bench/serve_bench.py run --duration 15        # wrk (apt-get install wrk)
    .venv/bin/python bench/serve_bench.py run --client httpx --requests 1000 --budget 30

`prepare` builds, under $RAGCLI_HOME=bench/out/home: `coliee` (the shared COLIEE civil code, MiniLM +
BM25), `games` (SASRec trained 5 epochs with bce on the shared Amazon Games log; serving speed does
not depend on how well it is trained) and `shapes` (2,000 generated 64 px images, timm resnet18
with random weights; queries name 100 held-out PNG files). `run` starts `ragcli serve` as a separate
process on loopback and drives it at each concurrency with a bounded load generator: wrk (Debian's
`wrk`, written in C, so the client takes little of the 2 cores; `--duration` seconds per cell) or
httpx (`--client httpx`: a fixed request count and a time limit per cell); it also times `open_index(...).query` and `query_batch` in this process, and
`ragcli --help`. Results go to bench/out/serve.json and print as the README's table rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
HOME = OUT / "home"
SHARED = ROOT.parent / "shared" / "data"
RAGCLI = [str(ROOT / ".venv" / "bin" / "ragcli")]


def ragcli(*args: object, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAGCLI_HOME": str(HOME), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*RAGCLI, *map(str, args)], check=True, env=env, **kwargs)


def prepare() -> None:
    """Build the three indexes the load runs query."""
    data = OUT / "serve-data"
    data.mkdir(parents=True, exist_ok=True)
    ragcli("index", "build", "--corpus", "coliee", "--data-dir", SHARED / "coliee", "--name", "coliee", "--overwrite")
    ragcli("data", "qrels", "--data-dir", SHARED / "coliee", "--years", "H18..R03", "--out", data / "coliee.qrels",
           "--topics", data / "coliee-topics.tsv")
    ragcli("train", "sasrec", "--data", SHARED / "recsys" / "amazon-games.txt", "--out", data / "games-model",
           "--loss", "bce", "--epochs", 5, "--hidden", 50, "--maxlen", 50, "--overwrite")
    ragcli("index", "build", "--corpus", SHARED / "recsys" / "amazon-games.txt", "--model", data / "games-model",
           "--name", "games", "--overwrite")
    ragcli("data", "make-conditional", "--out", data / "shapes", "--n", 2500, "--size", 64, "--overwrite")
    ragcli("index", "build", "--corpus", "images", "--images", data / "shapes" / "train.npz",
           "--encoder", "timm:resnet18", "--name", "shapes", "--overwrite")
    _query_images(data / "shapes" / "test.npz", data / "queries")


def _query_images(npz: Path, folder: Path, n: int = 100) -> None:
    """PNG files the image requests name (the server reads them from disk, as on one machine)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with np.load(npz) as archive:
        for i, pixels in enumerate(archive["images"][:n]):
            Image.fromarray(pixels).save(folder / f"q{i:03d}.png")


def workloads(seed: int = 0) -> dict[str, list[dict]]:
    """Request bodies per index: COLIEE questions, Amazon Games histories, generated shapes."""
    data = OUT / "serve-data"
    questions = [line.split("\t", 1)[1] for line in (data / "coliee-topics.tsv").read_text().splitlines()]
    rng = random.Random(seed)
    users: dict[str, list[str]] = {}
    for line in (SHARED / "recsys" / "amazon-games.txt").read_text().splitlines():
        user, item = line.split()
        users.setdefault(user, []).append(item)
    histories = [h[-20:] for h in rng.sample(list(users.values()), 2000)]
    images = sorted(str(p) for p in (data / "queries").glob("*.png"))
    return {"coliee": [{"query": {"text": q}, "k": 10} for q in questions],
            "games": [{"query": {"history": h}, "k": 10} for h in histories],
            "shapes": [{"query": {"image": p}, "k": 10} for p in images]}


async def load(url: str, bodies: list[dict], concurrency: int, requests: int, budget: float) -> dict:
    """`requests` POSTs (cycling through `bodies`) from `concurrency` clients, stopped after `budget` s."""
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = iter(range(requests))
    deadline = time.perf_counter() + budget

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for n in queue:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            try:
                response = await http.post(url, json=bodies[n % len(bodies)])
                errors += response.status_code != 200
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(concurrency)])
        wall = time.perf_counter() - started
    cut = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"requests": len(latencies), "errors": errors, "qps": len(latencies) / wall,
            "p50_ms": 1e3 * cut[49], "p95_ms": 1e3 * cut[94], "p99_ms": 1e3 * cut[98]}


WRK_SCRIPT = """
local bodies = {%s}
local n = 0
request = function()
  n = n %% #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[n])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%f %%f %%f %%f\\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def load_wrk(url: str, bodies: list[dict], concurrency: int, duration: float) -> dict:
    """wrk on one thread for `duration` seconds, cycling through `bodies`; latencies from its histogram."""
    script = OUT / "serve-bench.lua"
    script.write_text(WRK_SCRIPT % ", ".join("[==[" + json.dumps(b) + "]==]" for b in bodies))
    output = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--timeout", "60s", "-s", str(script),
                             url], check=True, capture_output=True, text=True).stdout
    requests, errors, micros, p50, p95, p99 = output.split("RESULT ")[1].split()
    return {"requests": int(requests), "errors": int(errors), "qps": int(requests) / (float(micros) / 1e6),
            "p50_ms": float(p50) / 1e3, "p95_ms": float(p95) / 1e3, "p99_ms": float(p99) / 1e3}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_run(args: argparse.Namespace) -> dict:
    env = {**os.environ, "RAGCLI_HOME": str(HOME), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    log = open(OUT / "serve-bench-server.log", "w")  # noqa: SIM115 - closed with the server
    server = subprocess.Popen([*RAGCLI, "serve", "coliee", "games", "shapes", "--port", str(args.port), "--device", "cpu",
                               "--image-root", str(OUT / "serve-data" / "queries")],
                              env=env, stderr=log)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{args.port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        results = {}
        for name, bodies in workloads().items():
            url = f"http://127.0.0.1:{args.port}/indexes/{name}/query"
            asyncio.run(load(url, bodies, 4, 50, args.budget))  # warm-up
            for concurrency in args.concurrency:
                cell = (load_wrk(url, bodies, concurrency, args.duration) if args.client == "wrk"
                        else asyncio.run(load(url, bodies, concurrency, args.requests, args.budget)))
                results[f"{name}@{concurrency}"] = cell
                print(f"| {name} | {concurrency} | {cell['requests']} | {cell['qps']:,.0f} | {cell['p50_ms']:.1f} | "
                      f"{cell['p95_ms']:.1f} | {cell['p99_ms']:.1f} | {cell['errors']} |", flush=True)
        results["server_peak_rss_mb"] = peak_rss_mb(server.pid)
        return results
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def in_process(args: argparse.Namespace) -> dict:
    """Warm `query` latency (one at a time) and `query_batch` throughput (batches of 64), this process."""
    os.environ["RAGCLI_HOME"] = str(HOME)
    import torch

    from indexes import open_index
    from indexes.runtime import set_progress

    set_progress(False)
    torch.set_num_threads(args.threads)
    results = {}
    for name, bodies in workloads().items():
        engine = open_index(name, device="cpu")
        queries = [next(iter(b["query"].values())) for b in bodies]
        engine.query(queries[0], k=10)
        times = []
        for q in queries[:300]:
            started = time.perf_counter()
            engine.query(q, k=10)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        n = 0
        for start in range(0, min(len(queries), 1024), 64):
            n += len(engine.query_batch(queries[start:start + 64], k=10))
        results[name] = {"query_p50_ms": 1e3 * statistics.median(times),
                         "batch_qps": n / (time.perf_counter() - started)}
        print(f"{name}: query p50 {results[name]['query_p50_ms']:.1f} ms, query_batch {results[name]['batch_qps']:,.0f} q/s")
    results["coliee"]["encoder_qps"] = encoder_ceiling([b["query"]["text"] for b in workloads()["coliee"]][:1024])
    help_times = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([*RAGCLI, "--help"], check=True, capture_output=True)
        help_times.append(time.perf_counter() - started)
    results["help_seconds"] = min(help_times)
    print(f"ragcli --help: {results['help_seconds']:.2f} s (best of 5)")
    return results


def encoder_ceiling(questions: list[str]) -> dict[int, float]:
    """MiniLM alone on the same questions, by batch size: the most any statute engine here can answer."""
    from retrieval.dense import encode_texts

    encode_texts(questions[:64])
    ceiling = {}
    for batch_size in (16, 32, 64):
        started = time.perf_counter()
        encode_texts(questions, batch_size=batch_size)
        ceiling[batch_size] = len(questions) / (time.perf_counter() - started)
    print("MiniLM alone, questions/s by batch size:", {b: round(q) for b, q in ceiling.items()})
    return ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["prepare", "run"])
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    parser.add_argument("--duration", type=float, default=15, help="wrk: seconds per (index, concurrency) cell.")
    parser.add_argument("--requests", type=int, default=2000, help="httpx: requests per cell.")
    parser.add_argument("--budget", type=float, default=60, help="httpx: seconds per cell at most.")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32, 128])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server and the engine.")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if args.mode == "prepare":
        prepare()
        return
    print("| index | clients | requests | QPS | p50 ms | p95 ms | p99 ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    result = {"client": args.client, "http": serve_run(args), "in_process": in_process(args)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
