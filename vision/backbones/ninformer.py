"""NiNformer (Abdullah & Aydin, "NiNformer: A Network in Network Transformer with Token Mixing Generated
Gating Function", 2024) as a timm model.

Each block replaces self-attention with a network in a network: an inner MLP-Mixer block (token-mixing
MLP, then channel-mixing MLP) generates, from the normalised tokens, a gate that multiplies a linear
projection of those same tokens element-wise, a dynamic alternative to the Mixer's static token
weights; a token-wise MLP follows, each half residual. As in the authors' code, one LayerNorm serves
both halves of a block, tokens are the patches of a strided conv (no class token, no position
embedding), the head averages them, and parameters keep PyTorch's default init.

The token-mixing MLP is sized to the number of patches, so the input size is fixed at construction
(`img_size`, a multiple of `patch_size`; default 32x32 with 4x4 patches, the paper's CIFAR setting).
`checkpoint_filter_fn` maps the authors' released PyTorch layout (Abdullah-88/NiNformer) onto this one.
"""

from __future__ import annotations

import re

import torch
from timm.layers import Mlp, to_2tuple
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from indexes.errors import UserError
from vision.backbones._common import (
    LinearHeadModel,
    build,
    drop_absent_classifier,
    image_cfg,
    linear_head,
    unwrap_checkpoint,
)


class MixerBlock(nn.Module):
    """The inner network: an MLP across tokens, then an MLP across channels, each pre-norm and residual."""

    def __init__(self, dim: int, num_tokens: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = Mlp(num_tokens, hidden, act_layer=nn.GELU, drop=drop)
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, hidden, act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class MixerGatingUnit(nn.Module):
    """A linear projection of the tokens, gated element-wise by what the inner Mixer makes of them."""

    def __init__(self, dim: int, num_tokens: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.mixer = MixerBlock(dim, num_tokens, hidden, drop)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.mixer(x)


class NiNBlock(nn.Module):
    """Norm -> Mixer gating unit and norm -> MLP, each residual; the two norms share one LayerNorm."""

    def __init__(self, dim: int, num_tokens: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mgu = MixerGatingUnit(dim, num_tokens, hidden, drop)
        self.ffn = Mlp(dim, hidden, act_layer=nn.GELU, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mgu(self.norm(x))
        return x + self.ffn(self.norm(x))


class NiNformer(LinearHeadModel):
    """Conv patch embedding, NiN blocks over the (B, N, C) tokens, mean-pool + linear head; timm-style API."""

    global_pools = ("avg", "")  # "": the head sees the tokens

    def __init__(self, img_size: int | tuple[int, int] = 32, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 256, mlp_dim: int = 512, depth: int = 4,
                 global_pool: str = "avg", drop_rate: float = 0.0, proj_drop_rate: float = 0.0) -> None:
        super().__init__()
        height, width = to_2tuple(img_size)
        if height % patch_size or width % patch_size:
            raise UserError(f"NiNformer input {height}x{width} is not a multiple of its patch size {patch_size}")
        self.grid_size = (height // patch_size, width // patch_size)
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.global_pool = self.check_pool(global_pool)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patcher = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        num_tokens = self.grid_size[0] * self.grid_size[1]
        self.blocks = nn.Sequential(*(NiNBlock(embed_dim, num_tokens, mlp_dim, proj_drop_rate)
                                      for _ in range(depth)))
        self.feature_info = [{"num_chs": embed_dim, "reduction": patch_size, "module": f"blocks.{i}"}
                             for i in range(depth)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(embed_dim, num_classes)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patcher(x)
        if tuple(x.shape[-2:]) != self.grid_size:
            raise UserError(f"NiNformer was built for a {self.grid_size[0]}x{self.grid_size[1]} patch grid "
                            f"(img_size), got {x.shape[-2]}x{x.shape[-1]}")
        return x.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> (B, N, C) tokens, N = patches in row-major order."""
        return self.blocks(self._tokens(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1) if self.global_pool == "avg" else x

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs at `indices` (timm semantics), as (B, C, H, W) maps or (B, N, C) tokens ('NLC')."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be NCHW or NLC, got {output_fmt}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x = self._tokens(x)
        kept = []
        for i, block in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            x = block(x)
            if i in take:
                kept.append(x)
        if output_fmt == "NCHW":
            kept = [t.transpose(1, 2).reshape(t.shape[0], -1, *self.grid_size) for t in kept]
        return kept if intermediates_only else (x, kept)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of `indices` (and the head), for feature extraction."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take


# The authors' layout (Abdullah-88/NiNformer: NiNformer.model = the blocks, MixerBlock's FeedForward `net`
# Sequentials) -> ours.
_AUTHOR_RENAMES = (
    (r"^model\.(\d+)\.", r"blocks.\1."),
    (r"\.mgu\.Mixer\.token_mix\.0\.", ".mgu.mixer.token_norm."),
    (r"\.mgu\.Mixer\.token_mix\.2\.net\.0\.", ".mgu.mixer.token_mlp.fc1."),
    (r"\.mgu\.Mixer\.token_mix\.2\.net\.3\.", ".mgu.mixer.token_mlp.fc2."),
    (r"\.mgu\.Mixer\.channel_mix\.0\.", ".mgu.mixer.channel_norm."),
    (r"\.mgu\.Mixer\.channel_mix\.1\.net\.0\.", ".mgu.mixer.channel_mlp.fc1."),
    (r"\.mgu\.Mixer\.channel_mix\.1\.net\.3\.", ".mgu.mixer.channel_mlp.fc2."),
    (r"\.ffn\.net\.0\.", ".ffn.fc1."),
    (r"\.ffn\.net\.3\.", ".ffn.fc2."),
    (r"^classifier\.", "head."),
)


def _author_key(key: str) -> str:
    for pattern, replacement in _AUTHOR_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def checkpoint_filter_fn(state_dict: dict, model: NiNformer) -> dict[str, torch.Tensor]:
    """Our layout as is, or the authors' (`NiNformerImageClassification.state_dict()`, optionally wrapped
    in a 'model' / 'state_dict' entry) renamed; a classifier the model lacks is dropped."""
    return drop_absent_classifier({_author_key(k): v for k, v in unwrap_checkpoint(state_dict).items()}, model)


default_cfgs = generate_default_cfgs({"ninformer.untrained": image_cfg(
    "patcher", "head", input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, interpolation="bilinear",
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), fixed_input_size=True)})

_VARIANTS = {"ninformer": {"img_size": 32, "patch_size": 4, "embed_dim": 256, "mlp_dim": 512, "depth": 4}}


def _create_ninformer(variant: str, pretrained: bool = False, **kwargs) -> NiNformer:
    args = {**_VARIANTS[variant], **kwargs}
    return build(NiNformer, variant, pretrained, args, checkpoint_filter_fn,
                 {"out_indices": tuple(range(args["depth"])), "feature_cls": "getter"})


@register_model
def ninformer(pretrained: bool = False, **kwargs) -> NiNformer:
    """NiNformer as the authors trained it on CIFAR: 32x32 input, 4x4 patches, width 256, MLPs 512, 4 blocks."""
    return _create_ninformer("ninformer", pretrained, **kwargs)
