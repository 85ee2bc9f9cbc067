"""Training SASRec: AdamW over precomputed padded tensors, validation nDCG@10 for early stopping,
best checkpoint written atomically, resumable, bf16 autocast (CUDA by default, CPU when asked), DDP
when launched by torchrun.

One epoch visits every user once (the paper's sampling): a seeded permutation of the (users, maxlen)
input/target tensors is cut into batches by slicing, so no Python runs per row.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from indexes import UserError
from indexes.checks import MAX_BATCH_SIZE, MAX_SEED, choice, integer, number
from indexes.distributed import Ranks, join, launch_rank, rank_device, writer_lock
from indexes.files import atomic_dir, check_output, regular_file
from indexes.metrics import require_finite
from indexes.runtime import progress, resolve_device, seed_everything
from recsys.checks import ARCHITECTURE, MAX_COUNT, MAX_EPOCHS, MAX_NEGATIVES, check_architecture
from recsys.data import EvalCase, LeaveOneOut, Sequences, load_sequences
from recsys.evaluate import evaluate
from recsys.losses import LOSSES, sequence_loss
from recsys.model import SASRec
from recsys.recommender import BEST_KEY, STATE_FILE, VALID_KEY, VALID_METRIC, Recommender, read_training_state

OPTIMIZER_FILE = "optimizer.pt"
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, float32 on CPU
SCHEDULES = ("constant", "cosine")


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
    schedule: str = "constant"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    decay_embeddings: bool = False
    n_negatives: int = 256
    gbce_t: float = 0.75
    patience: int = 10
    eval_every: int = 1
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    k_core: int = 0
    min_len: int = 1

    def validate(self) -> None:
        """Types and ranges of every setting (the CLI's option ranges): a UserError naming the bad one."""
        counts = {"epochs": (1, MAX_EPOCHS), "batch_size": (1, MAX_BATCH_SIZE), "patience": (1, MAX_EPOCHS),
                  "eval_every": (1, MAX_EPOCHS), "n_negatives": (1, MAX_NEGATIVES), "k_core": (0, MAX_COUNT),
                  "min_len": (1, MAX_COUNT), "seed": (0, MAX_SEED)}
        try:
            choice("loss", self.loss, LOSSES)
            choice("precision", self.precision, PRECISIONS)
            choice("schedule", self.schedule, SCHEDULES)
            integer("warmup_epochs", self.warmup_epochs, 0, self.epochs - 1)
            for name, (low, high) in counts.items():
                integer(name, getattr(self, name), low, high)
            check_architecture(1, **{name: getattr(self, name) for name in ARCHITECTURE})
            number("lr", self.lr, 0, low_open=True)
            number("weight_decay", self.weight_decay, 0)
            number("gbce_t", self.gbce_t, 0, 1)
        except UserError as err:
            raise UserError(f"invalid training settings: {err}") from None


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The rate after `progress` epochs (fractional: it changes every step): a linear warm-up from 0 over
    `warmup_epochs`, then `lr` (constant) or a half cosine from `lr` down to 0 at `epochs`. A function of
    the position alone, so a resumed run continues the same curve."""
    if progress < config.warmup_epochs:
        return config.lr * progress / config.warmup_epochs
    if config.schedule == "constant":
        return config.lr
    done = (progress - config.warmup_epochs) / (config.epochs - config.warmup_epochs)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def _device(config: TrainConfig, ranks: Ranks) -> str:
    return rank_device(resolve_device(config.device), ranks)


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_sasrec(seqs: Sequences, out: str | Path, config: TrainConfig, resume: str | Path | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Train on the leave-one-out training part of `seqs`; keep the checkpoint with the best validation
    nDCG@10 in `out` (config.json, model.safetensors, item_ids.json, training.json, optimizer.pt).

    An existing `out` is replaced only with `overwrite` (or when resuming from it); a diverging run (NaN
    or infinite loss or scores) stops with a UserError and leaves its last good checkpoint in `out`."""
    config.validate()
    _check_out(out, overwrite, resume)
    with writer_lock(out):
        ranks = join()
        device = _device(config, ranks)
        seed_everything(config.seed)
        model, optimizer, state = _start(seqs, config, device, resume)  # sets a resumed run's architecture
        split = LeaveOneOut(seqs, config.maxlen)
        inputs, targets = split.train_tensors()
        if not len(inputs):
            raise UserError("no user has two or more training interactions")
        valid = split.case("valid")
        net = ranks.wrap(model)
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            loss, seconds, cpu_seconds = _train_epoch(net, model, optimizer, inputs, targets, config, epoch, device,
                                                      ranks)
            _require_finite(loss, epoch, out)
            state["epoch"] = epoch
            state["history"].append({"epoch": epoch, "loss": loss, "seconds": seconds, "cpu_seconds": cpu_seconds})
            if epoch % config.eval_every and epoch != config.epochs:
                continue
            stop = torch.zeros(1, device=device)
            if ranks.writer:
                stop[0] = _validate(model, valid, seqs, optimizer, state, config, out)
            if ranks.world > 1:
                dist.broadcast(stop, src=0)
            if stop.item() == DIVERGED:
                raise _diverged(epoch, "validation scores hold NaN or infinite values", out)
            if stop.item():
                break
        return _summary(out, seqs, state, device)


DIVERGED = 2.0  # the stop flag rank 0 broadcasts when validation scores are not finite


def _validate(model: SASRec, valid: EvalCase, seqs: Sequences, optimizer: torch.optim.Optimizer,
              state: dict[str, Any], config: TrainConfig, out: str | Path) -> float:
    """Validation nDCG@10 of this epoch; saves a new best. Returns the stop flag: 1 to stop early,
    DIVERGED when scores are not finite."""
    epoch = state["epoch"]
    try:
        ndcg = evaluate(model, valid, ks=(10,), seed=config.seed)[VALID_METRIC]
    except UserError:  # require_finite on the scores
        return DIVERGED
    state["history"][-1][VALID_KEY] = ndcg
    state["peak_memory_mb"] = round(_peak_memory_mb(str(model.item_weight.device)), 1)
    if ndcg > state[BEST_KEY]:
        state.update({BEST_KEY: ndcg, "best_epoch": epoch})
        save_checkpoint(out, Recommender(model, seqs.item_ids), optimizer, state, config)
    return float((epoch - state["best_epoch"]) >= config.patience * config.eval_every)


def _require_finite(loss: float, epoch: int, out: str | Path) -> None:
    """A NaN or infinite training loss stops the run (`_diverged`)."""
    try:
        require_finite(loss, "training losses")
    except UserError as err:
        raise _diverged(epoch, str(err), out) from None


def _diverged(epoch: int, problem: str, out: str | Path) -> UserError:
    """One line saying that training diverged and what `out` holds: its last good checkpoint, or nothing."""
    kept = f"{out} keeps the last good checkpoint" if Path(out).exists() else f"nothing was written to {out}"
    return UserError(f"training diverged at epoch {epoch}: {problem}; {kept} (try a lower --lr)")


def _check_out(out: str | Path, overwrite: bool, resume: str | Path | None) -> None:
    """The one overwrite policy; resuming from `out` itself is allowed (it replaces its own checkpoint).
    Under torchrun only rank 0 checks: it is the one that writes."""
    if launch_rank() == 0 and (resume is None or Path(resume).resolve() != Path(out).resolve()):
        check_output(out, overwrite, "model directory")


def _start(seqs: Sequences, config: TrainConfig, device: str,
           resume: str | Path | None) -> tuple[SASRec, torch.optim.Optimizer, dict[str, Any]]:
    """A fresh model, optimizer and state, or those of the checkpoint in `resume`."""
    state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, BEST_KEY: -1.0, "history": []}
    if resume is None:
        model = SASRec(seqs.n_items, **{k: getattr(config, k) for k in ARCHITECTURE}).to(device)
    else:
        resumed = Recommender.from_pretrained(resume, device=device)
        if resumed.item_ids != seqs.item_ids:
            raise UserError(f"{resume} was trained on other items than --data has; cannot resume")
        model = resumed.model.train()
        state = read_training_state(resume)["state"]
        for name, value in model.architecture.items():  # the architecture is the checkpoint's
            setattr(config, name, value)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay, config.decay_embeddings),
                                  lr=config.lr, betas=(0.9, 0.98), fused=True)
    if resume is not None:
        _load_optimizer(optimizer, Path(resume) / OPTIMIZER_FILE, device)
    return model, optimizer, state


