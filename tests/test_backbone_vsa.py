"""Swin-T + VSA (vision/backbones/vsa.py), what is particular to it: padding to whole windows, the window
regression, and the authors' checkpoint layout. The checks every backbone gets: tests/test_backbones.py."""

import re

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised, to_stage_end_layout

from vision.backbones.vsa import VSAWindowAttention, checkpoint_filter_fn

NAME = "swin_vsa_tiny"
SMALL = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4)}  # Swin-T's layout, narrow and shallow


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model(NAME, **{**SMALL, **kwargs})


def test_maps_are_padded_to_whole_windows():
    model = _model(num_classes=0).eval()
    with torch.inference_mode():
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 128, 7, 7)
        assert model.forward_features(torch.randn(1, 3, 50, 38)).shape == (1, 128, 2, 2)  # padded, not refused


def _attention():
    torch.manual_seed(0)
    attn = VSAWindowAttention(8, num_heads=2, window_size=3)
    attn.reset_window_regressors()
    return attn


def test_window_regressors_start_at_zero():
    """Every target window starts as its default window (the regressors learn from the first step:
    tests/test_backbones.py gives every parameter a gradient)."""
    attn = _model().layers[0].blocks[0].attn
    assert not attn.sampling_offsets.weight.any() and not attn.sampling_scales.weight.any()


def test_default_windows_sample_the_keys_where_they_are():
    attn = _attention()
    zeros = torch.zeros(1, 2, 3, 2, 2)  # B, window rows, window columns, heads, (x, y)
    grid = attn.sampling_grid(zeros, zeros, 6, 9)
    k = torch.randn(2, 4, 6, 9)
    torch.testing.assert_close(F.grid_sample(k, grid, align_corners=True), k, atol=1e-5, rtol=0)


def test_offsets_move_and_scales_resize_the_window_per_head():
    attn = _attention()
    height, width = 6, 9
    offsets, scales = torch.zeros(1, 2, 3, 2, 2), torch.zeros(1, 2, 3, 2, 2)
    offsets[..., 0, 0] = 3 * 2 / (width - 1)  # head 0: one pixel to the right (offsets are in units of 1 / windows)
    scales[..., 1, :] = -1.0  # head 1: the window shrinks onto its centre
    grid = attn.sampling_grid(offsets, scales, height, width)
    k = torch.randn(2, 4, height, width)  # (B * heads, head_dim, H, W)
    sampled = F.grid_sample(k, grid, align_corners=True)
    torch.testing.assert_close(sampled[0, :, :, :-1], k[0, :, :, 1:], atol=1e-5, rtol=0)
    assert sampled[0, :, :, -1].abs().max() < 1e-5  # beyond the map: zero padding
    centres = k[1, :, 1::3, 1::3]  # (head_dim, 2, 3): the middle token of each 3x3 window
    expected = centres.repeat_interleave(3, dim=1).repeat_interleave(3, dim=2)
    torch.testing.assert_close(sampled[1], expected, atol=1e-5, rtol=0)


def _to_authors_layout(state):
    """Our state dict as the authors' Swin + VSA code names it: patch merging at the end of a stage,
    `head.*`, 1x1-conv qkv / proj / window regressors (the conv at index 2), position-index buffers."""
    out = {}
    for key, value in to_stage_end_layout(state, "layers", "layers").items():
        key = key.replace("head.fc.", "head.")
        key = re.sub(r"\.sampling_(offsets|scales)\.", r".sampling_\1.2.", key)
        if key.endswith(("attn.qkv.weight", "attn.proj.weight", ".2.weight")):
            value = value[:, :, None, None]
        out[key] = value.clone()
        if key.endswith("relative_position_bias_table"):
            out[key.replace("bias_table", "index")] = torch.zeros(49, 49, dtype=torch.long)
    return out


def test_checkpoint_filter_maps_the_authors_layout(tmp_path):
    reference = randomised(_model())  # with its 1000-class head, as checkpoints come; non-zero regressors
    authors = _to_authors_layout(reference.state_dict())
    assert "layers.0.downsample.reduction.weight" in authors and "head.weight" in authors
    assert authors["layers.0.blocks.0.attn.qkv.weight"].ndim == 4

    mapped = checkpoint_filter_fn({"model": authors}, reference)  # their checkpoints wrap the weights in "model"
    assert mapped.keys() == reference.state_dict().keys()
    assert all(torch.equal(mapped[k], v) for k, v in reference.state_dict().items())

    save_file(authors, tmp_path / "swin_vsa_authors.safetensors")
    assert_loads_as(reference, tmp_path / "swin_vsa_authors.safetensors", NAME, 32, **SMALL)
