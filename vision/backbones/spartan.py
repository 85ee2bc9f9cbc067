"""SpaRTAN (Pay et al., "SpaRTAN: Spatial Reinforcement Token-based Aggregation Network for Visual
Recognition", IJCNN 2025) as a timm model.

A lightweight CNN whose blocks pair two mixers. The spatial mixer halves the channels, sharpens them
against their global mean, and runs two branches with different receptive fields (a 3x3 conv, and two
3x3 convs with dilation 2), each gated by squeeze-excitation: multi-order spatial features. The channel
mixer is the "wave-based" aggregation: an amplitude and a GELU phase projection are multiplied, the
values at each pixel's strongest input channel are added as a shared term, and channel pairs are then
rotated/scaled by learned complex numbers, before a grouped 3x3 conv, squeeze-excitation and a 1x1
projection back. Stride 32 in all: inputs of 32x32 or more (any size; sides are floored at each stride).
Registered in timm (`timm.create_model("spartan_t")`); `checkpoint_filter_fn` reads the authors' layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath
from timm.models import generate_default_cfgs, register_model
from torch import nn

from vision.backbones._common import (
    HeadModel,
    build,
    drop_absent_classifier,
    image_cfg,
    init_fan_out,
    stage_feature_info,
    unwrap_checkpoint,
)

BN_EPS = 1e-6


class ConvNormAct(nn.Module):
    """Conv (no bias) + optional BatchNorm + optional activation: the unit every SpaRTAN conv is built from."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, norm: bool = True,
                 act: Callable[[torch.Tensor], torch.Tensor] | None = F.gelu) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel, stride, padding, dilation, groups, bias=False)
        self.norm = nn.BatchNorm2d(out_dim, eps=BN_EPS) if norm else nn.Identity()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return x if self.act is None else self.act(x)


