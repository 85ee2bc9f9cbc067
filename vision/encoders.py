"""Image encoders: any timm model, any transformers vision model, or this project's backbones -> embeddings.

`create_encoder("timm:convit_tiny")`, `create_encoder("hf:path/to/clip")`, `create_encoder("van_b0")`.
Weights come from a local safetensors file or directory (random init when none: nothing is ever
downloaded unless a hub id is given). Preprocessing comes from the model's own config (timm data
config / HF image processor). An encoder saves to a directory (config.json + model.safetensors) and
reloads to give identical embeddings. Weights load strictly (a file that does not fit the model is an
error, not a random model), and an encoder left with random weights says so on stderr.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

import vision.backbones  # noqa: F401  (registers this project's models with timm)
from indexes.checks import choice, integer, text
from indexes.errors import UserError
from indexes.files import read_json
from indexes.runtime import error_line, load_weights, progress, require_finite_parameters, resolve_device
from vision.backbones import apply_evit
from vision.pooling import POOLINGS, create_pooling

FORMAT = "ragcli.image-encoder/1"
KINDS = ("timm", "hf")
MAX_IMAGE_SIZE = 4096  # input side in pixels


class TimmBackbone(nn.Module):
    """A timm model without classifier; default pooling is the model's own `forward_head(pre_logits=True)`."""

    def __init__(self, model: nn.Module, image_size: int | None = None) -> None:
        super().__init__()
        from timm.data import create_transform, resolve_data_config

        self.model = model
        overrides = {} if image_size is None else {"input_size": (3, image_size, image_size)}
        config = resolve_data_config(overrides, model=model)
        self.transform = create_transform(**config)
        self.crop_pct = float(config.get("crop_pct") or 1.0)  # the centre share of the image the model sees
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
    """Backbone + pooling head -> (B, dim) embeddings, with preprocessing, batching and persistence.

    `random_weights`: the backbone was left at its random init; the first embedding run says so on stderr."""

    def __init__(self, backbone: TimmBackbone | HFBackbone, spec: str, pooling: str = "default",
                 image_size: int | None = None, model_kwargs: dict[str, Any] | None = None,
                 random_weights: bool = False) -> None:
        super().__init__()
        self.random_weights, self._announced = random_weights, False
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
        if self.random_weights and not self._announced:
            announce_random_weights(self.name)
            self._announced = True
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
        """Write config.json + model.safetensors (+ the HF config and image processor) into `path`
        (wrap it in `indexes.files.atomic_dir` to publish it atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.describe(), indent=2))
        save_model(self, str(path / "model.safetensors"))
        if isinstance(self.backbone, HFBackbone):
            self.backbone.model.config.save_pretrained(path / "hf")
            self.backbone.processor.save_pretrained(path / "hf")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ImageEncoder:
        """Re-create an encoder written by `save_pretrained` (nothing is downloaded), every tensor from
        its model.safetensors."""
        path = Path(path)
        config = read_encoder_config(path)
        kind, source = parse_spec(config["spec"])
        if kind == "hf":
            if not (path / "hf").is_dir():
                raise UserError(f"{path}: an hf: encoder keeps its model config and image processor in hf/, "
                                "which is missing")
            source = str(path / "hf")
        backbone = _BUILDERS[kind](source, None, config["image_size"], dict(config["model_kwargs"]))
        encoder = cls(backbone, config["spec"], config["pooling"], config["image_size"], config["model_kwargs"])
        if encoder.dim != config["dim"]:
            raise UserError(f"{path}: config.json says dim {config['dim']}, but its model gives {encoder.dim}")
        load_weights(encoder, path / "model.safetensors", path)
        return encoder


def create_encoder(spec: str, weights: str | Path | None = None, pooling: str = "default",
                   image_size: int | None = None, **model_kwargs: Any) -> ImageEncoder:
    """Build an encoder from `timm:<name>`, `hf:<path-or-id>`, a registered model name, or a saved encoder dir.

    timm options: `image_size` (input size for preprocessing, and for models with fixed-size position
    embeddings), `evit_keep_rate` / `evit_layers` (EViT token reorganisation on a ViT), any timm kwarg.
    Without weights (and no hub checkpoint) the weights are random, which embedding announces on stderr.
    """
    if is_saved_encoder(spec):
        if weights is not None or pooling != "default" or image_size is not None or model_kwargs:
            raise UserError(f"{spec} is a saved encoder: it carries its own weights and settings")
        return ImageEncoder.from_pretrained(spec)
    kind, source = parse_spec(spec)
    backbone = create_backbone(spec, weights, image_size, **model_kwargs)
    random_weights = weights is None and (kind == "timm" or not _hf_has_weights(source))
    return ImageEncoder(backbone, f"{kind}:{source}", pooling, image_size, model_kwargs, random_weights)


def create_backbone(spec: str, weights: str | Path | None = None, image_size: int | None = None,
                    **model_kwargs: Any) -> TimmBackbone | HFBackbone:
    """The backbone of an encoder spec (`timm:NAME`, a registered name, `hf:SOURCE`) without a pooling head:
    weights from `weights`, or an `hf:` source's own; random otherwise."""
    kind, source = parse_spec(spec)
    if image_size is not None:
        integer("image size", image_size, 8, MAX_IMAGE_SIZE)
    return _BUILDERS[kind](source, weights, image_size, dict(model_kwargs))


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


