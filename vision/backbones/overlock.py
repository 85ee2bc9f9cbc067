"""OverLoCK (Lou & Yu, "OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic
Kernels", CVPR 2025) as a timm model.

A branched ConvNet with top-down attention: a Base-Net (stages 1-3 of large-kernel, re-parameterisable conv
blocks) encodes low/mid-level features; a light Overview-Net (stage 4, on the Base-Net's stride-16 output)
makes a coarse global context; a Focus-Net of dynamic-conv blocks (strides 16 and 32) then re-reads the
stride-16 features guided by that context at every block. Its ContMix convolution builds, for every pixel and
head, a small and a large kernel from the pixel's affinity to 7x7 pooled regions of the context, so a local
kernel carries long-range information; a gate and a large-kernel static branch complete the mixer.

Pure PyTorch: the neighbourhood aggregation (natten's `na2d_av` in the authors' code) is a gather of each
pixel's window and a batched matmul; when `natten` is importable it runs on CUDA tensors instead. Any input
size works: maps smaller than a dynamic kernel are upsampled for the aggregation and pooled back, as the
authors do (32x32 is the smallest size tested). Registered: `overlock_xt` (as trained) and
`overlock_xt_reparam` (large kernels merged); `checkpoint_filter_fn` loads either kind of the authors'
checkpoints into either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, SelectAdaptivePool2d
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from vision.backbones._common import (
    HeadModel,
    build,
    drop_absent_classifier,
    image_cfg,
    init_trunc_normal_conv,
    unwrap_checkpoint,
)

try:  # optional CUDA kernel for the neighbourhood aggregation (natten <= 0.17 functional API)
    from natten.functional import na2d_av as _natten_av
except (ImportError, OSError, RuntimeError):
    _natten_av = None

# Dilated branches of the re-parameterisable large-kernel conv (UniRepLKNet's): kernel -> (sizes, dilations)
_DILATED_BRANCHES = {
    19: ((5, 7, 9, 9, 3, 3, 3), (1, 1, 1, 2, 4, 5, 7)),
    17: ((5, 7, 9, 3, 3, 3), (1, 1, 2, 4, 5, 7)),
    15: ((5, 7, 7, 3, 3, 3), (1, 1, 2, 3, 5, 7)),
    13: ((5, 7, 7, 3, 3, 3), (1, 1, 2, 3, 4, 5)),
    11: ((5, 7, 5, 3, 3, 3), (1, 1, 2, 3, 4, 5)),
    9: ((5, 7, 5, 3, 3), (1, 1, 2, 3, 4)),
    7: ((5, 3, 3, 3), (1, 1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


# ---- neighbourhood aggregation (the dynamic convolution) ---------------------------------------
def _window_starts(length: int, kernel: int, device: torch.device) -> torch.Tensor:
    """First row (or column) of each position's kxk window: centred, shifted inside the map at the borders."""
    return (torch.arange(length, device=device) - kernel // 2).clamp(0, length - kernel)


def _bias_index(length: int, kernel: int, device: torch.device) -> torch.Tensor:
    """(length, kernel) index into a (2k-1) relative-position table: key position - query position + k - 1."""
    positions = torch.arange(length, device=device)
    offsets = _window_starts(length, kernel, device) - positions + kernel - 1
    return offsets[:, None] + torch.arange(kernel, device=device)[None, :]


def relative_position_bias(table: torch.Tensor, height: int, width: int, kernel: int) -> torch.Tensor:
    """(G, 2k-1, 2k-1) table -> (G, H, W, k*k) bias for each position's window (natten's convention)."""
    rows, cols = _bias_index(height, kernel, table.device), _bias_index(width, kernel, table.device)
    bias = table[:, rows[:, None, :, None], cols[None, :, None, :]]  # (G, H, W, k, k)
    return bias.reshape(table.shape[0], height, width, kernel * kernel)


def neighborhood_aggregate(attn: torch.Tensor, value: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-pixel dynamic kxk convolution: attn (B, G, H, W, k*k) weighs value (B, G, H, W, C) over each window.

    Windows never leave the map (they shift inward at the borders), so H and W must be at least k.
    """
    if _natten_av is not None and value.is_cuda:
        return _natten_av(attn.to(value.dtype).contiguous(), value.contiguous(), kernel_size=kernel)
    B, G, H, W, C = value.shape
    steps = torch.arange(kernel, device=value.device)
    rows = _window_starts(H, kernel, value.device)[:, None] + steps  # (H, k)
    cols = _window_starts(W, kernel, value.device)[:, None] + steps  # (W, k)
    windows = value[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (B, G, H, W, k, k, C)
    return (attn.unsqueeze(-2) @ windows.reshape(B, G, H, W, kernel * kernel, C)).squeeze(-2)


# ---- small layers ------------------------------------------------------------------------------
class LayerScale(nn.Module):
    """Per-channel scale and shift (the authors' layout: weight (C, 1, 1, 1), bias (C,))."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt V2): channels re-weighted by their relative spatial L2 norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
        return (self.gamma * (norms / (norms.mean(dim=1, keepdim=True) + 1e-6)) + 1) * x + self.beta


class SEModule(nn.Module):
    """Squeeze-and-excitation: a pooled 2-layer bottleneck (GELU, sigmoid) rescales the channels."""

    def __init__(self, dim: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(16, dim // reduction)
        self.proj = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, hidden, 1), nn.GELU(),
                                  nn.Conv2d(hidden, dim, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.proj(x)


class ResDWConv(nn.Conv2d):
    """A depth-wise conv with a residual connection around it (cheap positional / local mixing)."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class DilatedReparamBlock(nn.Module):
    """UniRepLKNet's large depth-wise kernel: a kxk conv plus parallel small dilated convs, each with BatchNorm.

    The branches merge into one biased kxk conv for inference (`reparameterize`, or `deploy=True` to build it
    merged, as the authors' "_reparam" models are); `checkpoint_filter_fn` converts checkpoints either way.
    """

    def __init__(self, dim: int, kernel_size: int, deploy: bool = False) -> None:
        super().__init__()
        if kernel_size not in _DILATED_BRANCHES:
            raise ValueError(f"no dilated branches defined for kernel size {kernel_size}")
        self.kernel_size = kernel_size
        self.lk_origin = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=deploy)
        self.branches: list[tuple[int, int]] = [] if deploy else list(zip(*_DILATED_BRANCHES[kernel_size]))
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(dim)
        for k, r in self.branches:
            conv = nn.Conv2d(dim, dim, k, padding=(r * (k - 1) + 1) // 2, dilation=r, groups=dim, bias=False)
            setattr(self, f"dil_conv_k{k}_{r}", conv)
            setattr(self, f"dil_bn_k{k}_{r}", nn.BatchNorm2d(dim))

    @property
    def merged(self) -> bool:
        return self.lk_origin.bias is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + getattr(self, f"dil_bn_k{k}_{r}")(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorms (their running statistics) and dilated branches into one biased kxk conv, in place."""
        if self.merged:
            return
        weight, bias = merge_dilated_branches(self.state_dict(), self.kernel_size, self.origin_bn.eps)
        conv = nn.Conv2d(weight.shape[0], weight.shape[0], self.kernel_size, padding=self.kernel_size // 2,
                         groups=weight.shape[0], bias=True).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.lk_origin = conv
        del self.origin_bn
        for k, r in self.branches:
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")
        self.branches = []

    def unmerged_state(self, prefix: str, weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tensors for this (unmerged) block that compute a merged conv: identity BatchNorms, zero branches."""
        dim, eps = weight.shape[0], self.origin_bn.eps
        state = {f"{prefix}lk_origin.weight": weight, **_identity_bn(dim, eps, f"{prefix}origin_bn.", bias)}
        for k, r in self.branches:
            state[f"{prefix}dil_conv_k{k}_{r}.weight"] = weight.new_zeros(dim, 1, k, k)
            state.update(_identity_bn(dim, eps, f"{prefix}dil_bn_k{k}_{r}."))
        return state


def _fold_bn(weight: torch.Tensor, bn: dict[str, torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """conv weight + eval-mode BatchNorm tensors -> the equivalent conv weight and bias."""
    scale = bn["weight"] / (bn["running_var"] + eps).sqrt()
    return weight * scale.view(-1, 1, 1, 1), bn["bias"] - bn["running_mean"] * scale


def merge_dilated_branches(state: dict[str, torch.Tensor], kernel_size: int,
                           eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """A `DilatedReparamBlock`'s tensors (its own key names) -> the weight and bias of the one equivalent conv."""
    def bn(name: str) -> dict[str, torch.Tensor]:
        return {part: state[f"{name}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")}

    weight, bias = _fold_bn(state["lk_origin.weight"], bn("origin_bn"), eps)
    for k, r in zip(*_DILATED_BRANCHES[kernel_size]):
        branch, branch_bias = _fold_bn(state[f"dil_conv_k{k}_{r}.weight"], bn(f"dil_bn_k{k}_{r}"), eps)
        span = r * (k - 1) + 1
        dilated = branch.new_zeros(branch.shape[0], 1, span, span)
        dilated[:, :, ::r, ::r] = branch  # a dilated kernel is a sparse dense one
        weight = weight + F.pad(dilated, [(kernel_size - span) // 2] * 4)
        bias = bias + branch_bias
    return weight, bias


def _identity_bn(dim: int, eps: float, prefix: str, bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Eval-mode BatchNorm tensors that compute x + bias (running_var = 1 - eps, so the divisor is 1)."""
    return {f"{prefix}weight": torch.ones(dim), f"{prefix}bias": torch.zeros(dim) if bias is None else bias,
            f"{prefix}running_mean": torch.zeros(dim), f"{prefix}running_var": torch.full((dim,), 1.0 - eps),
            f"{prefix}num_batches_tracked": torch.tensor(0)}


def _conv_bn(in_dim: int, out_dim: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_dim)]


def stem(in_chans: int, dim: int) -> nn.Sequential:
    """Four 3x3 conv-BN layers (GELU between), two of them strided: stride 4."""
    half = dim // 2
    return nn.Sequential(*_conv_bn(in_chans, half, 2), nn.GELU(), *_conv_bn(half, half), nn.GELU(),
                         *_conv_bn(half, dim, 2), nn.GELU(), *_conv_bn(dim, dim))


def downsample(in_dim: int, out_dim: int) -> nn.Sequential:
    """A strided 3x3 conv + BatchNorm between stages."""
    return nn.Sequential(*_conv_bn(in_dim, out_dim, 2))


class CTXDownsample(nn.Module):
    """Halves both Focus-Net streams between its two stages: the features (to the next width) and the context."""

    def __init__(self, dim: int, out_dim: int, ctx_dim: int) -> None:
        super().__init__()
        self.x_proj = nn.Sequential(*_conv_bn(dim, out_dim, 2))
        self.h_proj = nn.Sequential(*_conv_bn(ctx_dim, ctx_dim, 2))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_proj(x), self.h_proj(ctx)


# ---- blocks ------------------------------------------------------------------------------------
class RepConvBlock(nn.Module):
    """Base-Net / Overview-Net block: residual dw-conv, then LN, large dilated-reparam kernel, SE and a GRN MLP."""

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: float, ls_init_value: float | None,
                 drop_path: float, deploy: bool = False) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.dwconv = ResDWConv(dim)
        self.proj = nn.Sequential(
            LayerNorm2d(dim, eps=1e-6), DilatedReparamBlock(dim, kernel_size, deploy), nn.BatchNorm2d(dim),
            SEModule(dim), nn.Conv2d(dim, hidden, 1), nn.GELU(), ResDWConv(hidden), GRN(hidden),
            nn.Conv2d(hidden, dim, 1))
        self.ls = LayerScale(dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x)
        return self.ls(x) + self.drop_path(self.proj(x))


class DynamicConvBlock(nn.Module):
    """Focus-Net block: features and top-down context are fused, mixed by ContMix, then by a GRN MLP.

    ContMix: a small (smk_size) and a large (kernel_size) dynamic kernel per pixel and head, each a softmax over
    its window of (affinity of the pixel's query to 7x7 pooled context regions, projected) + relative position
    bias; half the channels go through each. A static large-kernel branch (lepe), SE and a SiLU gate follow.
    Returns the fused map (features then context channels) so the next block can split it again.
    """

    def __init__(self, dim: int, ctx_dim: int, kernel_size: int, smk_size: int, num_heads: int, mlp_ratio: float,
                 ls_init_value: float | None, drop_path: float, is_first: bool, deploy: bool = False) -> None:
        super().__init__()
        out_dim, hidden = dim + ctx_dim, int(dim * mlp_ratio)
        self.kernel_size, self.smk_size, self.is_first = kernel_size, smk_size, is_first
        self.num_heads = 2 * num_heads  # half the heads use the small kernel, half the large one
        self.scale = (dim // self.num_heads) ** -0.5
        if not is_first:
            self.x_scale = LayerScale(ctx_dim, 1.0)
            self.h_scale = LayerScale(ctx_dim, 1.0)
        self.dwconv1 = ResDWConv(out_dim)
        self.norm1 = LayerNorm2d(out_dim, eps=1e-6)
        self.fusion = nn.Sequential(nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim), nn.BatchNorm2d(out_dim),
                                    nn.GELU(), nn.Conv2d(out_dim, dim, 1), GRN(dim))
        self.weight_query = nn.Sequential(nn.Conv2d(dim, dim // 2, 1, bias=False), nn.BatchNorm2d(dim // 2))
        self.weight_key = nn.Sequential(nn.AdaptiveAvgPool2d(7), nn.Conv2d(ctx_dim, dim // 2, 1, bias=False),
                                        nn.BatchNorm2d(dim // 2))
        self.weight_proj = nn.Conv2d(49, kernel_size ** 2 + smk_size ** 2, 1)
        self.dyconv_proj = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.lepe = nn.Sequential(DilatedReparamBlock(dim, kernel_size, deploy), nn.BatchNorm2d(dim))
        self.se_layer = SEModule(dim)
        self.gate = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
        self.proj = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, out_dim, 1))
        self.dwconv2 = ResDWConv(out_dim)
        self.norm2 = LayerNorm2d(out_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Conv2d(out_dim, hidden, 1), nn.GELU(), ResDWConv(hidden), GRN(hidden),
                                 nn.Conv2d(hidden, out_dim, 1))
        self.ls1 = LayerScale(out_dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ls2 = LayerScale(out_dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.rpb1 = nn.Parameter(torch.zeros(self.num_heads, 2 * smk_size - 1, 2 * smk_size - 1))
        self.rpb2 = nn.Parameter(torch.zeros(self.num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))

    def _upsampled_size(self, height: int, width: int) -> tuple[int, int]:
        """The map size whose short side equals the large kernel (the authors' rounding)."""
        k = self.kernel_size
        return (k, int(k / height * width)) if height < width else (int(k / width * height), k)

    def _kernels(self, query: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmaxed small and large dynamic kernels, (B, G, H, W, k*k) each."""
        B, _, H, W = query.shape
        q = (self.weight_query(query) * self.scale).reshape(B, self.num_heads, -1, H * W)
        k = self.weight_key(ctx).reshape(B, self.num_heads, -1, 49)
        affinity = torch.einsum("bgcn,bgcl->blgn", q, k)  # the 49 context regions act as channels
        logits = self.weight_proj(affinity).permute(0, 2, 3, 1).reshape(B, self.num_heads, H, W, -1)
        small, large = logits.split([self.smk_size ** 2, self.kernel_size ** 2], dim=-1)
        small = small + relative_position_bias(self.rpb1, H, W, self.smk_size)
        large = large + relative_position_bias(self.rpb2, H, W, self.kernel_size)
        return small.softmax(dim=-1), large.softmax(dim=-1)

    def _contmix(self, x: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """The dynamic convolution of x (B, C, H, W), its kernels made from the normed fused map."""
        size = x.shape[2:]
        if min(size) < self.kernel_size:
            new_size = self._upsampled_size(*size)
            x = F.interpolate(x, size=new_size, mode="bilinear", align_corners=False)
            fused = F.interpolate(fused, size=new_size, mode="bilinear", align_corners=False)
        B, C, H, W = x.shape
        query, ctx = fused.split([C, fused.shape[1] - C], dim=1)
        small, large = self._kernels(query, ctx)
        values = x.reshape(B, 2, self.num_heads, -1, H, W).permute(1, 0, 2, 4, 5, 3)  # (2, B, G, H, W, c)
        out = torch.cat([neighborhood_aggregate(small, values[0], self.smk_size),
                         neighborhood_aggregate(large, values[1], self.kernel_size)], dim=1)
        out = out.permute(0, 1, 4, 2, 3).reshape(B, C, H, W)
        return F.adaptive_avg_pool2d(out, size) if out.shape[2:] != size else out

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_ref: torch.Tensor) -> torch.Tensor:
        if not self.is_first:
            ctx = self.x_scale(ctx) + self.h_scale(ctx_ref)
        identity = self.dwconv1(torch.cat([x, ctx], dim=1))
        fused = self.norm1(identity)
        x = self.fusion(fused)
        gate, lepe = self.gate(x), self.lepe(x)
        x = self.se_layer(self.dyconv_proj(self._contmix(x, fused)) + lepe)
        x = self.ls1(identity) + self.drop_path(self.proj(gate * x))
        x = self.dwconv2(x)
        return self.ls2(x) + self.drop_path(self.mlp(self.norm2(x)))


class OverLoCKHead(nn.Module):
    """1x1 conv to `hidden` channels, BatchNorm, SiLU, global pool, classifier; pre-logits are `hidden`-d."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, global_pool: str = "avg",
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, hidden, 1, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.SiLU()
        self.hidden = hidden
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, global_pool)

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        width = self.hidden * self.global_pool.feat_mult()
        self.fc = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(self.act(self.norm(self.proj(x)))))
        return x if pre_logits else self.fc(x)


# ---- the network -------------------------------------------------------------------------------
class OverLoCK(HeadModel):
    """Base-Net (stages 1-3), Overview-Net (stage 4) and Focus-Net (dynamic blocks at strides 16 and 32), timm API.

    `forward_features` gives the Focus-Net's stride-32 map (dim[3] + dim[3] // 4 channels); the pyramid
    (`features_only`) is stages 1-2 of the Base-Net and the two Focus-Net stages (features + context channels).
    """

    def __init__(self, depth: Sequence[int] = (2, 2, 3, 2), sub_depth: Sequence[int] = (6, 2),
                 embed_dim: Sequence[int] = (56, 112, 256, 336), kernel_size: Sequence[int] = (17, 15, 13, 7),
                 mlp_ratio: Sequence[float] = (4, 4, 4, 4), sub_mlp_ratio: Sequence[float] = (3, 3),
                 sub_num_heads: Sequence[int] = (4, 6), ls_init_value: Sequence[float | None] = (None, None, 1, 1),
                 smk_size: int = 5, projection: int = 1024, deploy: bool = False, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        ctx_dim = embed_dim[-1] // 4
        self.num_classes = num_classes
        self.num_features = embed_dim[-1] + ctx_dim
        self.head_hidden_size = projection
        self.grad_checkpointing = False
        rates = iter(torch.linspace(0, drop_path_rate, sum(depth) + sum(sub_depth)).tolist())

        self.patch_embed1 = stem(in_chans, embed_dim[0])
        self.patch_embed2 = downsample(embed_dim[0], embed_dim[1])
        self.patch_embed3 = downsample(embed_dim[1], embed_dim[2])
        self.patch_embed4 = downsample(embed_dim[2], embed_dim[3])
        self.high_level_proj = nn.Conv2d(embed_dim[-1], ctx_dim, 1)
        self.patch_embedx = CTXDownsample(embed_dim[2], embed_dim[3], ctx_dim)
        for i in range(4):
            blocks = [RepConvBlock(embed_dim[i], kernel_size[i], mlp_ratio[i], ls_init_value[i], next(rates), deploy)
                      for _ in range(depth[i])]
            setattr(self, f"blocks{i + 1}", nn.Sequential(*blocks))
        for j, stage in enumerate((2, 3)):
            self.add_module(f"sub_blocks{stage + 1}", nn.ModuleList(
                DynamicConvBlock(embed_dim[stage], ctx_dim, kernel_size[stage], smk_size, sub_num_heads[j],
                                 sub_mlp_ratio[j], ls_init_value[stage], next(rates), stage == 2 and b == 0, deploy)
                for b in range(sub_depth[j])))
        self.head = OverLoCKHead(self.num_features, projection, num_classes, global_pool, drop_rate)
        channels = (embed_dim[0], embed_dim[1], embed_dim[2] + ctx_dim, embed_dim[3] + ctx_dim)
        modules = ("blocks1", "blocks2", "sub_blocks3", "sub_blocks4")
        self.feature_info = [{"num_chs": c, "reduction": 4 * 2 ** i, "module": m}
                             for i, (c, m) in enumerate(zip(channels, modules))]
        self.apply(init_trunc_normal_conv)

    def reparameterize(self) -> OverLoCK:
        """Merge every large-kernel block's branches into one conv (inference only: uses the running statistics)."""
        for module in self.modules():
            if isinstance(module, DilatedReparamBlock):
                module.reparameterize()
        return self

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _focus_stage(self, blocks: nn.ModuleList, x: torch.Tensor, ctx: torch.Tensor,
                     ctx_ref: torch.Tensor) -> torch.Tensor:
        """Dynamic blocks, each on the features and context split off the previous block's fused output."""
        fused = x
        for block in blocks:
            fused = self._run(block, x, ctx, ctx_ref)
            x, ctx = fused.split([x.shape[1], ctx.shape[1]], dim=1)
        return fused

    def _stages(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        """The pyramid's maps up to index `last` (the last is `forward_features`' output)."""
        outs = [x := self._run(self.blocks1, self.patch_embed1(x))]
        if last > 0:
            outs.append(x := self._run(self.blocks2, self.patch_embed2(x)))
        if last > 1:
            x = self._run(self.blocks3, self.patch_embed3(x))
            overview = self.high_level_proj(self._run(self.blocks4, self.patch_embed4(x)))
            overview_up = F.interpolate(overview, size=x.shape[2:], mode="bilinear", align_corners=False)
            outs.append(fused := self._focus_stage(self.sub_blocks3, x, overview_up, overview_up))
        if last > 2:
            x, ctx = self.patch_embedx(*fused.split([x.shape[1], overview.shape[1]], dim=1))
            outs.append(self._focus_stage(self.sub_blocks4, x, ctx, overview))
        return outs

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-feature API (NCHW only; the pyramid maps carry no extra norm)."""
        if output_fmt != "NCHW":
            raise ValueError("OverLoCK gives NCHW features only")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        outs = self._stages(x, max_index if stop_early or intermediates_only else 3)
        intermediates = [outs[i] for i in take]
        return intermediates if intermediates_only else (outs[-1], intermediates)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the classifier when only features are wanted (every stage is kept: later ones need the earlier)."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._stages(x)[-1]


# ---- the authors' checkpoints ------------------------------------------------------------------
_HEAD_KEYS = {"head.0.": "head.proj.", "head.1.": "head.norm.", "head.4.": "head.fc."}


def _rename(key: str) -> str:
    for old, new in _HEAD_KEYS.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def checkpoint_filter_fn(state_dict: dict[str, Any], model: OverLoCK) -> dict[str, torch.Tensor]:
    """The authors' layout (models/overlock.py of LMMMEng/OverLoCK, plain or "_reparam") -> this model's.

    Their Sequential head becomes head.proj / head.norm / head.fc (the 1x1-conv classifier a Linear); the
    auxiliary training head on the Overview-Net (aux_head) is dropped; large-kernel blocks are merged
    (plain checkpoint, merged model) or expanded into identity BatchNorms and zero branches (the reverse).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in unwrap_checkpoint(state_dict).items():
        key = _rename(key)
        if not key.startswith("aux_head."):
            out[key] = value.flatten(1) if key == "head.fc.weight" and value.ndim == 4 else value
    out = drop_absent_classifier(out, model)
    for name, module in model.named_modules():
        if isinstance(module, DilatedReparamBlock):
            _convert_large_kernel(out, f"{name}.", module)
    return out


def _convert_large_kernel(state: dict[str, torch.Tensor], prefix: str, module: DilatedReparamBlock) -> None:
    """Bring one large-kernel block's tensors in `state` to the module's form (merged or not), in place."""
    merged_bias = state.get(f"{prefix}lk_origin.bias")
    if module.merged and merged_bias is None and f"{prefix}origin_bn.weight" in state:
        local = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        weight, bias = merge_dilated_branches(local, module.kernel_size, 1e-5)
        state.update({f"{prefix}lk_origin.weight": weight, f"{prefix}lk_origin.bias": bias})
    elif not module.merged and merged_bias is not None:
        del state[f"{prefix}lk_origin.bias"]
        state.update(module.unmerged_state(prefix, state[f"{prefix}lk_origin.weight"], merged_bias))


default_cfgs = generate_default_cfgs({f"overlock_xt{tag}.untrained": image_cfg("patch_embed1.0", crop_pct=0.925)
                                      for tag in ("", "_reparam")})

_VARIANTS = {
    "overlock_xt": {"depth": (2, 2, 3, 2), "sub_depth": (6, 2), "embed_dim": (56, 112, 256, 336),
                    "kernel_size": (17, 15, 13, 7), "sub_num_heads": (4, 6), "sub_mlp_ratio": (3, 3)},
}


def _create_overlock(variant: str, pretrained: bool = False, **kwargs) -> OverLoCK:
    base = variant.removesuffix("_reparam")
    args = {**_VARIANTS[base], "deploy": variant != base, **kwargs}
    return build(OverLoCK, variant, pretrained, args, checkpoint_filter_fn,
                 {"out_indices": (0, 1, 2, 3), "feature_cls": "getter"})


@register_model
def overlock_xt(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-XT as trained: 16.97M parameters (dims 56-112-256-336, Focus-Net depths 6-2)."""
    return _create_overlock("overlock_xt", pretrained, **kwargs)


@register_model
def overlock_xt_reparam(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-XT with merged large kernels (inference form; the paper's 16M counts this one): 16.45M."""
    return _create_overlock("overlock_xt_reparam", pretrained, **kwargs)
