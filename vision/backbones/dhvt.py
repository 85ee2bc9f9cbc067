"""DHVT, the dynamic hybrid vision transformer (Lu et al., "Bridging the Gap Between Vision Transformers and
Convolutional Neural Networks on Small Datasets", NeurIPS 2022), as a timm model.

A plain-depth ViT made to train from scratch on small data: SOPE (sequential overlapping patch embedding:
stride-2 3x3 conv + BatchNorm + GELU steps between two learnable per-channel affines, and no position
embedding), DAFF (the feed-forward is point-wise conv, depth-wise 3x3 conv with a residual, point-wise
conv, each with BatchNorm, and its squeeze-excitation of the patch tokens rescales the class token), and
HI-MHSA (each head's channels, averaged over the tokens, become a head token that joins attention and is
then folded into the class token). Registered in timm (`timm.create_model("dhvt_tiny")`); any input size
works, with the 16x16 patches of the ImageNet variants the token grid is ceil(size / 16) per side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from vision.backbones._common import (
    LinearHeadModel,
    build,
    drop_absent_classifier,
    image_cfg,
    init_trunc_normal,
    linear_head,
    unwrap_checkpoint,
)

GridSize = tuple[int, int]


class Affine(nn.Module):
    """Learnable per-channel scale and shift of an NCHW map (SOPE's input and output calibration)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha + self.beta


def _conv_bn(in_dim: int, out_dim: int) -> nn.Sequential:
    """A stride-2 3x3 conv without bias, then BatchNorm: one overlapping down-sampling step of SOPE."""
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_dim))


class SOPE(nn.Module):
    """Sequential overlapping patch embedding: log2(patch) conv steps, channels doubling up to `dim`."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        steps = int(math.log2(patch_size))
        if patch_size < 2 or 2 ** steps != patch_size:
            raise ValueError(f"SOPE needs a power-of-two patch size >= 2, got {patch_size}")
        dims = [in_chans, *(dim // 2 ** (steps - 1 - i) for i in range(steps))]
        layers: list[nn.Module] = []
        for i in range(steps):
            layers += [_conv_bn(dims[i], dims[i + 1]), nn.GELU()]
        # the authors keep the trailing GELU only for 2x2 patches (a single step)
        self.proj = nn.Sequential(*(layers if steps == 1 else layers[:-1]))
        self.pre_affine = Affine(in_chans)
        self.post_affine = Affine(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, GridSize]:
        x = self.post_affine(self.proj(self.pre_affine(x)))
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class HIAttention(nn.Module):
    """Multi-head self-attention plus one head token per head (made from that head's mean channels), merged
    into the class token afterwards so heads exchange information."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.attn_drop = num_heads, attn_drop
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.act = nn.GELU()
        self.ht_proj = nn.Linear(head_dim, dim)
        self.ht_norm = nn.LayerNorm(head_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_heads, dim))
        trunc_normal_(self.pos_embed, std=0.02)

    def head_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, C): each head's channels averaged over all tokens, projected to C."""
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        per_head = x.view(b, n, heads, d).mean(dim=1)
        tokens = self.ht_proj(per_head).view(b, heads, heads, d)
        return self.act(self.ht_norm(tokens)).flatten(2) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        heads, d = self.num_heads, c // self.num_heads
        x = torch.cat((x, self.head_tokens(x)), dim=1)
        q, k, v = self.qkv(x).view(b, n + heads, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(b, n + heads, c))
        cls, patches, head = out.split((1, n - 1, heads), dim=1)
        return self.proj_drop(torch.cat((cls + head.mean(dim=1, keepdim=True), patches), dim=1))


