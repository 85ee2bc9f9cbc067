"""FocalLens (FocalLens-CLIP style): an image tower conditioned on an encoded instruction, so one image
gets a different embedding per instruction.

The instruction is embedded by a frozen text encoder (all-MiniLM-L6-v2 by default, or the text tower of
an `hf:` CLIP). The image towers take it as `vision.conditioning` describes:

- `tower="vit"`: a small ViT whose token sequence also carries condition tokens, the instruction projected
  into a few tokens appended after the patch and position embeddings; its pooled class token is the feature.
- `tower="cnn"`: a small ResNet-style CNN whose every stage is modulated by FiLM; globally average-pooled,
  its last stage is the image feature.
- `tower=<encoder spec>` (`timm:resnet18`, a registered backbone such as `van_b0`, `hf:PATH`): that encoder,
  with condition tokens if it is ViT-style and FiLM on each feature stage otherwise; its pooled features.

The image feature is projected into the text-embedding space, where training aligns it with the embedding
of the instruction's answer. With `conditional=False` the same network ignores instructions: the
unconditional baseline trained by the same loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE
from PIL import Image
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from indexes.checks import boolean, integer, number, text
from indexes.errors import UserError
from indexes.files import regular_file
from indexes.runtime import error_line, load_pretrained, progress, resolve_device
from indexes.text_encoder import DEFAULT_TEXT_ENCODER, load_text_encoder
from vision.conditioning import CNN_WIDTHS, ConditionedTower, ConditionTokens, FiLMCNN, build_backbone
from vision.encoders import MAX_IMAGE_SIZE, HFBackbone, TimmBackbone, create_backbone, parse_spec, quiet_transformers

MAX_PATCHES = 16_384  # (image_size / patch_size) ** 2: position embeddings and attention grow with it


class TextTower:
    """A frozen instruction encoder: a sentence-transformers model, or an `hf:` CLIP's text tower."""

    def __init__(self, spec: str, device: str = "cpu"):
        self.spec, self.device = spec, device
        if spec.startswith("hf:"):
            self.tokenizer, self.model = _clip_text(spec[3:])
            self.model.to(device).eval()
        else:
            self.model = load_text_encoder(spec, device)

    @property
    def dim(self) -> int:
        if self.spec.startswith("hf:"):
            return int(self.model.config.projection_dim)
        return int(self.model.get_embedding_dimension())

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), dim) unit-norm float32 embeddings on CPU."""
        if self.spec.startswith("hf:"):
            tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
            out = self.model(**tokens).text_embeds
        else:
            out = self.model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False)
        return F.normalize(out.float(), dim=-1).cpu()


def _clip_text(source: str) -> tuple:
    """The tokenizer and text tower of a CLIP checkpoint, every weight loaded (never a random tower). Only a
    hub id that is not a local path goes to the hub, and not even then under HF_HUB_OFFLINE."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    local = Path(source).expanduser().exists() or constants.HF_HUB_OFFLINE
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            model, info = CLIPTextModelWithProjection.from_pretrained(source, local_files_only=local,
                                                                      output_loading_info=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load the CLIP text encoder hf:{source}: {error_line(err)}") from None
    if missing := [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]:
        raise UserError(f"hf:{source} is not a CLIP text model: {len(missing)} of its weights are missing or "
                        f"misshapen, e.g. {', '.join(sorted(map(str, missing))[:3])}")
    return tokenizer, model


@lru_cache(maxsize=4)
def text_tower(spec: str, device: str = "cpu") -> TextTower:
    """A cached `TextTower` per spec and device (the weights are frozen and shared)."""
    return TextTower(spec, device)


def conv_stem_layers(patch_size: int, embed_dim: int) -> nn.Sequential:
    """A convolutional patch embedding of the same stride ("Early Convolutions Help Transformers See
    Better", Xiao et al. 2021): stride-2 3x3 convs, widening to `embed_dim`, then a 1x1 projection."""
    if patch_size & (patch_size - 1):
        raise UserError(f"a conv stem needs a power-of-two patch size, got {patch_size}")
    if embed_dim < patch_size // 2:
        raise UserError(f"a conv stem with patch size {patch_size} needs embed_dim >= {patch_size // 2}, got {embed_dim}")
    layers, width = [], 3
    for i in range(patch_size.bit_length() - 1):
        out = embed_dim // 2 ** (patch_size.bit_length() - 2 - i)
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        width = out
    return nn.Sequential(*layers, nn.Conv2d(width, embed_dim, 1))


TOWERS = ("vit", "cnn")  # built in; any encoder spec (timm:NAME, a registered name, hf:SOURCE) also works


class FocalLens(nn.Module, PyTorchModelHubMixin, library_name="ragcli", tags=["focallens", "image-feature-extraction"]):
    """Conditional image encoder: `forward(pixels, instruction_embeddings)` -> unit vectors in text space."""

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        text_dim: int = 384,
        condition_tokens: int = 4,
        conv_stem: bool = True,
        temperature: float = 0.03,
        conditional: bool = True,
        text_encoder: str = DEFAULT_TEXT_ENCODER,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        tower: str = "vit",
        tower_config: dict | None = None,
    ):
        """`tower`: "vit" (condition tokens; `patch_size` .. `conv_stem` shape it), "cnn" (FiLM), or an
        encoder spec (`vision.conditioning.ConditionedTower`; an `hf:` one is built from `tower_config`, its
        transformers config as a dict). Settings a tower does not use are checked but unused. The
        constructor's default stays "vit" because models saved before the CNN tower existed have no `tower`
        in their config; `ragcli train focallens` and `train_from_data` default to "cnn", which won on the
        measurements (README)."""
        super().__init__()
        _check_settings(image_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, text_dim, condition_tokens,
                        conv_stem, temperature, conditional, text_encoder, mean, std, tower)
        self.image_size, self.conditional, self.text_encoder = image_size, conditional, text_encoder
        self.image_tower = tower
        if tower == "cnn":
            self.cnn = FiLMCNN(CNN_WIDTHS, text_dim if conditional else None)
            width = self.cnn.num_features
        elif tower not in TOWERS:
            self.encoder = ConditionedTower(build_backbone(tower, image_size, tower_config),
                                            text_dim if conditional else None, condition_tokens)
            width = self.encoder.num_features
        else:
            self.vit = VisionTransformer(img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                         num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=0, global_pool="token")
            if conv_stem:
                self.vit.patch_embed.proj = conv_stem_layers(patch_size, embed_dim)
            self.condition = ConditionTokens(text_dim, condition_tokens, embed_dim) if conditional else None
            width = embed_dim
        self.proj = nn.Linear(width, text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / temperature))))  # learned, as in CLIP
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return self.proj.out_features

    @property
    def name(self) -> str:
        return "focallens" if self.conditional else "focallens-unconditional"

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised float pixels."""
        return (images.float() / 255 - self.mean) / self.std

    def forward(self, pixels: torch.Tensor, instructions: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-norm (B, text_dim) embeddings of normalised pixels under (B, text_dim) instruction embeddings."""
        if self.conditional and instructions is None:
            raise UserError("this FocalLens model is conditional: give an instruction")
        instructions = instructions if self.conditional else None
        if self.image_tower != "vit":  # the CNN, or an encoder tower: (pixels, instructions) -> features
            tower = self.cnn if self.image_tower == "cnn" else self.encoder
            return F.normalize(self.proj(tower(pixels, instructions)), dim=-1)
        x = self.vit.patch_drop(self.vit._pos_embed(self.vit.patch_embed(pixels)))
        if self.conditional:
            x = self.condition.append(x, instructions)  # after the class token, so token pooling is unchanged
        x = self.vit.norm(self.vit.blocks(self.vit.norm_pre(x)))
        return F.normalize(self.proj(self.vit.forward_head(x, pre_logits=True)), dim=-1)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> uint8 (B, 3, S, S) at the model's resolution (bicubic resize, RGB)."""
        size = (self.image_size, self.image_size)
        arrays = [np.asarray(im.convert("RGB").resize(size, Image.BICUBIC)) for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def to_pixels(self, images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
        """uint8 (B, 3, S, S) from PIL images or a uint8 (B, H, W[, 3]) array (resized when H, W != S)."""
        if not isinstance(images, np.ndarray):
            return self.preprocess(images)
        if images.ndim == 3:  # grayscale
            images = np.repeat(images[..., None], 3, axis=-1)
        images = images[..., :3]  # RGBA: the colour channels
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            resized = F.interpolate(pixels.float(), size=(self.image_size, self.image_size), mode="bicubic", antialias=True)
            pixels = resized.round().clamp(0, 255).to(torch.uint8)
        return pixels

    def encode_instruction(self, condition: str | None, device: str = "cpu") -> torch.Tensor | None:
        """The (1, text_dim) embedding of `condition` (None for an unconditional model)."""
        if not self.conditional:
            return None
        if condition is None or not condition.strip():
            raise UserError("FocalLens needs a non-empty --condition (e.g. 'focus on the colour')")
        return self.tower(device).encode([condition.strip()])

    def tower(self, device: str = "cpu") -> TextTower:
        """The frozen text encoder of instructions and answers, checked to embed into this model's space."""
        tower = text_tower(self.text_encoder, device)
        if tower.dim != self.dim:
            raise UserError(f"text encoder {self.text_encoder!r} gives {tower.dim}-d embeddings; "
                            f"the model projects to {self.dim}")
        return tower

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image] | np.ndarray, condition: str | None = None,
              batch_size: int = 64, device: str = "auto") -> np.ndarray:
        """(N, dim) float32 embeddings of PIL images or a uint8 (N, H, W, 3) array under `condition`."""
        device = resolve_device(device)
        self.to(device).eval()
        instruction = self.encode_instruction(condition)
        out = []
        for start in progress(range(0, len(images), batch_size), desc="embed", unit="batch"):
            pixels = self.normalize(self.to_pixels(images[start:start + batch_size]).to(device))
            cond = None if instruction is None else instruction.to(device).expand(len(pixels), -1)
            out.append(self(pixels, cond).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir: str | Path | None = None,
                         force_download: bool = False, local_files_only: bool = False, token: str | bool | None = None,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs) -> FocalLens:
        """Strict safetensors loading from a directory or the hub (the mixin's own is lenient and prints):
        every tensor present, none left over, each of the right shape (`strict` is the mixin's argument;
        loading is always strict)."""
        if Path(model_id).is_dir():
            weights = str(Path(model_id) / SAFETENSORS_SINGLE_FILE)
        else:
            weights = hf_hub_download(model_id, SAFETENSORS_SINGLE_FILE, revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, local_files_only=local_files_only, token=token)
        model_kwargs.pop("config", None)  # the mixin also passes the raw config.json; its values are already here
        model = cls(**model_kwargs)
        try:
            model.load_state_dict(_current_keys(load_file(weights, device=map_location)), strict=True)
        except RuntimeError as err:
            raise ValueError(f"{SAFETENSORS_SINGLE_FILE} does not fit its config: {error_line(err)}") from None
        return model

    def describe(self) -> dict:
        """What the index manifest records about this encoder."""
        return {"name": self.name, "dim": self.dim, "image_size": self.image_size, "text_encoder": self.text_encoder}


