"""How an image tower takes an instruction: FiLM on feature maps, condition tokens in a token sequence.

- FiLM ("FiLM: Visual Reasoning with a General Conditioning Layer", Perez et al. 2018): a per-channel scale
  and shift computed from the instruction embedding, initialised to the identity (gamma = 1, beta = 0), so
  that at init a conditional tower is its unconditional self.
- Condition tokens: the instruction projected into a few tokens appended to a transformer's sequence after
  its position embeddings (after the class token, so token pooling reads the same place).

`FiLMCNN` is FocalLens's own small CNN; `ConditionedTower` conditions any encoder ragcli builds (a timm
model, one of this project's registered backbones, a transformers vision tower) through forward hooks:
tokens for ViT-style models, FiLM on each feature stage for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from indexes.errors import UserError
from vision.encoders import HFBackbone, TimmBackbone, create_backbone, parse_spec

CNN_WIDTHS = (32, 64, 128)  # one residual stage each; a stride-2 stem, then 32 px -> 16, 8, 4


def film_generator(text_dim: int, width: int) -> nn.Linear:
    """A linear map from the instruction embedding to (gamma, beta) for `width` channels, at the identity."""
    generator = nn.Linear(text_dim, 2 * width)
    nn.init.zeros_(generator.weight)
    with torch.no_grad():
        generator.bias.copy_(torch.cat([torch.ones(width), torch.zeros(width)]))
    return generator


def apply_film(features: torch.Tensor, film: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """`features` scaled and shifted per channel (on `channel_dim`) by `film`: (B, 2C) scales then shifts."""
    gamma, beta = film.to(features.dtype).chunk(2, dim=1)
    shape = [len(features)] + [1] * (features.ndim - 1)
    shape[channel_dim] = -1
    return gamma.view(shape) * features + beta.view(shape)


class ConditionTokens(nn.Module):
    """The instruction as `count` tokens of `width` (LayerNorm, linear, learned token positions)."""

    def __init__(self, text_dim: int, count: int, width: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, count * width))
        self.pos = nn.Parameter(torch.zeros(1, count, width))

    def append(self, tokens: torch.Tensor, instructions: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens followed by the (B, count, C) condition tokens."""
        condition = self.project(instructions).view(len(tokens), *self.pos.shape[1:]) + self.pos
        return torch.cat([tokens, condition.to(tokens.dtype)], dim=1)


