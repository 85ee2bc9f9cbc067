"""One training loop for FocalLens and its unconditional baseline: align the image embedding with the
frozen text embedding of the answer (InfoNCE over the batch's distinct answers, both directions).

Each epoch visits every training image once, paired with a random (factor, phrasing) instruction.
Instruction and answer embeddings are computed once up front: the text encoder is frozen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from indexes import metrics
from indexes.checks import number
from indexes.distributed import join, launch_rank, rank_device, writer_dir
from indexes.errors import UserError
from indexes.files import check_output
from indexes.runtime import progress, require_finite_parameters, resolve_device, seed_everything
from indexes.text_encoder import DEFAULT_TEXT_ENCODER
from vision.augment import allowed_table, augment
from vision.datasets import check_memory
from vision.focallens import FocalLens, create_focallens, text_tower
from vision.synthetic import ConditionalSet, load_split


@dataclass
class TrainSettings:
    epochs: int = 32  # digits: validation mAP@R 0.947 at 16, 0.964 at 32 (README)
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of steps with a linear warm-up, then cosine decay
    seed: int = 0
    device: str = "auto"
    valid_fraction: float = 0.0  # held out of the training images for early stopping (0: none)
    patience: int = 3  # epochs without a better validation mAP@R before stopping (with valid_fraction)
    augment: bool = False  # condition-aware augmentation (vision.augment)


@dataclass
class _Targets:
    """Index tensors into the cached instruction / answer embeddings."""

    instructions: torch.Tensor  # (F, P) instruction index of factor f, phrasing p
    answers: torch.Tensor  # (N, F) answer index of image n under factor f
    instruction_emb: torch.Tensor  # (I, D)
    answer_emb: torch.Tensor  # (A, D)


def _targets(data: ConditionalSet, model: FocalLens, device: str) -> _Targets:
    factors = list(data.phrasings)
    if missing := [f for f in factors if f not in data.labels.columns]:
        raise UserError(f"no labels for the instructed factors {missing}")
    widest = max(len(p) for p in data.phrasings.values())
    # factors with fewer phrasings repeat their last one so the table is rectangular
    table = [[p[min(i, len(p) - 1)] for i in range(widest)] for p in data.phrasings.values()]
    instructions = sorted({t for row in table for t in row})
    answer_cols = [data.labels[f].cast(str).to_numpy() for f in factors]
    answers, inverse = np.unique(np.stack(answer_cols, axis=1), return_inverse=True)
    tower = model.tower(device)
    lookup = {t: i for i, t in enumerate(instructions)}
    return _Targets(
        instructions=torch.tensor([[lookup[t] for t in row] for row in table]),
        answers=torch.from_numpy(inverse.reshape(len(data), len(factors))),
        instruction_emb=tower.encode(instructions).to(device),
        answer_emb=tower.encode(list(answers)).to(device),
    )


def contrastive_loss(images: torch.Tensor, answer_ids: torch.Tensor, answer_emb: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between image embeddings and the batch's distinct answers.

    Images sharing an answer are all positives of that answer, never negatives of each other."""
    distinct, target = torch.unique(answer_ids, return_inverse=True)
    logits = scale * images @ answer_emb[distinct].T  # (B, U)
    image_to_text = F.cross_entropy(logits, target)
    positives = F.one_hot(target, len(distinct)).bool()
    # each answer's probability mass over images must fall on its positives (all of them together)
    text_to_image = -logits.log_softmax(dim=0).masked_fill(~positives, float("-inf")).logsumexp(dim=0).mean()
    return (image_to_text + text_to_image) / 2


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_focallens(model: FocalLens, data: ConditionalSet, settings: TrainSettings) -> dict:
    """Train `model` in place on `data`'s (image, instruction, answer) triples; returns the loss history."""
    if len(data) < 2:
        raise UserError(f"need at least 2 training images, got {len(data)}")
    seed_everything(settings.seed)
    data, valid = split_validation(data, settings.valid_fraction, settings.seed)
    ranks = join()
    device = rank_device(resolve_device(settings.device), ranks)
    model.to(device).train()
    check_memory(len(data) * 3 * model.image_size**2, f"{len(data):,} training images at {model.image_size} px")
    targets = _targets(data, model, device)
    images = model.to_pixels(data.images)  # uint8 at the model's resolution, resized once
    batch = min(settings.batch_size, len(data))
    if batch % ranks.world:
        raise UserError(f"--batch-size {batch} does not split evenly across {ranks.world} processes")
    net = ranks.wrap(model)
    steps_per_epoch = len(data) // batch
    total = settings.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, int(settings.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, warmup))
    generator = torch.Generator().manual_seed(settings.seed)
    augmenter = torch.Generator().manual_seed(settings.seed + 1)  # its own stream: the batches stay the same
    allowed = (allowed_table(list(data.phrasings), [data.labels[f].unique().cast(str) for f in data.phrasings])
               if settings.augment else None)
    n_factors, n_phrasings = targets.instructions.shape
    history, started = [], time.perf_counter()
    stopper = EarlyStopping(model, valid, settings.patience, device)
    for epoch in progress(range(1, settings.epochs + 1), desc="train focallens", unit="epoch", disable=not ranks.writer):
        order = torch.randperm(len(data), generator=generator)[: steps_per_epoch * batch].view(steps_per_epoch, batch)
        factor = torch.randint(n_factors, order.shape, generator=generator)
        phrasing = torch.randint(n_phrasings, order.shape, generator=generator)
        losses = []
        for rows, f, p in zip(order, factor, phrasing):
            # under torchrun each rank embeds its share; the loss is over the whole batch on every rank
            batch_images = images[rows] if allowed is None else augment(images[rows], allowed[f], augmenter)
            pixels = model.normalize(ranks.share(batch_images).to(device))
            condition = targets.instruction_emb[targets.instructions[ranks.share(f), ranks.share(p)].to(device)]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                emb = ranks.gather(net(pixels, condition).float())
            scale = model.logit_scale.exp().clamp(max=100)  # CLIP's cap
            loss = contrastive_loss(emb, targets.answers[rows, f].to(device), targets.answer_emb, scale)
            losses.append(loss.item())
            metrics.require_finite(losses[-1], f"training losses (epoch {epoch}; try a lower --lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        history.append(float(np.mean(losses)))
        if stopper.stop_after(epoch):
            break
    stopper.restore_best()
    require_finite_parameters(model, "training diverged (try a lower --lr)")  # a last step can break the weights
    return {"model": model.name, "epochs": settings.epochs, "steps": total, "batch_size": batch,
            "loss": history, "seconds": round(time.perf_counter() - started, 1), "settings": asdict(settings),
            **stopper.report()}


def split_validation(data: ConditionalSet, fraction: float, seed: int) -> tuple[ConditionalSet, ConditionalSet | None]:
    """(training part, validation part) of `data`: a seeded `fraction` of its images held out (none at 0)."""
    number("validation fraction", fraction, 0, 0.5)
    held = round(len(data) * fraction)
    if held == 0:
        return data, None
    if len(data) - held < 2:
        raise UserError(f"a validation fraction of {fraction} leaves fewer than 2 training images")
    order = np.random.default_rng(seed).permutation(len(data))
    return _subset(data, np.sort(order[held:])), _subset(data, np.sort(order[:held]))


def _subset(data: ConditionalSet, rows: np.ndarray) -> ConditionalSet:
    images = data.images[rows] if isinstance(data.images, np.ndarray) else [data.images[int(i)] for i in rows]
    return ConditionalSet(images, data.labels[rows.tolist()], data.phrasings)


class EarlyStopping:
    """Validation mean mAP@R (each factor asked with its first phrasing) after every epoch; keeps the best
    weights and says when `patience` epochs have passed without a better one. Inert without validation data."""

    def __init__(self, model: FocalLens, valid: ConditionalSet | None, patience: int, device: str) -> None:
        self.model, self.valid, self.patience, self.device = model, valid, patience, device
        self.scores: list[float] = []
        self.best_state: dict[str, torch.Tensor] | None = None

    def stop_after(self, epoch: int) -> bool:
        if self.valid is None:
            return False
        from vision.evaluate import evaluate_focallens

        conditions = {factor: phrasings[0] for factor, phrasings in self.valid.phrasings.items()}
        score = evaluate_focallens(self.model, self.valid, conditions, device=self.device)["mean"]["mAP@R"]
        self.model.train()
        if not self.scores or score > max(self.scores):
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.scores.append(score)
        return epoch - 1 - int(np.argmax(self.scores)) >= self.patience

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def report(self) -> dict[str, object]:
        if self.valid is None:
            return {}
        return {"valid_mAP@R": self.scores, "best_epoch": int(np.argmax(self.scores)) + 1,
                "valid_images": len(self.valid)}


def save_model(model: FocalLens, out: str | Path, overwrite: bool = False) -> Path:
    """Write the model directory (config.json + model.safetensors) atomically."""
    with writer_dir(out, "model", overwrite) as tmp:  # under torchrun, rank 0 writes
        model.save_pretrained(tmp)
    return Path(out)


def train_from_data(data: str | Path, out: str | Path, unconditional: bool = False, epochs: int = 32,
                    batch_size: int = 64, lr: float = 2e-3, image_size: int = 32, text_encoder: str | None = None,
                    device: str = "auto", seed: int = 0, overwrite: bool = False,
                    attributes: Sequence[str] | None = None, tower: str = "cnn", tower_weights: str | Path | None = None,
                    valid_fraction: float = 0.0, patience: int = 3, augment: bool = False, **vit: int) -> dict:
    """Train FocalLens (or the unconditional baseline) on `data`'s train split and save it to `out`
    (replacing a model ragcli wrote there only with `overwrite`).

    `attributes`: the factors to train on (e.g. CelebA's Smiling, Eyeglasses); None: all of them.
    `tower`: the image tower, "vit", "cnn" (FiLM-conditioned) or an encoder spec (timm:NAME, a registered
    backbone, hf:PATH), which starts from `tower_weights` (timm) or the hf: directory's weights.
    `valid_fraction` > 0 holds that share of the training images out and stops early on its mAP@R
    (`patience` epochs), keeping the best epoch.
    `augment`: condition-aware augmentation (`vision.augment`).
    `vit`: patch_size, embed_dim, depth, num_heads of the ViT."""
    if launch_rank() == 0:
        check_output(out, overwrite, "model directory")
    train = load_split(data, "train", image_size, seed, attributes)
    text_encoder = text_encoder or DEFAULT_TEXT_ENCODER
    text_dim = text_tower(text_encoder).dim
    seed_everything(seed)  # the initial weights too
    model = create_focallens(tower, tower_weights, image_size=image_size, text_dim=text_dim,
                             conditional=not unconditional, text_encoder=text_encoder, **vit)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                             valid_fraction=valid_fraction, patience=patience, augment=augment)
    log = train_focallens(model, train, settings)
    return {**log, "path": str(save_model(model, out, overwrite))}
