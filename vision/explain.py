"""Why an image is a neighbour: class activation maps of the cosine similarity of two embeddings
(pytorch-grad-cam with a similarity target; LayerCAM, the Grad-CAM variant that weighs each position by
its own positive gradient, which stays sharp on shallow, high-resolution layers). For image A and its
neighbour B, A's map shows the regions of A whose features raise A's similarity to B, and B's map the
same for B. It works for every encoder ragcli
builds from timm (CNNs, ViTs, our registered backbones) and for FocalLens, whose map depends on the
condition: the same pair explained under "colour" and under "shape" highlights different regions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from indexes.errors import UserError
from vision.encoders import HFBackbone, ImageEncoder, TimmBackbone
from vision.focallens import FocalLens


class SimilarityTarget:
    """CAM target: the cosine similarity of the explained image's embedding to a fixed embedding."""

    def __init__(self, other: torch.Tensor) -> None:
        self.other = other.detach()

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(embedding, self.other, dim=-1)


class _Embedder(nn.Module):
    """pixels -> embeddings: the encoder as the CAM calls it (FocalLens bound to one condition)."""

    def __init__(self, encoder: ImageEncoder | FocalLens, condition: torch.Tensor | None) -> None:
        super().__init__()
        self.encoder, self.condition = encoder, condition

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, FocalLens):
            condition = None if self.condition is None else self.condition.expand(len(pixels), -1)
            return self.encoder(pixels, condition)
        return self.encoder(pixels)


def explain_pair(encoder: ImageEncoder | FocalLens, first: Image.Image, second: Image.Image,
                 condition: str | None = None, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (H, W) in [0, 1] over what the model sees of each image (`model_view`, at the model's
    resolution): where `first`'s similarity to `second` comes from, and `second`'s to `first`.
    `condition` is FocalLens's instruction."""
    from pytorch_grad_cam import LayerCAM

    layer, reshape = target_layer(encoder)
    instruction = encoder.encode_instruction(condition, device) if isinstance(encoder, FocalLens) else None
    model = _Embedder(encoder, instruction).to(device).eval()
    pixels = _pixels(encoder, [first, second]).to(device)
    with torch.no_grad():
        embeddings = model(pixels)
    with LayerCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=pixels, targets=[SimilarityTarget(embeddings[1]), SimilarityTarget(embeddings[0])])
    return maps[0], maps[1]


def _pixels(encoder: ImageEncoder | FocalLens, images: list[Image.Image]) -> torch.Tensor:
    if isinstance(encoder, FocalLens):
        return encoder.normalize(encoder.preprocess(images))
    return encoder.preprocess(images)


