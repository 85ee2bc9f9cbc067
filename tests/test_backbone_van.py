"""VAN (vision/backbones/van.py), what is particular to it: the official checkpoint layout
(Visual-Attention-Network/VAN-Classification, models/van.py). The checks every backbone gets, a resnet18
checkpoint refused with its missing and unexpected keys named among them: tests/test_backbones.py."""

import re

import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised

from vision.backbones.van import checkpoint_filter_fn

NAME = "van_b0"
# Names of the official van_b0 state dict (its 402 keys all map; checked against the authors' code)
OFFICIAL_KEYS = {
    "patch_embed1.proj.weight", "patch_embed1.norm.running_var", "patch_embed4.norm.num_batches_tracked",
    "block1.0.norm1.weight", "block1.0.attn.proj_1.weight", "block1.0.attn.spatial_gating_unit.conv0.weight",
    "block1.0.attn.spatial_gating_unit.conv_spatial.weight", "block1.0.attn.spatial_gating_unit.conv1.bias",
    "block3.4.attn.proj_2.weight", "block1.0.norm2.running_mean", "block1.0.mlp.fc1.weight",
    "block1.0.mlp.dwconv.dwconv.weight", "block4.1.mlp.fc2.bias", "block1.0.layer_scale_1", "block4.1.layer_scale_2",
    "norm1.weight", "norm4.bias", "head.weight", "head.bias",
}


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model(NAME, **kwargs)


def _official_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict as the official code names it: stages numbered from 1 as patch_embed{i} (proj, norm),
    block{i}, norm{i}; LKA as spatial_gating_unit, the MLP's depth-wise conv in a DWConv; (C,) layer scales."""
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"stages\.(\d+)\.(downsample|blocks|norm)\.(.+)", key)
        if match is None:
            out[key.replace("head.fc.", "head.")] = value
            continue
        stage, part, rest = int(match[1]) + 1, match[2], match[3]
        if part == "downsample":
            index, _, leaf = rest.partition(".")
            key = f"patch_embed{stage}.{('proj', 'norm')[int(index)]}.{leaf}"
        elif part == "blocks":
            rest = rest.replace(".attn.lka.", ".attn.spatial_gating_unit.")
            rest = rest.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
            key = f"block{stage}.{rest}"
            value = value.flatten() if key.endswith(("layer_scale_1", "layer_scale_2")) else value
        else:
            key = f"norm{stage}.{rest}"
        out[key] = value.contiguous()
    return out


def test_the_official_checkpoint_layout_loads(tmp_path):
    reference = randomised(_model())  # with its 1000-class head, as the official checkpoints come
    theirs = _official_layout(reference.state_dict())
    assert OFFICIAL_KEYS <= theirs.keys() and len(theirs) == 402
    assert theirs["block1.0.layer_scale_1"].shape == (32,) and not any(k.startswith("stages.") for k in theirs)
    save_file(theirs, tmp_path / "van_b0_official.safetensors")
    assert_loads_as(reference, tmp_path / "van_b0_official.safetensors", NAME, 32)
    # their .pth.tar files hold {"state_dict": ...}; a model with a classifier takes theirs
    model = _model()
    model.load_state_dict(checkpoint_filter_fn({"state_dict": theirs}, model))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(pixels), reference(pixels))
