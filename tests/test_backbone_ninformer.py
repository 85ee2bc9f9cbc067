"""NiNformer (vision/backbones/ninformer.py), what is particular to it: the input size fixed at construction,
token maps as features, the gating unit, and the authors' layout. The checks every backbone gets:
tests/test_backbones.py."""

import re

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, images, randomised

from indexes.errors import UserError
from vision.backbones.ninformer import NiNBlock, checkpoint_filter_fn
from vision.encoders import create_encoder

NAME = "ninformer"


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model(NAME, **kwargs)


def test_the_input_size_is_fixed_at_construction():
    model = _model(num_classes=10).eval()
    with torch.inference_mode():
        with pytest.raises(UserError, match="patch grid"):
            model(torch.randn(1, 3, 64, 64))
        assert _model(img_size=224, num_classes=10).eval()(torch.randn(1, 3, 224, 224)).shape == (1, 10)
    with pytest.raises(UserError, match="multiple"):
        _model(img_size=30)
    assert create_encoder(NAME, image_size=64).embed(images(1)).shape == (1, 256)  # built for 64x64


def test_the_last_feature_map_is_the_final_tokens_on_the_patch_grid():
    last = _model(features_only=True, out_indices=(3,)).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(last(x)[0].flatten(2).transpose(1, 2), _model().eval().forward_features(x))


def test_gate_multiplies_the_projection_and_mixes_tokens():
    torch.manual_seed(0)
    block = NiNBlock(16, 9, 32).eval()
    x = torch.randn(2, 9, 16)
    with torch.inference_mode():
        y = block(x)
        changed = x.clone()
        changed[:, 0] += torch.randn(16)  # not a constant shift, which LayerNorm would remove
        moved = (block(changed) - y).abs().sum(-1)
        assert (moved[:, 1:] > 1e-4).all()  # a change in one token reaches every token through the gate
        torch.nn.init.zeros_(block.mgu.proj.weight)
        torch.nn.init.zeros_(block.mgu.proj.bias)
        # a zero projection closes the gate: the block is then only its token-wise MLP half
        torch.testing.assert_close(block(x), x + block.ffn(block.norm(x)))


# ---- the authors' layout (Abdullah-88/NiNformer, ninformer.py + train.py) --------------------------
_TO_AUTHORS = (
    (r"^blocks\.(\d+)\.", r"model.\1."),
    (r"\.mgu\.mixer\.token_norm\.", ".mgu.Mixer.token_mix.0."),
    (r"\.mgu\.mixer\.token_mlp\.fc(\d)\.", lambda m: f".mgu.Mixer.token_mix.2.net.{3 * (int(m[1]) - 1)}."),
    (r"\.mgu\.mixer\.channel_norm\.", ".mgu.Mixer.channel_mix.0."),
    (r"\.mgu\.mixer\.channel_mlp\.fc(\d)\.", lambda m: f".mgu.Mixer.channel_mix.1.net.{3 * (int(m[1]) - 1)}."),
    (r"\.ffn\.fc(\d)\.", lambda m: f".ffn.net.{3 * (int(m[1]) - 1)}."),
    (r"^head\.", "classifier."),
)


def _to_authors_layout(state):
    """Our state dict under the authors' names (their Sequential indices, `Mixer`, `classifier`)."""
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in _TO_AUTHORS:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out


def test_the_authors_layout_loads(tmp_path):
    reference = randomised(_model(num_classes=10))  # their CIFAR-10 head
    theirs = _to_authors_layout(reference.state_dict())
    assert "model.3.mgu.Mixer.token_mix.2.net.3.weight" in theirs and "classifier.weight" in theirs
    assert "patcher.weight" in theirs and not any(k.startswith(("blocks.", "head.")) for k in theirs)
    save_file(theirs, tmp_path / "ninformer_cifar10.safetensors")
    assert_loads_as(reference, tmp_path / "ninformer_cifar10.safetensors", NAME)
    model = _model(num_classes=10)  # with a head, and wrapped as training scripts often save it
    model.load_state_dict(checkpoint_filter_fn({"state_dict": theirs}, model))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(pixels), reference(pixels))


def test_a_checkpoint_for_another_input_size_is_refused(tmp_path):
    save_file(_to_authors_layout(_model().state_dict()), tmp_path / "ninformer.safetensors")
    with pytest.raises(UserError, match="do not fit"):  # their 32x32 token MLPs in a 64x64 model
        create_encoder(NAME, weights=tmp_path / "ninformer.safetensors", image_size=64)
