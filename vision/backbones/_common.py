"""What this project's timm backbones share, so that each model file is only about its architecture.

- timm's classifier API (`get_classifier`, `reset_classifier`, `forward_head`, `forward`) in two forms:
  `HeadModel` for a timm-style head module, `LinearHeadModel` for a model that pools by itself;
- their weight inits, pretrained configs, feature pyramids, drop-path schedules and `build`;
- checkpoint plumbing for their `checkpoint_filter_fn`s: `unwrap_checkpoint`, `drop_absent_classifier`
  and `stage_key` (Swin-style checkpoints whose downsampling ends a stage).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg
from torch import nn

# features_only for a model with four `stages` children (timm's FeatureListNet walks them)
STAGE_FEATURES = {"out_indices": (0, 1, 2, 3), "flatten_sequential": True}
CHECKPOINT_WRAPPERS = ("model", "state_dict", "model_ema")  # where training scripts put the weights


class TimmModel(nn.Module):
    """`forward` as timm models have it: `forward_head(forward_features(x))`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class HeadModel(TimmModel):
    """timm's classifier API over a timm-style `head` module (ClassifierHead, NormMlpClassifierHead or one like
    them: a `fc` classifier, `reset(num_classes, global_pool)`, `head(x, pre_logits=...)`)."""

    head: nn.Module

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)


class LinearHeadModel(TimmModel):
    """timm's classifier API for a model that pools its features itself (`pool`, by its `global_pool`, one of
    `global_pools`), then applies `head_drop` and a linear `head` of `head_hidden_size` inputs (an Identity
    without classes)."""

    global_pools: tuple[str, ...] = ("avg",)
    global_pool: str
    head: nn.Module
    head_drop: nn.Module
    head_hidden_size: int

    def check_pool(self, global_pool: str) -> str:
        if global_pool not in self.global_pools:
            raise ValueError(f"{type(self).__name__} pools by {' or '.join(map(repr, self.global_pools))}, "
                             f"got global_pool={global_pool!r}")
        return global_pool

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """forward_features' output -> (B, head_hidden_size)."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = self.check_pool(global_pool)
        self.num_classes = num_classes
        self.head = linear_head(self.head_hidden_size, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)


def linear_head(dim: int, num_classes: int) -> nn.Module:
    """A linear classifier, or an Identity for num_classes 0 (features out)."""
    return nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()


def init_trunc_normal(module: nn.Module, types: tuple[type[nn.Module], ...] = (nn.Linear,)) -> None:
    """ViT-style init for `model.apply`: weights of `types` modules from N(0, 0.02) truncated at +-2, zero biases."""
    if isinstance(module, types):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_trunc_normal_conv(module: nn.Module) -> None:
    """`init_trunc_normal` for convs as well as linear layers."""
    init_trunc_normal(module, (nn.Linear, nn.Conv2d))


def init_fan_out(module: nn.Module) -> None:
    """ConvNet init for `model.apply`: convs from N(0, 2 / fan_out) (fan-out per group), linear layers as
    `init_trunc_normal`, zero biases."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    init_trunc_normal(module)


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to `drop_path_rate` over all blocks, split into stages."""
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start:start + depth] for start, depth in zip(starts, depths)]


def stage_feature_info(dims: Sequence[int], module: str = "stages", reduction: int = 4) -> list[dict[str, Any]]:
    """feature_info of a pyramid whose stage i (`{module}.{i}`) has dims[i] channels at stride reduction * 2^i."""
    return [{"num_chs": d, "reduction": reduction * 2 ** i, "module": f"{module}.{i}"} for i, d in enumerate(dims)]


def image_cfg(first_conv: str, classifier: str = "head.fc", **kwargs: Any) -> dict[str, Any]:
    """A pretrained config (timm's data config and layer names) of an ImageNet-1k model at 224 px; kwargs override."""
    return {"num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
            "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "first_conv": first_conv, "classifier": classifier, **kwargs}


def build(model_cls: type[nn.Module], variant: str, pretrained: bool, args: dict[str, Any],
          filter_fn: Callable[[dict, nn.Module], dict] | None = None,
          feature_cfg: dict[str, Any] | None = STAGE_FEATURES) -> nn.Module:
    """timm's `build_model_with_cfg` for one of our variants: its checkpoint filter and features_only config."""
    return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn,
                                feature_cfg=feature_cfg, **args)


def unwrap_checkpoint(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The tensors of a checkpoint saved bare or under "model" / "state_dict" / "model_ema" (the first found, at
    each level), with DataParallel's "module." prefix removed."""
    for key in CHECKPOINT_WRAPPERS:
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def drop_absent_classifier(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """`state_dict` less the classifier tensors (the pretrained cfg's `classifier`) that `model` does not have:
    a checkpoint's head, loaded into a model without classes."""
    own = model.state_dict()
    head = f"{model.pretrained_cfg['classifier']}."
    return {k: v for k, v in state_dict.items() if k in own or not k.startswith(head)}


def stage_key(key: str, theirs: str, ours: str = "stages") -> str:
    """A Swin-style checkpoint key -> ours: `{theirs}.{i}.downsample.*`, the downsampling that ends their stage i,
    is `{ours}.{i + 1}.downsample.*` (it starts our next stage); any other `{theirs}.{i}.*` is `{ours}.{i}.*`."""
    match = re.match(rf"{re.escape(theirs)}\.(\d+)\.(.+)", key)
    if match is None:
        return key
    stage, rest = int(match[1]), match[2]
    return f"{ours}.{stage + 1}.{rest}" if rest.startswith("downsample.") else f"{ours}.{stage}.{rest}"