class FiLMStage(nn.Module):
    """A residual block (two 3x3 conv-BN; a 1x1 conv-BN shortcut when it strides or widens) whose last BN
    output is FiLM-modulated before the residual sum and ReLU, as in FiLM's residual blocks."""

    def __init__(self, in_width: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = (nn.Identity() if stride == 1 and in_width == width else
                         nn.Sequential(nn.Conv2d(in_width, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)))

    def forward(self, x: torch.Tensor, film: torch.Tensor | None = None) -> torch.Tensor:
        """`film`: (B, 2 * width) scales then shifts, or None (the unconditional block)."""
        out = self.bn2(self.conv2(nn.functional.relu(self.bn1(self.conv1(x)))))
        if film is not None:
            out = apply_film(out, film)
        return nn.functional.relu(out + self.shortcut(x))


class FiLMCNN(nn.Module):
    """FocalLens's CNN tower: a stride-2 3x3 conv-BN-ReLU stem (as ResNet's, at half resolution), then a
    `FiLMStage` per width, the first at the stem's resolution and each further one at half the last; with
    `text_dim`, one FiLM generator per stage. `forward` returns the globally average-pooled last stage."""

    def __init__(self, widths: Sequence[int] = CNN_WIDTHS, text_dim: int | None = None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(FiLMStage(a, b, 1 if i == 0 else 2)
                                    for i, (a, b) in enumerate(zip((widths[0], *widths), widths)))
        self.film = None if text_dim is None else nn.ModuleList(film_generator(text_dim, w) for w in widths)
        self.num_features = widths[-1]

    def forward(self, pixels: torch.Tensor, instructions: torch.Tensor | None = None) -> torch.Tensor:
        x = self.stem(pixels)
        for i, stage in enumerate(self.stages):
            x = stage(x, None if self.film is None else self.film[i](instructions))
        return x.mean((2, 3))


def build_backbone(spec: str, image_size: int, hf_config: dict[str, Any] | None = None) -> TimmBackbone | HFBackbone:
    """The randomly initialised backbone of an encoder spec (`timm:NAME`, a registered name, `hf:SOURCE`) at
    `image_size`; an `hf:` tower is built from `hf_config` (its transformers config as a dict)."""
    if parse_spec(spec)[0] == "timm":
        return create_backbone(spec, image_size=image_size)
    if not isinstance(hf_config, dict) or not isinstance(hf_config.get("model_type"), str):
        raise UserError(f"an {spec} tower needs its transformers config (tower_config with a model_type)")
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.for_model(**hf_config)
        model = AutoModel.from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot build the {spec} tower from its config: {err}") from None
    return HFBackbone(model, processor=None)


class ConditionedTower(nn.Module):
    """An encoder backbone that also reads an instruction embedding: condition tokens appended after the
    position embeddings of a ViT-style model (timm's `norm_pre`, a transformers tower's `embeddings`), or
    FiLM on the output of every stage timm's `feature_info` names. `text_dim=None`: unconditional.
    `forward` returns the backbone's own pooled features, (B, num_features)."""

    def __init__(self, backbone: TimmBackbone | HFBackbone, text_dim: int | None, condition_tokens: int = 4):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.pooled_dim
        self.uses_tokens = _token_site(backbone) is not None
        self.tokens = self.film = None
        self._instructions: torch.Tensor | None = None
        if text_dim is None:
            return
        if self.uses_tokens:
            self.tokens = ConditionTokens(text_dim, condition_tokens, backbone.token_dim)
            _token_site(backbone).register_forward_hook(self._append_tokens)
            return
        stages = _film_sites(backbone)
        self.film = nn.ModuleList(film_generator(text_dim, width) for _, width in stages)
        self.channels_last = getattr(backbone.model, "output_fmt", "NCHW") == "NHWC"
        for i, (module, _) in enumerate(stages):
            module.register_forward_hook(self._film_hook(i))

    @property
    def condition_token_count(self) -> int:
        return 0 if self.tokens is None else self.tokens.pos.shape[1]

    def forward(self, pixels: torch.Tensor, instructions: torch.Tensor | None = None) -> torch.Tensor:
        self._instructions = instructions
        try:
            if isinstance(self.backbone, HFBackbone):  # at FocalLens's resolution, whatever the tower was trained at
                features = self.backbone.model(pixel_values=pixels, interpolate_pos_encoding=True)
            else:
                features = self.backbone(pixels)
            return self.backbone.pooled(features)
        finally:
            self._instructions = None

    def _append_tokens(self, _module: nn.Module, _inputs: Any, tokens: torch.Tensor) -> torch.Tensor | None:
        if self._instructions is None:
            return None
        if tokens.ndim != 3:
            raise UserError(f"{type(self.backbone.model).__name__} does not embed images as a token sequence; "
                            "it cannot take condition tokens")
        return self.tokens.append(tokens, self._instructions)

    def _film_hook(self, stage: int):
        def hook(_module: nn.Module, _inputs: Any, features: torch.Tensor) -> torch.Tensor | None:
            if self._instructions is None:
                return None
            channel_dim = -1 if self.channels_last or features.ndim == 3 else 1
            return apply_film(features, self.film[stage](self._instructions), channel_dim % features.ndim)

        return hook


def _token_site(backbone: TimmBackbone | HFBackbone) -> nn.Module | None:
    """The module whose output is a ViT's token sequence with positions added, or None for other models."""
    if isinstance(backbone, HFBackbone):
        embeddings = getattr(backbone.model, "embeddings", None)
        if embeddings is None:
            raise UserError(f"an hf: tower must be a ViT-style transformers model (with embeddings); "
                            f"{type(backbone.model).__name__} is not")
        return embeddings
    model = backbone.model
    is_vit = all(hasattr(model, name) for name in ("norm_pre", "blocks", "patch_embed", "_pos_embed"))
    return model.norm_pre if is_vit else None


def _film_sites(backbone: TimmBackbone) -> list[tuple[nn.Module, int]]:
    """(module, channels) of every feature stage of a timm model, from its `feature_info`."""
    info = getattr(backbone.model, "feature_info", None)
    entries = info if isinstance(info, list) else info.get_dicts() if info is not None else []
    if not entries:
        raise UserError(f"{type(backbone.model).__name__} has no feature_info naming its stages; it cannot "
                        "be a FiLM-conditioned tower")
    return [(backbone.model.get_submodule(entry["module"]), int(entry["num_chs"])) for entry in entries]
