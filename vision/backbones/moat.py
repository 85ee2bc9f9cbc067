"""MOAT (Yang et al., "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision Models",
ICLR 2023) as a timm model.

A MOAT block is a Transformer block with its MLP replaced by an MBConv (inverted residual) that comes
*before* the self-attention: the strided depth-wise conv of the MBConv does the downsampling, and the
attention sees the downsampled map. The network: a two-conv stem (stride 2), two MBConv stages, two
MOAT stages (strides 4, 8, 16, 32). Attention is global over the feature map by default (as the paper
classifies), or local in windows (`window_size`); each head adds a 2-D relative position bias stored
at a fixed size (14 for stride 16, 7 for stride 32) and resized bilinearly to the map or window, so any
input size works (32x32 and up; with windows, the map must divide into them).

Strided convs and shortcut pooling pad like TensorFlow's "SAME" (bottom / right first) and norms keep
TF's epsilons, so weights converted from the authors' TF checkpoints (google-research/deeplab2) give
their outputs; `checkpoint_filter_fn` maps those variable names and tensor layouts onto this model.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    LayerNorm2d,
    NormMlpClassifierHead,
    create_conv2d,
    pad_same,
)
from timm.models import generate_default_cfgs, register_model
from torch import nn

from vision.backbones._common import (
    HeadModel,
    build,
    drop_absent_classifier,
    image_cfg,
    stage_feature_info,
    unwrap_checkpoint,
)

BN_EPS = 1e-3  # TF BatchNormalization's default
LN_EPS = 1e-5  # the authors' ln_epsilon
POSITION_SIZES = (None, None, 14, 7)  # relative position tables per stage (stride 16: 14x14, stride 32: 7x7)


class SameAvgPool(nn.Module):
    """Average pooling with TF "SAME" padding, averaging real pixels only (the shortcut of a strided block)."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = [self.kernel_size] * 2, [self.stride] * 2
        total = F.avg_pool2d(pad_same(x, k, s), k, s)
        count = F.avg_pool2d(pad_same(torch.ones_like(x[:1, :1]), k, s), k, s)
        return total / count