def target_layer(encoder: ImageEncoder | FocalLens) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The layer the map is read from, and how its output becomes a (B, C, H, W) map: the finest feature map
    the model has, since LayerCAM's point is to explain from shallow, high-resolution layers. FocalLens:
    the first block of its conv stem (stride 2), or with the CNN tower its first FiLM-modulated stage (after
    the stride-2 stem), or with an encoder tower that encoder's layer; a CNN: its first feature stage; a
    transformer without a conv stem (timm's, or a transformers tower): its tokens at the last block's first
    norm (the block's output reaches a class-token pooling only through the class token), minus prefix and
    condition tokens."""
    if not isinstance(encoder, FocalLens):
        return _backbone_layer(encoder.backbone, 0, encoder.name)
    if encoder.image_tower == "cnn":
        return encoder.cnn.stages[0], None
    if encoder.image_tower != "vit":
        return _backbone_layer(encoder.encoder.backbone, encoder.encoder.condition_token_count, encoder.image_tower)
    stem = encoder.vit.patch_embed.proj
    if isinstance(stem, nn.Sequential):
        return next(m for m in stem if isinstance(m, nn.ReLU)), None
    extra = encoder.condition.pos.shape[1] if encoder.conditional else 0
    return encoder.vit.blocks[-1].norm1, _token_grid(encoder.vit.num_prefix_tokens, extra)


def _backbone_layer(backbone: TimmBackbone | HFBackbone, suffix: int,
                    name: str) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """`target_layer` of an encoder's backbone; `suffix`: condition tokens after its patch tokens."""
    if isinstance(backbone, HFBackbone):
        return _hf_attention_input(backbone, suffix)
    model = backbone.model
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(f"{name} has no feature_info naming its feature layers; cannot explain it")
    names = [entry["module"] for entry in (info if isinstance(info, list) else info.get_dicts())]
    if _is_token_model(model):
        return model.get_submodule(names[-1]).norm1, _token_grid(getattr(model, "num_prefix_tokens", 0), suffix)
    layer = model.get_submodule(names[0])
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return layer, lambda x: x.permute(0, 3, 1, 2)
    return layer, None


_HF_ATTENTION_NORMS = ("layernorm_before", "layer_norm1", "norm1")  # ViT, CLIP / SigLIP, DINOv2


def _hf_attention_input(backbone: HFBackbone, suffix: int) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """A transformers vision tower's tokens entering its last layer's attention."""
    norms = [m for name, m in backbone.model.named_modules() if name.rsplit(".", 1)[-1] in _HF_ATTENTION_NORMS]
    if not norms:
        raise UserError(f"cannot find the attention inputs of {type(backbone.model).__name__} to explain it")
    return norms[-1], _token_grid(backbone.num_prefix_tokens, suffix)


def _is_token_model(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed") and not hasattr(model, "stages") and all(
        hasattr(block, "norm1") for block in model.blocks)


def _token_grid(prefix: int, suffix: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, prefix + H*W + suffix, C) tokens -> (B, C, H, W)."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:tokens.shape[1] - suffix]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise UserError(f"cannot lay {patches.shape[1]} tokens out on a square grid")
        return patches.transpose(1, 2).reshape(len(tokens), -1, side, side)

    return reshape


def model_view(encoder: ImageEncoder | FocalLens, image: Image.Image) -> Image.Image:
    """The part of `image` the model sees, which its maps cover: the centre crop of timm's eval transform
    (a square of the shorter side times crop_pct), or the whole image (FocalLens resizes it whole)."""
    crop = getattr(getattr(encoder, "backbone", None), "crop_pct", 1.0)
    side = min(image.size) * crop
    left, top = (image.width - side) / 2, (image.height - side) / 2
    return image.crop((round(left), round(top), round(left + side), round(top + side))) if crop < 1 else image


def overlay(image: Image.Image, heat: np.ndarray, size: int | None = None) -> Image.Image:
    """`image` (a `model_view`, resized to the map or to `size`) with the heat map blended over it in colour."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    side = size or heat.shape[0]
    rgb = np.asarray(image.convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.float32) / 255
    mask = np.asarray(Image.fromarray(np.uint8(255 * heat)).resize((side, side), Image.BILINEAR), np.float32) / 255
    return Image.fromarray(show_cam_on_image(rgb, mask, use_rgb=True, image_weight=0.55))


def pointing_hit(heat: np.ndarray, mask: np.ndarray) -> bool:
    """The pointing game: is the map's maximum on the object (`mask`, same shape, True on the object)?"""
    return bool(mask.flat[int(np.argmax(heat))])


def heat_on_object(heat: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's total heat that falls on the object."""
    total = float(heat.sum())
    return float(heat[mask].sum()) / total if total > 0 else 0.0


def explain(engine: Any, image: Any, neighbour_id: Any, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The (query map, neighbour map) of an image index's engine (`open_index(name)`) for a query image (a
    path or PIL image) and one indexed id, under the index's condition."""
    if not hasattr(engine, "item_image"):
        raise UserError("explanations are for image indexes")
    query = engine.image_of(engine.as_query(image))
    return explain_pair(engine.encoder, query, engine.item_image(neighbour_id), engine.condition, device)
