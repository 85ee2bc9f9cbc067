"""VAN, the Visual Attention Network (Guo et al., 2022), as a timm model.

Its attention is large-kernel attention (LKA): a depth-wise conv, a dilated depth-wise conv and a
point-wise conv give a map that multiplies the input, so a 21x21 receptive field costs three small
convs. Registered in timm (`timm.create_model("van_b0")`) with pretrained configs for its data config;
`checkpoint_filter_fn` loads the official checkpoints (Visual-Attention-Network/VAN-Classification).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ClassifierHead, DropPath, LayerNorm2d
from timm.models import generate_default_cfgs, register_model
from torch import nn

from vision.backbones._common import (
    HeadModel,
    build,
    drop_absent_classifier,
    drop_path_rates,
    image_cfg,
    init_fan_out,
    stage_feature_info,
    unwrap_checkpoint,
)


class LargeKernelAttention(nn.Module):
    """5x5 depth-wise conv, 7x7 depth-wise conv with dilation 3, 1x1 conv; the result gates the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class SpatialAttention(nn.Module):
    """1x1 conv, GELU, LKA, 1x1 conv, plus a residual around the whole unit."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.lka = LargeKernelAttention(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_2(self.lka(self.act(self.proj_1(x))))


class ConvMlp(nn.Module):
    """1x1 conv up, 3x3 depth-wise conv, GELU, 1x1 conv down (the MixFFN of VAN)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.dwconv(self.fc1(x))))))


class VANBlock(nn.Module):
    """BatchNorm + spatial attention and BatchNorm + MLP, each with layer scale and drop path."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale: float = 1e-2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))


class VANStage(nn.Module):
    """Overlapping strided-conv patch embedding, then blocks, then a channel LayerNorm."""

    def __init__(self, in_dim: int, dim: int, mlp_ratio: float, stride: int, drop: float,
                 drop_paths: Sequence[float]) -> None:
        super().__init__()
        kernel = 7 if stride == 4 else 3
        self.downsample = nn.Sequential(
            nn.Conv2d(in_dim, dim, kernel, stride=stride, padding=kernel // 2), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*(VANBlock(dim, mlp_ratio, drop, dp) for dp in drop_paths))
        self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.downsample(x)))


class VAN(HeadModel):
    """Four VAN stages (strides 4, 2, 2, 2) and an average-pool classifier head, timm-style API."""

    def __init__(self, embed_dims: Sequence[int] = (32, 64, 160, 256), depths: Sequence[int] = (3, 3, 5, 2),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4), in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = embed_dims[-1]
        dims_in = [in_chans, *embed_dims[:-1]]
        self.stages = nn.Sequential(*(
            VANStage(dims_in[i], embed_dims[i], mlp_ratios[i], 4 if i == 0 else 2, drop_rate, rates)
            for i, rates in enumerate(drop_path_rates(drop_path_rate, depths))))
        self.feature_info = stage_feature_info(embed_dims)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(init_fan_out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


# The official layout (VAN-Classification, models/van.py), stages numbered from 1: patch_embed{i}.proj / .norm,
# block{i}.{j} (LKA as attn.spatial_gating_unit, the MLP's depth-wise conv as mlp.dwconv.dwconv, layer scales
# as (C,) vectors), norm{i}, and a linear head.
_OFFICIAL_KEY = re.compile(r"(patch_embed|block|norm)(\d+)\.(.+)")
_OFFICIAL_EMBED = {"proj": "0", "norm": "1"}


def _official_key(key: str) -> str:
    """One key of the official layout -> ours (ours, and keys neither knows, come back unchanged)."""
    match = _OFFICIAL_KEY.fullmatch(key)
    if match is None:
        return f"head.fc.{key[len('head.'):]}" if key.startswith("head.") and not key.startswith("head.fc.") else key
    part, stage, rest = match[1], int(match[2]) - 1, match[3]
    if part == "patch_embed":
        module, _, leaf = rest.partition(".")
        return f"stages.{stage}.downsample.{_OFFICIAL_EMBED.get(module, module)}.{leaf}"
    if part == "block":
        rest = rest.replace(".attn.spatial_gating_unit.", ".attn.lka.").replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
        return f"stages.{stage}.blocks.{rest}"
    return f"stages.{stage}.norm.{rest}"


def checkpoint_filter_fn(state_dict: dict[str, Any], model: VAN) -> dict[str, torch.Tensor]:
    """The official VAN checkpoints ({"state_dict": ...}) or our own layout -> this model's; the official
    (C,) layer scales become (C, 1, 1); a classifier the model lacks is dropped. Unknown keys are kept, so that
    strict loading names them."""
    out = {}
    for key, value in unwrap_checkpoint(state_dict).items():
        key = _official_key(key)
        out[key] = value.reshape(-1, 1, 1) if key.endswith((".layer_scale_1", ".layer_scale_2")) else value
    return drop_absent_classifier(out, model)


default_cfgs = generate_default_cfgs({f"van_b{i}.untrained": image_cfg("stages.0.downsample.0", crop_pct=0.9)
                                      for i in range(4)})

_VARIANTS = {
    "van_b0": {"embed_dims": (32, 64, 160, 256), "depths": (3, 3, 5, 2)},
    "van_b1": {"embed_dims": (64, 128, 320, 512), "depths": (2, 2, 4, 2)},
    "van_b2": {"embed_dims": (64, 128, 320, 512), "depths": (3, 3, 12, 3)},
    "van_b3": {"embed_dims": (64, 128, 320, 512), "depths": (3, 5, 27, 3)},
}


def _create_van(variant: str, pretrained: bool = False, **kwargs) -> VAN:
    return build(VAN, variant, pretrained, {**_VARIANTS[variant], **kwargs}, checkpoint_filter_fn)


@register_model
def van_b0(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B0: 4.1M parameters, dims 32-64-160-256."""
    return _create_van("van_b0", pretrained, **kwargs)


@register_model
def van_b1(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B1: dims 64-128-320-512, depths 2-2-4-2."""
    return _create_van("van_b1", pretrained, **kwargs)


@register_model
def van_b2(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B2: dims 64-128-320-512, depths 3-3-12-3."""
    return _create_van("van_b2", pretrained, **kwargs)


@register_model
def van_b3(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B3: dims 64-128-320-512, depths 3-5-27-3."""
    return _create_van("van_b3", pretrained, **kwargs)
