"""Train a pooling head (attentive probe, GeM) on frozen backbone tokens, as attentive probing does.

The backbone runs once to cache its tokens; only the head (plus a linear classifier, dropped after)
learns, so a probe trains in seconds on a CPU. The trained head stays in the encoder, which then
saves and embeds with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from indexes import metrics
from indexes.errors import UserError
from indexes.runtime import progress, resolve_device, seed_everything
from vision.encoders import ImageEncoder


def fit_pooling(encoder: ImageEncoder, images: Sequence[Image.Image], labels: Sequence[Any], epochs: int = 30,
                lr: float = 3e-3, batch_size: int = 64, device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Fit `encoder.pool` to predict `labels` from the frozen backbone's tokens; returns the loss curve."""
    params = [] if encoder.pool is None else [p for p in encoder.pool.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"pooling {encoder.pooling!r} has nothing to train; use attentive or gem")
    classes, targets = np.unique(np.asarray(labels), return_inverse=True)
    if len(classes) < 2 or len(targets) != len(images):
        raise UserError(f"need one label per image and at least 2 classes; got {len(targets)} labels, "
                        f"{len(classes)} classes for {len(images)} images")
    seed_everything(seed)
    # cached once; cloned out of inference mode so autograd may save them
    tokens = torch.cat(list(encoder.map_batches(encoder.tokens, images, batch_size, device))).clone()
    y = torch.as_tensor(targets)
    dev = resolve_device(device)
    classifier = torch.nn.Linear(encoder.dim, len(classes), device=dev)
    optimizer = torch.optim.AdamW([*params, *classifier.parameters()], lr=lr)
    encoder.pool.to(dev).train()
    losses = []
    for epoch in progress(range(1, epochs + 1), desc="fitting pooling head", unit="epoch"):
        total = 0.0
        for idx in torch.randperm(len(y)).split(batch_size):
            loss = F.cross_entropy(classifier(encoder.pool(tokens[idx].to(dev))), y[idx].to(dev))
            metrics.require_finite(loss.detach(), f"pooling-head losses (epoch {epoch}; try a lower lr)")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(y))
    encoder.pool.eval()
    return {"classes": classes.tolist(), "losses": losses}
