"""Training SASRec: AdamW over precomputed padded tensors, validation NDCG@10 for early stopping,
best checkpoint written atomically, resumable, bf16 autocast on CUDA, DDP when launched by torchrun.

One epoch visits every user once (the paper's sampling): a seeded permutation of the (users, maxlen)
input/target tensors is cut into batches by slicing, so no Python runs per row.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from indexes import UserError
from indexes.runtime import atomic_dir, progress, resolve_device, seed_everything
from recsys.data import LeaveOneOut, Sequences, load_sequences
from recsys.evaluate import evaluate
from recsys.losses import LOSSES, sequence_loss
from recsys.model import SASRec
from recsys.recommender import Recommender

STATE_FILE = "training.json"
OPTIMIZER_FILE = "optimizer.pt"
ARCHITECTURE = ("maxlen", "hidden", "blocks", "heads", "dropout", "pre_ln")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint's training.json."""

    loss: str = "ce"
    epochs: int = 200
    batch_size: int = 128
    maxlen: int = 50
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    pre_ln: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    n_negatives: int = 256
    gbce_t: float = 0.75
    patience: int = 10
    eval_every: int = 1
    device: str = "auto"
    seed: int = 0
    k_core: int = 0
    min_len: int = 1

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise UserError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        positive = ("epochs", "batch_size", "maxlen", "hidden", "blocks", "heads", "patience", "eval_every",
                    "n_negatives", "min_len")
        bad = [name for name in positive if getattr(self, name) < 1]
        if bad:
            raise UserError(f"{', '.join('--' + b.replace('_', '-') for b in bad)} must be >= 1")
        if self.hidden % self.heads:
            raise UserError(f"--hidden {self.hidden} must be divisible by --heads {self.heads}")
        if not 0 <= self.dropout < 1 or self.lr <= 0:
            raise UserError("--dropout must be in [0, 1) and --lr > 0")


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun set up through WORLD_SIZE and friends."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank() if world > 1 else 0), world


def _device(config: TrainConfig, world: int) -> str:
    device = resolve_device(config.device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return device


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_sasrec(seqs: Sequences, out: str | Path, config: TrainConfig, resume: str | Path | None = None) -> dict[str, Any]:
    """Train on the leave-one-out training part of `seqs`; keep the checkpoint with the best validation
    NDCG@10 in `out` (config.json, model.safetensors, item_ids.json, training.json, optimizer.pt)."""
    config.validate()
    rank, world = _distributed()
    device = _device(config, world)
    seed_everything(config.seed)
    split = LeaveOneOut(seqs, config.maxlen)
    inputs, targets = split.train_tensors()
    if not len(inputs):
        raise UserError("no user has two or more training interactions")
    valid = split.case("valid")
    model, optimizer, state = _start(seqs, config, device, resume)
    net = DistributedDataParallel(model) if world > 1 else model
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        loss, seconds, cpu_seconds = _train_epoch(net, model, optimizer, inputs, targets, config, epoch, device,
                                                  rank, world)
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "loss": loss, "seconds": seconds, "cpu_seconds": cpu_seconds})
        if epoch % config.eval_every and epoch != config.epochs:
            continue
        stop = torch.zeros(1, device=device)
        if rank == 0:
            ndcg = evaluate(model, valid, ks=(10,), seed=config.seed)["NDCG@10"]
            state["history"][-1]["valid_ndcg10"] = ndcg
            state["peak_memory_mb"] = round(_peak_memory_mb(device), 1)
            if ndcg > state["best_valid_ndcg10"]:
                state.update(best_valid_ndcg10=ndcg, best_epoch=epoch)
                save_checkpoint(out, Recommender(model, seqs.item_ids), optimizer, state, config)
            stop[0] = float((epoch - state["best_epoch"]) >= config.patience * config.eval_every)
        if world > 1:
            dist.broadcast(stop, src=0)
        if stop.item():
            break
    return _summary(out, seqs, state, device)