def parameter_groups(model: torch.nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """AdamW groups: weight decay on the matrices of linear layers (and on embeddings when asked), none on
    biases or LayerNorm. Decaying every row of an item table each step shrinks the rarely seen items
    towards zero, which is seldom what a recommender wants."""
    decayed, kept = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            decay = name == "weight" and (isinstance(module, torch.nn.Linear) or
                                          (decay_embeddings and isinstance(module, torch.nn.Embedding)))
            (decayed if decay else kept).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


def _autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked (or on CUDA by default), else nothing: the run stays in float32."""
    if precision == "bf16" or (precision == "auto" and device.startswith("cuda")):
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path, device: str) -> None:
    """Restore optimizer state (tensors only: `weights_only`); a missing or broken file is a UserError."""
    try:
        optimizer.load_state_dict(torch.load(regular_file(path, "optimizer state"), map_location=device,
                                             weights_only=True))
    except (RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"{path} is not a valid optimizer state: {str(err).strip().splitlines()[0][:200]}") from None


def _batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded random order cut into batches of similar lengths: rows are sorted by length inside pools
    of 64 batches, and the batches shuffled, so each batch can be cut to its longest row."""
    order = torch.randperm(len(lengths), generator=generator)
    pool = torch.arange(len(order)) // (64 * batch_size)
    order = order[torch.argsort(pool * (int(lengths.max()) + 1) + lengths[order], stable=True)]
    batches = list(order.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _train_epoch(net: torch.nn.Module, model: SASRec, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                 targets: torch.Tensor, config: TrainConfig, epoch: int, device: str,
                 ranks: Ranks) -> tuple[float, float, float]:
    """One pass over every user; returns (mean loss, wall seconds, CPU seconds).

    Under DDP a batch of `batch_size` rows is split across the ranks (rank r takes rows r, r + world, ...)
    and each rank's mean loss is weighted by its share of the batch's target positions, so the averaged
    gradients are those of one process taking the whole batch: the same model, up to float rounding
    (batches with fewer rows than ranks are skipped)."""
    net.train()
    lengths = (inputs > 0).sum(1)
    batches = _batches(lengths, config.batch_size, torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    batches = [rows for rows in batches if len(rows) >= ranks.world]
    negatives = torch.Generator(device=device).manual_seed(config.seed * 100_003 + epoch * ranks.world + ranks.rank)
    autocast = _autocast(config.precision, device)
    total, seen, start, cpu_start = torch.zeros((), device=device), 0, time.perf_counter(), time.process_time()
    bar = progress(batches, desc=f"epoch {epoch}", unit="batch", disable=not ranks.writer)
    for step, rows in enumerate(bar, 1):
        width = int(lengths[rows].max())
        share = ranks.share(rows)
        seq = inputs[share, -width:].to(device, non_blocking=True)
        target = targets[share, -width:].to(device, non_blocking=True)
        with autocast:
            loss = sequence_loss(config.loss, net(seq), target, model.item_weight, n_negatives=config.n_negatives,
                                 gbce_t=config.gbce_t, generator=negatives)
        loss = loss * ranks.weight(int((targets[share] > 0).sum()), int((targets[rows] > 0).sum()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch - 1 + (step - 0.5) / len(batches))
        optimizer.step()
        total += loss.detach()
        seen += len(rows)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total.item() / step:.4f}", seq_s=f"{seen / (time.perf_counter() - start):.0f}")
    total = ranks.mean(total)  # every rank sees the same mean, so a diverged run stops on all of them at once
    return total.item() / max(len(batches), 1), time.perf_counter() - start, time.process_time() - cpu_start


def save_checkpoint(out: str | Path, recommender: Recommender, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], config: TrainConfig) -> None:
    """Write model, id map, optimizer and training state into `out`, atomically."""
    with atomic_dir(out, "model", overwrite=True) as tmp:  # the run's own earlier checkpoint
        recommender.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({"config": asdict(config), "state": state}, indent=2), encoding="utf-8")


def _summary(out: str | Path, seqs: Sequences, state: dict[str, Any], device: str) -> dict[str, Any]:
    epochs = max(len(state["history"]), 1)
    return {
        "out": str(out), "users": seqs.n_users, "items": seqs.n_items, "interactions": int(len(seqs.items)),
        "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
        BEST_KEY: state[BEST_KEY],
        "seconds_per_epoch": sum(h["seconds"] for h in state["history"]) / epochs,
        "cpu_seconds_per_epoch": sum(h.get("cpu_seconds", 0.0) for h in state["history"]) / epochs,
        "peak_memory_mb": round(_peak_memory_mb(device), 1), "device": device, "history": state["history"],
    }


def train_from_path(data: str | Path, out: str | Path, fmt: str = "auto", resume: str | Path | None = None,
                    overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Read a dataset (path or fetched name), then `train_sasrec`; `options` are TrainConfig fields.

    Refuses, before reading anything, to replace an existing `out` unless `overwrite` (and it is a
    directory ragcli wrote) or resuming from it; holds `out`'s lock for the whole run."""
    config = TrainConfig(**{k: v for k, v in options.items() if v is not None})
    config.validate()
    _check_out(out, overwrite, resume)
    with writer_lock(out):
        seqs = load_sequences(data, fmt, k=config.k_core, min_len=config.min_len)
        return train_sasrec(seqs, out, config, resume, overwrite)