def create_focallens(tower: str = "cnn", tower_weights: str | Path | None = None, **settings) -> FocalLens:
    """A new FocalLens (`settings`: its other constructor arguments). An encoder tower starts from
    `tower_weights` (a safetensors file or directory, for timm towers) or an `hf:` source's own weights, and
    normalises pixels as that encoder does; a timm tower without weights starts at random."""
    if tower in TOWERS:
        if tower_weights is not None:
            raise UserError(f"tower weights are for encoder towers (timm:NAME, hf:PATH), not the {tower} tower")
        return FocalLens(tower=tower, **settings)
    kind, _ = parse_spec(tower)
    if kind == "hf" and tower_weights is not None:
        raise UserError("an hf: tower takes its weights from its own directory; drop the tower weights")
    pretrained = create_backbone(tower, tower_weights, settings.get("image_size") if kind == "timm" else None)
    config = pretrained.model.config.to_dict() if kind == "hf" else None
    mean, std = _normalisation(pretrained)
    model = FocalLens(tower=tower, tower_config=config, **{"mean": mean, "std": std, **settings})
    model.encoder.backbone.model.load_state_dict(pretrained.model.state_dict())
    return model


def _normalisation(backbone: TimmBackbone | HFBackbone) -> tuple[list[float], list[float]]:
    """The (mean, std) an encoder's pixels are normalised with: timm's data config, or the image processor's."""
    if isinstance(backbone, HFBackbone):
        return list(backbone.processor.image_mean), list(backbone.processor.image_std)
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=backbone.model)
    return list(config["mean"]), list(config["std"])


