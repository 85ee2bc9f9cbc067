"""RMT, "Retentive Networks Meet Vision Transformers" (Fan et al., CVPR 2024), as a timm model.

Its attention, Manhattan Self-Attention (MaSA), adds a spatial decay to the attention logits: between
tokens at Manhattan distance |dy| + |dx| the logit gets (|dy| + |dx|) * log(gamma), gamma < 1 per head, so
each head forgets distant tokens at its own rate (RetNet's temporal decay carried to 2-D images). In the
early stages (large maps) attention is decomposed along the axes: first along each row with the 1-D decay
over |dx|, then along each column over |dy|, so its cost grows as HW(H + W) rather than (HW)^2. Queries and
keys are also rotated by position angles (as in RetNet / RoPE, over the row-major token index), a 5x5
depth-wise conv of the values (LePE) is added to the attention output, and every block starts with a
residual 3x3 depth-wise conv. Parameter names follow the authors' code (github.com/qhfan/RMT), whose
checkpoints load through `checkpoint_filter_fn`. Any input size works (tests use 32x32: a 1x1 last map).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
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

Decay = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # one (heads, HW, HW) mask, or (rows, columns)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(a, b) channel pairs -> (-b, a): the quarter turn of each 2-D pair that position rotation needs."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_pairs(x) * sin


class SpatialDecay(nn.Module):
    """Per-head decay rates log(gamma) and rotation angles of one stage; builds its masks for an H x W map.

    Both come from the config alone (non-persistent buffers), so checkpoints need not carry them."""

    def __init__(self, dim: int, num_heads: int, initial_value: float, heads_range: float) -> None:
        super().__init__()
        angle = 1.0 / (10000 ** torch.linspace(0, 1, dim // num_heads // 2))
        self.register_buffer("angle", angle.repeat_interleave(2), persistent=False)
        rates = initial_value + heads_range * torch.arange(num_heads, dtype=torch.float) / num_heads
        self.register_buffer("decay", torch.log(1 - 2 ** -rates), persistent=False)

    def rotation(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """sin and cos of (row-major token index) * angle, each (H, W, head_dim)."""
        index = torch.arange(height * width, device=self.angle.device, dtype=self.angle.dtype)
        phase = (index[:, None] * self.angle).view(height, width, -1)
        return phase.sin(), phase.cos()

    def axis_mask(self, length: int) -> torch.Tensor:
        """(heads, 1, L, L): |i - j| * log(gamma), the decay along one axis (the 1 broadcasts over the other)."""
        index = torch.arange(length, device=self.decay.device, dtype=self.decay.dtype)
        return ((index[:, None] - index[None, :]).abs() * self.decay[:, None, None]).unsqueeze(1)

    def manhattan_mask(self, height: int, width: int) -> torch.Tensor:
        """(heads, HW, HW): (|dy| + |dx|) * log(gamma) between every two tokens of the map."""
        rows = torch.arange(height, device=self.decay.device, dtype=self.decay.dtype)
        cols = torch.arange(width, device=self.decay.device, dtype=self.decay.dtype)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).view(-1, 2)
        distance = (grid[:, None] - grid[None, :]).abs().sum(-1)
        return distance * self.decay[:, None, None]

    def forward(self, height: int, width: int, decomposed: bool) -> tuple[torch.Tensor, torch.Tensor, Decay]:
        decay = ((self.axis_mask(height), self.axis_mask(width)) if decomposed
                 else self.manhattan_mask(height, width))
        return (*self.rotation(height, width), decay)


class DWConv2d(nn.Module):
    """A depth-wise conv applied to a channels-last (B, H, W, C) map, the layout RMT blocks work in."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ManhattanSelfAttention(nn.Module):
    """MaSA: rotated q / k, attention with the Manhattan decay added to its logits (whole map, or rows then
    columns when `decomposed`), plus LePE (5x5 depth-wise conv of v), then the output projection."""

    def __init__(self, dim: int, num_heads: int, decomposed: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.decomposed = decomposed
        self.scaling = (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.lepe = DWConv2d(dim, 5)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, heads, H, W, C / heads)."""
        B, H, W, _ = x.shape
        return x.view(B, H, W, self.num_heads, -1).permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, decay: Decay) -> torch.Tensor:
        v = self.v_proj(x)
        q, k = self.q_proj(x), self.k_proj(x) * self.scaling
        sin, cos = sin.to(q.dtype), cos.to(q.dtype)
        q, k = _rotate(self._heads(q), sin, cos), _rotate(self._heads(k), sin, cos)
        if self.decomposed:
            out = self._along_axes(q, k, self._heads(v), *decay)
        else:
            out = self._whole_map(q, k, self._heads(v), decay)
        return self.out_proj(out + self.lepe(v))

    @staticmethod
    def _whole_map(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, _, H, W, _ = q.shape
        out = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3),
                                             attn_mask=mask.to(q.dtype), scale=1.0)
        return out.transpose(1, 2).reshape(B, H, W, -1)

    @staticmethod
    def _along_axes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_h: torch.Tensor,
                    mask_w: torch.Tensor) -> torch.Tensor:
        B, _, H, W, _ = q.shape
        v = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_w.to(q.dtype), scale=1.0)  # along rows
        q, k, v = q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)  # (B, heads, W, H, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_h.to(q.dtype), scale=1.0)  # along columns
        return out.permute(0, 3, 2, 1, 4).reshape(B, H, W, -1)


class ConvFFN(nn.Module):
    """fc1, GELU, a residual 3x3 depth-wise conv, fc2 (channels-last): the MLP with local mixing."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = DWConv2d(hidden, 3)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        return self.fc2(x + self.dwconv(x))


class RetBlock(nn.Module):
    """Residual 3x3 depth-wise conv (position encoding), pre-norm MaSA, pre-norm conv FFN, with drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, decomposed: bool, drop_path: float) -> None:
        super().__init__()
        self.pos = DWConv2d(dim, 3)
        self.retention_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.retention = ManhattanSelfAttention(dim, num_heads, decomposed)
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, int(mlp_ratio * dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, decay: Decay) -> torch.Tensor:
        x = x + self.pos(x)
        x = x + self.drop_path(self.retention(self.retention_layer_norm(x), sin, cos, decay))
        return x + self.drop_path(self.ffn(self.final_layer_norm(x)))


class Downsample(nn.Module):
    """Stride-2 3x3 conv + BatchNorm between stages (the authors' PatchMerging), on NCHW maps."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class ConvStem(nn.Module):
    """Four 3x3 conv + BatchNorm layers (GELU between), strides 2, 1, 2, 1: the stride-4 patch embedding."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        half = dim // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class RMTStage(nn.Module):
    """Optional downsampling, then RetBlocks sharing the stage's rotation and decay masks (NCHW in and out)."""

    def __init__(self, in_dim: int, dim: int, num_heads: int, initial_value: float, heads_range: float,
                 mlp_ratio: float, decomposed: bool, drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.decomposed = decomposed
        self.downsample = Downsample(in_dim, dim) if downsample else nn.Identity()
        self.relpos = SpatialDecay(dim, num_heads, initial_value, heads_range)
        self.blocks = nn.ModuleList(RetBlock(dim, num_heads, mlp_ratio, decomposed, dp) for dp in drop_paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        sin, cos, decay = self.relpos(x.shape[1], x.shape[2], self.decomposed)
        for block in self.blocks:
            x = block(x, sin, cos, decay)
        return x.permute(0, 3, 1, 2)


class RMT(LinearHeadModel):
    """Conv stem, four RMT stages (strides 4, 8, 16, 32), then a 1x1 projection to `projection` channels,
    BatchNorm, Swish and average pooling before the classifier (the authors' head), timm-style API."""

    def __init__(self, embed_dims: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (2, 2, 8, 2),
                 num_heads: Sequence[int] = (4, 4, 8, 16), init_values: Sequence[float] = (2, 2, 2, 2),
                 heads_ranges: Sequence[float] = (4, 4, 6, 6), mlp_ratios: Sequence[float] = (3, 3, 3, 3),
                 decomposed: Sequence[bool] = (True, True, False, False), projection: int = 1024,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.global_pool = self.check_pool(global_pool)
        self.num_classes = num_classes
        self.num_features = embed_dims[-1]
        self.head_hidden_size = projection
        self.patch_embed = ConvStem(in_chans, embed_dims[0])
        dims_in = [embed_dims[0], *embed_dims[:-1]]
        self.stages = nn.Sequential(*(
            RMTStage(dims_in[i], embed_dims[i], num_heads[i], init_values[i], heads_ranges[i], mlp_ratios[i],
                     decomposed[i], rates, downsample=i > 0)
            for i, rates in enumerate(drop_path_rates(drop_path_rate, depths))))
        self.feature_info = stage_feature_info(embed_dims)
        self.proj = nn.Linear(self.num_features, projection)
        self.norm = nn.BatchNorm2d(projection)
        self.act = nn.SiLU()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(projection, num_classes)
        self.apply(init_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.patch_embed(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.act(self.norm(x)).mean(dim=(2, 3))


_AUTHOR_RELPOS = re.compile(r"layers\.\d+\.Relpos\.")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' checkpoint layout -> ours (our own layout passes through unchanged).

    Theirs: {"model": ..., "model_ema": ...} (the "model" entry is taken), `layers.{i}` stages whose
    downsampling ends stage i (ours starts stage i + 1), and `layers.{i}.Relpos` buffers (decay rates and
    angles, recomputed here from the config, so dropped). A classifier the model has no head for is dropped.
    """
    out = {stage_key(k, "layers"): v for k, v in unwrap_checkpoint(state_dict).items() if not _AUTHOR_RELPOS.match(k)}
    return drop_absent_classifier(out, model)


default_cfgs = generate_default_cfgs({"rmt_t.untrained": image_cfg("patch_embed.proj.0", "head")})

_VARIANTS = {
    "rmt_t": {"embed_dims": (64, 128, 256, 512), "depths": (2, 2, 8, 2), "num_heads": (4, 4, 8, 16),
              "init_values": (2, 2, 2, 2), "heads_ranges": (4, 4, 6, 6), "mlp_ratios": (3, 3, 3, 3),
              "decomposed": (True, True, False, False)},
}


def _create_rmt(variant: str, pretrained: bool = False, **kwargs) -> RMT:
    return build(RMT, variant, pretrained, {**_VARIANTS[variant], **kwargs}, checkpoint_filter_fn)


@register_model
def rmt_t(pretrained: bool = False, **kwargs) -> RMT:
    """RMT-T: 14.3M parameters, dims 64-128-256-512, depths 2-2-8-2, decomposed MaSA in stages 1-2."""
    return _create_rmt("rmt_t", pretrained, **kwargs)
