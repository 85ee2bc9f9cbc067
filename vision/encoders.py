"""Image encoders: any timm model, any transformers vision model, or this project's backbones -> embeddings.

`create_encoder("timm:convit_tiny")`, `create_encoder("hf:path/to/clip")`, `create_encoder("van_b0")`.
Weights come from a local safetensors file or directory (random init when none: nothing is ever
downloaded unless a hub id is given). Preprocessing comes from the model's own config (timm data
config / HF image processor). An encoder saves to a directory (config.json + model.safetensors) and
reloads to give identical embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, load_model, save_model
from torch import nn

import vision.backbones  # noqa: F401  (registers this project's models with timm)
from indexes.errors import UserError
from indexes.runtime import atomic_dir, progress, resolve_device
from vision.backbones import apply_evit
from vision.pooling import create_pooling

FORMAT = "ragcli.image-encoder/1"
KINDS = ("timm", "hf")


class TimmBackbone(nn.Module):
    """A timm model without classifier; default pooling is the model's own `forward_head(pre_logits=True)`."""

    def __init__(self, model: nn.Module, image_size: int | None = None) -> None:
        super().__init__()
        from timm.data import create_transform, resolve_data_config

        self.model = model
        overrides = {} if image_size is None else {"input_size": (3, image_size, image_size)}
        self.transform = create_transform(**resolve_data_config(overrides, model=model))
        self.num_prefix_tokens = getattr(model, "num_prefix_tokens", 0)
        self.token_dim = model.num_features
        self.pooled_dim = getattr(model, "head_hidden_size", None) or model.num_features
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image.convert("RGB")) for image in images])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixels)

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=True)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 4:  # a feature map: its positions are the tokens
            return features.flatten(1, 2) if self.channels_last else features.flatten(2).transpose(1, 2)
        return features


class HFBackbone(nn.Module):
    """A transformers vision model (or the vision tower of CLIP / SigLIP) with its image processor.

    Default pooling is the model's `pooler_output` (CLIP / SigLIP / DINOv2 pool there), else the first token.
    """

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__()
        self.model = getattr(model, "vision_model", model)
        self.processor = processor
        config = getattr(model.config, "vision_config", model.config)
        embeddings = getattr(self.model, "embeddings", None)
        has_cls = hasattr(embeddings, "cls_token") or hasattr(embeddings, "class_embedding")
        self.num_prefix_tokens = int(has_cls) + getattr(config, "num_register_tokens", 0)
        self.token_dim = self.pooled_dim = config.hidden_size

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [image.convert("RGB") for image in images]
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"]

    def forward(self, pixels: torch.Tensor) -> Any:
        return self.model(pixel_values=pixels)

    def pooled(self, features: Any) -> torch.Tensor:
        pooled = getattr(features, "pooler_output", None)
        return pooled if pooled is not None else features.last_hidden_state[:, 0]

    def tokens(self, features: Any) -> torch.Tensor:
        return features.last_hidden_state