_RENAMED_KEYS = {"condition.0.": "condition.project.0.", "condition.1.": "condition.project.1.",
                 "condition_pos": "condition.pos"}  # ViT towers saved before `ConditionTokens`


def _current_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved state dict with the tensor names of models saved by earlier releases brought up to date."""
    def rename(key: str) -> str:
        old = next((old for old in _RENAMED_KEYS if key.startswith(old)), None)
        return key if old is None else _RENAMED_KEYS[old] + key[len(old):]

    return {rename(key): value for key, value in state.items()}


def load_focallens(path: str | Path) -> FocalLens:
    """A FocalLens model directory (config.json + model.safetensors), loaded strictly; never downloads."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a FocalLens model directory (needs config.json and model.safetensors)")
    regular_file(path / "config.json", "FocalLens config")
    regular_file(path / SAFETENSORS_SINGLE_FILE, "FocalLens weights")
    return load_pretrained(FocalLens, path)


def _check_settings(image_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
                    text_dim: int, condition_tokens: int, conv_stem: bool, temperature: float, conditional: bool,
                    text_encoder: str, mean: Sequence[float], std: Sequence[float], tower: str = "vit") -> None:
    """Types and ranges of FocalLens's settings (from a caller or a config.json), before any tensor is made."""
    if tower not in TOWERS:
        text("FocalLens tower", tower, "vit, cnn or an encoder spec")
        parse_spec(tower)  # a clear error for an unknown encoder
    integer("FocalLens image_size", image_size, 8, MAX_IMAGE_SIZE)
    integer("FocalLens patch_size", patch_size, 1, image_size)
    if tower == "vit" and (image_size % patch_size or (image_size // patch_size) ** 2 > MAX_PATCHES):
        raise UserError(f"FocalLens patch_size {patch_size} must divide image_size {image_size} into at most "
                        f"{MAX_PATCHES} patches")
    integer("FocalLens embed_dim", embed_dim, 8, 4096)
    integer("FocalLens depth", depth, 1, 64)
    integer("FocalLens num_heads", num_heads, 1, 64)
    if tower == "vit" and embed_dim % num_heads:  # the CNN tower leaves the ViT's shape unused
        raise UserError(f"FocalLens num_heads {num_heads} must divide embed_dim {embed_dim}")
    number("FocalLens mlp_ratio", mlp_ratio, 0, 16, low_open=True)
    integer("FocalLens text_dim", text_dim, 1, 8192)
    integer("FocalLens condition_tokens", condition_tokens, 1, 64)
    boolean("FocalLens conv_stem", conv_stem)
    number("FocalLens temperature", temperature, 0, 1, low_open=True)
    boolean("FocalLens conditional", conditional)
    text("FocalLens text_encoder", text_encoder, "a model name or path")
    for name, values in (("mean", mean), ("std", std)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
            raise UserError(f"FocalLens {name} must be 3 numbers (R, G, B), got {values!r}")
        for value in values:
            number(f"FocalLens {name}", value, 0, 1, low_open=name == "std")