def list_encoders(pattern: str | None = None) -> list[dict[str, Any]]:
    """The timm models ragcli builds encoders from, as `timm.list_models(pattern)` lists them (this project's
    backbones and timm's own): each one's name, source ("ragcli" or "timm"), and whether its pretrained weights
    are on this machine already (`local_weights`; nothing is fetched to find out)."""
    import timm
    from timm.models import get_pretrained_cfg, model_entrypoint

    def source(name: str) -> str:
        return "ragcli" if model_entrypoint(name).__module__.startswith("vision.backbones.") else "timm"

    return [{"name": name, "source": source(name), "local_weights": _has_local_weights(get_pretrained_cfg(name))}
            for name in timm.list_models(pattern or "")]


def _has_local_weights(cfg: Any) -> bool:
    """Whether a timm pretrained config's weights are on disk: its `file`, or a download of its hub id (Hugging
    Face cache) or url (torch hub cache, where timm keeps them). Our backbones configure none of these."""
    if cfg is None:
        return False
    if cfg.file:
        return Path(cfg.file).exists()
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo, name, revision=revision or None), str) for name in names):
            return True
    cached_url = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url or "").path).name
    return bool(cfg.url) and cached_url.is_file()


def is_saved_encoder(path: str | Path) -> bool:
    """Whether `path` is a directory with a config.json: a saved encoder (`read_encoder_config` checks it)."""
    return (Path(path) / "config.json").exists()


