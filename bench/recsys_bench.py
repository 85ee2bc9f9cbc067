"""SASRec benchmark on Amazon Games and MovieLens-100k (run by hand, never in tests).

    python bench/recsys_bench.py run --dataset games --loss bce    # train, then test; JSON into --out
    python bench/recsys_bench.py run --dataset games --loss ce --resume   # continue a stopped run from its best checkpoint
    python bench/recsys_bench.py evaluate --dataset games --loss ce # test the best checkpoint of a stopped run
    python bench/recsys_bench.py speed --loss bce --epochs 3        # epoch time at the reference settings
    python bench/recsys_bench.py speed --loss ce --epochs 2 --plain-ce   # the unchunked ce, for comparison
    python bench/recsys_bench.py reference --repo DIR --epochs 3    # the same, against pmixer/SASRec.pytorch
    python bench/recsys_bench.py table                             # markdown table of every result JSON

Quality: Success@10 / nDCG@10 of the leave-one-out test items under full ranking and sampled100, epochs
to the best validation nDCG@10, seconds per epoch (wall and process CPU), peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexes.metrics import current_names  # noqa: E402
from recsys import losses  # noqa: E402
from recsys.data import LeaveOneOut, load_sequences  # noqa: E402
from recsys.evaluate import evaluate  # noqa: E402
from recsys.recommender import BEST_KEY, Recommender, read_training_state  # noqa: E402
from recsys.train import TrainConfig, train_sasrec  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "recsys"
PAPER_LR = 1e-3
# The SASRec paper's settings: sparse Games with maxlen 50 and dropout 0.5, dense MovieLens with 200 and 0.2.
DATASETS = {
    "games": {"path": DATA / "amazon-games.txt", "maxlen": 50, "dropout": 0.5},
    "ml-100k": {"path": DATA / "ml-100k", "maxlen": 200, "dropout": 0.2},
}


def config_for(args: argparse.Namespace) -> TrainConfig:
    """The paper's reference settings: hidden 50, 2 blocks, 1 head, batch 128, lr 1e-3 (unless --lr)."""
    spec = DATASETS[args.dataset]
    return TrainConfig(loss=args.loss, epochs=args.epochs, batch_size=128, maxlen=spec["maxlen"], hidden=50, blocks=2,
                       heads=1, dropout=spec["dropout"], lr=args.lr, schedule=args.schedule,
                       warmup_epochs=args.warmup_epochs, patience=args.patience, eval_every=args.eval_every,
                       pre_ln=not args.post_ln, device="cpu", seed=0)


def run_name(args: argparse.Namespace) -> str:
    return (f"{args.dataset}-{args.loss}" + ("-post-ln" if args.post_ln else "") + (f"-lr{args.lr:g}" if args.lr != PAPER_LR else "")
            + (f"-{args.schedule}{args.epochs}" if args.schedule != "constant" else "")
            + (f"-warmup{args.warmup_epochs}" if args.warmup_epochs else ""))


def test_metrics(args: argparse.Namespace, model_dir: Path, seqs) -> dict:
    model = Recommender.from_pretrained(model_dir, device="cpu").model
    test = LeaveOneOut(seqs, model.maxlen).case("test")
    return {"full": evaluate(model, test, "full", ks=(10,)), "sampled100": evaluate(model, test, "sampled100", ks=(10,))}


def run(args: argparse.Namespace) -> None:
    seqs = load_sequences(args.data or DATASETS[args.dataset]["path"])
    name = run_name(args)
    model_dir = args.out / name / "model"
    summary = train_sasrec(seqs, model_dir, config_for(args), resume=model_dir if args.resume else None,
                           overwrite=True)  # a rerun replaces its own earlier model
    keys = ("epochs_run", "best_epoch", BEST_KEY, "seconds_per_epoch", "cpu_seconds_per_epoch", "peak_memory_mb")
    write(args, name, {"dataset": args.dataset, "loss": args.loss, "users": seqs.n_users, "items": seqs.n_items,
                       **test_metrics(args, args.out / name / "model", seqs), **{k: summary[k] for k in keys}})


