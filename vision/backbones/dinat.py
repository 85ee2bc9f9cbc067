"""DiNAT, the "Dilated Neighborhood Attention Transformer" (Hassani & Shi, 2022), as a timm model.

Neighborhood attention (NA) lets each token attend to its k x k nearest tokens, with a learned relative
position bias. Near the border the window is shifted to stay inside the map, so every query still sees k x k
real tokens (a zero-padded sliding window would see padding instead). Dilated NA takes the neighbours
from the query's own dilation group (every d-th row and column), so the same k x k window spans k*d pixels.
DiNAT alternates dilated and plain NA layers, with dilations 8, 4, 2, 1 over the four stages: at 224x224 a
dilated window spans its whole map (56, 28, 14, 7 tokens), local and global context in turn.

NA here is pure PyTorch (index gathers), exact at the borders; the `natten` package's kernels (versions
0.15-0.17, the ones with relative position bias) replace it on CUDA when importable and the map is at least
k*d on each side, as natten requires. Smaller maps (inputs under 224 px) are handled by the same rule as
the borders: a dilation group shorter than k is attended whole (the authors' natten 0.14 module zero-padded
such maps to k*d instead). Any input size works (tests use 32x32: a 1x1 last map). Parameter names follow
the authors' code (github.com/SHI-Labs/Neighborhood-Attention-Transformer, classification/nat.py, dinat.py),
whose checkpoints load through `checkpoint_filter_fn`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from timm.layers import DropPath, LayerNorm2d, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from vision.backbones._common import (
    LinearHeadModel,
    build,
    drop_absent_classifier,
    drop_path_rates,
    image_cfg,
    init_trunc_normal,
    linear_head,
    stage_feature_info,
    stage_key,
    unwrap_checkpoint,
)

NattenQK = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, int, int], torch.Tensor]


def _natten_kernels() -> tuple[NattenQK, Callable[..., torch.Tensor]] | None:
    """natten's 2-D QK-with-bias and AV kernels, when an installed natten has them (0.15-0.17), else None."""
    try:
        from natten import functional as natten_functional
    except (ImportError, OSError, RuntimeError):  # absent, or built for another torch / CUDA
        return None
    qk, av = getattr(natten_functional, "na2d_qk", None), getattr(natten_functional, "na2d_av", None)
    if av is None:
        return None
    with_bias = getattr(natten_functional, "na2d_qk_with_bias", None)
    if with_bias is not None:  # natten 0.15-0.16
        return with_bias, av
    if qk is not None and "rpb" in inspect.signature(qk).parameters:  # natten 0.17
        return (lambda q, k, rpb, kernel, dilation: qk(q, k, kernel_size=kernel, dilation=dilation, rpb=rpb)), av
    return None


_NATTEN = _natten_kernels()


def axis_windows(length: int, kernel: int, dilation: int,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each position's k neighbours along one axis: (indices, relative-bias indices, valid), each (L, k).

    Positions fall into `dilation` groups (position % dilation); a query's window is k consecutive members of
    its group centred on it, shifted inwards at the group's ends. A group shorter than k is taken whole (the
    slots past its end are marked invalid). The bias index of a neighbour is its group-step offset + k - 1.
    """
    pos = torch.arange(length, device=device)
    group, rank = pos % dilation, pos // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = (rank - kernel // 2).clamp(min=0).minimum((group_len - kernel).clamp(min=0))
    slot = start[:, None] + torch.arange(kernel, device=device)
    valid = slot < group_len[:, None]
    slot = slot.minimum(group_len[:, None] - 1)
    return group[:, None] + dilation * slot, slot - rank[:, None] + kernel - 1, valid


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int,
                           dilation: int = 1, rpb: torch.Tensor | None = None) -> torch.Tensor:
    """2-D (dilated) neighbourhood attention on (B, heads, H, W, D) tensors, q already scaled.

    rpb: (heads, 2k - 1, 2k - 1) relative position bias, or None. Returns (B, heads, H, W, D).
    """
    B, heads, H, W, D = q.shape
    if _NATTEN is not None and q.is_cuda and min(H, W) >= kernel_size * dilation:
        qk, av = _NATTEN
        attn = qk(q, k, rpb, kernel_size, dilation).softmax(dim=-1)
        return av(attn.to(v.dtype), v, kernel_size, dilation)
    rows, row_bias, row_valid = axis_windows(H, kernel_size, dilation, q.device)
    cols, col_bias, col_valid = axis_windows(W, kernel_size, dilation, q.device)
    window = kernel_size * kernel_size
    index = (rows[:, None, :, None] * W + cols[None, :, None, :]).reshape(H * W, window)
    valid = (row_valid[:, None, :, None] & col_valid[None, :, None, :]).reshape(H * W, window)
    if rpb is None:
        bias = q.new_zeros(heads, H * W, window)
    else:
        bias = rpb[:, row_bias[:, None, :, None], col_bias[None, :, None, :]].reshape(heads, H * W, window)
    bias = bias.masked_fill(~valid, float("-inf"))
    keys, values = k.flatten(2, 3)[:, :, index], v.flatten(2, 3)[:, :, index]  # (B, heads, HW, k*k, D)
    attn = (torch.einsum("bnqd,bnqkd->bnqk", q.flatten(2, 3), keys) + bias).softmax(dim=-1)
    return torch.einsum("bnqk,bnqkd->bnqd", attn.to(v.dtype), values).view(B, heads, H, W, D)


class NeighborhoodAttention(nn.Module):
    """qkv projection, k x k neighbourhood attention (dilated by `dilation`) with relative position bias,
    output projection; on channels-last (B, H, W, C) maps (natten's module, same parameter names)."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int = 1, qkv_bias: bool = True,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"neighbourhood attention needs an odd kernel size, got {kernel_size}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).view(B, H, W, 3, self.num_heads, -1).permute(3, 0, 4, 1, 2, 5)
        out = neighborhood_attention(q * self.scale, k, v, self.kernel_size, self.dilation, self.rpb)
        return self.proj_drop(self.proj(out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)))


