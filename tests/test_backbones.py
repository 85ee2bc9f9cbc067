"""This project's backbones (vision/backbones), each through the same checks: logits, features and pre-logits
shapes, the features_only pyramid, its own checkpoint through an encoder and the encoder's save / load, finite
non-zero gradients, learning a generated batch, another model's weights refused, the real variants'
parameter counts; and `list_encoders` / `ragcli models list`.

What is particular to one model (its authors' checkpoint layout, its attention's semantics) is tested in
tests/test_backbone_<model>.py, which take their shared helpers from here.
"""

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import run
from PIL import Image
from safetensors.torch import save_file
from timm.models import model_entrypoint

import vision  # noqa: F401  (registers the backbones with timm)
from indexes.errors import UserError
from vision.encoders import ImageEncoder, create_encoder, list_encoders


# ---- helpers the per-model test files share -------------------------------------------------------
def images(n: int = 3, size: tuple[int, int] = (40, 48)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def randomised(model: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    """Trained-looking weights: noise on every parameter (layer scales leave their tiny init), BatchNorm
    statistics away from 0 / 1, so that every block and statistic shows in the output; in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def assert_loads_as(reference: torch.nn.Module, weights, name: str, image_size: int | None = None, *,
                    rtol: float | None = None, atol: float | None = None, **model_kwargs: Any) -> ImageEncoder:
    """`create_encoder(name, weights=...)` embeds as `reference` (its pre-logits) does; the encoder, in eval mode."""
    encoder = create_encoder(name, weights=weights, image_size=image_size, **model_kwargs).eval()
    pixels = encoder.preprocess(images(2))
    with torch.inference_mode():
        expected = reference.eval().forward_head(reference.forward_features(pixels), pre_logits=True)
        torch.testing.assert_close(encoder(pixels), expected, rtol=rtol, atol=atol)
    return encoder


def to_stage_end_layout(state: dict[str, torch.Tensor], theirs: str, ours: str = "stages") -> dict[str, torch.Tensor]:
    """Our state dict as Swin-style code lays it out: `{theirs}.{i}` stages, each ending with the downsampling
    that starts our stage i + 1 (the inverse of `vision.backbones._common.stage_key`)."""
    out = {}
    for key, value in state.items():
        match = re.fullmatch(rf"{ours}\.(\d+)\.(.+)", key)
        if match is None:
            out[key] = value
        else:
            stage = int(match[1]) - match[2].startswith("downsample.")
            out[f"{theirs}.{stage}.{match[2]}"] = value
    return out


# ---- every backbone -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A backbone's smallest registered variant, built as the checks build it."""

    name: str
    size: int  # input side: the smallest at which every parameter gets a gradient
    features: tuple[int, ...]  # forward_features' shape for one image of `size`
    pyramid: list[int]  # features_only channels
    dim: int  # pre-logits width (head_hidden_size): the encoder's embedding size
    kwargs: dict[str, Any] = field(default_factory=dict)  # the same layout, narrower and shallower: fast checks

    def create(self, **kwargs: Any) -> torch.nn.Module:
        torch.manual_seed(0)
        return timm.create_model(self.name, **{**self.kwargs, **kwargs})


CASES = [
    Case("van_b0", 32, (256, 1, 1), [32, 64, 160, 256], 256),
    Case("moat_tiny_0", 64, (256, 2, 2), [32, 64, 128, 256], 256),
    Case("ninformer", 32, (64, 256), [256] * 4, 256),  # tokens; the input size is fixed at 32
    Case("rmt_t", 64, (64, 2, 2), [16, 32, 48, 64], 32,
         {"embed_dims": (16, 32, 48, 64), "depths": (1, 1, 1, 1), "num_heads": (2, 2, 4, 4), "projection": 32}),
    Case("dinat_mini", 64, (128, 2, 2), [16, 32, 64, 128], 128,  # still alternating plain and dilated layers
         {"embed_dim": 16, "depths": (2, 2, 1, 1), "num_heads": (1, 2, 2, 4),
          "dilations": ((1, 2), (1, 2), (1,), (1,))}),
    Case("overlock_xt", 64, (120, 2, 2), [16, 32, 88, 120], 64,  # two Focus-Net blocks a stage, real kernels
         {"depth": (1, 1, 1, 1), "sub_depth": (2, 2), "embed_dim": (16, 32, 64, 96), "sub_num_heads": (2, 2),
          "projection": 64}),
    Case("swin_vsa_tiny", 32, (128, 1, 1), [16, 32, 64, 128], 128,
         {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4)}),
    Case("dhvt_tiny", 32, (1 + 2 * 2, 32), [32] * 3, 32, {"embed_dim": 32, "depth": 4, "num_heads": 2}),
    Case("spartan_t", 64, (256, 2, 2), [32, 64, 128, 256], 256, {"depths": (1, 1, 2, 1)}),
    Case("attnet_xxs", 64, (240, 2, 2), [32, 64, 128, 240], 240, {"depths": (1, 1, 1, 1)}),
]
every_backbone = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def test_every_own_backbone_has_a_case():
    """EViT, a ViT modification, is tested with the encoders (tests/test_vision_encoders.py)."""
    modules = {model_entrypoint(row["name"]).__module__ for row in list_encoders() if row["source"] == "ragcli"}
    assert modules - {"vision.backbones.evit"} == {model_entrypoint(case.name).__module__ for case in CASES}


@every_backbone
def test_logits_features_and_pre_logits_shapes(case):
    model = case.create(num_classes=10).eval()
    pixels = torch.randn(2, 3, case.size, case.size)
    with torch.inference_mode():
        assert model(pixels).shape == (2, 10)
        features = model.forward_features(pixels)
        assert features.shape == (2, *case.features)
        assert model.forward_head(features, pre_logits=True).shape == (2, case.dim) == (2, model.head_hidden_size)
    assert model.get_classifier().out_features == 10
    model.reset_classifier(0)
    with torch.inference_mode():
        assert model(pixels).shape == (2, case.dim)
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == model.pretrained_cfg["input_size"]


@every_backbone
def test_features_only_pyramid_matches_feature_info(case):
    extractor = case.create(features_only=True).eval()
    channels, reductions = extractor.feature_info.channels(), extractor.feature_info.reduction()
    assert channels == case.pyramid
    with torch.inference_mode():
        maps = extractor(torch.randn(2, 3, case.size, case.size))
    assert [tuple(m.shape) for m in maps] == [(2, c, case.size // r, case.size // r)
                                              for c, r in zip(channels, reductions, strict=True)]


@every_backbone
def test_own_checkpoint_loads_and_the_saved_encoder_reloads_identically(case, tmp_path):
    reference = randomised(case.create())  # with its 1000-class head, as checkpoints come
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "weights.safetensors")
    encoder = assert_loads_as(reference, tmp_path / "weights.safetensors", case.name, case.size, **case.kwargs)
    before = encoder.embed(images(), batch_size=2, device="cpu")
    assert encoder.dim == case.dim and before.shape == (3, case.dim)
    assert np.isfinite(before).all() and not np.allclose(before[0], before[1])
    encoder.save_pretrained(tmp_path / "saved")
    reloaded = create_encoder(str(tmp_path / "saved"))  # ImageEncoder.from_pretrained
    np.testing.assert_array_equal(reloaded.embed(images(), batch_size=2, device="cpu"), before)


@every_backbone
def test_every_parameter_gets_a_finite_non_zero_gradient(case):
    model = case.create(num_classes=3).train()
    pixels = torch.randn(2, 3, case.size, case.size, generator=torch.Generator().manual_seed(0))
    F.cross_entropy(model(pixels), torch.tensor([0, 2])).backward()
    assert not [name for name, p in model.named_parameters()
                if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]


@every_backbone
def test_a_few_steps_lower_the_loss_on_a_generated_batch(case):
    """At most 10 AdamW steps halve the loss on a batch where class 1 is brighter (most need one or two)."""
    model = case.create(num_classes=2).train()
    labels = torch.tensor([0, 1] * 2)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pixels += (2.0 * labels - 1).view(-1, 1, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    while len(losses) < 10 and (not losses or losses[-1] >= 0.5 * losses[0]):
        loss = F.cross_entropy(model(pixels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), path)
    return path


@every_backbone
def test_another_models_weights_are_refused_by_name(case, resnet18_weights):
    names = r"do not fit .*Missing key\(s\) in state_dict: .+; Unexpected key\(s\) in state_dict: .*layer1\."
    with pytest.raises(UserError, match=names):
        create_encoder(case.name, weights=resnet18_weights, image_size=case.size, **case.kwargs)


# The real variants with 1000 classes: our count, and the paper's figure (with the tolerance its rounding
# needs) where it gives one.
PARAMETER_COUNTS = [
    ("van_b0", {}, 4_105_800, 4.1e6, 0.02),
    ("moat_tiny_0", {}, 3_355_348, 3.4e6, 0.02),  # deeplab2's moat_test.py counts these three exactly
    ("moat_tiny_0", {"relative_position": False}, 3_332_232, None, None),  # the authors' "no_pe" variant
    ("moat_0", {}, 27_846_892, 27.8e6, 0.02),
    ("ninformer", {}, 2_906_600, None, None),  # the authors' code (no table in the paper)
    ("ninformer", {"num_classes": 10}, 2_652_170, None, None),  # ... with its CIFAR-10 head
    ("rmt_t", {}, 14_334_216, 14e6, 0.03),  # the authors' training log: 14,334,216; the paper: "14M"
    ("dinat_mini", {}, 19_984_174, 20e6, 0.02),  # the authors' code builds 19,984,174
    ("overlock_xt", {}, 16_969_600, None, None),  # as trained (large kernels unmerged)
    ("overlock_xt_reparam", {}, 16_453_712, 16e6, 0.03),  # the paper counts the merged model
    ("swin_vsa_tiny", {}, 28_779_274, 29e6, 0.02),
    ("dhvt_tiny", {}, 6_267_334, 6.2e6, 0.02),
    ("dhvt_small", {}, 24_040_606, 23.8e6, 0.02),
    ("spartan_t", {}, 3_820_296, 3.8e6, 0.02),
    ("attnet_xxs", {}, 2_853_556, 2.86e6, 0.02),  # the authors' README
]


@pytest.mark.parametrize("name, kwargs, count, paper, tolerance", PARAMETER_COUNTS,
                         ids=[f"{row[0]}{'-' * bool(row[1])}{'-'.join(map(str, row[1]))}" for row in PARAMETER_COUNTS])
def test_parameter_count_of_the_real_variant(name, kwargs, count, paper, tolerance):
    ours = sum(p.numel() for p in timm.create_model(name, **kwargs).parameters())
    assert ours == count
    assert paper is None or abs(ours / paper - 1) < tolerance


# ---- discovery ------------------------------------------------------------------------------------
def test_list_encoders_names_ours_and_timms():
    assert list_encoders("van*") == [{"name": f"van_b{i}", "source": "ragcli", "local_weights": False}
                                     for i in range(4)]
    assert [(r["name"], r["source"]) for r in list_encoders("*rmt*")] == [("rmt_t", "ragcli")]
    assert [(r["name"], r["source"]) for r in list_encoders("resnet18")] == [("resnet18", "timm")]
    assert list_encoders("no_such_model*") == []
    everything = list_encoders()
    assert len(everything) == len(timm.list_models()) and {r["source"] for r in everything} == {"ragcli", "timm"}


def test_list_encoders_sees_downloaded_weights(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))
    assert list_encoders("resnet18") == [{"name": "resnet18", "source": "timm", "local_weights": False}]
    cfg = timm.models.get_pretrained_cfg("resnet18")
    url_cache = tmp_path / "torch" / "checkpoints" / cfg.url.rsplit("/", 1)[-1]  # where timm downloads urls
    url_cache.parent.mkdir(parents=True)
    url_cache.write_bytes(b"")
    assert list_encoders("resnet18")[0]["local_weights"]
    url_cache.unlink()
    repo = tmp_path / "hf" / f"models--{cfg.hf_hub_id.replace('/', '--')}"  # a Hugging Face hub download
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "model.safetensors").write_bytes(b"")
    assert list_encoders("resnet18")[0]["local_weights"]


def test_cli_models_list():
    result = run("models", "list", "van*", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == list_encoders("van*")
    text = run("models", "list", "*rmt*")
    assert text.exit_code == 0 and text.stdout.split() == ["rmt_t", "ragcli", "-"]
    assert run("models", "list", "no_such_model*").stdout.strip() == "no models match 'no_such_model*'"