class SqueezeExcite(nn.Module):
    """Global average, 1x1 conv down, SiLU, 1x1 conv up, sigmoid gate: channel attention inside MBConv."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.reduce_conv2d = nn.Conv2d(dim, hidden, 1)
        self.expand_conv2d = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand_conv2d(F.silu(self.reduce_conv2d(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class MBConvBlock(nn.Module):
    """Pre-BN inverted residual: 1x1 expand, (strided) depth-wise 3x3, optional SE, 1x1 shrink.

    The shortcut average-pools when strided and projects with a 1x1 conv when the width changes.
    """

    def __init__(self, in_dim: int, dim: int, stride: int = 1, expansion: int = 4, kernel_size: int = 3,
                 se_ratio: float | None = 0.25, pool_size: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        inner = dim * expansion
        self.shortcut_pool = SameAvgPool(pool_size, stride) if stride > 1 else nn.Identity()
        self.shortcut_conv = nn.Conv2d(in_dim, dim, 1) if in_dim != dim else nn.Identity()
        self.pre_norm = nn.BatchNorm2d(in_dim, eps=BN_EPS)
        self.expand_conv = nn.Conv2d(in_dim, inner, 1, bias=False)
        self.expand_norm = nn.BatchNorm2d(inner, eps=BN_EPS)
        self.depthwise_conv = create_conv2d(inner, inner, kernel_size, stride=stride, padding="same",
                                            depthwise=True, bias=False)
        self.depthwise_norm = nn.BatchNorm2d(inner, eps=BN_EPS)
        self.se = SqueezeExcite(inner, max(1, int(dim * se_ratio))) if se_ratio else nn.Identity()
        self.shrink_conv = nn.Conv2d(inner, dim, 1)
        self.act = nn.GELU()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.expand_norm(self.expand_conv(self.pre_norm(x))))
        x = self.act(self.depthwise_norm(self.depthwise_conv(x)))
        return self.shrink_conv(self.se(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut_conv(self.shortcut_pool(x)) + self.drop_path(self.residual(x))


class Attention(nn.Module):
    """Multi-head self-attention over the tokens of a (window of a) feature map, heads of `head_dim`
    channels, with a learned per-head 2-D relative position bias resized to the window's size."""

    def __init__(self, dim: int, head_dim: int = 32, position_size: int | None = None) -> None:
        super().__init__()
        self.num_heads, self.head_dim = dim // head_dim, head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.relative_position_embedding = None
        if position_size:
            side = 2 * position_size - 1
            self.relative_position_embedding = nn.Parameter(torch.zeros(self.num_heads, side, side))

    def position_bias(self, height: int, width: int) -> torch.Tensor:
        """(heads, h*w, h*w): the bias of query (i, j) to key (x, y) is table[x - i, y - j] (offsets centred)."""
        table = self.relative_position_embedding
        size = (2 * height - 1, 2 * width - 1)
        if table.shape[-2:] != size:
            table = F.interpolate(table[None], size=size, mode="bilinear", align_corners=False)[0]
        rows = torch.arange(height, device=table.device)
        cols = torch.arange(width, device=table.device)
        dy = rows[None, :] - rows[:, None] + height - 1  # [query row, key row]
        dx = cols[None, :] - cols[:, None] + width - 1
        bias = table[:, dy[:, None, :, None], dx[None, :, None, :]]  # (heads, i, j, x, y)
        return bias.reshape(-1, height * width, height * width)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = (proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        bias = None
        if self.relative_position_embedding is not None:
            bias = self.position_bias(height, width).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o(out.transpose(1, 2).reshape(B, N, C))


class MOATBlock(MBConvBlock):
    """An MBConv without SE (it does any downsampling), then LayerNorm + (window) self-attention, both residual."""

    def __init__(self, in_dim: int, dim: int, stride: int = 1, expansion: int = 4, kernel_size: int = 3,
                 pool_size: int = 2, head_dim: int = 32, window_size: Sequence[int] | None = None,
                 position_size: int | None = None, drop_path: float = 0.0) -> None:
        super().__init__(in_dim, dim, stride, expansion, kernel_size, None, pool_size, drop_path)
        self.window_size = tuple(window_size) if window_size else None
        self.attention_norm = LayerNorm2d(dim, eps=LN_EPS)
        self.attention = Attention(dim, head_dim, position_size)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        wh, ww = self.window_size or (H, W)
        if H % wh or W % ww:
            raise ValueError(f"MOAT windows {wh}x{ww} do not tile a {H}x{W} feature map")
        y = self.attention_norm(x).view(B, C, H // wh, wh, W // ww, ww)
        y = y.permute(0, 2, 4, 3, 5, 1).reshape(-1, wh * ww, C)
        y = self.attention(y, wh, ww)
        return y.view(B, H // wh, W // ww, wh, ww, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return x + self.drop_path(self.attend(x))


class MOAT(HeadModel):
    """Conv stem, two MBConv stages, two MOAT stages, pool -> LayerNorm -> linear head; timm-style API."""

    def __init__(self, stem_dims: Sequence[int] = (32, 32), embed_dims: Sequence[int] = (32, 64, 128, 256),
                 depths: Sequence[int] = (2, 3, 7, 2),
                 block_types: Sequence[str] = ("mbconv", "mbconv", "moat", "moat"), expansion: int = 4,
                 se_ratio: float = 0.25, head_dim: int = 32, pool_size: int = 2,
                 window_size: Sequence[Sequence[int] | None] | None = None, relative_position: bool = True,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.stem = _stem(in_chans, stem_dims)
        windows = list(window_size or [None] * len(depths))
        total, done, in_dim = sum(depths), 0, stem_dims[-1]
        stages = []
        for i, (dim, depth, kind) in enumerate(zip(embed_dims, depths, block_types)):
            blocks = []
            for j in range(depth):
                common = {"stride": 2 if j == 0 else 1, "expansion": expansion, "pool_size": pool_size,
                          "drop_path": drop_path_rate * (done + j) / total}
                if kind == "moat":
                    position = POSITION_SIZES[i] if relative_position else None
                    blocks.append(MOATBlock(in_dim, dim, head_dim=head_dim, window_size=windows[i],
                                            position_size=position, **common))
                else:
                    blocks.append(MBConvBlock(in_dim, dim, se_ratio=se_ratio, **common))
                in_dim = dim
            stages.append(nn.Sequential(*blocks))
            done += depth
        self.stages = nn.Sequential(*stages)
        self.feature_info = stage_feature_info(embed_dims)
        self.head = NormMlpClassifierHead(self.num_features, num_classes, pool_type=global_pool,
                                          drop_rate=drop_rate, norm_layer=partial(LayerNorm2d, eps=LN_EPS))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """The authors' init: N(0, 0.02) kernels and position tables, zero biases."""
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Attention) and module.relative_position_embedding is not None:
            nn.init.normal_(module.relative_position_embedding, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _stem(in_chans: int, dims: Sequence[int]) -> nn.Sequential:
    """3x3 convs, the first with stride 2, BN + GELU between them (the first block's pre-norm follows the last)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, dim in enumerate(dims):
        layers[f"conv_{i}"] = create_conv2d(in_chans, dim, 3, stride=2 if i == 0 else 1, padding="same", bias=True)
        if i < len(dims) - 1:
            layers[f"norm_{i}"] = nn.BatchNorm2d(dim, eps=BN_EPS)
            layers[f"act_{i}"] = nn.GELU()
        in_chans = dim
    return nn.Sequential(layers)


# The authors' TF variable names -> ours: their leaf names, and the scopes that differ.
_TF_LEAVES = {"kernel": "weight", "depthwise_kernel": "weight", "gamma": "weight", "beta": "bias",
              "moving_mean": "running_mean", "moving_variance": "running_var", "weight": "weight", "bias": "bias",
              "relative_position_embedding": "relative_position_embedding"}
_TF_SCOPES = {"final_layer_norm": "head.norm", "logits_head": "head.fc"}
_TF_EMA = "/ExponentialMovingAverage"


def _tf_key(name: str) -> str | None:
    """'moat/block_02_03/attention/q/weight' -> 'stages.2.3.attention.q.weight'; None for a non-model variable."""
    parts = name.split("/")
    if parts[0] == "moat":
        parts = parts[1:]
    if parts and re.fullmatch(r"(conv|norm)_\d+", parts[0]):  # TF2 stem variables lose their 'stem/' scope
        parts = ["stem", *parts]
    if len(parts) < 2 or parts[-1] not in _TF_LEAVES:
        return None
    scope = [_TF_SCOPES.get(p, p) for p in parts[:-1]]
    block = re.fullmatch(r"block_(\d+)_(\d+)", scope[0])
    if block:
        scope[0] = f"stages.{int(block[1])}.{int(block[2])}"
    return ".".join([*scope, _TF_LEAVES[parts[-1]]])


def _tf_tensor(name: str, tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A TF tensor in our layout: HWIO kernels -> OIHW, depth-wise HWC1 -> C1HW, einsum dense -> (out, in)."""
    scope, leaf = name.split("/")[-2:]
    if leaf == "depthwise_kernel":
        return tensor.permute(2, 3, 0, 1)
    if leaf == "kernel" and target.ndim == 4:
        return tensor.permute(3, 2, 0, 1)
    if leaf == "kernel":  # the 1x1 conv logits head -> a linear layer
        return tensor.reshape(-1, tensor.shape[-1]).t()
    if leaf == "weight" and tensor.ndim == 3:  # q/k/v: (C, heads, d); o: (heads, d, C)
        return (tensor.flatten(0, 1) if scope == "o" else tensor.flatten(1)).t()
    if leaf == "bias":
        return tensor.flatten()
    return tensor


def _from_tf(state_dict: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and re-lay-out the authors' TF variables (EMA copies used only where the plain one is absent)."""
    names = {k.removesuffix(":0"): v for k, v in state_dict.items()}
    for name in [k for k in names if k.endswith(_TF_EMA)]:
        plain = name.removesuffix(_TF_EMA)
        names.setdefault(plain, names[name])
        del names[name]
    out = {}
    for name, tensor in names.items():
        key = _tf_key(name)
        if key is None:
            continue  # optimizer slots, global_step and other bookkeeping
        if key not in ours:
            if key.startswith("head.fc."):
                continue  # a classifier this model does not have
            raise KeyError(f"{key} (from {name})")
        out[key] = _tf_tensor(name, tensor, ours[key])
    for key, value in ours.items():  # TF keeps no batch counters
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    return out


def checkpoint_filter_fn(state_dict: dict, model: MOAT) -> dict[str, torch.Tensor]:
    """Our own state dict as is; the authors' TF checkpoint (deeplab2 variable names, '/'-scoped, optionally
    with ':0' or EMA suffixes) converted; a classifier head the model lacks dropped."""
    state_dict = unwrap_checkpoint(state_dict)
    if any("/" in k for k in state_dict):
        return _from_tf(state_dict, model.state_dict())
    return drop_absent_classifier(state_dict, model)


default_cfgs = generate_default_cfgs({
    "moat_tiny_0.untrained": image_cfg("stem.conv_0", crop_pct=0.95, input_size=(3, 256, 256), pool_size=(8, 8)),
    "moat_0.untrained": image_cfg("stem.conv_0", crop_pct=0.95),
})

_VARIANTS = {
    "moat_tiny_0": {"stem_dims": (32, 32), "embed_dims": (32, 64, 128, 256), "depths": (2, 3, 7, 2)},
    "moat_0": {"stem_dims": (64, 64), "embed_dims": (96, 192, 384, 768), "depths": (2, 3, 7, 2)},
}


def _create_moat(variant: str, pretrained: bool = False, **kwargs) -> MOAT:
    return build(MOAT, variant, pretrained, {**_VARIANTS[variant], **kwargs}, checkpoint_filter_fn)


@register_model
def moat_tiny_0(pretrained: bool = False, **kwargs) -> MOAT:
    """tiny-MOAT-0 (the authors' tiny_moat0): 3.4M parameters, dims 32-64-128-256, depths 2-3-7-2."""
    return _create_moat("moat_tiny_0", pretrained, **kwargs)


@register_model
def moat_0(pretrained: bool = False, **kwargs) -> MOAT:
    """MOAT-0 (the authors' moat0): 27.8M parameters, dims 96-192-384-768, depths 2-3-7-2."""
    return _create_moat("moat_0", pretrained, **kwargs)