class ImageEncoder(nn.Module):
    """Backbone + pooling head -> (B, dim) embeddings, with preprocessing, batching and persistence."""

    def __init__(self, backbone: TimmBackbone | HFBackbone, spec: str, pooling: str = "default",
                 image_size: int | None = None, model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = None if pooling == "default" else create_pooling(pooling, backbone.token_dim,
                                                                     backbone.num_prefix_tokens)
        self.name = spec
        self.pooling = pooling
        self.image_size = image_size
        self.model_kwargs = dict(model_kwargs or {})
        self.dim = backbone.pooled_dim if self.pool is None else backbone.token_dim

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> a (B, 3, H, W) float tensor, resized / cropped / normalised as the model expects."""
        return self.backbone.preprocess(images)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.backbone(pixels)
        return self.backbone.pooled(features) if self.pool is None else self.pool(self.backbone.tokens(features))

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The backbone's (B, N, C) tokens, prefix tokens first: what pooling heads read."""
        return self.backbone.tokens(self.backbone(pixels))

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32, device: str = "auto") -> np.ndarray:
        """Embed images in batches (progress bar in images/s) -> (N, dim) float32."""
        batches = [b.numpy() for b in self.map_batches(self, images, batch_size, device)]
        return np.concatenate(batches) if batches else np.empty((0, self.dim), dtype=np.float32)

    @torch.inference_mode()
    def map_batches(self, fn: Callable[[torch.Tensor], torch.Tensor], images: Sequence[Image.Image],
                    batch_size: int = 32, device: str = "auto") -> Iterator[torch.Tensor]:
        """Yield `fn(pixels)` (float32, on the CPU) for consecutive batches of `images`, with a progress bar.

        Runs in eval mode on `device`, under bf16 autocast on CUDA.
        """
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        dev = resolve_device(device)
        self.to(dev).eval()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.startswith("cuda"))
        with progress(total=len(images), desc=f"embedding ({self.name})", unit="img") as bar, autocast:
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size]
                yield fn(self.preprocess(batch).to(dev)).float().cpu()
                bar.update(len(batch))

    def describe(self) -> dict[str, Any]:
        """JSON-able settings that re-create this encoder (for index manifests and config.json)."""
        return {"format": FORMAT, "name": self.name, "spec": self.name, "pooling": self.pooling,
                "image_size": self.image_size, "model_kwargs": self.model_kwargs, "dim": self.dim}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config.json + model.safetensors (+ the HF config and image processor) atomically."""
        with atomic_dir(path) as tmp:
            (tmp / "config.json").write_text(json.dumps(self.describe(), indent=2))
            save_model(self, str(tmp / "model.safetensors"))
            if isinstance(self.backbone, HFBackbone):
                self.backbone.model.config.save_pretrained(tmp / "hf")
                self.backbone.processor.save_pretrained(tmp / "hf")
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ImageEncoder:
        """Re-create an encoder written by `save_pretrained` (nothing is downloaded)."""
        path = Path(path)
        config = read_encoder_config(path)
        kind, source = parse_spec(config["spec"])
        if kind == "hf":
            source = str(path / "hf")
        backbone = _BUILDERS[kind](source, None, config["image_size"], dict(config["model_kwargs"]))
        encoder = cls(backbone, config["spec"], config["pooling"], config["image_size"], config["model_kwargs"])
        try:
            load_model(encoder, str(path / "model.safetensors"))
        except (OSError, RuntimeError) as err:
            raise UserError(f"cannot load encoder weights from {path}: {_first_line(err)}") from None
        return encoder


def create_encoder(spec: str, weights: str | Path | None = None, pooling: str = "default",
                   image_size: int | None = None, **model_kwargs: Any) -> ImageEncoder:
    """Build an encoder from `timm:<name>`, `hf:<path-or-id>`, a registered model name, or a saved encoder dir.

    timm options: `image_size` (input size for preprocessing, and for models with fixed-size position
    embeddings), `evit_keep_rate` / `evit_layers` (EViT token reorganisation on a ViT), any timm kwarg.
    """
    if is_saved_encoder(spec):
        if weights is not None or pooling != "default" or image_size is not None or model_kwargs:
            raise UserError(f"{spec} is a saved encoder: it carries its own weights and settings")
        return ImageEncoder.from_pretrained(spec)
    kind, source = parse_spec(spec)
    backbone = _BUILDERS[kind](source, weights, image_size, dict(model_kwargs))
    return ImageEncoder(backbone, f"{kind}:{source}", pooling, image_size, model_kwargs)


def parse_spec(spec: str) -> tuple[str, str]:
    """`timm:name` / `hf:source` / a bare registered timm name -> (kind, source)."""
    import timm

    kind, sep, source = spec.partition(":")
    if sep and kind in KINDS and source:
        return kind, source
    if timm.is_model(spec):
        return "timm", spec
    raise UserError(f"unknown encoder {spec!r}: use timm:<model>, hf:<path-or-id>, a saved encoder "
                    "directory, or a registered model name (e.g. van_b0)")


def is_saved_encoder(path: str | Path) -> bool:
    """Whether `path` is a directory written by `ImageEncoder.save_pretrained`."""
    config = Path(path) / "config.json"
    return config.is_file() and _read_json(config).get("format") == FORMAT


def read_encoder_config(path: Path) -> dict[str, Any]:
    """The config.json of a saved encoder, checked for format."""
    if not is_saved_encoder(path):
        raise UserError(f"{path} is not a saved ragcli image encoder (no config.json with format {FORMAT})")
    return _read_json(path / "config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def weights_file(weights: str | Path) -> Path:
    """A safetensors file, or the model.safetensors inside a directory."""
    path = Path(weights)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise UserError(f"weights not found: {path}")
    if path.suffix != ".safetensors":
        raise UserError(f"weights must be a .safetensors file (never pickles), got {path.name}")
    return path


def _build_timm(name: str, weights: str | Path | None, image_size: int | None,
                model_kwargs: dict[str, Any]) -> TimmBackbone:
    import timm

    if not timm.is_model(name):
        raise UserError(f"timm has no model {name!r} (see timm.list_models())")
    keep_rate = model_kwargs.pop("evit_keep_rate", None)
    evit_layers = model_kwargs.pop("evit_layers", None)
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, **model_kwargs}
    if image_size is not None and timm.models.get_pretrained_cfg(name).fixed_input_size:
        kwargs["img_size"] = image_size  # position embeddings are sized at construction
    if weights is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights_file(weights))})
    try:
        model = timm.create_model(name, **kwargs)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"cannot create timm model {name!r}: {_first_line(err)}") from None
    if keep_rate is not None:
        apply_evit(model, float(keep_rate), evit_layers)
    return TimmBackbone(model, image_size)


def _build_hf(source: str, weights: str | Path | None, image_size: int | None,
              model_kwargs: dict[str, Any]) -> HFBackbone:
    from transformers import MODEL_MAPPING, AutoConfig, AutoImageProcessor, AutoModel

    if image_size is not None:
        raise UserError("image_size applies to timm encoders; an hf: encoder takes its size from its image processor")
    try:
        processor = AutoImageProcessor.from_pretrained(source)
        config = AutoConfig.from_pretrained(source)
        if weights is not None:
            model, info = MODEL_MAPPING[type(config)].from_pretrained(
                None, config=config, state_dict=load_file(weights_file(weights)), output_loading_info=True, **model_kwargs)
        elif Path(source).is_dir() and not any(Path(source).glob("*.safetensors")):  # no weights: random init
            model, info = AutoModel.from_config(config, **model_kwargs), {}
        else:
            model, info = AutoModel.from_pretrained(source, output_loading_info=True, **model_kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load HF vision model {source!r}: {_first_line(err)}") from None
    missing = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
    if missing:
        raise UserError(f"weights do not fit {source!r}: {len(missing)} tensors missing or misshapen, e.g. {sorted(missing)[0]}")
    return HFBackbone(model, processor)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


_BUILDERS = {"timm": _build_timm, "hf": _build_hf}