class NATLayer(nn.Module):
    """Pre-norm neighbourhood attention and pre-norm MLP, each residual with drop path (channels-last)."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int, mlp_ratio: float,
                 drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention(dim, num_heads, kernel_size, dilation, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvTokenizer(nn.Module):
    """Two stride-2 3x3 convs and a channel LayerNorm: the overlapping stride-4 patch embedding."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1),
                                  nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1))
        self.norm = LayerNorm2d(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class ConvDownsampler(nn.Module):
    """Stride-2 3x3 conv (no bias) doubling channels, then a channel LayerNorm; between stages, on NCHW."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False)
        self.norm = LayerNorm2d(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class DiNATStage(nn.Module):
    """Optional downsampling, then NAT layers with the stage's per-layer dilations (NCHW in and out)."""

    def __init__(self, in_dim: int, dim: int, num_heads: int, kernel_size: int, dilations: Sequence[int],
                 mlp_ratio: float, drop: float, drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.downsample = ConvDownsampler(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(NATLayer(dim, num_heads, kernel_size, d, mlp_ratio, drop, dp)
                                      for d, dp in zip(dilations, drop_paths)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DiNAT(LinearHeadModel):
    """Conv tokenizer, four stages (strides 4, 8, 16, 32, channels doubling), LayerNorm, average pool and
    classifier, timm-style API. `dilations[i]` gives each layer of stage i its dilation (1: plain NA)."""

    def __init__(self, embed_dim: int = 64, depths: Sequence[int] = (3, 4, 6, 5),
                 num_heads: Sequence[int] = (2, 4, 8, 16), kernel_size: int = 7,
                 dilations: Sequence[Sequence[int]] | None = None, mlp_ratio: float = 3.0, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.global_pool = self.check_pool(global_pool)
        dilations = [[1] * d for d in depths] if dilations is None else dilations
        if [len(d) for d in dilations] != list(depths):
            raise ValueError(f"dilations {dilations} must give one dilation per layer of depths {depths}")
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = ConvTokenizer(in_chans, embed_dim)
        self.stages = nn.Sequential(*(
            DiNATStage(dims[max(i - 1, 0)], dims[i], num_heads[i], kernel_size, dilations[i], mlp_ratio,
                       drop_rate, rates, downsample=i > 0)
            for i, rates in enumerate(drop_path_rates(drop_path_rate, depths))))
        self.feature_info = stage_feature_info(dims)
        self.norm = LayerNorm2d(self.num_features, eps=1e-5)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(self.num_features, num_classes)
        self.apply(init_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.patch_embed(x)))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' checkpoint layout -> ours (our own layout passes through unchanged).

    Theirs: a bare state dict (a "model" / "state_dict" wrapper is unwrapped too) with `levels.{i}` stages
    whose downsampling ends stage i (ours starts stage i + 1); every other name is the same, natten's
    `attn.rpb` included. A classifier the model has no head for is dropped.
    """
    return drop_absent_classifier({stage_key(k, "levels"): v for k, v in unwrap_checkpoint(state_dict).items()}, model)


default_cfgs = generate_default_cfgs({"dinat_mini.untrained": image_cfg("patch_embed.proj.0", "head")})

_VARIANTS = {
    "dinat_mini": {"embed_dim": 64, "depths": (3, 4, 6, 5), "num_heads": (2, 4, 8, 16), "kernel_size": 7,
                   "mlp_ratio": 3.0, "dilations": ((1, 8, 1), (1, 4, 1, 4), (1, 2, 1, 2, 1, 2), (1, 1, 1, 1, 1))},
}


def _create_dinat(variant: str, pretrained: bool = False, **kwargs) -> DiNAT:
    return build(DiNAT, variant, pretrained, {**_VARIANTS[variant], **kwargs}, checkpoint_filter_fn)


@register_model
def dinat_mini(pretrained: bool = False, **kwargs) -> DiNAT:
    """DiNAT-Mini: 20M parameters, dims 64-128-256-512, depths 3-4-6-5, 7x7 windows, dilations 8/4/2/1."""
    return _create_dinat("dinat_mini", pretrained, **kwargs)