def evaluate_checkpoint(args: argparse.Namespace) -> None:
    """For a run stopped before early stopping ended it: its best checkpoint, and what the log said."""
    seqs = load_sequences(args.data or DATASETS[args.dataset]["path"])
    name = run_name(args)
    state = read_training_state(args.out / name / "model")["state"]  # an earlier release's names read as today's
    history = state["history"]
    write(args, name, {
        "dataset": args.dataset, "loss": args.loss, "users": seqs.n_users, "items": seqs.n_items,
        **test_metrics(args, args.out / name / "model", seqs), "epochs_run": args.epochs_run or state["epoch"],
        "best_epoch": state["best_epoch"], BEST_KEY: state[BEST_KEY],
        "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
        "cpu_seconds_per_epoch": sum(h.get("cpu_seconds", float("nan")) for h in history) / len(history),
        "peak_memory_mb": args.peak_mb or state.get("peak_memory_mb", float("nan")), "stopped_by_hand": True})


def speed(args: argparse.Namespace) -> None:
    """Training epochs only (no validation) at the reference settings; wall and CPU seconds per epoch."""
    seqs = load_sequences(args.data or DATASETS[args.dataset]["path"])
    config = config_for(args)
    config.eval_every = config.epochs + 1  # never validate: time training alone
    config.precision = args.precision
    if args.plain_ce:  # the loss before chunking: the whole (positions, items) logits, softmax and gradient
        losses._BY_NAME["ce"] = lambda states, targets, weight, **_: F.cross_entropy(states @ weight[1:].T, targets - 1)
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    summary = train_sasrec(seqs, args.out / "speed" / args.loss, config, overwrite=True)
    print(json.dumps({"dataset": args.dataset, "loss": args.loss + (" (plain)" if args.plain_ce else ""),
                      "precision": args.precision, "threads": torch.get_num_threads(),
                      "epochs": summary["epochs_run"], "wall_s_per_epoch": summary["seconds_per_epoch"],
                      "cpu_s_per_epoch": summary["cpu_seconds_per_epoch"], "total_s": time.perf_counter() - start,
                      "peak_rss_mb": summary["peak_memory_mb"], "system_cpu_share": _system_share(usage),
                      "per_epoch": [(round(h["seconds"], 1), round(h["cpu_seconds"], 1)) for h in summary["history"]]}))


def reference(args: argparse.Namespace) -> None:
    """ragcli's bce epoch against the reference PyTorch port (pmixer/SASRec.pytorch, bce is its only
    loss), run unmodified from a checkout (`--repo`, holding python/main.py) on the same file, settings and
    thread count. Per-epoch wall and CPU seconds (the port's 3 sampler processes included) are read at
    its epoch boundaries; the first epoch is left out of both, as it warms up."""
    seqs = load_sequences(args.data or DATASETS["games"]["path"])
    config = config_for(argparse.Namespace(**{**vars(args), "dataset": "games", "loss": "bce"}))
    config.eval_every = config.epochs + 1
    ours = train_sasrec(seqs, args.out / "speed" / "bce", config, overwrite=True)["history"][1:]
    port = _reference_epochs(args.repo, args.data or DATASETS["games"]["path"], args.epochs, args.threads)
    result = {"threads": args.threads, "epochs_timed": len(port),
              "ragcli": {"wall_s_per_epoch": sum(h["seconds"] for h in ours) / len(ours),
                         "cpu_s_per_epoch": sum(h["cpu_seconds"] for h in ours) / len(ours)},
              "reference": {"wall_s_per_epoch": sum(w for w, _ in port) / len(port),
                            "cpu_s_per_epoch": sum(c for _, c in port) / len(port)}}
    result["cpu_speedup"] = result["reference"]["cpu_s_per_epoch"] / result["ragcli"]["cpu_s_per_epoch"]
    (args.out / "reference.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _reference_epochs(repo: Path, data: Path, epochs: int, threads: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of the port's epochs 2..`epochs`, Games settings (maxlen 50, dropout 0.5)."""
    with tempfile.TemporaryDirectory() as work:
        for name in ("main.py", "model.py", "utils.py"):
            (Path(work) / name).write_bytes((repo / "python" / name).read_bytes())
        (Path(work) / "data").mkdir()
        (Path(work) / "data" / "Games.txt").symlink_to(Path(data).resolve())
        command = [sys.executable, "-u", "main.py", "--dataset", "Games", "--train_dir", "bench", "--device", "cpu",
                   "--maxlen", "50", "--dropout_rate", "0.5", "--num_epochs", str(epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, text=True)
        marks = []  # (wall, CPU of the process tree) when an epoch starts, and at the end
        for line in process.stdout:
            if line.startswith("loss in epoch ") and line.split()[5] == "0:":
                marks.append((time.perf_counter(), _tree_cpu(process.pid)))
            elif line.startswith("Done"):
                marks.append((time.perf_counter(), _tree_cpu(process.pid)))
        process.wait()
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks[1:], marks[2:])]


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live children, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return own + sum(_tree_cpu(int(child)) for child in children if Path(f"/proc/{child}").exists())