class DAFF(nn.Module):
    """Dynamic aggregation feed-forward: conv MLP on the patch grid (with a depth-wise residual); the patches'
    squeeze-excitation weights rescale the class token."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, dim, 1)
        self.bn3 = nn.BatchNorm2d(dim)
        self.act = nn.GELU()
        self.compress = nn.Linear(dim, dim // 4)
        self.excitation = nn.Linear(dim // 4, dim)

    def forward(self, x: torch.Tensor, grid: GridSize) -> torch.Tensor:
        b, n, c = x.shape
        cls, patches = x.split((1, n - 1), dim=1)
        y = self.act(self.bn1(self.conv1(patches.transpose(1, 2).reshape(b, c, *grid))))
        y = y + self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        weight = self.excitation(self.act(self.compress(y.mean(dim=(2, 3)))))
        return torch.cat((cls * weight.unsqueeze(1), y.flatten(2).transpose(1, 2)), dim=1)


class DHVTBlock(nn.Module):
    """Pre-norm transformer block: LayerNorm + HI-MHSA and LayerNorm + DAFF, each with drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float,
                 attn_drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = HIAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DAFF(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: GridSize) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class DHVT(LinearHeadModel):
    """SOPE, class token, DHVT blocks, LayerNorm, class-token (or average) pooling and a linear head."""

    global_pools = ("token", "avg")

    def __init__(self, patch_size: int = 16, embed_dim: int = 192, depth: int = 12, num_heads: int = 3,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.global_pool = num_classes, self.check_pool(global_pool)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = SOPE(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            DHVTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i])
            for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(embed_dim, num_classes)
        self.feature_info = [{"num_chs": embed_dim, "reduction": patch_size, "module": f"blocks.{i}"}
                             for i in range(depth)]
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_trunc_normal)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"} | {name for name, _ in self.named_parameters() if name.endswith("attn.pos_embed")}

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, GridSize]:
        tokens, grid = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return self.pos_drop(tokens), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + tokens, C), the class token first."""
        x, grid = self._embed(x)
        for block in self.blocks:
            x = block(x, grid)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs (patch tokens as NCHW maps or NLC) at `indices` (last n if int, all if None)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output format must be NCHW or NLC, got {output_fmt!r}")
        depth = len(self.blocks)
        take = list(range(depth)) if indices is None else \
            list(range(depth - indices, depth)) if isinstance(indices, int) else [i % depth for i in indices]
        x, grid = self._embed(x)
        intermediates = []
        for i, block in enumerate(self.blocks[:max(take) + 1] if stop_early else self.blocks):
            x = block(x, grid)
            if i in take:
                y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens:]
                intermediates.append(y.transpose(1, 2).reshape(y.shape[0], -1, *grid) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: DHVT) -> dict[str, torch.Tensor]:
    """Map a checkpoint of the authors' code onto this model: unwrap its `model` (or `state_dict`) entry, keep
    their tensor names (this model uses them; SyncBatchNorm tensors load into BatchNorm as they are), and
    drop their classifier when the model has none. A DeiT-style distillation head has no place here."""
    return drop_absent_classifier(unwrap_checkpoint(state_dict), model)


default_cfgs = generate_default_cfgs({
    f"dhvt_{size}.untrained": image_cfg("patch_embed.proj.0.0", "head", pool_size=None) for size in ("tiny", "small")})

_VARIANTS = {
    "dhvt_tiny": {"patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3},
    "dhvt_small": {"patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
}


def _create_dhvt(variant: str, pretrained: bool = False, **kwargs) -> DHVT:
    args = {**_VARIANTS[variant], **kwargs}
    depth = args.get("depth", 12)
    last_three = tuple(range(max(depth - 3, 0), depth))
    return build(DHVT, variant, pretrained, args, checkpoint_filter_fn,
                 {"feature_cls": "getter", "out_indices": last_three})


@register_model
def dhvt_tiny(pretrained: bool = False, **kwargs) -> DHVT:
    """DHVT-T for ImageNet (224x224, 16x16 patches): 6.2M parameters, dim 192, depth 12, 3 heads."""
    return _create_dhvt("dhvt_tiny", pretrained, **kwargs)


@register_model
def dhvt_small(pretrained: bool = False, **kwargs) -> DHVT:
    """DHVT-S for ImageNet (224x224, 16x16 patches): 23.8M parameters, dim 384, depth 12, 6 heads."""
    return _create_dhvt("dhvt_small", pretrained, **kwargs)
