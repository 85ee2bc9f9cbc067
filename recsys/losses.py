"""Next-item losses compared in the SASRec literature, on the states of the non-padding positions.

- `ce`: full softmax cross-entropy over every item.
- `bce`: the SASRec paper's loss, one uniformly sampled negative per position.
- `sampled-ce`: softmax over the positive and N negatives shared by the batch.
- `gbce`: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023): N negatives per position, positive
  term raised to beta, which undoes the over-confidence that negative sampling causes (t calibrates).
  Drawn per position as gSASRec does: with N negatives shared by the batch, the summed BCE pushes those
  few items down so hard that training on Amazon Games diverges (measured: validation nDCG@10 0.002).
Negatives are drawn uniformly in one vectorised call; a negative equal to its position's target is masked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bce", "sampled-ce", "gbce")


CE_CHUNK_BYTES = 8 << 20  # one chunk of logits: the allocator reuses it; 8 MB measured fastest on Games (2-16 MB tried)


def ce_loss(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, **_) -> torch.Tensor:
    device = states.device.type
    low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return ChunkedSoftmaxCE.apply(states, weight[1:], targets - 1, low)


class ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean full-softmax cross-entropy of (N, h) states over (V, h) item rows, a chunk of positions at a
    time: the (N, V) logits, their softmax and its gradient never exist at once (on Amazon Games they
    were 1.4 GB per batch, half the epoch spent in page faults). The loss is a scalar, so its gradients
    are known as soon as each chunk's softmax is: forward computes them on the spot (when an input needs
    them) and backward only scales them, so each chunk's logits are computed and exponentiated once.

    The products run in `dtype` (bfloat16 under autocast, where the CPU's matrix units make them several
    times faster); the softmax itself is taken in float32 (or wider), as CPU kernels for it are fastest
    there and the log-sum-exp of thousands of items needs it."""

    @staticmethod
    def forward(ctx, states: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(states.device.type, enabled=False):
            products = _Products(states, items, dtype)
            gradients = states.requires_grad or items.requires_grad
            lse = torch.empty(len(states), dtype=products.wide, device=states.device)
            grad_states = torch.empty(states.shape, dtype=products.wide, device=states.device) if gradients else None
            grad_items = torch.zeros(items.shape, dtype=products.wide, device=items.device) if gradients else None
            for rows, chunk in products.chunks():
                logits = products.logits(chunk)
                peak = logits.amax(1)
                total = logits.sub_(peak.unsqueeze(1)).exp_().sum(1)  # in place: no temporaries
                lse[rows] = total.log() + peak
                if gradients:  # d mean / d logits = (softmax - one-hot) / N
                    probs = logits.div_(total.unsqueeze(1))
                    probs[torch.arange(len(probs)), targets[rows]] -= 1
                    low = products.lowered(probs.div_(len(states)))
                    grad_states[rows] = low @ products.low_items
                    grad_items += low.T @ chunk
            positive = (products.states * products.items[targets]).sum(1)
        ctx.save_for_backward(grad_states, grad_items)
        ctx.dtypes = (states.dtype, items.dtype)
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        grad_states, grad_items = ctx.saved_tensors
        return ((grad_states * grad).to(ctx.dtypes[0]), (grad_items * grad).to(ctx.dtypes[1]), None, None)


class _Products:
    """Chunks of state-item products for `ChunkedSoftmaxCE`, with its two reused buffers: the logits
    in the wide dtype, and (when `dtype` is lower) the products in `dtype`."""

    def __init__(self, states: torch.Tensor, items: torch.Tensor, dtype: torch.dtype):
        self.wide = torch.promote_types(torch.float32, states.dtype)
        self.states, self.items = states.to(self.wide), items.to(self.wide)
        self.low_states, self.low_items = states.to(dtype), items.to(dtype)
        rows = max(1, min(len(states), CE_CHUNK_BYTES // (len(items) * self.wide.itemsize)))
        self.buffer = torch.empty(rows, len(items), dtype=self.wide, device=states.device)
        self.low = None if dtype == self.wide else torch.empty(rows, len(items), dtype=dtype, device=states.device)

    def chunks(self) -> Iterator[tuple[slice, torch.Tensor]]:
        """(rows, the rows' states in the product dtype), a buffer's worth at a time."""
        for start in range(0, len(self.low_states), len(self.buffer)):
            yield slice(start, start + len(self.buffer)), self.low_states[start:start + len(self.buffer)]

    def logits(self, chunk: torch.Tensor) -> torch.Tensor:
        """The chunk's (rows, V) logits, in the wide buffer."""
        out = self.buffer[:len(chunk)]
        if self.low is None:
            return torch.matmul(chunk, self.low_items.T, out=out)
        return out.copy_(torch.matmul(chunk, self.low_items.T, out=self.low[:len(chunk)]))

    def lowered(self, values: torch.Tensor) -> torch.Tensor:
        """`values` (a view of the wide buffer) in the product dtype."""
        return values if self.low is None else self.low[:len(values)].copy_(values)


def bce_loss(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, *,
             generator: torch.Generator | None = None, **_) -> torch.Tensor:
    negatives = _uniform(weight.shape[0] - 1, targets.shape, targets.device, generator)
    pos, neg = _positive_logits(states, targets, weight), (states * weight[negatives]).sum(-1)
    real = (negatives != targets).float()
    return (-F.logsigmoid(pos) - F.logsigmoid(-neg) * real).mean()


def sampled_ce_loss(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, *, n_negatives: int = 256,
                    generator: torch.Generator | None = None, **_) -> torch.Tensor:
    negatives = _uniform(weight.shape[0] - 1, (n_negatives,), targets.device, generator)
    pos, neg = _positive_logits(states, targets, weight), _negative_logits(states, targets, weight, negatives)
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def gbce_loss(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, *, n_negatives: int = 256,
              gbce_t: float = 0.75, generator: torch.Generator | None = None, **_) -> torch.Tensor:
    negatives = _uniform(weight.shape[0] - 1, (len(targets), n_negatives), targets.device, generator)
    pos, neg = _positive_logits(states, targets, weight), _negative_logits(states, targets, weight, negatives)
    alpha = n_negatives / (weight.shape[0] - 2)  # sampling rate among the n_items - 1 negatives
    beta = alpha * (gbce_t * (1 - 1 / alpha) + 1 / alpha)
    return (-beta * F.logsigmoid(pos) - F.logsigmoid(-neg).sum(1)).mean()


def _uniform(n_items: int, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(1, n_items + 1, shape, device=device, generator=generator)


def _positive_logits(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (states * weight[targets]).sum(-1)


def _negative_logits(states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                     negatives: torch.Tensor) -> torch.Tensor:
    """(N, k) logits of negatives shared by the batch (k,) or drawn per position (N, k); accidental hits
    (a negative equal to the position's target) are -inf, so they add nothing."""
    rows = weight[negatives]
    logits = states @ rows.T if negatives.dim() == 1 else torch.einsum("nh,nkh->nk", states, rows)
    return logits.masked_fill(negatives == targets.unsqueeze(1), float("-inf"))


_BY_NAME: dict[str, Callable[..., torch.Tensor]] = {
    "ce": ce_loss, "bce": bce_loss, "sampled-ce": sampled_ce_loss, "gbce": gbce_loss,
}


def sequence_loss(name: str, states: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                  **options) -> torch.Tensor:
    """Loss `name` over (batch, length, hidden) states and (batch, length) targets; padding (0) is ignored.

    `weight` is the (n_items + 1, hidden) item embedding table; options: n_negatives, gbce_t, generator.
    """
    if name not in _BY_NAME:
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    keep = targets > 0
    return _BY_NAME[name](states[keep], targets[keep], weight, **options)