def _start(seqs: Sequences, config: TrainConfig, device: str,
           resume: str | Path | None) -> tuple[SASRec, torch.optim.Optimizer, dict[str, Any]]:
    """A fresh model, optimizer and state, or those of the checkpoint in `resume`."""
    state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_valid_ndcg10": -1.0, "history": []}
    if resume is None:
        model = SASRec(seqs.n_items, **{k: getattr(config, k) for k in ARCHITECTURE}).to(device)
    else:
        resumed = Recommender.from_pretrained(resume, device=device)
        if resumed.item_ids != seqs.item_ids:
            raise UserError(f"{resume} was trained on other items than --data has; cannot resume")
        model = resumed.model.train()
        saved = json.loads((Path(resume) / STATE_FILE).read_text(encoding="utf-8"))
        state = saved["state"]
        for name in ARCHITECTURE:  # the architecture is the checkpoint's
            setattr(config, name, saved["config"][name])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98),
                                  weight_decay=config.weight_decay, fused=True)
    if resume is not None:
        optimizer.load_state_dict(torch.load(Path(resume) / OPTIMIZER_FILE, map_location=device, weights_only=True))
    return model, optimizer, state


def _batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded random order cut into batches of similar lengths: rows are sorted by length inside pools
    of 64 batches, and the batches shuffled, so each batch can be cut to its longest row."""
    order = torch.randperm(len(lengths), generator=generator)
    pool = torch.arange(len(order)) // (64 * batch_size)
    order = order[torch.argsort(pool * (int(lengths.max()) + 1) + lengths[order], stable=True)]
    batches = list(order.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _train_epoch(net: torch.nn.Module, model: SASRec, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                 targets: torch.Tensor, config: TrainConfig, epoch: int, device: str, rank: int,
                 world: int) -> tuple[float, float, float]:
    """One pass over every user (this rank's share under DDP); returns (mean loss, wall seconds, CPU seconds)."""
    net.train()
    lengths = (inputs > 0).sum(1)
    batches = _batches(lengths, config.batch_size, torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    batches = batches[: len(batches) - len(batches) % world][rank::world] if world > 1 else batches
    negatives = torch.Generator(device=device).manual_seed(config.seed * 100_003 + epoch * world + rank)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    total, seen, start, cpu_start = torch.zeros((), device=device), 0, time.perf_counter(), time.process_time()
    bar = progress(batches, desc=f"epoch {epoch}", unit="batch", disable=rank > 0)
    for step, rows in enumerate(bar, 1):
        width = int(lengths[rows].max())
        seq = inputs[rows, -width:].to(device, non_blocking=True)
        target = targets[rows, -width:].to(device, non_blocking=True)
        with autocast:
            loss = sequence_loss(config.loss, net(seq), target, model.item_weight, n_negatives=config.n_negatives,
                                 gbce_t=config.gbce_t, generator=negatives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        seen += len(rows)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total.item() / step:.4f}", seq_s=f"{seen / (time.perf_counter() - start):.0f}")
    return total.item() / max(len(batches), 1), time.perf_counter() - start, time.process_time() - cpu_start


def save_checkpoint(out: str | Path, recommender: Recommender, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], config: TrainConfig) -> None:
    """Write model, id map, optimizer and training state into `out`, atomically."""
    with atomic_dir(out) as tmp:
        recommender.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({"config": asdict(config), "state": state}, indent=2), encoding="utf-8")


def _summary(out: str | Path, seqs: Sequences, state: dict[str, Any], device: str) -> dict[str, Any]:
    epochs = max(len(state["history"]), 1)
    return {
        "out": str(out), "users": seqs.n_users, "items": seqs.n_items, "interactions": int(len(seqs.items)),
        "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
        "best_valid_ndcg10": state["best_valid_ndcg10"],
        "seconds_per_epoch": sum(h["seconds"] for h in state["history"]) / epochs,
        "cpu_seconds_per_epoch": sum(h.get("cpu_seconds", 0.0) for h in state["history"]) / epochs,
        "peak_memory_mb": round(_peak_memory_mb(device), 1), "device": device, "history": state["history"],
    }


def train_from_path(data: str | Path, out: str | Path, fmt: str = "auto", resume: str | Path | None = None,
                    **options: Any) -> dict[str, Any]:
    """Read a dataset (path or fetched name), then `train_sasrec`; `options` are TrainConfig fields.

    Refuses to overwrite an existing `out` unless resuming from it."""
    config = TrainConfig(**{k: v for k, v in options.items() if v is not None})
    config.validate()
    out = Path(out)
    if out.exists() and (resume is None or Path(resume).resolve() != out.resolve()):
        raise UserError(f"{out} exists; choose another --out (or --resume {out})")
    seqs = load_sequences(data, fmt, k=config.k_core, min_len=config.min_len)
    return train_sasrec(seqs, out, config, resume)