def read_encoder_config(path: Path) -> dict[str, Any]:
    """The config.json of a saved encoder: its format, and each setting's type and range."""
    config = read_json(path / "config.json", "encoder config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path} is not a saved ragcli image encoder (no config.json with format {FORMAT})")
    where = f"{path / 'config.json'}:"
    text(f"{where} spec", config.get("spec"), "an encoder spec string")
    choice(f"{where} pooling", config.get("pooling"), ("default", *POOLINGS))
    if config.get("image_size") is not None:
        integer(f"{where} image_size", config["image_size"], 8, MAX_IMAGE_SIZE)
    if not isinstance(config.get("model_kwargs"), dict):
        raise UserError(f"{where} model_kwargs must be an object, got {config.get('model_kwargs')!r}")
    integer(f"{where} dim", config.get("dim"), 1, 1 << 20)
    return config


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
    """A timm model without classifier; `weights` must fill every one of its tensors (timm's own checkpoint
    filter still adapts them, e.g. resizing position embeddings to `image_size`)."""
    import timm

    if not timm.is_model(name):
        raise UserError(f"timm has no model {name!r} (see timm.list_models())")
    keep_rate = model_kwargs.pop("evit_keep_rate", None)
    evit_layers = model_kwargs.pop("evit_layers", None)
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, **model_kwargs}
    if image_size is not None and timm.models.get_pretrained_cfg(name).fixed_input_size:
        kwargs["img_size"] = image_size  # position embeddings are sized at construction
    if weights is not None:
        # num_classes 0 on both sides keeps timm's load strict (it relaxes it when it drops a classifier itself)
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"state_dict": _headless_state(name, weights),
                                                               "num_classes": 0})
    try:
        model = timm.create_model(name, **kwargs)
        if keep_rate is not None:
            apply_evit(model, float(keep_rate), evit_layers)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:  # KeyError: a checkpoint filter meeting another layout
        misfit = weights is not None and (isinstance(err, KeyError) or "loading state_dict" in str(err))
        what = f"weights {weights} do not fit" if misfit else "cannot create"
        detail = f"no tensor {err}" if isinstance(err, KeyError) else error_line(err)
        raise UserError(f"{what} timm model {name!r}: {detail}") from None
    if weights is not None:
        model.pretrained_cfg.pop("state_dict", None)  # keep no second copy of the weights
        require_finite_parameters(model, weights)
    return TimmBackbone(model, image_size)


def _headless_state(name: str, weights: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors weights file, less the model's classifier head (encoders have none)."""
    import timm

    file = weights_file(weights)
    try:
        state = load_file(file)
    except (OSError, SafetensorError) as err:
        raise UserError(f"cannot read weights {file}: {error_line(err)}") from None
    heads = getattr(timm.models.get_pretrained_cfg(name), "classifier", None) or ()
    heads = [heads] if isinstance(heads, str) else heads
    dropped = {f"{head}.{part}" for head in heads for part in ("weight", "bias")}
    return {k: v for k, v in state.items() if k not in dropped}


def _build_hf(source: str, weights: str | Path | None, image_size: int | None,
              model_kwargs: dict[str, Any]) -> HFBackbone:
    from transformers import MODEL_MAPPING, AutoConfig, AutoImageProcessor, AutoModel

    if image_size is not None:
        raise UserError("image_size applies to timm encoders; an hf: encoder takes its size from its image processor")
    try:
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(source)
            config = AutoConfig.from_pretrained(source)
            if weights is not None:
                model, info = MODEL_MAPPING[type(config)].from_pretrained(
                    None, config=config, state_dict=load_file(weights_file(weights)), output_loading_info=True,
                    **model_kwargs)
            elif not _hf_has_weights(source):  # a config without weights: random init
                model, info = AutoModel.from_config(config, **model_kwargs), {}
            else:
                model, info = AutoModel.from_pretrained(source, output_loading_info=True, **model_kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise UserError(f"cannot load HF vision model {source!r}: {error_line(err)}") from None
    wrong = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ()), *info.get("unexpected_keys", ())]
    if wrong:
        raise UserError(f"weights do not fit {source!r}: {len(wrong)} tensors missing, misshapen or unexpected, "
                        f"e.g. {', '.join(sorted(map(str, wrong))[:3])}")
    require_finite_parameters(model, weights or source)
    return HFBackbone(model, processor)


def _hf_has_weights(source: str) -> bool:
    """A hub id, or a local directory holding safetensors weights (never pickles)."""
    return not Path(source).is_dir() or any(Path(source).glob("*.safetensors"))


_BUILDERS = {"timm": _build_timm, "hf": _build_hf}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Keep transformers' loading reports (missing / unexpected tensor tables, progress bars) off the
    terminal: ragcli turns a mismatch into its own one-line error."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def announce_random_weights(spec: str) -> None:
    """Say on stderr (one line, whichever command embeds) that an encoder's embeddings come from random weights."""
    click.echo(f"warning: {spec} has random weights (no --weights given); its embeddings are not meaningful", err=True)
