"""AttNet (Yu et al., "Attentive Convolution: Unifying the Expressivity of Self-Attention with Convolutional
Efficiency", 2025) as a timm model.

Its token mixer, ATConv, is a 3x3 depth-wise convolution whose kernel is computed from the input, per
image and channel (adaptive routing, as attention routes by content): a 1x1 projection of the map is
average-pooled, along its flattened positions, into 9 values per channel, which a GELU and a shared 9x9
linear layer turn into that channel's 3x3 kernel. Lateral inhibition: each kernel then loses a learned
fraction (a per-channel sigmoid) of its own mean, so taps compete as attention scores do. Blocks are
pre-norm ATConv + gated MLP (GLU with a depth-wise conv). Stride 32 in all: inputs of 32x32 or more.
Registered in timm (`timm.create_model("attnet_xxs")`); `checkpoint_filter_fn` reads the authors' layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    LayerNorm2d,
    LayerScale2d,
    NormMlpClassifierHead,
    RmsNorm2d,
)
from timm.models import generate_default_cfgs, register_model
from torch import nn

from vision.backbones._common import (
    HeadModel,
    build,
    drop_absent_classifier,
    drop_path_rates,
    image_cfg,
    init_trunc_normal_conv,
    stage_feature_info,
    unwrap_checkpoint,
)


def per_sample_depthwise_conv(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of each image (B, C, H, W) with its own odd k x k kernel (B, C, k, k), 'same' size.

    One grouped conv over the batch folded into the channels (groups = B * C).
    """
    batch, channels, height, width = x.shape
    k = kernels.shape[-1]
    out = F.conv2d(x.reshape(1, batch * channels, height, width), kernels.reshape(batch * channels, 1, k, k),
                   padding=k // 2, groups=batch * channels)
    return out.view(batch, channels, height, width)


class ATConv(nn.Module):
    """Attentive convolution: a content-generated, mean-inhibited depth-wise k x k kernel between 1x1 projections."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        taps = kernel_size * kernel_size
        self.kernel_size = kernel_size
        self.kernel_proj = nn.Conv2d(dim, dim, 1)
        self.pool = nn.AdaptiveAvgPool1d(taps)
        self.kernel_act = nn.GELU()
        self.kernel_gen = nn.Linear(taps, taps)
        self.x_proj = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.difference_control = nn.Parameter(torch.zeros(dim))

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, k, k): routing kernels from the pooled content, minus a learned share of their mean."""
        batch, channels = x.shape[:2]
        taps = self.kernel_gen(self.kernel_act(self.pool(self.kernel_proj(x).flatten(2))))
        kernels = taps.view(batch, channels, self.kernel_size, self.kernel_size)
        inhibition = torch.sigmoid(self.difference_control).view(1, -1, 1, 1)
        return kernels - inhibition * kernels.mean(dim=(2, 3), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(per_sample_depthwise_conv(self.x_proj(x), self.kernels(x)))


class GatedMlp(nn.Module):
    """1x1 conv to value and gate, 3x3 depth-wise conv + GELU on the gate, product, optional RMSNorm, 1x1 back."""

    def __init__(self, dim: int, hidden: int, norm: bool = False, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden * 2, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.norm_layer = RmsNorm2d(hidden, eps=1e-6) if norm else nn.Identity()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=1)
        x = self.drop(self.norm_layer(self.act(self.dwconv(gate)) * value))
        return self.drop(self.fc2(x))


class AttNetBlock(nn.Module):
    """LayerNorm + ATConv and LayerNorm + gated MLP, each residual with optional layer scale and drop path."""

    def __init__(self, dim: int, mlp_ratio: float, kernel_size: int = 3, drop_path: float = 0.0,
                 layer_scale: bool = False, mlp_norm: bool = False) -> None:
        super().__init__()
        self.norm_1 = LayerNorm2d(dim, eps=1e-6)
        self.token_mixer = ATConv(dim, kernel_size)
        self.norm_2 = LayerNorm2d(dim, eps=1e-6)
        self.channel_mixer = GatedMlp(dim, int(2 * int(dim * mlp_ratio) / 3), mlp_norm)  # GLU keeps MLP-size params
        self.layer_scale_1 = LayerScale2d(dim, 1e-6) if layer_scale else nn.Identity()
        self.layer_scale_2 = LayerScale2d(dim, 1e-6) if layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1(self.token_mixer(self.norm_1(x))))
        return x + self.drop_path(self.layer_scale_2(self.channel_mixer(self.norm_2(x))))


def conv_bn(in_dim: int, out_dim: int) -> nn.Sequential:
    """3x3 stride-2 conv (no bias) + BatchNorm: AttNet's stem halves and its downsampling layers."""
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_dim))