class SqueezeExcite(nn.Module):
    """Global average -> 1x1 squeeze, ReLU -> 1x1 expand, sigmoid; the result gates the channels."""

    def __init__(self, dim: int, squeeze_dim: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(dim, squeeze_dim, 1)
        self.expand = nn.Conv2d(squeeze_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(F.relu(self.squeeze(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class SpatialMixer(nn.Module):
    """Multi-order spatial features: a near (3x3) and a far (two dilated 3x3) branch, each SE-gated.

    `depthwise` (the last two stages) makes the branch convs depth-wise instead of dense.
    """

    def __init__(self, dim: int, depthwise: bool) -> None:
        super().__init__()
        half = dim // 2
        groups = half if depthwise else 1
        self.gamma = nn.Parameter(torch.full((1, half, 1, 1), 1e-5))
        self.proj_in = nn.Conv2d(dim, half, 1)
        self.h_conv = ConvNormAct(half, half, 3, padding=1, groups=groups)
        self.l_conv = nn.Sequential(
            ConvNormAct(half, half, 3, padding=2, dilation=2, groups=groups, norm=False, act=None),
            ConvNormAct(half, half, 3, padding=2, dilation=2, groups=groups))
        self.h_attn = SqueezeExcite(half, half // 4)
        self.l_attn = SqueezeExcite(half, half // 4)
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        x = x + self.gamma * (x - x.mean((2, 3), keepdim=True))  # amplify what differs from the global context
        return self.proj_out(torch.cat([self.h_attn(self.h_conv(x)), self.l_attn(self.l_conv(x))], dim=1))


def complex_modulate(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Treat channel pairs (2k, 2k+1) of x (B, C, H, W) as complex numbers and multiply them by weight (C/2, 2).

    Computed in float32 outside autocast, as the authors do.
    """
    batch, channels, height, width = x.shape
    with torch.autocast(x.device.type, enabled=False):
        pairs = x.float().view(batch, channels // 2, 2, height, width)
        real, imag = pairs[:, :, 0], pairs[:, :, 1]
        w_real, w_imag = (w.float().view(1, -1, 1, 1) for w in weight.unbind(1))
        out = torch.stack([real * w_real - imag * w_imag, real * w_imag + imag * w_real], dim=2)
    return out.view(batch, channels, height, width)


class ChannelMixer(nn.Module):
    """Wave-based channel aggregation: amplitude x phase (+ the pair at each pixel's argmax channel),
    complex modulation of channel pairs, grouped 3x3 conv, SE gate, 1x1 back to `dim`."""

    def __init__(self, dim: int, expand_ratio: int, grouped: bool) -> None:
        super().__init__()
        neck = dim * expand_ratio
        self.theta = nn.Conv2d(dim, neck, 1)
        self.proj = nn.Conv2d(dim, neck, 1)
        self.complex = nn.Parameter(torch.randn(neck // 2, 2))
        self.conv = ConvNormAct(neck, neck, 3, padding=1, groups=dim if grouped else neck)
        self.attn = SqueezeExcite(neck, dim // 4)
        self.proj_out = nn.Conv2d(neck, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x.argmax(dim=1, keepdim=True)
        phase = F.gelu(self.theta(x))
        amplitude = self.proj(x)
        wave = amplitude * phase + amplitude.gather(1, top) * phase.gather(1, top)
        wave = complex_modulate(wave, self.complex).to(x.dtype)
        return self.proj_out(self.attn(self.conv(wave)))


class SpaRTANBlock(nn.Module):
    """Pre-norm (1-group GroupNorm) spatial mixer and channel mixer, each with layer scale and drop path."""

    def __init__(self, dim: int, expand_ratio: int, late: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        self.smixer = SpatialMixer(dim, depthwise=late)
        self.cmixer = ChannelMixer(dim, expand_ratio, grouped=late)
        self.norm_1 = nn.GroupNorm(1, dim, eps=1e-6)
        self.norm_2 = nn.GroupNorm(1, dim, eps=1e-6)
        self.scale_1 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-5))
        self.scale_2 = nn.Parameter(torch.full((1, dim, 1, 1), 1e-5))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.scale_1 * self.smixer(self.norm_1(x)))
        return x + self.drop_path(self.scale_2 * self.cmixer(self.norm_2(x)))


class SpaRTANStage(nn.Module):
    """An optional 2x2 stride-2 conv (BatchNorm, SiLU) that doubles the reduction, then blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, expand_ratio: int, late: bool, downsample: bool,
                 drop_paths: Sequence[float]) -> None:
        super().__init__()
        self.downsample = ConvNormAct(in_dim, dim, 2, stride=2, act=F.silu) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(SpaRTANBlock(dim, expand_ratio, late, dp) for dp in drop_paths[:depth]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class SpaRTAN(HeadModel):
    """Conv stem (stride 4), four stages (strides 1, 2, 2, 2), average pool and a linear head; timm-style API.

    The first half of the stages use dense spatial convs, the second half depth-wise / grouped ones.
    """

    def __init__(self, embed_dims: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (3, 3, 12, 2),
                 expand_ratios: Sequence[int] = (4, 4, 2, 2), in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if any(d % 8 for d in embed_dims):
            raise ValueError(f"SpaRTAN widths must be multiples of 8, got {tuple(embed_dims)}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.stem = nn.Sequential(ConvNormAct(in_chans, embed_dims[0] // 2, 3, stride=2, padding=1),
                                  ConvNormAct(embed_dims[0] // 2, embed_dims[0], 3, stride=2, padding=1))
        rates = [drop_path_rate * i / sum(depths) for i in range(sum(depths))]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        dims_in = [embed_dims[0], *embed_dims[:-1]]
        mid = len(depths) // 2
        self.stages = nn.Sequential(*(
            SpaRTANStage(dims_in[i], embed_dims[i], depths[i], expand_ratios[i], i >= mid, i > 0, rates[starts[i]:])
            for i in range(len(depths))))
        self.feature_info = stage_feature_info(embed_dims)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(init_fan_out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _layer_names(model: SpaRTAN) -> dict[str, str]:
    """The authors' flat `layers.{i}` (blocks, with a downsample conv after every stage but the last) -> ours."""
    names, index = {}, 0
    for s, stage in enumerate(model.stages):
        for b in range(len(stage.blocks)):
            names[f"layers.{index}"], index = f"stages.{s}.blocks.{b}", index + 1
        if s + 1 < len(model.stages) and isinstance(model.stages[s + 1].downsample, ConvNormAct):
            names[f"layers.{index}"], index = f"stages.{s + 1}.downsample", index + 1
    return names


def checkpoint_filter_fn(state_dict: dict[str, Any], model: SpaRTAN) -> dict[str, torch.Tensor]:
    """Map a checkpoint of the authors' code (github.com/henry-pay/SpaRTAN, `src/model/spartan.py`) onto this model.

    Theirs: `conv.*` (stem), a flat `layers.{i}.*`, `linear.*` (classifier), `cmixer.complex` of shape
    (1, 1, 1, C/2, 2); ours: `stem.*`, `stages.{s}.{downsample|blocks.{b}}.*`, `head.fc.*`, (C/2, 2). Block
    internals keep their names. A checkpoint already in this layout passes through; the classifier is dropped
    when the model has none. Unknown keys are kept, so that strict loading names them.
    """
    state_dict = unwrap_checkpoint(state_dict)
    if not any(k.startswith("stages.") for k in state_dict):
        layers = _layer_names(model)
        out = {}
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            if head == "conv":
                key = f"stem.{rest}"
            elif head == "linear":
                key = f"head.fc.{rest}"
            elif head == "layers":
                index, _, rest = rest.partition(".")
                key = f"{layers.get(f'layers.{index}', f'layers.{index}')}.{rest}"
            if key.endswith(".cmixer.complex"):
                value = value.reshape(-1, 2)
            out[key] = value
        state_dict = out
    return drop_absent_classifier(state_dict, model)


default_cfgs = generate_default_cfgs({"spartan_t.untrained": image_cfg("stem.0.conv")})

_VARIANTS = {
    "spartan_t": {"embed_dims": (32, 64, 128, 256), "depths": (3, 3, 12, 2), "expand_ratios": (4, 4, 2, 2)},
}


def _create_spartan(variant: str, pretrained: bool = False, **kwargs) -> SpaRTAN:
    return build(SpaRTAN, variant, pretrained, {**_VARIANTS[variant], **kwargs}, checkpoint_filter_fn)


@register_model
def spartan_t(pretrained: bool = False, **kwargs) -> SpaRTAN:
    """SpaRTAN-T: 3.8M parameters, dims 32-64-128-256, depths 3-3-12-2 (the authors' released config)."""
    return _create_spartan("spartan_t", pretrained, **kwargs)
