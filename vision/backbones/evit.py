"""EViT token reorganisation (Liang et al., "Not All Patches are What You Need", ICLR 2022) for timm ViTs.

At chosen blocks, after attention, only the patch tokens the class token attends to most are kept;
the rest are fused into one token weighted by that attention, so later blocks see fewer tokens.
`apply_evit` converts any timm `VisionTransformer` in place (parameter names unchanged, so ViT
weights load as they are); `evit_*` models are registered in timm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import Attention
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import (
    Block,
    VisionTransformer,
    checkpoint_filter_fn,
)
from torch import nn

from indexes.errors import UserError
from vision.backbones._common import build, image_cfg


def default_reorg_layers(depth: int) -> tuple[int, ...]:
    """The paper's placement for 12 blocks (3, 6, 9), scaled to any depth."""
    return tuple(sorted({depth // 4, depth // 2, 3 * depth // 4}))


def reorganize_tokens(x: torch.Tensor, cls_attn: torch.Tensor, keep_rate: float,
                      num_prefix_tokens: int) -> torch.Tensor:
    """Keep the prefix tokens and the top `keep_rate` patch tokens by class attention; fuse the rest.

    x: (B, N, C); cls_attn: (B, N - num_prefix_tokens), the head-averaged attention of the class token.
    """
    num_patches = cls_attn.shape[1]
    keep = math.ceil(keep_rate * num_patches)
    if keep >= num_patches:
        return x
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    order = cls_attn.argsort(dim=1, descending=True)
    kept_idx, rest_idx = order[:, :keep], order[:, keep:]
    channels = x.shape[-1]
    kept = patches.gather(1, kept_idx.unsqueeze(-1).expand(-1, -1, channels))
    rest = patches.gather(1, rest_idx.unsqueeze(-1).expand(-1, -1, channels))
    weights = cls_attn.gather(1, rest_idx).unsqueeze(-1)
    fused = (rest * weights).sum(dim=1, keepdim=True)
    return torch.cat([prefix, kept, fused], dim=1)


class EViTBlock(nn.Module):
    """A timm ViT `Block` (same submodules, same parameter names) that reorganises tokens after attention."""

    def __init__(self, block: Block, keep_rate: float, num_prefix_tokens: int) -> None:
        super().__init__()
        if not isinstance(block.attn, Attention) or block.attn.gate is not None:
            raise UserError(f"EViT needs standard ViT attention blocks, not {type(block.attn).__name__}")
        for name in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
            setattr(self, name, getattr(block, name))
        self.keep_rate = keep_rate
        self.num_prefix_tokens = num_prefix_tokens

    def _attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timm's attention written out, to also return the class token's attention to the patches."""
        attn = self.attn
        B, N, _ = x.shape
        q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(B, N, attn.attn_dim)
        out = attn.proj_drop(attn.proj(attn.norm(out)))
        return out, weights[:, :, 0, self.num_prefix_tokens:].mean(dim=1)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise UserError("EViT blocks do not take attention masks")
        out, cls_attn = self._attention(self.norm1(x))
        x = x + self.drop_path1(self.ls1(out))
        x = reorganize_tokens(x, cls_attn, self.keep_rate, self.num_prefix_tokens)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def apply_evit(model: VisionTransformer, keep_rate: float = 0.7,
               reorg_layers: Sequence[int] | None = None) -> VisionTransformer:
    """Turn the blocks at `reorg_layers` (default: `default_reorg_layers`) into EViT blocks, in place."""
    if not isinstance(model, VisionTransformer):
        raise UserError(f"EViT applies to timm VisionTransformer models, not {type(model).__name__}")
    if not model.has_class_token:
        raise UserError("EViT ranks tokens by class-token attention; this ViT has no class token")
    if not 0.0 < keep_rate <= 1.0:
        raise UserError(f"EViT keep rate must be in (0, 1], got {keep_rate}")
    layers = default_reorg_layers(len(model.blocks)) if reorg_layers is None else tuple(reorg_layers)
    if any(not 0 <= i < len(model.blocks) for i in layers):
        raise UserError(f"EViT layers {layers} out of range for {len(model.blocks)} blocks")
    for i in layers:
        model.blocks[i] = EViTBlock(model.blocks[i], keep_rate, model.num_prefix_tokens)
    return model


class EViT(VisionTransformer):
    """A `VisionTransformer` with EViT blocks; takes every ViT argument plus keep_rate / reorg_layers."""

    def __init__(self, keep_rate: float = 0.7, reorg_layers: Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        apply_evit(self, keep_rate, reorg_layers)


default_cfgs = generate_default_cfgs({
    f"evit_{size}_patch16_224.untrained": image_cfg("patch_embed.proj", "head", pool_size=None, crop_pct=0.9,
                                                    mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD,
                                                    fixed_input_size=True)
    for size in ("tiny", "small", "base")})

_VARIANTS = {
    "evit_tiny_patch16_224": {"patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3},
    "evit_small_patch16_224": {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "evit_base_patch16_224": {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
}


def _create_evit(variant: str, pretrained: bool = False, **kwargs) -> EViT:
    return build(EViT, variant, pretrained, {**_VARIANTS[variant], **kwargs}, checkpoint_filter_fn, feature_cfg=None)


@register_model
def evit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> EViT:
    """ViT-Tiny/16 with EViT token reorganisation (keep rate 0.7 at blocks 3, 6, 9 by default)."""
    return _create_evit("evit_tiny_patch16_224", pretrained, **kwargs)


@register_model
def evit_small_patch16_224(pretrained: bool = False, **kwargs) -> EViT:
    """ViT-Small/16 with EViT token reorganisation."""
    return _create_evit("evit_small_patch16_224", pretrained, **kwargs)


@register_model
def evit_base_patch16_224(pretrained: bool = False, **kwargs) -> EViT:
    """ViT-Base/16 with EViT token reorganisation."""
    return _create_evit("evit_base_patch16_224", pretrained, **kwargs)