class AttNetStage(nn.Module):
    """A conv-BN downsampling layer (none in the first stage: the stem is there), then blocks."""

    def __init__(self, in_dim: int, dim: int, mlp_ratio: float, downsample: bool, drop_paths: Sequence[float],
                 **block_kwargs: Any) -> None:
        super().__init__()
        self.downsample = conv_bn(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(AttNetBlock(dim, mlp_ratio, drop_path=dp, **block_kwargs)
                                      for dp in drop_paths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class AttNet(HeadModel):
    """Conv stem (stride 4), four ATConv stages (strides 1, 2, 2, 2), average pool -> LayerNorm -> linear."""

    def __init__(self, embed_dims: Sequence[int] = (32, 64, 128, 240), depths: Sequence[int] = (2, 2, 4, 2),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4), kernel_size: int = 3, layer_scale: bool = False,
                 mlp_norm: bool = False, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.stem = nn.Sequential(conv_bn(in_chans, embed_dims[0] // 2), nn.GELU(),
                                  conv_bn(embed_dims[0] // 2, embed_dims[0]))
        dims_in = [embed_dims[0], *embed_dims[:-1]]
        self.stages = nn.Sequential(*(
            AttNetStage(dims_in[i], embed_dims[i], mlp_ratios[i], i > 0, rates, kernel_size=kernel_size,
                        layer_scale=layer_scale, mlp_norm=mlp_norm)
            for i, rates in enumerate(drop_path_rates(drop_path_rate, depths))))
        self.feature_info = stage_feature_info(embed_dims)
        self.head = NormMlpClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                          norm_layer=partial(LayerNorm2d, eps=1e-5))
        self.apply(init_trunc_normal_conv)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _rename(key: str) -> str:
    """One key of the authors' layout -> ours (keys it does not know come back unchanged)."""
    head, _, rest = key.partition(".")
    if head == "downsample_layers":
        index, _, rest = rest.partition(".")
        return f"stem.{rest}" if index == "0" else f"stages.{index}.downsample.{rest}"
    if head == "stages":
        stage, _, rest = rest.partition(".")
        return f"stages.{stage}.blocks.{rest}"
    if head == "norm":
        return f"head.norm.{rest}"
    if head == "head":
        return f"head.fc.{rest}"
    return key


def checkpoint_filter_fn(state_dict: dict[str, Any], model: AttNet) -> dict[str, torch.Tensor]:
    """Map a checkpoint of the authors' code (github.com/price112/Attentive-Convolution, `models/AttNet.py`) onto
    this model.

    Theirs: `downsample_layers.0.*` (stem), `downsample_layers.{i}.*`, `stages.{i}.{j}.*`, `norm.*`, `head.*`;
    ours: `stem.*`, `stages.{i}.downsample.*`, `stages.{i}.blocks.{j}.*`, `head.norm.*`, `head.fc.*`. Block
    internals keep their names. A checkpoint already in this layout passes through; the classifier is dropped
    when the model has none. Unknown keys are kept, so that strict loading names them.
    """
    state_dict = unwrap_checkpoint(state_dict)
    if not any(k.startswith(("stem.", "head.fc.", "head.norm.")) for k in state_dict):
        state_dict = {_rename(k): v for k, v in state_dict.items()}
    return drop_absent_classifier(state_dict, model)


default_cfgs = generate_default_cfgs({"attnet_xxs.untrained": image_cfg("stem.0.0")})

_VARIANTS = {
    "attnet_xxs": {"embed_dims": (32, 64, 128, 240), "depths": (2, 2, 4, 2), "mlp_ratios": (8, 8, 4, 4)},
}


def _create_attnet(variant: str, pretrained: bool = False, **kwargs) -> AttNet:
    return build(AttNet, variant, pretrained, {**_VARIANTS[variant], **kwargs}, checkpoint_filter_fn)


@register_model
def attnet_xxs(pretrained: bool = False, **kwargs) -> AttNet:
    """AttNet-XXS: 2.9M parameters, dims 32-64-128-240, depths 2-2-4-2, no layer scale, no MLP norm."""
    return _create_attnet("attnet_xxs", pretrained, **kwargs)