def _system_share(before: resource.struct_rusage) -> float:
    """Kernel time as a share of this process's CPU time since `before` (page faults show up here)."""
    after = resource.getrusage(resource.RUSAGE_SELF)
    system = after.ru_stime - before.ru_stime
    return system / (after.ru_utime - before.ru_utime + system)


def write(args: argparse.Namespace, name: str, result: dict) -> None:
    result.update(threads=torch.get_num_threads(), blocks="post-LN" if args.post_ln else "pre-LN", lr=args.lr,
                  schedule=args.schedule, warmup_epochs=args.warmup_epochs, max_epochs=args.epochs)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def table(args: argparse.Namespace) -> None:
    print("| dataset | loss | Success@10 full | nDCG@10 full | Success@10 sampled100 | nDCG@10 sampled100 "
          "| s/epoch wall (CPU) | best epoch (epochs run) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for file in sorted(args.out.glob("*.json")):
        r = json.loads(file.read_text())
        r.update({protocol: current_names(r[protocol]) for protocol in ("full", "sampled100")})  # old results too
        note = " (stopped by hand)" if r.get("stopped_by_hand") else ""
        loss = r["loss"] + (", post-LN" if r.get("blocks") == "post-LN" else "") + (
            f", lr {r['lr']:g}" if r.get("lr", PAPER_LR) != PAPER_LR else "") + (
            f", {r['schedule']} to {r['max_epochs']}" if r.get("schedule", "constant") != "constant" else "") + (
            f", warm-up {r['warmup_epochs']}" if r.get("warmup_epochs") else "")
        print(f"| {r['dataset']} | {loss} | {r['full']['Success@10']:.4f} | {r['full']['nDCG@10']:.4f} "
              f"| {r['sampled100']['Success@10']:.4f} | {r['sampled100']['nDCG@10']:.4f} "
              f"| {r['seconds_per_epoch']:.1f} ({r.get('cpu_seconds_per_epoch', float('nan')):.1f}) "
              f"| {r['best_epoch']} ({r['epochs_run']}{note}) | {r['peak_memory_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "recsys")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("run", "evaluate", "speed", "reference"):
        one = sub.add_parser(command)
        one.add_argument("--dataset", choices=DATASETS, default="games")
        one.add_argument("--data", type=Path, help="Override the dataset path.")
        one.add_argument("--loss", default="ce")
        one.add_argument("--epochs", type=int, default=200)
        one.add_argument("--patience", type=int, default=5, help="In evaluations, not epochs.")
        one.add_argument("--eval-every", type=int, default=1)
        one.add_argument("--threads", type=int, default=1,
                         help="torch threads (1: the 2 cores are shared, and 2 threads spin-wait when contended)")
        one.add_argument("--post-ln", action="store_true", help="Post-LN blocks (default: pre-LN).")
        one.add_argument("--lr", type=float, default=PAPER_LR, help="Adam learning rate (the paper's 1e-3 by default).")
        one.add_argument("--schedule", default="constant", choices=["constant", "cosine"],
                         help="Learning rate after the warm-up (cosine: down to 0 at --epochs).")
        one.add_argument("--warmup-epochs", type=int, default=0, help="Linear warm-up epochs.")
        one.add_argument("--resume", action="store_true", help="run: continue from the run's best checkpoint.")
        one.add_argument("--epochs-run", type=int, help="evaluate: epochs the stopped run had finished (its log).")
        one.add_argument("--peak-mb", type=float, help="evaluate: peak RSS of the stopped run (VmHWM).")
        one.add_argument("--repo", type=Path, help="reference: a checkout of pmixer/SASRec.pytorch.")
        one.add_argument("--plain-ce", action="store_true", help="speed: time the unchunked ce, for comparison.")
        one.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="speed: autocast.")
    sub.add_parser("table")
    args = parser.parse_args()
    if args.command != "table":
        torch.set_num_threads(args.threads)
    {"run": run, "evaluate": evaluate_checkpoint, "speed": speed, "reference": reference, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
