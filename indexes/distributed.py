"""Training under torchrun, shared by every family's training loop: join the process group torchrun set
up (gloo on CPU, NCCL on GPU), split each batch across the ranks, weight each rank's loss so that DDP's
averaged gradient is the one a single process computes on the whole batch, and let rank 0 alone write.

A loop stays the same code with or without the launcher: with one process `Ranks` is (0, 1), `share`
returns the batch, `weight` is 1 and `wrap` returns the model itself.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from indexes.errors import UserError
from indexes.files import atomic_dir, output_lock


def launch_rank() -> int:
    """This process's rank as torchrun sets it (0 without torchrun): only rank 0 writes."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Ranks:
    """This process's rank and the number of processes training together."""

    rank: int = 0
    world: int = 1

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a batch: rows rank, rank + world, ..."""
        if len(rows) < self.world:
            raise UserError(f"a batch of {len(rows)} rows cannot be split across {self.world} processes")
        return rows[self.rank::self.world]

    def weight(self, part: float, whole: float) -> float:
        """The factor on a rank's mean loss over `part` of the batch's `whole` units (rows, positions) that
        makes DDP's average over ranks the mean over the whole batch."""
        return self.world * part / whole if self.world > 1 else 1.0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under DistributedDataParallel (gradients averaged across ranks), or itself. On GPUs its
        BatchNorm layers become SyncBatchNorm (statistics over the whole batch); on the CPU, where torch has
        no SyncBatchNorm, each rank normalises with its own share's statistics."""
        if self.world == 1:
            return model
        if next(model.parameters()).is_cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of a batch back in batch order (each rank passing `share`'s rows, all of one
        size), with gradients flowing back to each rank's own rows: for losses over the whole batch
        (contrastive ones), computed identically on every rank."""
        if self.world == 1:
            return local
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(local)
        return torch.stack(parts, dim=1).flatten(0, 1)  # rank r's j-th row is batch row j * world + r

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the ranks (a logged loss)."""
        if self.world > 1:
            dist.all_reduce(value)
            value = value / self.world
        return value


def join() -> Ranks:
    """Join the process group torchrun describes through WORLD_SIZE / RANK / MASTER_ADDR (once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank() if world > 1 else 0, world)


def rank_device(device: str, ranks: Ranks) -> str:
    """Under torchrun on GPUs, each process takes the GPU of its local rank."""
    if ranks.world > 1 and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return device


def writer_lock(out: str | Path) -> contextlib.AbstractContextManager:
    """Rank 0 holds `out`'s lock; the other ranks only compute."""
    return output_lock(out) if launch_rank() == 0 else contextlib.nullcontext()


@contextlib.contextmanager
def writer_dir(out: str | Path, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Rank 0 writes `out` atomically (`indexes.files.atomic_dir`); the other ranks get a scratch folder
    that is thrown away, so the same loop runs everywhere and only one copy lands."""
    if launch_rank() == 0:
        with atomic_dir(out, kind, overwrite) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory(prefix="ragcli-rank-") as tmp:
            yield Path(tmp)
