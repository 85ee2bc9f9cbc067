"""Swin-T with VSA, varied-size window attention (Zhang et al., "VSA: Learning Varied-Size Window Attention in
Vision Transformers", ECCV 2022), as a timm model.

Queries still come from Swin's fixed 7x7 windows, but for every window and every head a small regressor
(average-pool over the window, LeakyReLU, linear) predicts a scale and an offset that stretch and move the
window; keys and values are then sampled from that target window with bilinear `grid_sample`, so the 49
keys of a head can cover a larger, shifted, overlapping area. The regressors start at zero (the target
window is the default window). A depth-wise 7x7 conditional position embedding (CPE) feeds the attention
branch because sampled keys no longer sit on the query grid; Swin's relative position bias is kept. Windows
overlap and move, so Swin's shifted windows are not used. Registered in timm
(`timm.create_model("swin_vsa_tiny")`); any input size works (maps are zero-padded to whole windows).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.swin_transformer import PatchMerging, get_relative_position_index
from torch import nn

from vision.backbones._common import (
    HeadModel,
    build,
    drop_absent_classifier,
    drop_path_rates,
    image_cfg,
    init_trunc_normal,
    stage_feature_info,
    stage_key,
    unwrap_checkpoint,
)


def _axis_grid(size: int, window: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Window centres (size // window,) and in-window offsets (window,) along one axis, in grid_sample's
    [-1, 1] coordinates (align_corners=True)."""
    pos = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype) if size > 1 else \
        torch.zeros(1, device=device, dtype=dtype)
    pos = pos.view(size // window, window)
    centres = pos.mean(dim=1)
    return centres, pos[0] - centres[0]


class VSAWindowAttention(nn.Module):
    """Window attention whose keys / values come from a regressed (scaled, shifted) window per head."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.window_size, self.attn_drop = num_heads, window_size, attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sampling_offsets = nn.Linear(dim, num_heads * 2)
        self.sampling_scales = nn.Linear(dim, num_heads * 2)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", get_relative_position_index(window_size, window_size),
                             persistent=False)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def reset_window_regressors(self) -> None:
        """Zero the scale / offset regressors, so every target window starts as its default window."""
        for layer in (self.sampling_offsets, self.sampling_scales):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def sampling_grid(self, offsets: torch.Tensor, scales: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, nh, nw, heads, 2) offsets / scales (x then y) -> a (B * heads, height, width, 2) sampling grid."""
        b, nh, nw, heads, _ = offsets.shape
        ws = self.window_size
        cx, rx = _axis_grid(width, ws, offsets.device, offsets.dtype)
        cy, ry = _axis_grid(height, ws, offsets.device, offsets.dtype)
        off = offsets.permute(0, 3, 4, 1, 2)  # B, heads, 2, nh, nw
        stretch = 1.0 + scales.permute(0, 3, 4, 1, 2)
        # axes of the grid: B, heads, window row, row in window, window column, column in window
        gx = (cx.view(1, 1, 1, 1, nw, 1) + rx.view(1, 1, 1, 1, 1, ws) * stretch[:, :, 0, :, None, :, None]
              + off[:, :, 0, :, None, :, None] / nw)
        gy = (cy.view(1, 1, nh, 1, 1, 1) + ry.view(1, 1, 1, ws, 1, 1) * stretch[:, :, 1, :, None, :, None]
              + off[:, :, 1, :, None, :, None] / nh)
        gx, gy = torch.broadcast_tensors(gx, gy)
        return torch.stack((gx, gy), dim=-1).reshape(b * heads, height, width, 2)

    def _windows(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """(B * heads, head_dim, H, W) maps -> (B * windows, heads, window area, head_dim)."""
        ws, heads = self.window_size, self.num_heads
        _, d, h, w = x.shape
        x = x.view(b, heads, d, h // ws, ws, w // ws, ws).permute(0, 3, 5, 1, 4, 6, 2)
        return x.reshape(-1, heads, ws * ws, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        ws, heads, d = self.window_size, self.num_heads, c // self.num_heads
        pad_h, pad_w = -h % ws, -w % ws
        hp, wp = h + pad_h, w + pad_w
        nh, nw = hp // ws, wp // ws
        pooled = F.avg_pool2d(F.pad(x, (0, 0, 0, pad_w, 0, pad_h)).permute(0, 3, 1, 2), ws).permute(0, 2, 3, 1)
        pooled = F.leaky_relu(pooled)
        offsets = self.sampling_offsets(pooled).view(b, nh, nw, heads, 2)
        scales = self.sampling_scales(pooled).view(b, nh, nw, heads, 2)
        grid = self.sampling_grid(offsets.float(), scales.float(), hp, wp)  # float32: bf16 coordinates blur

        qkv = F.pad(self.qkv(x), (0, 0, 0, pad_w, 0, pad_h)).view(b, hp, wp, 3, heads, d)
        q, k, v = qkv.permute(3, 0, 4, 5, 1, 2).reshape(3, b * heads, d, hp, wp).unbind(0)
        # sampled in float32 (also under autocast), then back to the queries' dtype
        k = F.grid_sample(k.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True).to(q.dtype)
        v = F.grid_sample(v.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True).to(q.dtype)

        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(ws * ws, ws * ws, heads).permute(2, 0, 1).unsqueeze(0)
        out = F.scaled_dot_product_attention(self._windows(q, b), self._windows(k, b), self._windows(v, b),
                                             attn_mask=bias.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.0)
        out = out.view(b, nh, nw, heads, ws, ws, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, c)
        return self.proj_drop(self.proj(out[:, :h, :w]))


class VSABlock(nn.Module):
    """CPE (depth-wise conv, feeding attention only), LayerNorm + VSA, LayerNorm + MLP, on NHWC maps."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_path: float) -> None:
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, window_size, padding=window_size // 2, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = VSAWindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn_in = x + self.pos(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(attn_in)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VSAStage(nn.Module):
    """Swin patch merging (all stages but the first), then VSA blocks; NCHW in and out."""

    def __init__(self, in_dim: int, dim: int, num_heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 downsample: bool, drop: float, attn_drop: float, drop_paths: Sequence[float]) -> None:
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(
            VSABlock(dim, num_heads, window_size, mlp_ratio, qkv_bias, drop, attn_drop, dp)
            for dp in drop_paths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping strided conv + channel LayerNorm (Swin's 4x4 patch embedding); pads odd sizes."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        return self.norm(self.proj(x))


class SwinVSA(HeadModel):
    """Swin Transformer with VSA in every block (four stages, strides 4, 8, 16, 32), timm-style API."""

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if window_size % 2 == 0:
            raise ValueError(f"VSA needs an odd window size (its CPE conv is window-sized), got {window_size}")
        self.num_classes = num_classes
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.layers = nn.Sequential(*(
            VSAStage(dims[max(i - 1, 0)], dims[i], num_heads[i], window_size, mlp_ratio, qkv_bias, i > 0,
                     drop_rate, attn_drop_rate, rates)
            for i, rates in enumerate(drop_path_rates(drop_path_rate, depths))))
        self.feature_info = stage_feature_info(dims, "layers", patch_size)
        self.norm = LayerNorm2d(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(init_trunc_normal)
        for module in self.modules():
            if isinstance(module, VSAWindowAttention):
                module.reset_window_regressors()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(self.patch_embed(x)))


_SQUEEZED = ("attn.qkv.weight", "attn.proj.weight", "sampling_offsets.weight", "sampling_scales.weight")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SwinVSA) -> dict[str, torch.Tensor]:
    """Map a checkpoint in the authors' layout (official Swin names, patch merging at the end of each stage,
    `head.*`, VSA's 1x1-conv qkv / proj / regressors with the conv at `sampling_*.2`, CPE at `pos`) onto this
    model; our own layout passes through. Non-persistent buffers are dropped, and the classifier too when
    the model has none."""
    state_dict = unwrap_checkpoint(state_dict)
    merge_at_end = "layers.0.downsample.reduction.weight" in state_dict
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        key = re.sub(r"\.sampling_(offsets|scales)\.2\.", r".sampling_\1.", key)
        if merge_at_end:
            key = stage_key(key, "layers", "layers")
        if key.startswith("head.") and not key.startswith("head.fc."):
            key = "head.fc." + key[len("head."):]
        if key.endswith(_SQUEEZED) and value.ndim == 4 and value.shape[-2:] == (1, 1):
            value = value.flatten(1)
        out[key] = value
    return drop_absent_classifier(out, model)


default_cfgs = generate_default_cfgs({"swin_vsa_tiny.untrained": image_cfg("patch_embed.proj", crop_pct=0.9)})

_VARIANTS = {
    "swin_vsa_tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "window_size": 7},
}


def _create_swin_vsa(variant: str, pretrained: bool = False, **kwargs) -> SwinVSA:
    return build(SwinVSA, variant, pretrained, {**_VARIANTS[variant], **kwargs}, checkpoint_filter_fn)


@register_model
def swin_vsa_tiny(pretrained: bool = False, **kwargs) -> SwinVSA:
    """Swin-T + VSA: 28.8M parameters, dim 96, depths 2-2-6-2, heads 3-6-12-24, 7x7 windows."""
    return _create_swin_vsa("swin_vsa_tiny", pretrained, **kwargs)
